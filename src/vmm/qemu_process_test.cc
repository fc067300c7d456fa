// Integration tests: start real (diskless, kernel-less) QEMU processes.
#include "vmm/qemu_process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "common/subprocess.h"
#include "vmm/machine_ops.h"
#include "vmm/test_util.h"

namespace vmgrid {
namespace {

using std::chrono::milliseconds;
using vmm::testing::ProcessesMentioning;
using vmm::testing::ProcessLive;
using vmm::testing::TempDir;

constexpr milliseconds kLaunchTimeout(30000);

QemuConfig BareConfig(const std::string& run_dir, const std::string& id) {
  QemuConfig c;
  c.vm_id = id;
  c.run_dir = run_dir;
  c.memory_mb = 128;
  c.accel = "tcg";
  return c;
}

std::string ProcStatusField(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return line.substr(field.size() + 1);
  }
  return "";
}

class QemuProcessTest : public ::testing::Test {
 protected:
  std::string RunDir() const { return dir_.path() + "/run"; }
  void TearDown() override {
    // Never leave a QEMU behind, whatever the test did.
    for (pid_t pid : ProcessesMentioning(dir_.path())) ::kill(pid, SIGKILL);
  }
  TempDir dir_;
};

TEST_F(QemuProcessTest, LaunchQueryQuit) {
  // An fd we forget to mark close-on-exec must still not reach QEMU.
  std::string marker = dir_.path() + "/leak-marker";
  int leaky = ::open(marker.c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(leaky, 0);

  auto start = std::chrono::steady_clock::now();
  auto q = QemuProcess::Launch(BareConfig(RunDir(), "bare-1"), kLaunchTimeout);
  ::close(leaky);
  ASSERT_TRUE(q.ok()) << q.error().message;
  auto launch_ms =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
  std::cout << "[timing] bare launch+qmp: " << launch_ms.count() << " ms\n";
  QemuProcess& qemu = **q;
  EXPECT_TRUE(qemu.Alive());
  EXPECT_GT(qemu.pid(), 1);
  EXPECT_EQ(qemu.qga_socket(), RunDir() + "/qga.sock");

  Result<std::string> status = QueryStatus(qemu.qmp());
  ASSERT_TRUE(status.ok()) << status.error().message;
  EXPECT_EQ(*status, "running");
  Result<nlohmann::json> name = qemu.qmp().Execute("query-name");
  ASSERT_TRUE(name.ok());
  EXPECT_EQ((*name)["name"], "bare-1");

  // Its own session and process group: signals to ours cannot reach it.
  EXPECT_NE(::getsid(qemu.pid()), ::getsid(0));
  EXPECT_NE(::getpgid(qemu.pid()), ::getpgid(0));
  std::error_code ec;
  for (const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(qemu.pid()) + "/fd", ec)) {
    EXPECT_NE(std::filesystem::read_symlink(e.path(), ec).string(), marker)
        << "fd leaked into QEMU";
  }

  pid_t pid = qemu.pid();
  ASSERT_TRUE(qemu.Quit(milliseconds(10000)).ok());
  EXPECT_FALSE(qemu.Alive());
  EXPECT_FALSE(ProcessLive(pid));
  EXPECT_FALSE(std::filesystem::exists(RunDir() + "/qemu.pid"));
  EXPECT_FALSE(std::filesystem::exists(RunDir() + "/qmp.sock"));
  // Calls after quit fail cleanly.
  EXPECT_FALSE(qemu.qmp().Execute("query-status").ok());
}

TEST_F(QemuProcessTest, SurvivesKillOfLauncherProcessGroupAndIsAdopted) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Stand-in for the agent: its own process group, launches, then idles.
    ::setpgid(0, 0);
    auto q = QemuProcess::Launch(BareConfig(RunDir(), "survivor"), kLaunchTimeout);
    pid_t pid = q.ok() ? (*q)->pid() : -1;
    (void)!::write(fds[1], &pid, sizeof(pid));
    for (;;) ::pause();
  }
  ::close(fds[1]);
  pid_t qemu_pid = -1;
  pollfd pfd{fds[0], POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 60000), 1);
  ASSERT_EQ(::read(fds[0], &qemu_pid, sizeof(qemu_pid)), static_cast<ssize_t>(sizeof(qemu_pid)));
  ::close(fds[0]);
  // Kill the whole process group of the "agent", as a supervisor would.
  ASSERT_EQ(::kill(-child, SIGKILL), 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  ASSERT_GT(qemu_pid, 1) << "launch in the child failed";

  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_TRUE(ProcessLive(qemu_pid)) << "QEMU died with its launcher";

  auto adopted = QemuProcess::Adopt(RunDir(), milliseconds(5000));
  ASSERT_TRUE(adopted.ok()) << adopted.error().message;
  EXPECT_EQ((*adopted)->pid(), qemu_pid);
  EXPECT_TRUE((*adopted)->Alive());
  Result<std::string> status = QueryStatus((*adopted)->qmp());
  ASSERT_TRUE(status.ok()) << status.error().message;
  EXPECT_EQ(*status, "running");
  ASSERT_TRUE((*adopted)->Quit(milliseconds(10000)).ok());
  EXPECT_FALSE(ProcessLive(qemu_pid));
}

TEST_F(QemuProcessTest, DestructorLeavesQemuRunning) {
  pid_t pid;
  {
    auto q = QemuProcess::Launch(BareConfig(RunDir(), "kept"), kLaunchTimeout);
    ASSERT_TRUE(q.ok()) << q.error().message;
    pid = (*q)->pid();
  }
  EXPECT_TRUE(ProcessLive(pid));
  auto adopted = QemuProcess::Adopt(RunDir(), milliseconds(5000));
  ASSERT_TRUE(adopted.ok()) << adopted.error().message;
  ASSERT_TRUE((*adopted)->Kill().ok());
  EXPECT_FALSE(ProcessLive(pid));
  EXPECT_FALSE((*adopted)->Alive());
}

// The leftovers of an interrupted create: a QEMU that answers no QMP (here
// stopped, as a lease fence leaves it) and has lost its pid file is still
// found by its command line and killed; a QEMU of another run directory is not.
TEST_F(QemuProcessTest, KillQemusForRunDirNeedsNeitherQmpNorPidFile) {
  const std::string vms = dir_.path() + "/vms";
  auto target = QemuProcess::Launch(BareConfig(vms + "/a/run", "a"), kLaunchTimeout);
  auto bystander = QemuProcess::Launch(BareConfig(vms + "/b/run", "b"), kLaunchTimeout);
  ASSERT_TRUE(target.ok()) << target.error().message;
  ASSERT_TRUE(bystander.ok()) << bystander.error().message;
  const pid_t pid = (*target)->pid(), other = (*bystander)->pid();
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  ASSERT_EQ(::unlink((vms + "/a/run/qemu.pid").c_str()), 0);
  EXPECT_FALSE(QemuProcess::Adopt(vms + "/a/run", milliseconds(500)).ok());
  EXPECT_EQ(KillQemusForRunDir(vms + "/a/run", milliseconds(5000)), 1);
  EXPECT_FALSE(ProcessLive(pid));
  EXPECT_TRUE(ProcessLive(other));
  EXPECT_EQ(KillQemusForRunDir(vms + "/a/run", milliseconds(5000)), 0) << "nothing left";
}

// A QEMU whose VM directory was removed under it is an orphan; one whose
// directory exists is not.
TEST_F(QemuProcessTest, KillOrphanQemusKillsOnlyThoseWithoutTheirDirectory) {
  const std::string vms = dir_.path() + "/vms";
  auto orphan = QemuProcess::Launch(BareConfig(vms + "/gone/run", "gone"), kLaunchTimeout);
  auto kept = QemuProcess::Launch(BareConfig(vms + "/kept/run", "kept"), kLaunchTimeout);
  ASSERT_TRUE(orphan.ok()) << orphan.error().message;
  ASSERT_TRUE(kept.ok()) << kept.error().message;
  const pid_t pid = (*orphan)->pid(), other = (*kept)->pid();
  std::filesystem::remove_all(vms + "/gone");
  EXPECT_EQ(KillOrphanQemus(vms, milliseconds(5000)), std::vector<std::string>{"gone"});
  EXPECT_FALSE(ProcessLive(pid));
  EXPECT_TRUE(ProcessLive(other));
  EXPECT_TRUE(KillOrphanQemus(vms, milliseconds(5000)).empty());
}

TEST_F(QemuProcessTest, SecondLaunchAndBusyAdoptAreRefused) {
  auto q = QemuProcess::Launch(BareConfig(RunDir(), "one"), kLaunchTimeout);
  ASSERT_TRUE(q.ok()) << q.error().message;
  auto again = QemuProcess::Launch(BareConfig(RunDir(), "two"), kLaunchTimeout);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kAlreadyExists);
  EXPECT_TRUE((*q)->Alive());
  // QEMU serves one monitor client; a second one times out instead of hanging.
  auto start = std::chrono::steady_clock::now();
  auto busy = QemuProcess::Adopt(RunDir(), milliseconds(500));
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.error().code, ErrorCode::kTimeout);
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(3000));
  ASSERT_TRUE((*q)->Quit(milliseconds(10000)).ok());
}

TEST_F(QemuProcessTest, FailedLaunchLeavesNothingBehind) {
  QemuConfig c = BareConfig(RunDir(), "broken");
  c.disk_path = dir_.path() + "/missing.qcow2";
  auto q = QemuProcess::Launch(c, kLaunchTimeout);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.error().message.find("missing.qcow2"), std::string::npos) << q.error().message;
  EXPECT_TRUE(ProcessesMentioning(dir_.path()).empty());
  EXPECT_FALSE(std::filesystem::exists(RunDir() + "/qemu.pid"));

  c = BareConfig(RunDir(), "nobinary");
  c.qemu_binary = dir_.path() + "/no-such-qemu";
  q = QemuProcess::Launch(c, kLaunchTimeout);
  ASSERT_FALSE(q.ok());

  c = BareConfig(RunDir(), "badmem");
  c.memory_mb = 1024 * 1024;  // 1 TiB: QEMU refuses to allocate it
  q = QemuProcess::Launch(c, kLaunchTimeout);
  if (q.ok()) {
    (void)(*q)->Kill();
  } else {
    EXPECT_TRUE(ProcessesMentioning(dir_.path()).empty());
  }
}

TEST_F(QemuProcessTest, AdoptRejectsMissingAndForeignProcesses) {
  auto r = QemuProcess::Adopt(RunDir(), milliseconds(500));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  std::filesystem::create_directories(RunDir());
  std::ofstream(RunDir() + "/qemu.pid") << ::getpid() << "\n";  // alive, but not QEMU
  r = QemuProcess::Adopt(RunDir(), milliseconds(500));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  std::ofstream(RunDir() + "/qemu.pid") << "garbage";
  r = QemuProcess::Adopt(RunDir(), milliseconds(500));
  ASSERT_FALSE(r.ok());
}

TEST_F(QemuProcessTest, RunAsUnprivilegedUser) {
  if (::geteuid() != 0 || ::getpwnam("nobody") == nullptr)
    GTEST_SKIP() << "needs root and user nobody";
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);  // QEMU's user must reach run_dir
  QemuConfig c = BareConfig(RunDir(), "runas");
  c.runas = "nobody";
  auto q = QemuProcess::Launch(c, kLaunchTimeout);
  ASSERT_TRUE(q.ok()) << q.error().message;
  // Launch made run_dir 0700 for QEMU's user, who creates the run files.
  struct stat st;
  ASSERT_EQ(::stat(RunDir().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(st.st_uid, ::getpwnam("nobody")->pw_uid);
  std::string uid = ProcStatusField((*q)->pid(), "Uid");
  EXPECT_NE(uid.find(std::to_string(::getpwnam("nobody")->pw_uid)), std::string::npos) << uid;
  EXPECT_NE(ProcStatusField((*q)->pid(), "Seccomp").find("2"), std::string::npos);
  Result<std::string> status = QueryStatus((*q)->qmp());
  ASSERT_TRUE(status.ok()) << status.error().message;
  ASSERT_TRUE((*q)->Quit(milliseconds(10000)).ok());
}

// Issue 9: QEMU 7.2 runs under TCG with the whole sandbox
// (elevateprivileges=deny and spawn=deny included) when the launcher drops
// privileges and detaches it; with -runas or -daemonize those two options
// kill it with SIGSYS at startup (checked below with the old command line).
TEST_F(QemuProcessTest, FullSandboxWithNumericUidAndDetachedLaunch) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);  // QEMU's user must reach run_dir
  QemuConfig c = BareConfig(RunDir(), "jailed");
  c.uid = 64123;  // no passwd entry: a per-VM uid
  c.gid = 64123;
  ASSERT_TRUE(c.sandbox);
  auto q = QemuProcess::Launch(c, kLaunchTimeout);
  ASSERT_TRUE(q.ok()) << q.error().message;
  pid_t pid = (*q)->pid();
  for (const char* field : {"Uid", "Gid"}) {
    std::istringstream ids(ProcStatusField(pid, field));  // real, effective, saved, fs
    int n = 0;
    for (long id; ids >> id; ++n) EXPECT_EQ(id, 64123) << field;
    EXPECT_EQ(n, 4) << field;
  }
  std::istringstream groups(ProcStatusField(pid, "Groups"));
  for (long g; groups >> g;) EXPECT_NE(g, 0) << "no root group";
  EXPECT_NE(ProcStatusField(pid, "Seccomp").find("2"), std::string::npos);
  EXPECT_NE(ProcStatusField(pid, "NoNewPrivs").find("1"), std::string::npos);
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(cmdline.find("elevateprivileges=deny,spawn=deny"), std::string::npos);
  EXPECT_EQ(cmdline.find("-daemonize"), std::string::npos);
  EXPECT_EQ(cmdline.find("-runas"), std::string::npos);
  // Detached: not our child, its own session.
  EXPECT_NE(std::stol(ProcStatusField(pid, "PPid")), static_cast<long>(::getpid()));
  EXPECT_NE(::getsid(pid), ::getsid(0));
  struct stat st;
  ASSERT_EQ(::stat((RunDir() + "/qemu.log").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0077, 0u) << "umask 077: QEMU's files are its own";
  Result<std::string> status = QueryStatus((*q)->qmp());
  ASSERT_TRUE(status.ok()) << status.error().message;
  ASSERT_TRUE((*q)->Quit(milliseconds(10000)).ok());

  // The fact that forces the detached launch: the same sandbox with
  // -daemonize (what Launch used before) is killed at startup.
  std::vector<std::string> argv = BuildQemuArgv(c);
  std::string sh = "'" + c.qemu_binary + "'";
  for (size_t i = 1; i < argv.size(); ++i) sh += " '" + argv[i] + "'";
  sh += " -daemonize >/dev/null 2>&1";
  int rc = std::system(sh.c_str());
  EXPECT_NE(rc, 0)
      << "QEMU 7.2 accepted -daemonize with spawn=deny; the detached launch may be unnecessary";
}

// The launcher joins QemuConfig::cgroup_dir by writing "0" (itself) to its
// cgroup.procs before exec. This host has no cgroup v2, so a plain file
// stands in for cgroupfs (VmCgroups is tested in vm_cgroup_test.cc).
TEST_F(QemuProcessTest, JoinsItsCgroupBeforeExec) {
  std::string cg = dir_.path() + "/cg";
  ASSERT_TRUE(std::filesystem::create_directories(cg));
  std::ofstream(cg + "/cgroup.procs").flush();
  QemuConfig c = BareConfig(RunDir(), "cgroup");
  c.cgroup_dir = cg;
  auto q = QemuProcess::Launch(c, kLaunchTimeout);
  ASSERT_TRUE(q.ok()) << q.error().message;
  std::ifstream in(cg + "/cgroup.procs");
  std::string written((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(written, "0");
  ASSERT_TRUE((*q)->Quit(milliseconds(10000)).ok());
  c.cgroup_dir = dir_.path() + "/no-such-cgroup";
  EXPECT_FALSE(QemuProcess::Launch(c, kLaunchTimeout).ok())
      << "a configured cgroup is not optional";
}

TEST_F(QemuProcessTest, AutoAccelLaunches) {
  QemuConfig c = BareConfig(RunDir(), "auto");
  c.accel = "";
  auto q = QemuProcess::Launch(c, kLaunchTimeout);
  ASSERT_TRUE(q.ok()) << q.error().message;
  std::ifstream in("/proc/" + std::to_string((*q)->pid()) + "/cmdline");
  std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  bool kvm = KvmUsableBy(c.qemu_binary);
  EXPECT_NE(cmdline.find(kvm ? "accel=kvm" : "accel=tcg"), std::string::npos);
  std::cout << "[info] KvmAvailable() = " << KvmAvailable() << ", KvmUsableBy() = " << kvm << "\n";
  ASSERT_TRUE((*q)->Quit(milliseconds(10000)).ok());
}

// Issue 9: a user's qcow2 can name a backing file (here a host file standing
// in for the admin token). With disk_untrusted_depth, QEMU opens that layer
// with no backing file of its own, so nothing of the host file is reachable
// from the guest's drive; without it (the code before issue 9) the host file
// is part of the drive's chain. Checked on QEMU's own view (query-block).
TEST_F(QemuProcessTest, UntrustedLayerIsOpenedWithoutItsBackingFile) {
  std::string secret = dir_.path() + "/host-secret";
  { std::ofstream(secret) << "SECRET-HOST-FILE"; }
  ASSERT_EQ(::truncate(secret.c_str(), 1 << 20), 0);
  std::string user = dir_.path() + "/user.qcow2", top = dir_.path() + "/top.qcow2";
  ASSERT_TRUE(RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", secret,
                                 "-F", "raw", user, "1M"})
                  .ok());
  ASSERT_TRUE(RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", user, "-F",
                                 "qcow2", top, "1M"})
                  .ok());
  // The image below the user's layer, as QEMU opened it ("" for none).
  auto below_user_layer = [&](int depth) -> std::string {
    QemuConfig c = BareConfig(RunDir(), "cut-" + std::to_string(depth));
    c.disk_path = top;
    c.disk_untrusted_depth = depth;
    c.incoming = true;  // devices open, guest never runs
    auto q = QemuProcess::Launch(c, kLaunchTimeout);
    EXPECT_TRUE(q.ok()) << q.error().message;
    if (!q.ok()) return "?";
    auto blocks = (*q)->qmp().Execute("query-block");
    EXPECT_TRUE(blocks.ok()) << blocks.error().message;
    (void)(*q)->Quit(milliseconds(10000));
    if (!blocks.ok()) return "?";
    for (const auto& b : *blocks) {
      if (b.value("device", "") != "disk0") continue;
      const auto& top_image = b["inserted"]["image"];
      EXPECT_NE(top_image["backing-image"].value("filename", "").find(user), std::string::npos)
          << b.dump();
      const auto& user_image = top_image["backing-image"];
      return user_image.contains("backing-image")
                 ? user_image["backing-image"].value("filename", "?")
                 : "";
    }
    ADD_FAILURE() << "no disk0 in " << blocks->dump();
    return "?";
  };
  EXPECT_EQ(below_user_layer(0), secret)
      << "control: without the cut the host file is in the chain";
  EXPECT_EQ(below_user_layer(1), "");
}

}  // namespace
}  // namespace vmgrid
