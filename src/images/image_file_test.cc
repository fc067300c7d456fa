#include "images/image_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "common/subprocess.h"
#include "common/util.h"

namespace vmgrid {
namespace {

class ImageFileTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir() + "/imgfile_" + std::to_string(getpid());
    ASSERT_TRUE(MakeDirs(dir_).ok());
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  std::string Write(const std::string& name, const std::string& data) {
    std::string p = dir_ + "/" + name;
    EXPECT_TRUE(WriteFileAtomic(p, data).ok());
    return p;
  }
  std::string dir_;
};

TEST_F(ImageFileTest, RawAndQcow2AreTellApart) {
  std::string raw = Write("disk.raw", std::string(1 << 20, '\0'));
  std::string qcow = dir_ + "/disk.qcow2";
  ASSERT_TRUE(RunProcessChecked({"qemu-img", "create", "-f", "qcow2", qcow, "8M"}).ok());
  EXPECT_EQ(*SniffDiskFormat(raw), "raw");
  EXPECT_EQ(*SniffDiskFormat(qcow), "qcow2");
  auto ok = InspectDisk(qcow, "qcow2", false);
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok->virtual_size, 8 << 20);
  EXPECT_TRUE(InspectDisk(raw, "raw", false).ok());
  auto wrong = InspectDisk(raw, "qcow2", false);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message.find("not a qcow2"), std::string::npos);
  EXPECT_FALSE(InspectDisk(qcow, "raw", false).ok());
  EXPECT_FALSE(InspectDisk(raw, "vmdk", false).ok());
  // A raw disk without a boot sector cannot be booted without a kernel.
  EXPECT_FALSE(InspectDisk(raw, "raw", true).ok());
}

TEST_F(ImageFileTest, BackingFileIsRejected) {
  std::string base = dir_ + "/base.qcow2", top = dir_ + "/top.qcow2";
  ASSERT_TRUE(RunProcessChecked({"qemu-img", "create", "-f", "qcow2", base, "8M"}).ok());
  ASSERT_TRUE(
      RunProcessChecked({"qemu-img", "create", "-f", "qcow2", "-b", base, "-F", "qcow2", top}).ok());
  auto r = InspectDisk(top, "qcow2", false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("backing file"), std::string::npos);
}

TEST_F(ImageFileTest, TruncatedQcow2IsRejected) {
  std::string qcow = dir_ + "/disk.qcow2";
  ASSERT_TRUE(RunProcessChecked({"qemu-img", "create", "-f", "qcow2", qcow, "8M"}).ok());
  auto data = ReadFile(qcow);
  std::string broken = Write("broken.qcow2", data->substr(0, 100));
  EXPECT_FALSE(InspectDisk(broken, "qcow2", false).ok());
}

TEST_F(ImageFileTest, KernelAndInitrdMagic) {
  std::string k(0x300, '\0');
  k.replace(0x202, 4, "HdrS");
  EXPECT_TRUE(CheckKernel(Write("vmlinuz", k)).ok());
  EXPECT_FALSE(CheckKernel(Write("notkernel", std::string(0x300, 'x'))).ok());
  std::string elf(0x300, '\0');
  elf.replace(0, 4, "\x7f" "ELF");
  elf[4] = 2;
  elf[18] = 62;
  EXPECT_TRUE(CheckKernel(Write("vmlinux", elf)).ok());
  elf[18] = 40;  // ARM
  EXPECT_FALSE(CheckKernel(Write("vmlinux.arm", elf)).ok());
  EXPECT_TRUE(CheckInitrd(Write("initrd.gz", "\x1f\x8b\x08\x00rest")).ok());
  EXPECT_TRUE(CheckInitrd(Write("initrd.cpio", "070701000")).ok());
  EXPECT_FALSE(CheckInitrd(Write("initrd.txt", "hello world")).ok());
  EXPECT_FALSE(CheckInitrd(Write("empty", "")).ok());
  EXPECT_FALSE(CheckKernel(dir_ + "/missing").ok());
}

}  // namespace
}  // namespace vmgrid
