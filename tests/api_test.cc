// The REST API against a real controller and agent: authentication,
// authorization between users, and a table of malformed requests.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "common/tls.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

class ApiTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    grid_ = StartGrid("api", 1, {}, /*tls=*/false).release();
    ApiClient admin = grid_->Admin();
    image_ = new json(ImportTiny(admin, "tiny", false));
  }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
    delete image_;
  }
  static std::string NewUser(const std::string& name) { return NewUserToken(*grid_, name); }
  // Raw request, to send bodies no well-behaved client would.
  static httplib::Result Raw(const std::string& method, const std::string& path,
                             const std::string& body, const std::string& token) {
    auto cli_owner = NewHttpClient(grid_->url());
    auto& cli = *cli_owner;
    cli.set_read_timeout(60, 0);
    httplib::Headers h;
    if (!token.empty()) h.emplace("Authorization", "Bearer " + token);
    if (method == "POST") return cli.Post(path, h, body, "application/json");
    if (method == "PUT") return cli.Put(path, h, body, "application/octet-stream");
    if (method == "DELETE") return cli.Delete(path, h);
    return cli.Get(path, h);
  }

  static LocalGrid* grid_;
  static json* image_;
};
LocalGrid* ApiTest::grid_ = nullptr;
json* ApiTest::image_ = nullptr;

TEST_F(ApiTest, HealthAndOpenApiNeedNoToken) {
  auto h = Raw("GET", "/v1/health", "", "");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto o = Raw("GET", "/v1/openapi.json", "", "");
  ASSERT_TRUE(o);
  EXPECT_EQ(o->status, 200);
  auto doc = json::parse(o->body, nullptr, false);
  ASSERT_FALSE(doc.is_discarded());
  EXPECT_TRUE(doc.contains("openapi"));
  EXPECT_TRUE(doc["paths"].contains("/v1/vms"));
}

TEST_F(ApiTest, AdminTokenFileIsPrivate) {
  struct stat st;
  ASSERT_EQ(stat((grid_->controller_state_dir() + "/admin.token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ApiTest, UsersAreIsolated) {
  std::string alice_token = NewUser("alice");
  ApiClient a(grid_->url(), alice_token), b(grid_->url(), NewUser("bob"));
  json vm = CreateVm(a, {{"image", "tiny"}, {"name", "alices"}});
  ASSERT_EQ(vm["state"], "running") << vm.dump();
  std::string id = vm["id"];

  // Bob can neither see nor touch Alice's VM: it does not exist for him.
  EXPECT_EQ(b.Get("/v1/vms")->at("vms").size(), 0u);
  EXPECT_EQ(b.Get("/v1/vms/" + id).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(b.Get("/v1/vms/alices").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(b.Post("/v1/vms/" + id + "/stop").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(b.Post("/v1/vms/" + id + "/exec", {{"argv", {"true"}}}).error().code,
            ErrorCode::kNotFound);
  EXPECT_EQ(b.Delete("/v1/vms/" + id).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(b.Post("/v1/vms", {{"from_checkpoint", id}}).error().code, ErrorCode::kNotFound);
  // Users cannot create users or act as agents.
  EXPECT_EQ(b.Post("/v1/users", {{"name", "mallory"}}).error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(b.Post("/v1/agent/heartbeat", {{"name", "evil"}, {"url", "http://x"}}).error().code,
            ErrorCode::kPermissionDenied);
  // The agent credential cannot act as a user.
  auto agent_token = ReadFile(grid_->controller_state_dir() + "/agent.token");
  std::string tok = *agent_token;
  tok.pop_back();
  ApiClient agent(grid_->url(), tok);
  EXPECT_EQ(agent.Get("/v1/vms").error().code, ErrorCode::kPermissionDenied);
  // Users cannot reach an agent's API with their token.
  auto hosts = grid_->Admin().Get("/v1/hosts");
  std::string agent_url = (*hosts)["hosts"][0]["url"];
  ApiClient direct(agent_url, alice_token);
  EXPECT_EQ(direct.Get("/agent/v1/status").error().code, ErrorCode::kUnauthenticated);
  // Users see public host attributes but not agent endpoints.
  EXPECT_FALSE((*b.Get("/v1/hosts"))["hosts"][0].contains("url"));

  // The information service shows each user only what they may see.
  auto qa = a.Post("/v1/query", {{"sql", "SELECT id FROM vms"}});
  auto qb = b.Post("/v1/query", {{"sql", "SELECT id FROM vms"}});
  ASSERT_TRUE(qa.ok() && qb.ok());
  EXPECT_EQ((*qa)["rows"].size(), 1u);
  EXPECT_EQ((*qb)["rows"].size(), 0u);
  EXPECT_EQ(b.Post("/v1/query", {{"sql", "SELECT * FROM main.vms"}}).error().code,
            ErrorCode::kPermissionDenied);
  // A CTE named after a published view (here with a string literal) reads
  // nothing outside the views: the token hashes stay hidden.
  EXPECT_EQ(
      b.Post("/v1/query", {{"sql", "WITH 'vms' AS (SELECT * FROM main.tokens) SELECT * FROM vms"}})
          .error()
          .code,
      ErrorCode::kPermissionDenied);
  auto set = a.Post("/v1/query", {{"set",
                                   {{"from", "vms"},
                                    {"size", 1},
                                    {"same", "network"},
                                    {"sum", "memory_mb"},
                                    {"min", 1},
                                    {"max", 1024}}}});
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ((*set)["sets"].size(), 1u);

  // Alice still owns a working VM; the admin sees it too.
  EXPECT_EQ(Exec(a, id, "echo mine"), "mine\n");
  EXPECT_EQ(grid_->Admin().Get("/v1/vms/" + id)->at("owner"), "alice");
  DeleteVm(a, id);
}

TEST_F(ApiTest, MissingOrBadTokenIsRejected) {
  EXPECT_EQ(Raw("GET", "/v1/vms", "", "")->status, 401);
  EXPECT_EQ(Raw("GET", "/v1/vms", "", "vmg_nope")->status, 401);
  auto r = Raw("GET", "/v1/vms", "", "");
  auto body = json::parse(r->body, nullptr, false);
  EXPECT_EQ(body["error"]["code"], "unauthenticated");
}

struct BadRequest {
  const char* what;
  const char* method;
  const char* path;
  std::string body;
  int status;
  const char* message_part;
};

TEST_F(ApiTest, MalformedRequestsGetClear4xx) {
  std::string admin = grid_->admin_token();
  std::vector<BadRequest> cases = {
      {"malformed JSON", "POST", "/v1/vms", "{\"image\": ", 400, "malformed JSON"},
      {"not an object", "POST", "/v1/vms", "[1,2]", 400, "JSON object"},
      {"empty body", "POST", "/v1/vms", "", 400, "empty"},
      {"wrong type", "POST", "/v1/vms", R"({"image":"tiny","vcpus":"two"})", 400, "vcpus"},
      {"fractional", "POST", "/v1/vms", R"({"image":"tiny","vcpus":1.5})", 400, "vcpus"},
      {"unknown field", "POST", "/v1/vms", R"({"image":"tiny","colour":"red"})", 400, "colour"},
      {"zero memory", "POST", "/v1/vms", R"({"image":"tiny","memory_mb":0})", 400, "memory_mb"},
      {"10000 vcpus", "POST", "/v1/vms", R"({"image":"tiny","vcpus":10000})", 400, "vcpus"},
      {"negative memory", "POST", "/v1/vms", R"({"image":"tiny","memory_mb":-5})", 400,
       "memory_mb"},
      {"huge number", "POST", "/v1/vms", R"({"image":"tiny","memory_mb":1e400})", 400, ""},
      {"bad disk mode", "POST", "/v1/vms", R"({"image":"tiny","disk":"floppy"})", 400, "disk"},
      {"bad name", "POST", "/v1/vms", R"({"image":"tiny","name":"../etc"})", 400, "name"},
      {"unknown image", "POST", "/v1/vms", R"({"image":"nope"})", 404, "nope"},
      {"missing image", "POST", "/v1/vms", R"({"name":"x"})", 400, "image"},
      {"resume w/o checkpoint", "POST", "/v1/vms", R"({"image":"tiny","start":"resume"})", 409,
       "checkpoint"},
      {"unknown VM", "GET", "/v1/vms/vm-doesnotexist", "", 404, "not found"},
      {"exec no argv", "POST", "/v1/vms/vm-x/exec", R"({})", 404, ""},
      {"unknown endpoint", "GET", "/v1/nothing", "", 404, "no such endpoint"},
      {"image bad format", "POST", "/v1/images", R"({"name":"i2","format":"vmdk"})", 400, "format"},
      {"image dup name", "POST", "/v1/images", R"({"name":"tiny","format":"raw"})", 409,
       "already exists"},
      {"user bad role", "POST", "/v1/users", R"({"name":"zed","role":"root"})", 400, "role"},
      {"upload to ready image", "PUT", "/v1/images/tiny/files/disk", "xx", 409, "immutable"},
  };
  for (const auto& c : cases) {
    auto r = Raw(c.method, c.path, c.body, admin);
    ASSERT_TRUE(r) << c.what << ": no answer";
    EXPECT_EQ(r->status, c.status) << c.what << ": " << r->body;
    auto j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << c.what << ": " << r->body;
    EXPECT_NE(j["error"]["message"].get<std::string>().find(c.message_part), std::string::npos)
        << c.what << ": " << r->body;
  }
  // An oversized body is refused from its headers, before it is read.
  {
    std::string raw =
        "POST /v1/vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + admin +
        "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(64 << 20) +
        "\r\nConnection: close\r\n\r\n{";
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port =
        htons(static_cast<uint16_t>(std::stoi(grid_->url().substr(grid_->url().rfind(':') + 1))));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(write(fd, raw.data(), raw.size()), static_cast<ssize_t>(raw.size()));
    std::string answer;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) answer.append(buf, static_cast<size_t>(n));
    close(fd);
    EXPECT_EQ(answer.rfind("HTTP/1.1 413", 0), 0u) << answer;
    EXPECT_NE(answer.find("payload_too_large"), std::string::npos) << answer;
  }
  // None of them created anything.
  EXPECT_EQ(grid_->Admin().Get("/v1/vms")->at("vms").size(), 0u);
  EXPECT_EQ(grid_->Admin().Get("/v1/images")->at("images").size(), 1u);
}

TEST_F(ApiTest, FailedPlacementIsExplained) {
  auto r = grid_->Admin().Post("/v1/vms", {{"image", "tiny"}, {"memory_mb", 65536}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kResourceExhausted);
  EXPECT_NE(r.error().message.find("1 lack 65536 MB of free memory"), std::string::npos)
      << r.error().message;
  EXPECT_EQ(grid_->Admin().Get("/v1/vms")->at("vms").size(), 0u);
}

TEST_F(ApiTest, FuturesCanBeRealized) {
  ApiClient admin = grid_->Admin();
  auto f = admin.Post("/v1/query",
                      {{"sql", "SELECT id, host_id FROM futures WHERE start = 'boot' LIMIT 1"}});
  ASSERT_TRUE(f.ok()) << f.error().message;
  ASSERT_EQ((*f)["rows"].size(), 1u);
  std::string future = (*f)["rows"][0][0], host = (*f)["rows"][0][1];
  json vm = CreateVm(admin, {{"from_future", future}, {"name", "realized"}});
  EXPECT_EQ(vm["state"], "running") << vm.dump();
  EXPECT_EQ(vm["host_id"], host);
  // A future whose host cannot take it any more is refused with the reason.
  auto stale = admin.Post("/v1/vms", {{"from_future", future}, {"memory_mb", 65536}});
  ASSERT_FALSE(stale.ok());
  EXPECT_NE(stale.error().message.find("is no longer valid"), std::string::npos)
      << stale.error().message;
  EXPECT_EQ(admin.Post("/v1/vms", {{"from_future", "fut-bogus"}}).error().code,
            ErrorCode::kInvalidArgument);
  DeleteVm(admin, vm["id"]);
}

TEST_F(ApiTest, GangIsPlacedWholeOrNotAtAll) {
  ApiClient admin = grid_->Admin();
  // The paper's set: four VMs on one network, 512 MB..1 GB in total.
  auto r = admin.Post("/v1/vms", {{"image", "tiny"},
                                  {"name", "gang"},
                                  {"count", 4},
                                  {"same", "network"},
                                  {"total_memory_mb", {{"min", 512}, {"max", 1024}}}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ((*r)["vms"].size(), 4u);
  int64_t total = 0;
  for (const auto& vm : (*r)["vms"]) {
    json done = WaitVm(admin, vm["id"]);
    EXPECT_EQ(done["state"], "running") << done.dump();
    total += done["memory_mb"].get<int64_t>();
  }
  EXPECT_GE(total, 512);
  EXPECT_LE(total, 1024);
  // Eight more cannot all fit next to them (8 vCPUs per host): none is made.
  auto none =
      admin.Post("/v1/vms", {{"image", "tiny"}, {"name", "big"}, {"count", 8}, {"same", "site"}});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::kResourceExhausted);
  EXPECT_NE(none.error().message.find("none was created"), std::string::npos)
      << none.error().message;
  EXPECT_EQ(admin.Get("/v1/vms")->at("vms").size(), 4u);
  for (const auto& vm : (*r)["vms"]) DeleteVm(admin, vm["id"]);
}

TEST_F(ApiTest, BadImageFilesAreRejected) {
  ApiClient admin = grid_->Admin();
  auto img =
      admin.Post("/v1/images", {{"name", "fake"}, {"format", "qcow2"}, {"has_kernel", true}});
  ASSERT_TRUE(img.ok());
  std::string id = (*img)["id"];
  // A raw file claiming to be qcow2, and a text file claiming to be a kernel.
  std::string tmp = "/tmp/vmgrid-api-fake-" + std::to_string(getpid());
  ASSERT_TRUE(WriteFileAtomic(tmp, std::string(1 << 20, 'x')).ok());
  auto disk = admin.PutFile("/v1/images/" + id + "/files/disk", tmp);
  ASSERT_FALSE(disk.ok());
  EXPECT_EQ(disk.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(disk.error().message.find("qcow2"), std::string::npos) << disk.error().message;
  auto kernel = admin.PutFile("/v1/images/" + id + "/files/kernel", tmp);
  ASSERT_FALSE(kernel.ok());
  EXPECT_NE(kernel.error().message.find("bzImage"), std::string::npos);
  // Finalizing says what is missing.
  auto fin = admin.Post("/v1/images/" + id + "/finalize");
  ASSERT_FALSE(fin.ok());
  EXPECT_NE(fin.error().message.find("disk"), std::string::npos);
  EXPECT_TRUE(admin.Delete("/v1/images/" + id).ok());
  unlink(tmp.c_str());
}

// Issue 9 §3: the real agent reports the disk of its state directory, and
// each VM shows the disk it holds there (docs/security.md, "Disk space").
TEST_F(ApiTest, HostsReportTheirDiskAndVmsTheDiskTheyHold) {
  ApiClient admin = grid_->Admin();
  auto hosts = admin.Get("/v1/hosts");
  ASSERT_TRUE(hosts.ok()) << hosts.error().message;
  ASSERT_EQ((*hosts)["hosts"].size(), 1u);
  const json& h = (*hosts)["hosts"][0];
  EXPECT_GT(h["disk_total_bytes"].get<int64_t>(), 0) << h.dump();
  EXPECT_GT(h["disk_free_bytes"].get<int64_t>(), 0) << h.dump();
  EXPECT_LE(h["disk_free_bytes"].get<int64_t>(), h["disk_total_bytes"].get<int64_t>()) << h.dump();
  auto image = admin.Get("/v1/images/tiny");
  ASSERT_TRUE(image.ok()) << image.error().message;
  const int64_t bound = (*image)["max_clone_bytes"];
  EXPECT_GE(bound, (*image)["virtual_size_bytes"].get<int64_t>()) << image->dump();
  json vm = CreateVm(admin, {{"image", "tiny"}, {"name", "disk-holder"}, {"memory_mb", 256}});
  EXPECT_EQ(vm["disk_bytes"], bound + (int64_t{256} << 20)) << vm.dump();
  auto held = admin.Get("/v1/hosts");
  ASSERT_TRUE(held.ok());
  EXPECT_EQ((*held)["hosts"][0]["reserved_disk_bytes"], bound + (int64_t{256} << 20));
  DeleteVm(admin, vm["id"]);
  auto released = admin.Get("/v1/hosts");
  ASSERT_TRUE(released.ok());
  EXPECT_EQ((*released)["hosts"][0]["reserved_disk_bytes"], 0);
}

// Quotas (docs/security.md, "Quotas"): set by the admin with a strict body,
// shown with usage, enforced at placement and at finalize with 403 naming
// the quota and the numbers; raising the quota lets the same request in.
TEST_F(ApiTest, QuotaIsEnforcedAndTheAdminCanRaiseIt) {
  ApiClient admin = grid_->Admin();
  ApiClient carol(grid_->url(), NewUser("carol"));
  auto user_json = [&](const std::string& name) {
    auto users = admin.Get("/v1/users");
    EXPECT_TRUE(users.ok()) << users.error().message;
    json found;
    if (users.ok())
      for (const auto& u : (*users)["users"])
        if (u["name"] == name) found = u;
    return found;
  };
  // Unlimited by default, with usage shown.
  json fresh = user_json("carol");
  EXPECT_EQ(fresh["quota"]["vms"], 0) << fresh.dump();
  EXPECT_EQ(fresh["usage"]["vms"], 0) << fresh.dump();

  // Only the admin sets quotas, with a strict body.
  EXPECT_EQ(carol.Put("/v1/users/carol/quota", {{"vms", 100}}).error().code,
            ErrorCode::kPermissionDenied);
  EXPECT_EQ(admin.Put("/v1/users/carol/quota", {{"vms", -1}}).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(admin.Put("/v1/users/carol/quota", {{"vms", "2"}}).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(admin.Put("/v1/users/carol/quota", {{"cpus", 2}}).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(admin.Put("/v1/users/nobody/quota", {{"vms", 1}}).error().code, ErrorCode::kNotFound);

  auto set = admin.Put("/v1/users/carol/quota", {{"vms", 1}, {"vcpus", 1}, {"image_bytes", 1000}});
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ((*set)["quota"]["vcpus"], 1) << set->dump();
  EXPECT_EQ((*set)["quota"]["memory_mb"], 0) << set->dump();

  // Over the vCPU quota: refused before anything runs, single or gang.
  auto big = carol.Post("/v1/vms", {{"image", "tiny"}, {"name", "big"}, {"vcpus", 2}});
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(big.error().message.find("quota: carol may use 1 vCPU(s) (0 in use, 2 more asked)"),
            std::string::npos)
      << big.error().message;
  auto gang = carol.Post("/v1/vms", {{"image", "tiny"}, {"name", "gang"}, {"count", 2}});
  ASSERT_FALSE(gang.ok());
  EXPECT_EQ(gang.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(gang.error().message.find("quota: carol may run 1 VM (0 running, 2 more asked)"),
            std::string::npos)
      << gang.error().message;
  EXPECT_EQ(carol.Get("/v1/vms")->at("vms").size(), 0u);

  // Raised, the same request is placed and runs; the next VM is over the
  // VM count.
  ASSERT_TRUE(
      admin.Put("/v1/users/carol/quota", {{"vms", 1}, {"vcpus", 2}, {"image_bytes", 1000}}).ok());
  json vm = CreateVm(carol, {{"image", "tiny"}, {"name", "big"}, {"vcpus", 2}});
  EXPECT_EQ(vm["state"], "running") << vm.dump();
  auto second = carol.Post("/v1/vms", {{"image", "tiny"}, {"name", "second"}});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(second.error().message.find("quota: carol may run 1 VM (1 running)"), std::string::npos)
      << second.error().message;
  json used = user_json("carol");
  EXPECT_EQ(used["usage"]["vms"], 1) << used.dump();
  EXPECT_EQ(used["usage"]["vcpus"], 2) << used.dump();
  DeleteVm(carol, vm["id"]);

  // Image bytes bound uploads, and are checked again at finalize: an image
  // uploaded while the quota was higher stays unpublished.
  ASSERT_TRUE(admin.Put("/v1/users/carol/quota", json::object()).ok());
  TinyFiles tiny = Tiny();
  auto img = carol.Post("/v1/images", {{"name", "mine"},
                                       {"format", tiny.format},
                                       {"has_kernel", true},
                                       {"has_initrd", true},
                                       {"append", tiny.append}});
  ASSERT_TRUE(img.ok()) << img.error().message;
  const std::string img_id = (*img)["id"];
  for (auto [kind, path] :
       {std::pair{"disk", tiny.disk}, {"kernel", tiny.kernel}, {"initrd", tiny.initrd}})
    ASSERT_TRUE(carol.PutFile("/v1/images/" + img_id + "/files/" + kind, path).ok()) << kind;
  ASSERT_TRUE(admin.Put("/v1/users/carol/quota", {{"image_bytes", 1000}}).ok());
  auto upload = carol.PutFile("/v1/images/" + img_id + "/files/disk", tiny.disk);
  ASSERT_FALSE(upload.ok());
  EXPECT_EQ(upload.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(
      upload.error().message.find("quota: carol may keep 1000 bytes of images (0 in ready images)"),
      std::string::npos)
      << upload.error().message;
  // The quota is checked when the finalize operation makes the image ready.
  auto fin = AwaitOperation(carol, carol.Post("/v1/images/" + img_id + "/finalize"));
  ASSERT_FALSE(fin.ok());
  EXPECT_EQ(fin.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(
      fin.error().message.find("quota: carol may keep 1000 bytes of images (0 in ready images"),
      std::string::npos)
      << fin.error().message;
  // The image stays uploading and says why its finalize failed.
  auto after = carol.Get("/v1/images/" + img_id);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ((*after)["state"], "uploading") << after->dump();
  EXPECT_EQ((*after)["finalize"]["state"], "failed") << after->dump();
  EXPECT_NE((*after)["finalize"]["error"].get<std::string>().find("quota: carol"),
            std::string::npos)
      << after->dump();
  ASSERT_TRUE(admin.Put("/v1/users/carol/quota", json::object()).ok());  // unlimited again
  auto fin2 = AwaitOperation(carol, carol.Post("/v1/images/" + img_id + "/finalize"));
  ASSERT_TRUE(fin2.ok()) << fin2.error().message;
  EXPECT_EQ((*fin2)["state"], "ready");
  EXPECT_TRUE(carol.Delete("/v1/images/" + img_id).ok());
}

}  // namespace
}  // namespace vmgrid
