// VmRunner with a stand-in QEMU: what a failed launch tells the user.
#include "agent/vm_runner.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chunks/chunk_store.h"
#include "chunks/image_catalog.h"
#include "chunks/image_server.h"
#include "chunks/test_dir.h"
#include "common/subprocess.h"
#include "common/util.h"

namespace vmgrid {
namespace {

// Issue 9: errors that reach users carry no host paths and no QEMU output
// (both go to the agent's log). On the old code the create error was
// "launch failed: QEMU exited with status 1" followed by the tail of
// STATE/vms/ID/run/qemu.stderr, i.e. the host path and what QEMU printed.
TEST(VmRunnerTest, FailedLaunchTellsTheUserNoHostPathsOrQemuOutput) {
  TestDir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);  // the stand-in may run as a per-VM uid
  std::string fake_qemu = dir / "fake-qemu";
  WriteTestFile(
      fake_qemu,
      "#!/bin/sh\necho 'SECRET-QEMU-OUTPUT: could not open /etc/host-secret' >&2\nexit 1\n");
  ASSERT_EQ(::chmod(fake_qemu.c_str(), 0755), 0);
  std::string disk = dir / "disk.raw";
  WriteTestFile(disk, std::string(1 << 20, '\0'));
  ASSERT_EQ(::chmod(disk.c_str(), 0644), 0);

  VmRunnerOptions o;
  o.state_dir = dir / "state";
  o.qemu_binary = fake_qemu;
  o.accel = "tcg";
  VmRunner runner(o);
  ASSERT_TRUE(runner.Recover().ok());
  VmSpec spec;
  spec.id = "vm-fails";
  spec.name = "fails";
  spec.memory_mb = 64;
  spec.image.disk = disk;
  spec.image.format = "raw";
  auto r = runner.Create(spec);
  ASSERT_FALSE(r.ok());
  const std::string& msg = r.error().message;
  EXPECT_EQ(msg.find(dir.path()), std::string::npos) << "host path in a user-facing error: " << msg;
  EXPECT_EQ(msg.find("SECRET-QEMU-OUTPUT"), std::string::npos)
      << "QEMU output in a user-facing error: " << msg;
  EXPECT_EQ(msg.find("/etc/host-secret"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vm-fails"), std::string::npos) << "still says what failed: " << msg;
  // A failed create leaves nothing behind.
  EXPECT_FALSE(FileExists(o.state_dir + "/vms/vm-fails"));
  EXPECT_TRUE(runner.List().empty());
}

TEST(VmRunnerTest, GuestFileCopiesAreBoundedAndNeedAGuestPath) {
  TestDir dir;
  VmRunnerOptions o;
  o.state_dir = dir / "state";
  o.max_copy_bytes = 10;  // vmgrid agent --max-copy-mib, in bytes
  VmRunner runner(o);
  ASSERT_TRUE(runner.Recover().ok());
  auto big = runner.WriteGuestFile("vm-a", GuestFileWrite{"/tmp/x", 8, "abc"});
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.error().code, ErrorCode::kResourceExhausted);
  auto rel = runner.ReadGuestFile("vm-a", GuestFileRead{"etc/passwd", 0, 10});
  ASSERT_FALSE(rel.ok());
  EXPECT_EQ(rel.error().code, ErrorCode::kInvalidArgument);
  auto none = runner.ReadGuestFile("vm-a", GuestFileRead{"/etc/passwd", 0, 10});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::kNotFound);
}

TEST(VmRunnerTest, RedactForUserKeepsTheReasonOnly) {
  EXPECT_EQ(RedactForUser("corrupt chunk ab12 from image server http://10.0.0.1:8471"),
            "corrupt chunk ab12 from image server http://10.0.0.1:8471");
  EXPECT_EQ(RedactForUser("copying tiny v1 to /var/lib/vmgrid/blobs/ab.kernel: no space"),
            "copying tiny v1 to <host path>: no space");
  EXPECT_EQ(RedactForUser("open '/srv/x y': denied"), "open '<host path> y': denied");
  EXPECT_EQ(RedactForUser("launch failed: QEMU exited; qemu stderr: qemu: cannot open /etc/shadow"),
            "launch failed: QEMU exited");
  EXPECT_EQ(RedactForUser("QEMU exited during boot; see /s/vms/v/run/qemu.log: tail"),
            "QEMU exited during boot");
  EXPECT_EQ(RedactForUser("backing json:{\"driver\":\"raw\"} failed"),
            "backing <host path> failed");
}

// Issue 9 §3: the agent published a VM's checkpoint with `qemu-img convert`
// as root, following whatever backing file the checkpoint disk's header
// named. The VM's QEMU writes that disk, so a guest that owns QEMU could name
// a host file (the admin token, say) and read it back by resuming the
// published checkpoint. On the old code this publish succeeded and the
// image server got the host file's bytes.
TEST(VmRunnerTest, PublishingACheckpointNeverReadsAHostFileItsDiskNames) {
  TestDir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
  ChunkStore::Options so;
  so.sync = false;
  auto store = std::move(ChunkStore::Open(dir / "server", so)).value();
  auto catalog = std::move(ImageCatalog::Open(dir / "server")).value();
  ImageServer server(*store, *catalog, ImageServer::Options{.token = "sekrit"});
  ASSERT_TRUE(server.Start("127.0.0.1", 0).ok());
  HostImages::Options ho;
  ho.state_dir = dir / "host";
  ho.server_url = server.url();
  ho.token = "sekrit";
  auto images = HostImages::Open(ho);
  ASSERT_TRUE(images.ok()) << images.error().message;

  const std::string secret = dir / "admin.token";
  WriteTestFile(secret, std::string(1 << 20, 'S'));
  ASSERT_EQ(::chmod(secret.c_str(), 0600), 0);
  // A stopped VM on a persistent disk with a checkpoint whose disk names
  // the secret as its backing file (as a hostile QEMU can write it).
  VmRunnerOptions o;
  o.state_dir = dir / "state";
  o.images = images->get();
  const std::string vm_dir = o.state_dir + "/vms/vm-evil";
  ASSERT_TRUE(MakeDirs(vm_dir + "/checkpoint", 0700).ok());
  VmSpec spec;
  spec.id = "vm-evil";
  spec.disk_mode = "persistent";
  spec.workspace_path = dir / "ws.qcow2";
  spec.image.disk = dir / "image.raw";
  spec.image.format = "raw";
  WriteTestFile(vm_dir + "/spec.json", ToJson(spec).dump());
  WriteTestFile(vm_dir + "/state.json",
                nlohmann::json{{"state", "stopped"}, {"has_checkpoint", true}}.dump());
  WriteTestFile(vm_dir + "/checkpoint/meta.json", R"({"kind":"vm"})");
  WriteTestFile(vm_dir + "/checkpoint/memory.state", std::string(4096, 'm'));
  const std::string disk = vm_dir + "/checkpoint/disk.qcow2";
  ASSERT_TRUE(RunProcessChecked(
                  {"qemu-img", "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", disk})
                  .ok());
  ASSERT_EQ(::chmod(disk.c_str(), 0600), 0);

  VmRunner runner(o);
  ASSERT_TRUE(runner.Recover().ok());
  ASSERT_TRUE(runner.Get("vm-evil").ok()) << "the seeded VM was not recovered";
  auto published = runner.PublishCheckpoint("vm-evil");
  ASSERT_FALSE(published.ok()) << "published a checkpoint that reads " << secret << ": "
                               << ToJson(*published).dump();
  EXPECT_EQ(published.error().message.find(dir.path()), std::string::npos)
      << published.error().message;
  EXPECT_EQ(server.stats().chunks_uploaded, 0u);
}

// A QEMU that a restarted agent cannot adopt (it answers no QMP: a previous
// agent's lease fence stopped it with SIGSTOP after that agent was killed)
// is killed, so that the VM's record, stopped, is true. Found by the chaos
// test (tests/chaos_grid_test.cc): the agent used to mark the VM stopped and
// leave the QEMU stopped; when the VM then was destroyed as no longer the
// host's, the QEMU stayed forever, holding its memory, a VM of no record.
TEST(VmRunnerTest, RecoverKillsAQemuItCannotAdopt) {
  TestDir dir;
  VmRunnerOptions o;
  o.state_dir = dir / "state";
  const std::string vm_dir = o.state_dir + "/vms/vm-fenced";
  ASSERT_TRUE(MakeDirs(vm_dir + "/run", 0700).ok());
  VmSpec spec;
  spec.id = "vm-fenced";
  spec.image.disk = dir / "image.raw";
  spec.image.format = "raw";
  spec.restart = "on-host-failure";
  WriteTestFile(vm_dir + "/spec.json", ToJson(spec).dump());
  WriteTestFile(vm_dir + "/state.json", nlohmann::json{{"state", "running"}}.dump());
  // A stand-in QEMU: named like one, with the VM's -pidfile, and no monitor.
  const std::string pidfile = vm_dir + "/run/qemu.pid";
  const pid_t qemu = fork();
  ASSERT_GE(qemu, 0);
  if (qemu == 0) {
    execl("/bin/sh", "qemu-system-x86_64", "-c", "while :; do sleep 1; done", "-pidfile",
          pidfile.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  WriteTestFile(pidfile, std::to_string(qemu) + "\n");
  for (int i = 0; i < 500; ++i) {  // until it has exec'd (its command line is a QEMU's)
    auto cmdline = ReadFile("/proc/" + std::to_string(qemu) + "/cmdline", 4096);
    if (cmdline.ok() && cmdline->find("-pidfile") != std::string::npos) break;
    usleep(10'000);
  }
  ASSERT_EQ(::kill(qemu, SIGSTOP), 0);  // the fence of the agent that was killed

  VmRunner runner(o);
  ASSERT_TRUE(runner.Recover().ok());
  // Killed (a zombie until we, its parent, reap it).
  int status = 0;
  const bool killed = waitpid(qemu, &status, WNOHANG) == qemu;
  if (!killed) {
    ::kill(qemu, SIGKILL);
    waitpid(qemu, &status, 0);
  }
  EXPECT_TRUE(killed) << "the QEMU that could not be adopted still runs";
  auto vm = runner.Get("vm-fenced");
  ASSERT_TRUE(vm.ok()) << vm.error().message;
  EXPECT_EQ(vm->state, "stopped");
  EXPECT_NE(vm->error.find("killed"), std::string::npos) << vm->error;
}

}  // namespace
}  // namespace vmgrid
