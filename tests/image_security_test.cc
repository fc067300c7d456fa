// Issue 9, section 3 and the image/agent parts of section 4, against a real
// controller, agent and image server: what was validated is what is used.
// * One upload per image file at a time: a second upload (here a qcow2
//   whose backing file names the admin token) while the first streams is
//   refused with 409, and the first one's bytes are what gets stored.
// * A qcow2 naming a backing file or an external data file is refused at
//   import, and an agent refuses it again before QEMU or qemu-img open it.
// * Agents accept paths only under their state and image directories.
// * The image server does not serve without a token.
#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <thread>

#include "common/child_process.h"
#include "common/subprocess.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

class ImageSecurityTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    grid_ = StartGrid("imgsec", 1, {}, /*tls=*/false).release();
    dir_ = new std::string("/tmp/vmgrid-imgsec-files-" + std::to_string(getpid()));
    (void)RemoveTree(*dir_);
    ASSERT_TRUE(MakeDirs(*dir_).ok());
  }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
    (void)RemoveTree(*dir_);
    delete dir_;
  }
  static std::string AdminTokenFile() { return grid_->controller_state_dir() + "/admin.token"; }
  // A qcow2 whose backing file is the admin token (-u: not opened now).
  static std::string EvilQcow2(const std::string& name) {
    std::string p = *dir_ + "/" + name;
    auto r = RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b",
                                AdminTokenFile(), "-F", "raw", p, "1M"});
    EXPECT_TRUE(r.ok()) << r.error().message;
    return p;
  }
  static std::string GoodQcow2(const std::string& name, const std::string& size = "4M") {
    std::string p = *dir_ + "/" + name;
    auto r = RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", p, size});
    EXPECT_TRUE(r.ok()) << r.error().message;
    return p;
  }
  static std::string NewImage(const std::string& name, bool has_kernel = true) {
    auto img = grid_->Admin().Post(
        "/v1/images", {{"name", name}, {"format", "qcow2"}, {"has_kernel", has_kernel}});
    EXPECT_TRUE(img.ok()) << img.error().message;
    return img.ok() ? (*img)["id"].get<std::string>() : "";
  }
  static std::string ImageDir(const std::string& id) {
    return grid_->controller_state_dir() + "/images/" + id;
  }
  static json Host() {
    auto hosts = grid_->Admin().Get("/v1/hosts");
    EXPECT_TRUE(hosts.ok());
    return (*hosts)["hosts"][0];
  }
  // The agent API as the controller calls it (with the agent's own API
  // token, which the controller gave it at registration).
  static ApiClient Agent() {
    auto creds = ReadFile(grid_->agent_state_dir(0) + "/host-credentials.json");
    EXPECT_TRUE(creds.ok());
    json j = creds.ok() ? json::parse(*creds, nullptr, false) : json();
    return ApiClient(Host()["url"].get<std::string>(),
                     j.is_object() ? j.value("agent_api_token", "") : "");
  }

  static LocalGrid* grid_;
  static std::string* dir_;
};
LocalGrid* ImageSecurityTest::grid_ = nullptr;
std::string* ImageSecurityTest::dir_ = nullptr;

// A PUT whose body is sent in two parts, so that the upload is in progress
// (its request thread waiting for the rest) while the test does other things.
class SplitUpload {
 public:
  SplitUpload(int port, const std::string& path, const std::string& token, const std::string& body)
      : body_(body) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    std::string head = "PUT " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " +
                       token + "\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
    Send(head + body_.substr(0, body_.size() / 2));
  }
  ~SplitUpload() { close(fd_); }
  // Sends the rest; returns the response's status line and body.
  std::string Finish() {
    Send(body_.substr(body_.size() / 2));
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = read(fd_, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
    return out;
  }

 private:
  void Send(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = write(fd_, s.data() + off, s.size() - off);
      ASSERT_GT(n, 0);
      off += static_cast<size_t>(n);
    }
  }
  int fd_ = -1;
  std::string body_;
};

bool DirHasEntries(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return false;
  bool any = false;
  while (dirent* e = readdir(d))
    if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") any = true;
  closedir(d);
  return any;
}

TEST_F(ImageSecurityTest, QcowWithBackingOrDataFileIsRefusedAtImport) {
  ApiClient admin = grid_->Admin();
  std::string id = NewImage("evil-backing");
  auto r = admin.PutFile("/v1/images/" + id + "/files/disk", EvilQcow2("evil1.qcow2"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("backing file"), std::string::npos) << r.error().message;
  EXPECT_EQ(r.error().message.find(grid_->controller_state_dir()), std::string::npos)
      << "no host paths";

  std::string data_file = *dir_ + "/ext.qcow2";
  ASSERT_TRUE(RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", "-o",
                                 "data_file=" + *dir_ + "/ext.raw", data_file, "1M"})
                  .ok());
  auto d = admin.PutFile("/v1/images/" + id + "/files/disk", data_file);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message.find("data file"), std::string::npos) << d.error().message;
  // Nothing was stored: finalize still misses the disk.
  auto fin = admin.Post("/v1/images/" + id + "/finalize");
  ASSERT_FALSE(fin.ok());
  EXPECT_NE(fin.error().message.find("missing: disk"), std::string::npos) << fin.error().message;
  EXPECT_TRUE(admin.Delete("/v1/images/" + id).ok());
}

// Fails on the code before issue 9: both uploads shared DIR/disk.qcow2.partial,
// so a second upload truncated and rewrote the file the first one was
// validating and then renamed (validated one file, stored another).
TEST_F(ImageSecurityTest, SecondConcurrentUploadOfAFileIsRefusedAndTheFirstIsWhatIsStored) {
  ApiClient admin = grid_->Admin();
  std::string id = NewImage("race", false);
  std::string good_path = GoodQcow2("good.qcow2");
  auto good = ReadFile(good_path, 64 << 20);
  ASSERT_TRUE(good.ok());
  int port = std::stoi(grid_->url().substr(grid_->url().rfind(':') + 1));
  SplitUpload first(port, "/v1/images/" + id + "/files/disk", grid_->admin_token(), *good);
  // The first upload is under way once its temporary file exists.
  for (int i = 0; i < 600 && !DirHasEntries(ImageDir(id)); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(DirHasEntries(ImageDir(id)));

  auto second = admin.PutFile("/v1/images/" + id + "/files/disk", EvilQcow2("evil2.qcow2"));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, ErrorCode::kFailedPrecondition) << second.error().message;
  EXPECT_NE(second.error().message.find("in progress"), std::string::npos)
      << second.error().message;
  // Finalize waits for no one: it is refused while the upload runs.
  auto early = admin.Post("/v1/images/" + id + "/finalize");
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.error().code, ErrorCode::kFailedPrecondition);

  std::string answer = first.Finish();
  EXPECT_NE(answer.find(" 200 "), std::string::npos) << answer;
  auto stored = ReadFile(ImageDir(id) + "/disk.qcow2", 64 << 20);
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(*stored == *good) << "the stored disk is not the validated upload";
  auto fin = AwaitOperation(admin, admin.Post("/v1/images/" + id + "/finalize"));
  ASSERT_TRUE(fin.ok()) << fin.error().message;
  EXPECT_EQ((*fin)["state"], "ready");
  // A published version never changes.
  auto late = admin.PutFile("/v1/images/" + id + "/files/disk", good_path);
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().code, ErrorCode::kFailedPrecondition);
  // No temporary files are left behind.
  DIR* d = opendir(ImageDir(id).c_str());
  ASSERT_NE(d, nullptr);
  while (dirent* e = readdir(d))
    EXPECT_EQ(std::string(e->d_name).find(".tmp"), std::string::npos) << e->d_name;
  closedir(d);
  EXPECT_TRUE(admin.Delete("/v1/images/" + id).ok());
}

// Fails on the code before issue 9: the agent used any path the controller
// sent, and handed a user's qcow2 to qemu-img and QEMU, backing file and all.
TEST_F(ImageSecurityTest, AgentRefusesImagePathsOutsideItsDirectoriesAndBackedQcow2) {
  ApiClient agent = Agent();
  json spec = {{"id", "vm-evil-path"},
               {"vcpus", 1},
               {"memory_mb", 128},
               {"image", {{"disk", "/etc/passwd"}, {"format", "raw"}}}};
  auto r = agent.Post("/agent/v1/vms", spec);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("outside"), std::string::npos) << r.error().message;
  EXPECT_EQ(r.error().message.find("/etc/passwd"), std::string::npos) << "no host paths";

  spec["image"]["disk"] = grid_->controller_state_dir() + "/images/../admin.token";
  r = agent.Post("/agent/v1/vms", spec);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("outside"), std::string::npos) << r.error().message;

  // A symlink inside the image directory that leads out of it.
  std::string link = grid_->controller_state_dir() + "/images/evil-link.raw";
  unlink(link.c_str());
  ASSERT_EQ(symlink(AdminTokenFile().c_str(), link.c_str()), 0);
  spec["image"]["disk"] = link;
  r = agent.Post("/agent/v1/vms", spec);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("outside"), std::string::npos) << r.error().message;
  unlink(link.c_str());

  // A backed qcow2 that got into the image directory anyway (say, an older
  // controller let it in): refused before qemu-img or QEMU opens it.
  std::string evil = grid_->controller_state_dir() + "/images/evil-backed.qcow2";
  ASSERT_TRUE(RunProcessChecked({"cp", EvilQcow2("evil3.qcow2"), evil}).ok());
  spec["image"] = {{"disk", evil}, {"format", "qcow2"}};
  r = agent.Post("/agent/v1/vms", spec);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("backing file"), std::string::npos) << r.error().message;
  unlink(evil.c_str());

  // Checkpoint targets and resume sources are paths too.
  json ick = {{"image", {{"disk", grid_->agent_state_dir(0) + "/nothing.raw"}, {"format", "raw"}}},
              {"target_dir", "/tmp/vmgrid-evil-ckpt"}};
  r = agent.Post("/agent/v1/image-checkpoints", ick);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("outside"), std::string::npos) << r.error().message;
  json resume = {
      {"id", "vm-evil-resume"},
      {"start", "resume"},
      {"checkpoint_dir", "/tmp"},
      {"image", {{"disk", grid_->agent_state_dir(0) + "/nothing.raw"}, {"format", "raw"}}}};
  r = agent.Post("/agent/v1/vms", resume);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("outside"), std::string::npos) << r.error().message;
  // No VM was created by any of these.
  auto status = agent.Get("/agent/v1/status");
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE((*status)["vms"].empty()) << status->dump();
}

// Fails on the code before issue 9: a symlink under the workspace directory
// let `DELETE /agent/v1/workspaces?path=` remove a file anywhere.
TEST_F(ImageSecurityTest, AgentWorkspaceDeletionStaysInsideTheWorkspaceDirectory) {
  ApiClient agent = Agent();
  std::string victim_dir = *dir_ + "/victim";
  ASSERT_TRUE(MakeDirs(victim_dir).ok());
  ASSERT_TRUE(WriteFileAtomic(victim_dir + "/ws.qcow2", "precious").ok());
  std::string ws = grid_->agent_state_dir(0) + "/workspaces";
  ASSERT_TRUE(MakeDirs(ws).ok());
  unlink((ws + "/mallory").c_str());
  ASSERT_EQ(symlink(victim_dir.c_str(), (ws + "/mallory").c_str()), 0);
  for (const std::string& p : {std::string("mallory/ws.qcow2"),
                               std::string("../../victim/ws.qcow2"), std::string("/etc/passwd")}) {
    auto r = agent.Delete("/agent/v1/workspaces?path=" + p);
    EXPECT_FALSE(r.ok()) << p;
  }
  EXPECT_TRUE(FileExists(victim_dir + "/ws.qcow2"));
  unlink((ws + "/mallory").c_str());
}

// Fails on the code before issue 9: without --token-file the image server
// served every image and checkpoint memory file to anyone.
TEST_F(ImageSecurityTest, ImageServerNeverServesWithoutAToken) {
  std::string dir = *dir_ + "/image-server";
  std::string log = *dir_ + "/image-server.log";
  auto child = ChildProcess::Spawn(
      {VMGRID_BINARY, "image-server", "--listen", "127.0.0.1:0", "--plain-http", "--dir", dir},
      log);
  ASSERT_TRUE(child.ok()) << child.error().message;
  std::string url;
  for (int i = 0; i < 600 && url.empty(); ++i) {
    auto text = ReadFile(log, 1 << 20);
    if (text.ok()) {
      auto at = text->find("http://127.0.0.1:");
      if (at != std::string::npos) {
        auto end = text->find_first_of(" \n)", at);
        if (end != std::string::npos) url = text->substr(at, end - at);
      }
    }
    if (url.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_FALSE(url.empty()) << "the image server did not start";
  auto anon = ApiClient(url, "").Get("/v1/stats");
  ASSERT_FALSE(anon.ok());
  EXPECT_EQ(anon.error().code, ErrorCode::kUnauthenticated);
  struct stat st;
  ASSERT_EQ(stat((dir + "/server.token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
  auto token = ReadTokenFile(dir + "/server.token");
  ASSERT_TRUE(token.ok());
  EXPECT_TRUE(ApiClient(url, *token).Get("/v1/stats").ok());
}

}  // namespace
}  // namespace vmgrid
