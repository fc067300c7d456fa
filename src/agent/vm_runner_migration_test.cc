// Live migration between two VmRunners (two "hosts" with their own state
// directories on this machine) with the tiny guest and real QEMU: the driver
// operations of agent/vm_driver.h in the controller's order (clone and
// persistent disks, a guest writing its disk in a loop: no write lost), and
// the aborts.
// Skipped unless the tiny image exists (VMGRID_TINY_IMAGE overrides).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <thread>

#include "agent/vm_runner.h"
#include "common/util.h"
#include "vmm/migration.h"
#include "vmm/test_util.h"

namespace vmgrid {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;
using vmm::testing::FindTinyImage;
using vmm::testing::ProcessesMentioning;
using vmm::testing::Sh;
using vmm::testing::TempDir;
using vmm::testing::TinyImage;

class VmRunnerMigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    img_ = FindTinyImage(VMGRID_DEFAULT_TINY_IMAGE, &why);
    if (!img_) GTEST_SKIP() << why;
    ::chmod(dir_.path().c_str(), 0755);
    // Per-VM uids need the image readable by any user.
    bool readable = Sh("su -s /bin/sh nobody -c 'test -r " + img_->rootfs + " && test -r " +
                       img_->kernel + "' 2>/dev/null") == 0;
    a_ = std::make_unique<VmRunner>(Options("a", 2000000000, readable));
    b_ = std::make_unique<VmRunner>(Options("b", 2000100000, readable));
    ASSERT_TRUE(a_->Recover().ok());
    ASSERT_TRUE(b_->Recover().ok());
  }
  void TearDown() override {
    a_.reset();
    b_.reset();
    for (pid_t pid : ProcessesMentioning(dir_.path())) ::kill(pid, SIGKILL);
  }
  VmRunnerOptions Options(const std::string& host, int uid_base, bool per_vm_uids) {
    VmRunnerOptions o;
    o.state_dir = dir_.path() + "/" + host;
    o.vm_uid_base = per_vm_uids ? uid_base : 0;
    o.cgroup_root = "";
    o.accel = "tcg";
    o.ready_timeout = seconds(240);
    return o;
  }
  VmSpec Spec() const {
    VmSpec s;
    s.id = "vm-mig";
    s.name = "mig";
    s.owner_id = "usr-1";
    s.vcpus = 1;
    s.memory_mb = 256;
    s.image = {"tiny", img_->rootfs, "raw", img_->kernel, img_->initrd, img_->append};
    return s;
  }
  static std::string Out(VmRunner& r, const std::string& script) {
    auto e = r.Exec("vm-mig", {"sh", "-c", script}, "", seconds(60));
    EXPECT_TRUE(e.ok()) << e.error().message;
    return e.ok() ? e->out : "";
  }
  // A guest loop appends 1, 2, 3, ... to /root/log, syncing each line;
  // returns the last line once one is on the disk.
  static std::string StartLog(VmRunner& r) {
    Out(r,
        "(i=0; while true; do i=$((i+1)); echo $i >> /root/log; sync; sleep 0.05; done) "
        ">/dev/null 2>&1 </dev/null & echo started");
    std::string last;
    for (int i = 0; i < 600 && last.empty(); ++i) {
      last = Out(r, "tail -n 1 /root/log 2>/dev/null");
      if (last.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_FALSE(last.empty());
    return last;
  }
  // Every line from 1 on is in the log on the disk (page cache dropped), at
  // least up to `before`, and the loop still writes.
  static void ExpectLogComplete(VmRunner& r, const std::string& before) {
    std::string check = Out(r,
                            "sync; echo 3 > /proc/sys/vm/drop_caches; n=0; "
                            "while read l; do n=$((n+1)); [ \"$l\" = \"$n\" ] || "
                            "{ echo gap at $n: $l; exit 0; }; done < /root/log; echo ok $n");
    ASSERT_EQ(check.rfind("ok ", 0), 0u) << check;
    EXPECT_GE(std::stoll(check.substr(3)), std::stoll(before)) << check;
    std::string later = Out(r, "tail -n 1 /root/log");
    for (int i = 0; i < 600 && later == Out(r, "tail -n 1 /root/log"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_NE(later, Out(r, "tail -n 1 /root/log")) << "the guest's loop stopped";
  }
  static MigrationCredential Credential() {
    auto k = NewMigrationKey("vmgrid-mig-test");
    return {k->identity, k->key_hex};
  }

  TempDir dir_;
  std::optional<TinyImage> img_;
  std::unique_ptr<VmRunner> a_, b_;
};

TEST_F(VmRunnerMigrationTest, MovesARunningVmBetweenHosts) {
  auto created = a_->Create(Spec());
  ASSERT_TRUE(created.ok()) << created.error().message;
  EXPECT_EQ(Out(*a_, "echo before > /root/marker && sync && cat /root/marker"), "before\n");
  const std::string logged = StartLog(*a_);
  const std::string generation = a_->Get("vm-mig")->vmgenid;
  EXPECT_TRUE(ValidUuid(generation)) << generation;

  MigrationCredential cred = Credential();
  auto info = b_->PrepareIncoming(IncomingRequest{Spec(), cred, "127.0.0.1", false, generation});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(b_->Get("vm-mig")->state, "creating");
  // The target refuses other operations while it waits.
  EXPECT_EQ(b_->Exec("vm-mig", {"true"}, "", seconds(5)).error().code,
            ErrorCode::kFailedPrecondition);

  auto result = a_->MigrateOut("vm-mig", MigrateOutRequest{*info, cred, 0});
  ASSERT_TRUE(result.ok()) << result.error().message;
  std::cout << "[migration] VmRunner to VmRunner: total " << result->total_ms << " ms, downtime "
            << result->downtime_ms << " ms, RAM " << result->ram_bytes << " bytes, disk "
            << result->disk_bytes << " bytes\n";
  EXPECT_EQ(a_->Stop("vm-mig").error().code, ErrorCode::kFailedPrecondition);
  auto finished = b_->FinishIncoming("vm-mig");
  ASSERT_TRUE(finished.ok()) << finished.error().message;
  EXPECT_EQ(finished->state, "running");
  ASSERT_TRUE(a_->ConfirmMigrateOut("vm-mig", true).ok());

  EXPECT_TRUE(a_->List().empty());
  EXPECT_FALSE(fs::exists(dir_.path() + "/a/vms/vm-mig"));
  EXPECT_TRUE(ProcessesMentioning(dir_.path() + "/a/").empty());
  EXPECT_EQ(Out(*b_, "sync && echo 3 > /proc/sys/vm/drop_caches && cat /root/marker"), "before\n");
  ExpectLogComplete(*b_, logged);
  // Memory the migration got wrong shows as oopses and crashed processes.
  EXPECT_EQ(
      Out(*b_, "dmesg | grep -E 'BUG:|Oops|segfault|general protection|Kernel panic' || true"), "");
  // The same generation continues: the guest was moved, not cloned, so its
  // kernel saw no new vmgenid (it would reseed "due to virtual machine fork").
  EXPECT_EQ(finished->vmgenid, generation);
  EXPECT_EQ(Out(*b_, "dmesg | grep -c 'virtual machine fork' || true"), "0\n");

  // The target's agent restarts: the VM is adopted as an ordinary running VM.
  b_ = std::make_unique<VmRunner>(b_->options());
  ASSERT_TRUE(b_->Recover().ok());
  EXPECT_EQ(b_->Get("vm-mig")->state, "running");
  EXPECT_EQ(b_->Get("vm-mig")->vmgenid, generation);
  EXPECT_EQ(Out(*b_, "echo after"), "after\n");
  ASSERT_TRUE(b_->Destroy("vm-mig", true).ok());
}

TEST_F(VmRunnerMigrationTest, AbortedMigrationsLeaveTheSourceRunningAndNothingOnTheTarget) {
  ASSERT_TRUE(a_->Create(Spec()).ok());
  // 1. A wrong key: MigrateOut fails, the controller aborts the target.
  auto info = b_->PrepareIncoming(IncomingRequest{Spec(), Credential(), "127.0.0.1"});
  ASSERT_TRUE(info.ok()) << info.error().message;
  auto result = a_->MigrateOut("vm-mig", MigrateOutRequest{*info, Credential(), 0});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().message.find(dir_.path()), std::string::npos) << result.error().message;
  ASSERT_TRUE(b_->AbortIncoming("vm-mig").ok());
  EXPECT_TRUE(b_->List().empty());
  EXPECT_FALSE(fs::exists(dir_.path() + "/b/vms/vm-mig"));
  EXPECT_EQ(Out(*a_, "echo still"), "still\n");

  // 2. The target fails after the migration completed (its QEMU is killed
  // before FinishIncoming, and the source's agent restarted meanwhile): the
  // source resumes where it stopped.
  MigrationCredential cred = Credential();
  info = b_->PrepareIncoming(IncomingRequest{Spec(), cred, "127.0.0.1"});
  ASSERT_TRUE(info.ok()) << info.error().message;
  result = a_->MigrateOut("vm-mig", MigrateOutRequest{*info, cred, 0});
  ASSERT_TRUE(result.ok()) << result.error().message;
  // The source's agent restarts now: the migration had completed, so its
  // QEMU stays paused (the target could hold the VM) until confirmed.
  a_ = std::make_unique<VmRunner>(a_->options());
  ASSERT_TRUE(a_->Recover().ok());
  EXPECT_EQ(a_->Get("vm-mig")->state, "running");
  EXPECT_EQ(a_->Exec("vm-mig", {"true"}, "", seconds(5)).error().code,
            ErrorCode::kFailedPrecondition);
  EXPECT_EQ(
      Sh("grep -q '\"migration\": \"migrated-out\"' " + dir_.path() + "/a/vms/vm-mig/state.json"),
      0);
  for (pid_t pid : ProcessesMentioning(dir_.path() + "/b/")) ::kill(pid, SIGKILL);
  EXPECT_FALSE(b_->FinishIncoming("vm-mig").ok());
  EXPECT_TRUE(b_->List().empty());
  EXPECT_FALSE(fs::exists(dir_.path() + "/b/vms/vm-mig"));
  ASSERT_TRUE(a_->ConfirmMigrateOut("vm-mig", false).ok());
  EXPECT_EQ(a_->Get("vm-mig")->state, "running");
  EXPECT_EQ(Out(*a_, "echo resumed"), "resumed\n");
  // 3. The target's agent restarts before FinishIncoming (its QEMU, detached,
  // had received everything): Recover removes the half-arrived VM.
  cred = Credential();
  info = b_->PrepareIncoming(IncomingRequest{Spec(), cred, "127.0.0.1"});
  ASSERT_TRUE(info.ok()) << info.error().message;
  result = a_->MigrateOut("vm-mig", MigrateOutRequest{*info, cred, 0});
  ASSERT_TRUE(result.ok()) << result.error().message;
  b_ = std::make_unique<VmRunner>(b_->options());
  ASSERT_TRUE(b_->Recover().ok());
  EXPECT_TRUE(b_->List().empty());
  EXPECT_FALSE(fs::exists(dir_.path() + "/b/vms/vm-mig"));
  EXPECT_TRUE(ProcessesMentioning(dir_.path() + "/b/").empty());
  ASSERT_TRUE(a_->ConfirmMigrateOut("vm-mig", false).ok());
  EXPECT_EQ(Out(*a_, "echo resumed again"), "resumed again\n");

  // And a checkpoint still works on the source (no TLS left in its settings).
  auto ck = a_->Checkpoint("vm-mig", true);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  EXPECT_EQ(ck->state, "running");
  ASSERT_TRUE(a_->Destroy("vm-mig", true).ok());
}

// A persistent workspace moves whole (it has no backing file): the target
// gets an empty qcow2 of the same size and the mirror copies all of it. A
// guest loop appends to a file and syncs each line; after the move the
// target's disk (page cache dropped) holds every line, none missing.
TEST_F(VmRunnerMigrationTest, PersistentWorkspaceMovesWithNoWriteLost) {
  VmSpec spec = Spec();
  spec.disk_mode = "persistent";
  spec.workspace_path = dir_.path() + "/a-ws/u/ws.qcow2";
  ASSERT_TRUE(a_->Create(spec).ok());
  const std::string before = StartLog(*a_);

  VmSpec there = spec;  // the target host's PrepareSpec names its own workspace file
  there.workspace_path = dir_.path() + "/b-ws/u/ws.qcow2";
  MigrationCredential cred = Credential();
  auto info = b_->PrepareIncoming(IncomingRequest{there, cred, "127.0.0.1"});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(Sh("qemu-img info -U " + there.workspace_path + " | grep -q 'backing file'"), 1)
      << "a workspace has no backing file";
  auto result = a_->MigrateOut("vm-mig", MigrateOutRequest{*info, cred, 0});
  ASSERT_TRUE(result.ok()) << result.error().message;
  std::cout << "[migration] persistent workspace: total " << result->total_ms << " ms, downtime "
            << result->downtime_ms << " ms, RAM " << result->ram_bytes << " bytes, disk "
            << result->disk_bytes << " bytes\n";
  ASSERT_TRUE(b_->FinishIncoming("vm-mig").ok());
  ASSERT_TRUE(a_->ConfirmMigrateOut("vm-mig", true).ok());
  EXPECT_FALSE(fs::exists(spec.workspace_path)) << "the source's stale copy is deleted";
  EXPECT_TRUE(fs::exists(there.workspace_path));

  ExpectLogComplete(*b_, before);
  ASSERT_TRUE(b_->Destroy("vm-mig", true).ok());

  // A delete (not an abort) of a half-arrived VM takes its partial workspace too.
  auto again = a_->PrepareIncoming(IncomingRequest{spec, Credential(), "127.0.0.1"});
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_TRUE(fs::exists(spec.workspace_path));
  ASSERT_TRUE(a_->Destroy("vm-mig", /*purge_workspace=*/false).ok());
  EXPECT_FALSE(fs::exists(spec.workspace_path));
  EXPECT_TRUE(a_->List().empty());
}

}  // namespace
}  // namespace vmgrid
