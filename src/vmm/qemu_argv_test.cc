#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "vmm/qemu_process.h"

namespace vmgrid {
namespace {

QemuConfig FullConfig() {
  QemuConfig c;
  c.vm_id = "vm-1";
  c.vcpus = 2;
  c.memory_mb = 512;
  c.kernel = "/img/vmlinuz";
  c.initrd = "/img/initrd.img";
  c.append = "console=ttyS0 root=/dev/vda rw";
  c.disk_path = "/vms/vm-1/disk.qcow2";
  c.run_dir = "/vms/vm-1/run";
  c.incoming = true;
  c.runas = "nobody";
  c.accel = "tcg";
  c.vmgenid = "0f8fad5b-d9cb-469f-a165-70867728950e";
  return c;
}

TEST(BuildQemuArgvTest, ExactDeviceConfiguration) {
  // clang-format off
  std::vector<std::string> want = {
      "qemu-system-x86_64",
      "-machine", "q35,accel=tcg",
      "-cpu", "max",
      "-smp", "2",
      "-m", "512",
      "-nodefaults",
      "-no-user-config",
      "-display", "none",
      "-kernel", "/img/vmlinuz",
      "-initrd", "/img/initrd.img",
      "-append", "console=ttyS0 root=/dev/vda rw",
      "-drive", "file=/vms/vm-1/disk.qcow2,if=none,id=disk0,format=qcow2,cache=writeback,discard=unmap",
      "-device", "virtio-blk-pci,drive=disk0,id=vda",
      "-device", "virtio-serial-pci,id=vser0",
      "-chardev", "socket,path=/vms/vm-1/run/qga.sock,server=on,wait=off,id=qga0",
      "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
      "-device", "virtio-rng-pci,id=rng0",
      "-device", "vmgenid,id=vmgen0,guid=0f8fad5b-d9cb-469f-a165-70867728950e",
      "-chardev", "file,id=serial0,path=/vms/vm-1/run/console.log,append=on",
      "-serial", "chardev:serial0",
      "-qmp", "unix:/vms/vm-1/run/qmp.sock,server=on,wait=off",
      "-pidfile", "/vms/vm-1/run/qemu.pid",
      "-D", "/vms/vm-1/run/qemu.log",
      "-incoming", "defer",
      // Issue 9: the full sandbox. The launcher drops privileges and detaches
      // itself, so there is no -runas and no -daemonize (both are killed by
      // elevateprivileges=deny / spawn=deny in QEMU 7.2).
      "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
      "-name", "vm-1,process=vmgrid-vm-1",
  };
  // clang-format on
  EXPECT_EQ(BuildQemuArgv(FullConfig()), want);
}

TEST(BuildQemuArgvTest, NbdBackingIsPointedAtTheVmsOwnSocket) {
  QemuConfig c = FullConfig();
  c.nbd_socket = "/vms/vm-1/run/nbd.sock";
  c.nbd_depth = 2;  // overlay -> image checkpoint disk -> NBD export
  std::vector<std::string> a = BuildQemuArgv(c);
  EXPECT_NE(std::find(a.begin(), a.end(),
                      "file=/vms/vm-1/disk.qcow2,if=none,id=disk0,format=qcow2,cache=writeback,"
                      "discard=unmap,backing.backing.file.server.path=/vms/vm-1/run/nbd.sock"),
            a.end());
  EXPECT_TRUE(ValidateQemuConfig(c).ok());
  c.nbd_socket = "/a,b";
  EXPECT_FALSE(ValidateQemuConfig(c).ok());
  c.nbd_socket.clear();
  EXPECT_FALSE(ValidateQemuConfig(c).ok()) << "depth without a socket";
  c = FullConfig();
  c.uid = 0;
  c.gid = 0;
  EXPECT_FALSE(ValidateQemuConfig(c).ok()) << "QEMU never runs as root by request";
}

TEST(BuildQemuArgvTest, KvmUsesHostCpu) {
  QemuConfig c = FullConfig();
  c.accel = "kvm";
  std::vector<std::string> a = BuildQemuArgv(c);
  EXPECT_EQ(a[2], "q35,accel=kvm");
  EXPECT_EQ(a[4], "host");
}

TEST(BuildQemuArgvTest, StartPausedAddsDashS) {
  QemuConfig c;
  c.vm_id = "x";
  c.run_dir = "/r";
  c.incoming = true;
  c.start_paused = true;
  std::vector<std::string> a = BuildQemuArgv(c);
  auto at = std::find(a.begin(), a.end(), "-incoming");
  ASSERT_NE(at, a.end());
  EXPECT_EQ(*(at + 1), "defer");
  EXPECT_NE(std::find(a.begin(), a.end(), "-S"), a.end());
}

TEST(BuildQemuArgvTest, IncomingFileLoadsFromTheStateFdWithEvents) {
  QemuConfig c;
  c.vm_id = "x";
  c.run_dir = "/r";
  c.incoming = true;
  c.incoming_file = "/ckpt/memory.state";
  std::vector<std::string> a = BuildQemuArgv(c);
  auto at = std::find(a.begin(), a.end(), "-incoming");
  ASSERT_NE(at, a.end());
  EXPECT_EQ(*(at + 1), "fd:" + std::to_string(kIncomingStateFd));
  EXPECT_EQ(std::count(a.begin(), a.end(), "-incoming"), 1);
  EXPECT_NE(std::find(a.begin(), a.end(), "migration.x-events=on"), a.end());
  // The path itself is never on the command line (QEMU gets the open fd).
  for (const std::string& arg : a) EXPECT_EQ(arg.find("memory.state"), std::string::npos) << arg;
}

TEST(BuildQemuArgvTest, MinimalConfigOmitsOptionalParts) {
  QemuConfig c;
  c.vm_id = "x";
  c.run_dir = "/r/";  // trailing slash is not doubled
  c.sandbox = false;
  std::vector<std::string> a = BuildQemuArgv(c);
  auto has = [&](const std::string& s) { return std::find(a.begin(), a.end(), s) != a.end(); };
  for (const char* absent : {"-kernel", "-initrd", "-append", "-drive", "-incoming", "-sandbox",
                             "-S", "-runas", "-daemonize", "virtio-blk-pci,drive=disk0,id=vda"}) {
    EXPECT_FALSE(has(absent)) << absent;
  }
  EXPECT_TRUE(has("q35,accel=tcg"));  // "" (auto) is resolved by Launch; pure default is tcg
  EXPECT_TRUE(has("max"));
  EXPECT_TRUE(has("vmgenid,id=vmgen0,guid=auto"));
  EXPECT_TRUE(has("unix:/r/qmp.sock,server=on,wait=off"));
  EXPECT_TRUE(has("1"));
  EXPECT_TRUE(has("256"));
  EXPECT_EQ(a.back(), "x,process=vmgrid-x");
}

TEST(BuildQemuArgvTest, KernelWithoutInitrdOrAppend) {
  QemuConfig c = FullConfig();
  c.initrd.clear();
  c.append.clear();
  std::vector<std::string> a = BuildQemuArgv(c);
  EXPECT_NE(std::find(a.begin(), a.end(), "-kernel"), a.end());
  EXPECT_EQ(std::find(a.begin(), a.end(), "-initrd"), a.end());
  EXPECT_EQ(std::find(a.begin(), a.end(), "-append"), a.end());
}

TEST(BuildQemuArgvTest, RebootExitsTurnsAGuestResetIntoShutdown) {
  QemuConfig c = FullConfig();
  std::vector<std::string> a = BuildQemuArgv(c);
  EXPECT_EQ(std::find(a.begin(), a.end(), "-action"), a.end()) << "resets in place by default";
  c.reboot_exits = true;
  a = BuildQemuArgv(c);
  auto at = std::find(a.begin(), a.end(), "-action");
  ASSERT_NE(at, a.end());
  EXPECT_EQ(*(at + 1), "reboot=shutdown");
}

TEST(BuildQemuArgvTest, UntrustedLayerLosesItsBackingFile) {
  QemuConfig c = FullConfig();
  c.disk_untrusted_depth = 2;
  auto a = BuildQemuArgv(c);
  auto it = std::find(a.begin(), a.end(), "-drive");
  ASSERT_NE(it, a.end());
  EXPECT_EQ(*(it + 1),
            "file=/vms/vm-1/disk.qcow2,if=none,id=disk0,format=qcow2,cache=writeback,discard=unmap,"
            "backing.backing.backing=");
}

TEST(BuildQemuArgvTest, DataDisksGetFixedSlotsSerialsAndTheirOwnSockets) {
  QemuConfig c = FullConfig();
  c.data_disks = {{"/vms/vm-1/data0.qcow2", "qcow2", true, "/vms/vm-1/run/data0.sock", "vmgdata-0"},
                  {"/vms/vm-1/data1.raw", "raw", false, "", "vmgdata-1"}};
  ASSERT_TRUE(ValidateQemuConfig(c).ok());
  std::vector<std::string> a = BuildQemuArgv(c);
  auto has = [&](const std::string& s) { return std::find(a.begin(), a.end(), s) != a.end(); };
  EXPECT_TRUE(
      has("file=/vms/vm-1/data0.qcow2,if=none,id=data0,format=qcow2,cache=writeback,"
          "read-only=on,backing.file.server.path=/vms/vm-1/run/data0.sock"));
  EXPECT_TRUE(has("virtio-blk-pci,drive=data0,id=vdata0,serial=vmgdata-0,addr=0x18"));
  EXPECT_TRUE(has("file=/vms/vm-1/data1.raw,if=none,id=data1,format=raw,cache=writeback"));
  EXPECT_TRUE(has("virtio-blk-pci,drive=data1,id=vdata1,serial=vmgdata-1,addr=0x19"));
  auto bad = [](auto mutate) {
    QemuConfig c = FullConfig();
    c.data_disks = {{"/d.qcow2", "qcow2", false, "", "vmgdata-0"}};
    mutate(c.data_disks);
    return !ValidateQemuConfig(c).ok();
  };
  EXPECT_FALSE(bad([](auto&) {}));
  EXPECT_TRUE(bad([](auto& d) { d[0].path = ""; }));
  EXPECT_TRUE(bad([](auto& d) { d[0].path = "/d,format=raw"; }));
  EXPECT_TRUE(bad([](auto& d) { d[0].format = "vmdk"; }));
  EXPECT_TRUE(bad([](auto& d) { d[0].serial = "a,b"; }));
  EXPECT_TRUE(bad([](auto& d) { d[0].serial = std::string(21, 'a'); }));
  EXPECT_TRUE(bad([](auto& d) { d[0].nbd_socket = "/s,x"; }));
  EXPECT_TRUE(bad([](auto& d) {
    d[0].format = "raw";
    d[0].nbd_socket = "/s";
  }));
  EXPECT_TRUE(bad([](auto& d) { d.resize(5, d[0]); }));
}

TEST(ValidateQemuConfigTest, AcceptsGoodAndRejectsBadConfigs) {
  EXPECT_TRUE(ValidateQemuConfig(FullConfig()).ok());
  auto bad = [](auto mutate) {
    QemuConfig c = FullConfig();
    mutate(c);
    Status st = ValidateQemuConfig(c);
    return !st.ok() && st.error().code == ErrorCode::kInvalidArgument;
  };
  EXPECT_TRUE(bad([](QemuConfig& c) { c.vm_id = ""; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.vm_id = "a,b"; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.vm_id = "a b"; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.vcpus = 0; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.memory_mb = 1; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.run_dir = ""; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.run_dir = "/a,b"; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.run_dir = "/" + std::string(120, 'd'); }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.disk_path = "/d,format=raw"; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.disk_format = "vmdk"; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.disk_untrusted_depth = -1; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.disk_untrusted_depth = 17; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.kernel = ""; }));  // initrd without kernel
  EXPECT_TRUE(bad([](QemuConfig& c) { c.append = "a\nb"; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.accel = "hvf"; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.vmgenid = "not-a-uuid"; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.runas = "root;rm"; }));
  EXPECT_TRUE(bad([](QemuConfig& c) { c.qemu_binary = ""; }));
  EXPECT_FALSE(bad([](QemuConfig& c) { c.vmgenid = ""; }));
  EXPECT_FALSE(bad([](QemuConfig& c) { c.accel = ""; }));
  EXPECT_FALSE(bad([](QemuConfig& c) { c.run_dir = "/" + std::string(90, 'd'); }));
}

TEST(RunPathTest, JoinsWithoutDoubleSlash) {
  EXPECT_EQ(RunPath("/a/b", "qmp.sock"), "/a/b/qmp.sock");
  EXPECT_EQ(RunPath("/a/b//", "qmp.sock"), "/a/b/qmp.sock");
  EXPECT_EQ(RunPath("/", "qmp.sock"), "/qmp.sock");
}

}  // namespace
}  // namespace vmgrid

namespace vmgrid {
namespace {

TEST(KvmDetectionTest, OnlyKvmIntelOrAmdCountsAsHardwareAssisted) {
  std::string dir = ::testing::TempDir() + "/sysmod-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir + "/kvm");
  std::filesystem::create_directories(dir + "/kvm_pvm");
  EXPECT_FALSE(KvmIsHardwareAssisted(dir));
  std::filesystem::create_directories(dir + "/kvm_amd");
  EXPECT_TRUE(KvmIsHardwareAssisted(dir));
  std::filesystem::remove_all(dir + "/kvm_amd");
  std::filesystem::create_directories(dir + "/kvm_intel");
  EXPECT_TRUE(KvmIsHardwareAssisted(dir));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace vmgrid
