// Integration tests for the lifecycle operations against real QEMU: a
// guest-less VM (always runs) and the tiny guest image (skipped without it).
#include "vmm/machine_ops.h"

#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

#include "vmm/boot_stub.h"
#include "vmm/guest_agent_client.h"
#include "vmm/qemu_process.h"
#include "vmm/test_util.h"

namespace vmgrid {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;
using vmm::testing::GiveTo;
using vmm::testing::MsSince;
using vmm::testing::ProcessesMentioning;
using vmm::testing::RandomUuid;
using vmm::testing::Sh;
using vmm::testing::TempDir;
using vmm::testing::TestRunAs;

class MachineOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // World-traversable so the -runas user can reach images in it.
    ::chmod(dir_.path().c_str(), 0755);
  }
  void TearDown() override {
    for (pid_t pid : ProcessesMentioning(dir_.path())) ::kill(pid, SIGKILL);
  }
  std::string P(const std::string& name) const { return dir_.path() + "/" + name; }
  TempDir dir_;
};

TEST_F(MachineOpsTest, CheckpointAndResumeWithoutGuest) {
  const std::string runas = TestRunAs();
  ASSERT_EQ(Sh("qemu-img create -q -f raw " + P("base.raw") + " 64M"), 0);
  ASSERT_EQ(Sh("qemu-img create -q -f qcow2 -b " + P("base.raw") + " -F raw " + P("top.qcow2")), 0);
  ::chmod(P("top.qcow2").c_str(), 0600);
  ASSERT_TRUE(GiveTo(P("top.qcow2"), runas));
  fs::create_directories(P("ckpt"));
  ASSERT_TRUE(GiveTo(P("ckpt"), runas));  // drive-backup creates its target as the QEMU user

  QemuConfig c;
  c.vm_id = "ops-src";
  c.memory_mb = 128;
  c.accel = "tcg";
  c.disk_path = P("top.qcow2");
  c.run_dir = P("run1");
  c.runas = runas;
  auto src = QemuProcess::Launch(c, seconds(30));
  ASSERT_TRUE(src.ok()) << src.error().message;
  QmpClient& qmp = (*src)->qmp();
  EXPECT_EQ(*QueryStatus(qmp), "running");
  // No guest, no writes; an unknown device is not a zero.
  auto writes = DiskWriteCount(qmp, "disk0");
  ASSERT_TRUE(writes.ok()) << writes.error().message;
  EXPECT_EQ(*writes, 0);
  auto unknown = DiskWriteCount(qmp, "nope");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::kNotFound);

  ASSERT_TRUE(Stop(qmp).ok());
  EXPECT_EQ(*QueryStatus(qmp), "paused");
  Status st = BackupDiskTop(qmp, "disk0", P("ckpt/disk.qcow2"), /*full=*/false, seconds(60));
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(*DiskWriteCount(qmp, "disk0"), 0) << "a block job's writes are not the guest's";
  st = BackupDiskTop(qmp, "disk0", P("ckpt/disk.qcow2"), false, seconds(60));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kAlreadyExists);
  st = BackupDiskTop(qmp, "nope", P("ckpt/nope.qcow2"), false, seconds(60));
  ASSERT_FALSE(st.ok());
  EXPECT_FALSE(fs::exists(P("ckpt/nope.qcow2")));

  auto t0 = Clock::now();
  st = SaveStateToFile(qmp, P("ckpt/memory.state"), seconds(60));
  ASSERT_TRUE(st.ok()) << st.error().message;
  std::cout << "[timing] guestless save: " << MsSince(t0) << " ms, "
            << fs::file_size(P("ckpt/memory.state")) << " bytes\n";
  struct stat sb;
  ASSERT_EQ(::stat(P("ckpt/memory.state").c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0600u);
  EXPECT_EQ(sb.st_uid, ::geteuid());  // written through our fd, not by the QEMU user
  EXPECT_EQ(*QueryStatus(qmp), "postmigrate");
  // Disks are inactive after the migration: backing up now is refused clearly.
  st = BackupDiskTop(qmp, "disk0", P("ckpt/late.qcow2"), false, seconds(60));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kFailedPrecondition);
  // Saving to an impossible path fails without side effects.
  st = SaveStateToFile(qmp, P("no/such/dir/state"), seconds(10));
  ASSERT_FALSE(st.ok());
  // The source is not waiting for an incoming migration.
  st = ResumeFromFile(qmp, P("ckpt/memory.state"), seconds(10));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kFailedPrecondition);
  // A checkpoint that leaves the VM running: cont re-activates the disks.
  ASSERT_TRUE(Cont(qmp).ok());
  EXPECT_EQ(*QueryStatus(qmp), "running");
  ASSERT_TRUE((*src)->Quit(seconds(10)).ok());

  // The backup keeps the original backing file (absolute path).
  ASSERT_EQ(Sh("qemu-img info " + P("ckpt/disk.qcow2") +
               " | grep -q 'backing file: " + P("base.raw") + "'"),
            0);
  // A new overlay on the checkpoint's disk, for a QEMU that resumes it.
  auto overlay_on_checkpoint = [&](const std::string& name) {
    EXPECT_EQ(Sh("qemu-img create -q -f qcow2 -b " + P("ckpt/disk.qcow2") + " -F qcow2 " + P(name)),
              0);
    EXPECT_TRUE(GiveTo(P(name), runas));
    return P(name);
  };
  c.vm_id = "ops-dst";
  c.disk_path = overlay_on_checkpoint("top2.qcow2");
  c.run_dir = P("run2");
  c.incoming = true;
  c.vmgenid = RandomUuid();
  auto dst = QemuProcess::Launch(c, seconds(30));
  ASSERT_TRUE(dst.ok()) << dst.error().message;
  EXPECT_EQ(*QueryStatus((*dst)->qmp()), "inmigrate");
  t0 = Clock::now();
  st = ResumeFromFile((*dst)->qmp(), P("ckpt/memory.state"), seconds(60));
  ASSERT_TRUE(st.ok()) << st.error().message;
  std::cout << "[timing] guestless resume: " << MsSince(t0) << " ms\n";
  EXPECT_EQ(*QueryStatus((*dst)->qmp()), "running");
  ASSERT_TRUE((*dst)->Quit(seconds(10)).ok());

  // The same state handed to QEMU at exec (-incoming fd:3): the load starts as
  // QEMU finishes initializing, and QEMU's user, who cannot open the 0600
  // file, needs not.
  c.vm_id = "ops-dst2";
  c.disk_path = overlay_on_checkpoint("top3.qcow2");
  c.run_dir = P("run3");
  c.incoming_file = P("ckpt/memory.state");
  c.vmgenid = RandomUuid();
  t0 = Clock::now();
  auto dst2 = QemuProcess::Launch(c, seconds(30));
  ASSERT_TRUE(dst2.ok()) << dst2.error().message;
  st = FinishResumeAtStart((*dst2)->qmp(), seconds(60));
  ASSERT_TRUE(st.ok()) << st.error().message << "\n" << (*dst2)->LogTail();
  std::cout << "[timing] guestless resume, state at exec, launch included: " << MsSince(t0)
            << " ms\n";
  EXPECT_EQ(*QueryStatus((*dst2)->qmp()), "running");
  // QEMU holds the state on fd 3 and on no other.
  std::error_code ec;
  int state_fds = 0;
  for (const auto& e :
       fs::directory_iterator("/proc/" + std::to_string((*dst2)->pid()) + "/fd", ec))
    if (fs::read_symlink(e.path(), ec).string() == P("ckpt/memory.state")) {
      ++state_fds;
      EXPECT_EQ(e.path().filename().string(), std::to_string(kIncomingStateFd));
    }
  EXPECT_LE(state_fds, 1);
  ASSERT_TRUE((*dst2)->Quit(seconds(10)).ok());

  // A state file that is not there fails the launch before any QEMU starts.
  c.run_dir = P("run4");
  c.incoming_file = P("ckpt/no-such.state");
  auto missing = QemuProcess::Launch(c, seconds(30));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound) << missing.error().message;
  EXPECT_TRUE(ProcessesMentioning(P("run4")).empty());
  // incoming_file without incoming is refused.
  c.incoming = false;
  c.incoming_file = P("ckpt/memory.state");
  auto inconsistent = QemuProcess::Launch(c, seconds(30));
  ASSERT_FALSE(inconsistent.ok());
  EXPECT_EQ(inconsistent.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(MachineOpsTest, ResumeFromCorruptStateFailsWithoutHanging) {
  std::ofstream(P("bad.state")) << "this is not a migration stream";
  QemuConfig c;
  c.vm_id = "ops-bad";
  c.memory_mb = 128;
  c.accel = "tcg";
  c.run_dir = P("run");
  c.incoming = true;
  auto q = QemuProcess::Launch(c, seconds(30));
  ASSERT_TRUE(q.ok()) << q.error().message;
  Status st = ResumeFromFile((*q)->qmp(), P("bad.state"), seconds(20));
  ASSERT_FALSE(st.ok());
  // It failed on the stream, not by waiting out its deadline.
  EXPECT_NE(st.error().code, ErrorCode::kTimeout) << st.error().message;
  std::cout << "[info] corrupt state: " << st.error().message << "\n";
  EXPECT_NE((*q)->LogTail().find("Not a migration stream"), std::string::npos) << (*q)->LogTail();
  // QEMU exits right after closing the monitor.
  for (int i = 0; i < 100 && (*q)->Alive(); ++i) std::this_thread::sleep_for(milliseconds(50));
  EXPECT_FALSE((*q)->Alive());
  st = ResumeFromFile((*q)->qmp(), P("missing.state"), seconds(5));
  ASSERT_FALSE(st.ok());

  // Handed over at exec, a corrupt state fails the launch or the wait for
  // the load, never by running out the clock, and no QEMU stays.
  c.run_dir = P("run-at-exec");
  c.incoming_file = P("bad.state");
  auto at_exec = QemuProcess::Launch(c, seconds(30));
  if (at_exec.ok()) {
    st = FinishResumeAtStart((*at_exec)->qmp(), seconds(20));
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.error().code, ErrorCode::kTimeout) << st.error().message;
    for (int i = 0; i < 100 && (*at_exec)->Alive(); ++i)
      std::this_thread::sleep_for(milliseconds(50));
    EXPECT_FALSE((*at_exec)->Alive());
  } else {
    EXPECT_NE(at_exec.error().message.find("Not a migration stream"), std::string::npos)
        << at_exec.error().message;
  }
  (void)(*q)->Kill();
}

// --- the tiny guest ----------------------------------------------------------

using vmm::testing::FindTinyImage;
using vmm::testing::TinyImage;

std::string TestAccel() {
  const char* env = std::getenv("VMGRID_TEST_ACCEL");
  return env != nullptr ? env : "tcg";
}

TEST_F(MachineOpsTest, TinyGuestBootExecCheckpointResume) {
  std::string why;
  std::optional<TinyImage> img = FindTinyImage(VMGRID_DEFAULT_TINY_IMAGE, &why);
  if (!img) GTEST_SKIP() << why;
  // Image files must be readable by the QEMU user; only use -runas if they are.
  std::string runas = TestRunAs();
  if (!runas.empty() && Sh("su -s /bin/sh " + runas + " -c 'test -r " + img->rootfs +
                           " && test -r " + img->kernel + "' 2>/dev/null") != 0) {
    std::cout << "[info] image not readable by " << runas << "; running without -runas\n";
    runas.clear();
  }

  ASSERT_EQ(Sh("qemu-img create -q -f qcow2 -b " + img->rootfs + " -F raw " + P("ov1.qcow2")), 0);
  ASSERT_TRUE(GiveTo(P("ov1.qcow2"), runas));
  fs::create_directories(P("ckpt"));
  ASSERT_TRUE(GiveTo(P("ckpt"), runas));

  QemuConfig c;
  c.vm_id = "tiny-a";
  c.vcpus = 2;  // MTTCG threads must coexist with -sandbox resourcecontrol=deny
  c.memory_mb = 256;
  c.kernel = img->kernel;
  c.initrd = img->initrd;
  c.append = img->append;
  c.disk_path = P("ov1.qcow2");
  c.run_dir = P("run1");
  c.runas = runas;
  c.accel = TestAccel();
  c.vmgenid = RandomUuid();

  auto t0 = Clock::now();
  auto vm = QemuProcess::Launch(c, seconds(30));
  ASSERT_TRUE(vm.ok()) << vm.error().message;
  auto ga = GuestAgentClient::ConnectWhenReady((*vm)->qga_socket(), Clock::now() + seconds(240));
  ASSERT_TRUE(ga.ok()) << ga.error().message << "\nconsole:\n" << (*vm)->ConsoleTail(8192);
  std::cout << "[timing] boot to guest-agent ready (" << c.accel << "): " << MsSince(t0) << " ms\n";

  Result<ExecResult> r = (*ga)->Exec({"echo", "hi"}, "", seconds(60));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->out, "hi\n");
  r = (*ga)->Exec({"cat"}, "from stdin", seconds(60));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->out, "from stdin");

  const std::string marker_path = "/root/vmgrid-marker";
  const std::string marker = "marker " + RandomUuid();
  auto writes_before = DiskWriteCount((*vm)->qmp(), "disk0");
  ASSERT_TRUE(writes_before.ok()) << writes_before.error().message;
  Status st = (*ga)->WriteFile(marker_path, marker);
  ASSERT_TRUE(st.ok()) << st.error().message;
  ASSERT_TRUE((*ga)->Exec({"/bin/sync"}, "", seconds(60)).ok());
  auto writes_after = DiskWriteCount((*vm)->qmp(), "disk0");
  ASSERT_TRUE(writes_after.ok()) << writes_after.error().message;
  EXPECT_GT(*writes_after, *writes_before) << "a synced file write reaches the disk";
  Result<std::string> back = (*ga)->ReadFile(marker_path, 4096);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, marker);
  ASSERT_TRUE((*ga)->ReseedRandom().ok());
  ga->reset();  // the agent is done with this QEMU

  t0 = Clock::now();
  st = CheckpointToFiles((*vm)->qmp(), "disk0", P("ckpt/disk.qcow2"), /*full_disk=*/false,
                         P("ckpt/memory.state"), seconds(120));
  ASSERT_TRUE(st.ok()) << st.error().message;
  std::cout << "[timing] checkpoint (stop+backup top+save): " << MsSince(t0) << " ms; disk "
            << fs::file_size(P("ckpt/disk.qcow2")) << " bytes, state "
            << fs::file_size(P("ckpt/memory.state")) << " bytes\n";
  ASSERT_TRUE((*vm)->Quit(seconds(10)).ok());

  ASSERT_EQ(
      Sh("qemu-img create -q -f qcow2 -b " + P("ckpt/disk.qcow2") + " -F qcow2 " + P("ov2.qcow2")),
      0);
  ASSERT_TRUE(GiveTo(P("ov2.qcow2"), runas));
  c.vm_id = "tiny-b";
  c.disk_path = P("ov2.qcow2");
  c.run_dir = P("run2");
  c.incoming = true;
  c.incoming_file = P("ckpt/memory.state");  // as the agent resumes: the state at exec
  c.vmgenid = RandomUuid();                  // a clone must look like a new generation to the guest
  t0 = Clock::now();
  auto vm2 = QemuProcess::Launch(c, seconds(30));
  ASSERT_TRUE(vm2.ok()) << vm2.error().message;
  auto launched_ms = MsSince(t0);
  st = FinishResumeAtStart((*vm2)->qmp(), seconds(120));
  ASSERT_TRUE(st.ok()) << st.error().message;
  auto resumed_ms = MsSince(t0);
  auto ga2 = GuestAgentClient::ConnectWhenReady((*vm2)->qga_socket(), Clock::now() + seconds(60));
  ASSERT_TRUE(ga2.ok()) << ga2.error().message;
  std::cout << "[timing] resume: launch " << launched_ms << " ms, state loaded+cont " << resumed_ms
            << " ms, guest agent ready " << MsSince(t0) << " ms\n";

  back = (*ga2)->ReadFile(marker_path, 4096);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, marker);
  // The same content is on the resumed disk, not only in the page cache.
  r = (*ga2)->Exec({"sh", "-c", "sync && echo 3 > /proc/sys/vm/drop_caches && cat " + marker_path},
                   "", seconds(60));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->out, marker);
  // The new generation id alone reseeds the guest kernel's RNG at once, with
  // no help from the agent (Linux logs it; drivers/char/random.c).
  r = (*ga2)->Exec({"dmesg"}, "", seconds(60));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_NE(r->out.find("crng reseeded due to virtual machine fork"), std::string::npos)
      << "the guest did not see the vmgenid change:\n"
      << r->out;
  ASSERT_TRUE((*ga2)->ReseedRandom().ok());
  ASSERT_TRUE((*vm2)->Quit(seconds(10)).ok());

  // A restore does not run the image's kernel: the boot stub stands in for
  // it and the initrd (vmm/boot_stub.h), and with reboot_exits a reboot of
  // the guest ends QEMU instead of running the stub.
  ASSERT_TRUE(WriteBootStub(P("stub.elf")).ok());
  ASSERT_EQ(
      Sh("qemu-img create -q -f qcow2 -b " + P("ckpt/disk.qcow2") + " -F qcow2 " + P("ov3.qcow2")),
      0);
  ASSERT_TRUE(GiveTo(P("ov3.qcow2"), runas));
  c.vm_id = "tiny-c";
  c.disk_path = P("ov3.qcow2");
  c.run_dir = P("run3");
  c.kernel = P("stub.elf");
  c.initrd.clear();
  c.reboot_exits = true;
  c.vmgenid = RandomUuid();
  auto vm3 = QemuProcess::Launch(c, seconds(30));
  ASSERT_TRUE(vm3.ok()) << vm3.error().message;
  st = FinishResumeAtStart((*vm3)->qmp(), seconds(120));
  ASSERT_TRUE(st.ok()) << st.error().message;
  auto ga3 = GuestAgentClient::ConnectWhenReady((*vm3)->qga_socket(), Clock::now() + seconds(60));
  ASSERT_TRUE(ga3.ok()) << ga3.error().message;
  back = (*ga3)->ReadFile(marker_path, 4096);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, marker);
  // The guest agent may be gone before it reports reboot's exit status.
  (void)(*ga3)->Exec({"/sbin/reboot"}, "", seconds(20));
  auto shutdown = (*vm3)->qmp().WaitEvent("SHUTDOWN", seconds(60));
  ASSERT_TRUE(shutdown.ok()) << shutdown.error().message;
  EXPECT_EQ((*shutdown)["data"].value("reason", ""), "guest-reset") << shutdown->dump();
  for (auto deadline = Clock::now() + seconds(20); (*vm3)->Alive() && Clock::now() < deadline;)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE((*vm3)->Alive()) << "QEMU must exit, not reset";
}

}  // namespace
}  // namespace vmgrid
