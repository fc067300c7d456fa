// VmRunner with a stand-in QEMU: what a failed launch tells the user.
#include "agent/vm_runner.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "chunks/test_dir.h"
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

TEST(VmRunnerTest, RedactForUserKeepsTheReasonOnly) {
  EXPECT_EQ(RedactForUser("corrupt chunk ab12 from image server http://10.0.0.1:8471"),
            "corrupt chunk ab12 from image server http://10.0.0.1:8471");
  EXPECT_EQ(RedactForUser("copying tiny v1 to /var/lib/vmgrid/blobs/ab.kernel: no space"),
            "copying tiny v1 to <host path>: no space");
  EXPECT_EQ(RedactForUser("open '/srv/x y': denied"), "open '<host path> y': denied");
  EXPECT_EQ(RedactForUser("launch failed: QEMU exited; qemu stderr: qemu: cannot open /etc/shadow"),
            "launch failed: QEMU exited");
  EXPECT_EQ(RedactForUser("QEMU exited during boot; see /s/vms/v/run/qemu.log: tail"), "QEMU exited during boot");
  EXPECT_EQ(RedactForUser("backing json:{\"driver\":\"raw\"} failed"), "backing <host path> failed");
}

}  // namespace
}  // namespace vmgrid
