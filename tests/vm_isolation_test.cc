// Issue 9 §5, "each VM in its own box", against a real agent and real QEMU:
// per-VM uids, per-VM NBD sockets that serve only that VM's export, the full
// seccomp sandbox, file modes, and all of it across an agent restart.
// Runs as root (the e2e suite does); parts that need root skip otherwise.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "common/subprocess.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

std::string VmDir(const LocalGrid& grid, const std::string& id) {
  return grid.agent_state_dir(0) + "/vms/" + id;
}

int QemuPid(const LocalGrid& grid, const std::string& id) {
  auto pid = ReadFile(VmDir(grid, id) + "/run/qemu.pid");
  return pid.ok() ? std::atoi(pid->c_str()) : 0;
}

std::string StatusField(int pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field + ":", 0) == 0) return line.substr(field.size() + 1);
  return "";
}

// The effective uid of a process.
long EffectiveUid(int pid) {
  std::istringstream ids(StatusField(pid, "Uid"));
  long real = -1, effective = -1;
  ids >> real >> effective;
  return effective;
}

std::string DiskDigest(const LocalGrid& grid, const std::string& id) {
  auto spec = ReadFile(VmDir(grid, id) + "/spec.json");
  if (!spec.ok()) return "";
  return json::parse(*spec)["blobs"]["disk"]["digest"];
}

// nbdinfo run as `uid` (-1: as ourselves, root).
Result<std::string> NbdInfoAs(long uid, const std::vector<std::string>& args) {
  std::vector<std::string> argv;
  if (uid >= 0) {
    argv = {"setpriv", "--reuid=" + std::to_string(uid), "--regid=" + std::to_string(uid),
            "--clear-groups"};
  }
  argv.push_back("nbdinfo");
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcessChecked(argv, seconds(30));
}

mode_t ModeOf(const std::string& path, struct stat* out = nullptr) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 07777;
  if (out) *out = st;
  return st.st_mode & 07777;
}

TEST(VmIsolationTest, EachVmRunsInItsOwnBox) {
  if (::geteuid() != 0) GTEST_SKIP() << "per-VM uids need a root agent";
  if (!RunProcessChecked({"nbdinfo", "--version"}, seconds(10)).ok())
    GTEST_SKIP() << "nbdinfo is not installed";
  auto grid = StartGrid("isolation", 1);
  ApiClient api = grid->Admin();
  ImportTiny(api, "tiny", false);
  ImportTiny(api, "tiny-b", false);
  json a = CreateVm(api, {{"image", "tiny"}, {"name", "box-a"}});
  json b = CreateVm(api, {{"image", "tiny-b"}, {"name", "box-b"}});
  ASSERT_EQ(a["state"], "running") << a.dump();
  ASSERT_EQ(b["state"], "running") << b.dump();
  std::string ida = a["id"], idb = b["id"];
  int pa = QemuPid(*grid, ida), pb = QemuPid(*grid, idb);
  ASSERT_GT(pa, 0);
  ASSERT_GT(pb, 0);

  // One uid per VM, from the agent's range; never root.
  long ua = EffectiveUid(pa), ub = EffectiveUid(pb);
  EXPECT_GE(ua, 2000000000L);
  EXPECT_GE(ub, 2000000000L);
  EXPECT_NE(ua, ub);
  // The whole sandbox is on.
  EXPECT_NE(StatusField(pa, "Seccomp").find('2'), std::string::npos);

  // Files: the VM directory is the agent's (QEMU cannot replace spec.json),
  // entered by the VM's group only; QEMU's files are its own, 0600/0700.
  struct stat st {};
  std::string dir = VmDir(*grid, ida);
  EXPECT_EQ(ModeOf(dir, &st), 0710u);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(static_cast<long>(st.st_gid), ua);
  EXPECT_EQ(ModeOf(dir + "/spec.json", &st), 0600u);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(ModeOf(dir + "/disk.qcow2", &st), 0600u);
  EXPECT_EQ(static_cast<long>(st.st_uid), ua);
  EXPECT_EQ(ModeOf(dir + "/run", &st), 0700u);
  EXPECT_EQ(static_cast<long>(st.st_uid), ua);
  std::string sock_a = dir + "/run/nbd.sock", sock_b = VmDir(*grid, idb) + "/run/nbd.sock";
  EXPECT_EQ(ModeOf(sock_a, &st), 0600u);
  EXPECT_EQ(static_cast<long>(st.st_uid), ua);
  EXPECT_EQ(ModeOf(grid->agent_state_dir(0) + "/nbd.sock", &st), 0600u)
      << "host-wide socket: agent only";
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(ModeOf(grid->agent_state_dir(0) + "/chunks"), 0700u) << "chunk cache: agent only";

  // NBD: A's socket lists and opens A's export only.
  std::string da = DiskDigest(*grid, ida), db = DiskDigest(*grid, idb);
  ASSERT_FALSE(da.empty());
  ASSERT_FALSE(db.empty());
  auto list = NbdInfoAs(ua, {"--list", "nbd+unix:///?socket=" + sock_a});
  ASSERT_TRUE(list.ok()) << list.error().message;
  EXPECT_NE(list->find(da), std::string::npos) << *list;
  ASSERT_NE(da, db) << "two images, two exports";
  EXPECT_EQ(list->find(db), std::string::npos) << "VM A's socket lists VM B's export:\n" << *list;
  EXPECT_FALSE(NbdInfoAs(-1, {"--size", "nbd+unix:///" + db + "?socket=" + sock_a}).ok())
      << "VM A's socket opens VM B's export";
  // As A's uid: neither B's socket nor the host-wide one can be reached.
  EXPECT_FALSE(NbdInfoAs(ua, {"--list", "nbd+unix:///?socket=" + sock_b}).ok());
  EXPECT_FALSE(
      NbdInfoAs(ua, {"--list", "nbd+unix:///?socket=" + grid->agent_state_dir(0) + "/nbd.sock"})
          .ok());

  // Agent restart: QEMU keeps running as the same uid and reconnects to its
  // own socket, which the new agent re-creates.
  Exec(api, ida, "echo before > /root/f && sync");
  grid->StopAgent(0, /*hard=*/true);
  EXPECT_EQ(kill(pa, 0), 0) << "QEMU died with its agent";
  ASSERT_TRUE(grid->StartAgent(0).ok());
  ASSERT_TRUE(grid->WaitHostsUp(1, seconds(30)).ok());
  EXPECT_EQ(QemuPid(*grid, ida), pa);
  EXPECT_EQ(WaitVm(api, ida)["state"], "running");
  EXPECT_EQ(Exec(api, ida, "dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null && echo read-all"),
            "read-all\n");
  EXPECT_EQ(Exec(api, ida, "cat /root/f"), "before\n");
  EXPECT_EQ(ModeOf(sock_a, &st), 0600u);
  EXPECT_EQ(static_cast<long>(st.st_uid), ua);
  // Checkpoint and resume keep the uid and the box.
  EXPECT_EQ(Act(api, ida, "checkpoint")["state"], "suspended");
  EXPECT_EQ(ModeOf(dir + "/checkpoint/memory.state", &st), 0600u);
  EXPECT_EQ(st.st_uid, 0u) << "guest memory: the agent's only";
  EXPECT_EQ(Act(api, ida, "resume")["state"], "running");
  EXPECT_EQ(EffectiveUid(QemuPid(*grid, ida)), ua);
  EXPECT_EQ(Exec(api, ida, "cat /root/f"), "before\n");

  // Deleted: its uid returns to the pool and the next VM gets it.
  DeleteVm(api, ida);
  json c = CreateVm(api, {{"image", "tiny"}, {"name", "box-c"}});
  ASSERT_EQ(c["state"], "running") << c.dump();
  EXPECT_EQ(EffectiveUid(QemuPid(*grid, c["id"])), ua);
  DeleteVm(api, c["id"]);
  DeleteVm(api, idb);
  StopGrid(grid);
}

}  // namespace
}  // namespace vmgrid
