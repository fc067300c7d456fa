#include "images/image_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/subprocess.h"
#include "common/util.h"
#include "images/qcow2_header.h"

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
      RunProcessChecked({"qemu-img", "create", "-f", "qcow2", "-b", base, "-F", "qcow2", top})
          .ok());
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
  elf.replace(0, 4,
              "\x7f"
              "ELF");
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

// Issue 9 §3: `qemu-img measure` bounds what an image expands to. A
// compressed qcow2 uploads small but holds its data uncompressed once
// published or copied; a copy or overlay can grow to a full allocation.
TEST_F(ImageFileTest, MeasuresWhatTheDiskExpandsTo) {
  std::string raw = Write("data.raw", std::string(4 << 20, 'A'));
  std::string packed = dir_ + "/packed.qcow2";
  ASSERT_TRUE(RunProcessChecked({"qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
                                 "cluster_size=65536", raw, packed})
                  .ok());
  ASSERT_TRUE(RunProcessChecked({"qemu-img", "resize", "-f", "qcow2", packed, "64M"}).ok());
  auto info = InspectDisk(packed, "qcow2", false);
  ASSERT_TRUE(info.ok()) << info.error().message;
  auto file_size = ReadFile(packed, 64 << 20)->size();
  EXPECT_LT(file_size, 1u << 20) << "compressed";
  EXPECT_GE(info->expanded_size, 4 << 20) << "its data, uncompressed";
  EXPECT_LT(info->expanded_size, 8 << 20) << "not its virtual size: the rest is unallocated";
  EXPECT_GE(info->max_clone_size, 64 << 20) << "a copy can grow to its virtual size and more";
  EXPECT_LT(info->max_clone_size, 66 << 20);
  auto plain = InspectDisk(raw, "raw", false);
  ASSERT_TRUE(plain.ok());
  EXPECT_GE(plain->max_clone_size, 4 << 20);
}

// The top layer of a disk a VM's QEMU wrote (a checkpoint) is copied as
// `qemu-img convert -B` copies it, but by an unprivileged qemu-img that
// never opens the backing file the header names.
class CopyTopTest : public ImageFileTest {
 protected:
  void SetUp() override {
    ImageFileTest::SetUp();
    ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);  // the tool user reaches its files here
    base_ = dir_ + "/base.raw";
    ASSERT_TRUE(RunProcessChecked({"qemu-img", "create", "-q", "-f", "raw", base_, "4M"}).ok());
    ASSERT_TRUE(
        RunProcessChecked({"qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4M", base_}).ok());
    // Only root may read the secret, as the admin token.
    secret_ = Write("admin.token", std::string(4 << 20, 'S'));
    ASSERT_EQ(chmod(secret_.c_str(), 0600), 0);
  }
  // A qcow2 over `backing` with data at 1 MiB and a zeroed cluster at 2 MiB,
  // root's and 0600 like a finished checkpoint.
  std::string Top(const std::string& name, const std::string& backing) {
    std::string p = dir_ + "/" + name;
    std::vector<std::string> argv = {"qemu-img", "create", "-q", "-f", "qcow2"};
    if (!backing.empty()) argv.insert(argv.end(), {"-b", backing, "-F", "raw"});
    argv.insert(argv.end(), {p, "4M"});
    EXPECT_TRUE(RunProcessChecked(argv).ok());
    EXPECT_TRUE(
        RunProcessChecked({"qemu-io", "-c", "write -P 0x22 1M 64k", "-c", "write -z 2M 64k", p})
            .ok());
    EXPECT_EQ(chmod(p.c_str(), 0600), 0);
    return p;
  }
  std::string base_, secret_;
};

TEST_F(CopyTopTest, CopiesTheTopLayerOverTheGivenBacking) {
  std::string top = Top("top.qcow2", base_);
  std::string out = dir_ + "/out.qcow2";
  Status st =
      CopyUntrustedQcow2Top(top, out, base_, "raw", UntrustedToolOptions(std::chrono::minutes(1)));
  ASSERT_TRUE(st.ok()) << st.error().message;
  // The same guest-visible disk (data, zeroed cluster, backing elsewhere).
  auto cmp = RunProcess({"qemu-img", "compare", top, out});
  ASSERT_TRUE(cmp.ok());
  EXPECT_EQ(cmp->exit_code, 0) << cmp->out << cmp->err;
  EXPECT_EQ(*Qcow2BackingFile(out), base_);
  // Only the top layer was copied: the backing's data stays in the backing.
  struct stat st_out;
  ASSERT_EQ(stat(out.c_str(), &st_out), 0);
  EXPECT_LT(st_out.st_blocks * 512, 1 << 20);
  // The source is root's and 0600 again.
  struct stat st_top;
  ASSERT_EQ(stat(top.c_str(), &st_top), 0);
  EXPECT_EQ(st_top.st_mode & 07777, 0600u);
  EXPECT_EQ(st_top.st_uid, 0u);
  EXPECT_EQ(st_top.st_gid, 0u);
  EXPECT_FALSE(FileExists(out + ".zero"));
}

// A top layer over a middle layer (an image's post-boot checkpoint disk)
// over the base: the copy lies on the base and shows the same disk, the
// middle layer's data included.
TEST_F(CopyTopTest, TopAndMiddleAreCopiedOverTheBase) {
  const std::string middle = dir_ + "/middle.qcow2";
  ASSERT_TRUE(RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", "-b", base_, "-F",
                                 "raw", middle, "4M"})
                  .ok());
  ASSERT_TRUE(RunProcessChecked({"qemu-io", "-c", "write -P 0x33 3M 64k", middle}).ok());
  std::string top = dir_ + "/top-over-middle.qcow2";
  ASSERT_TRUE(RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", "-b", middle, "-F",
                                 "qcow2", top, "4M"})
                  .ok());
  ASSERT_TRUE(
      RunProcessChecked({"qemu-io", "-c", "write -P 0x22 1M 64k", "-c", "write -z 2M 64k", top})
          .ok());
  ASSERT_EQ(chmod(top.c_str(), 0600), 0);
  std::string out = dir_ + "/flat.qcow2";
  Status st = CopyUntrustedQcow2TopAndMiddle(top, middle, out, base_, "raw",
                                             UntrustedToolOptions(std::chrono::minutes(1)));
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(*Qcow2BackingFile(out), base_);
  auto cmp = RunProcess({"qemu-img", "compare", top, out});
  ASSERT_TRUE(cmp.ok());
  EXPECT_EQ(cmp->exit_code, 0) << cmp->out << cmp->err;
  // The top layer alone over the base would show the base at 3 MiB.
  std::string top_only = dir_ + "/top-only.qcow2";
  ASSERT_TRUE(CopyUntrustedQcow2Top(top, top_only, base_, "raw",
                                    UntrustedToolOptions(std::chrono::minutes(1)))
                  .ok());
  auto differs = RunProcess({"qemu-img", "compare", top, top_only});
  ASSERT_TRUE(differs.ok());
  EXPECT_NE(differs->exit_code, 0) << "the middle layer's data must be missing without it";
}

TEST_F(CopyTopTest, NeverReadsTheBackingFileTheHeaderNames) {
  // A guest that owns QEMU points its checkpoint at a host file.
  std::string evil = Top("evil.qcow2", secret_);
  std::string out = dir_ + "/out.qcow2";
  // Standalone (a persistent disk's checkpoint has no backing): refused.
  Status st =
      CopyUntrustedQcow2Top(evil, out, "", "raw", UntrustedToolOptions(std::chrono::minutes(1)));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().message.find(secret_), std::string::npos) << st.error().message;
  EXPECT_FALSE(FileExists(out));
  // Over the image's backing: the secret is not copied into the top layer.
  st =
      CopyUntrustedQcow2Top(evil, out, base_, "raw", UntrustedToolOptions(std::chrono::minutes(1)));
  ASSERT_TRUE(st.ok()) << st.error().message;
  auto bytes = ReadFile(out, 64 << 20);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->find(std::string(4096, 'S')), std::string::npos);
  // An external data file is refused like at upload.
  std::string data = dir_ + "/data.qcow2";
  ASSERT_TRUE(RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", "-o",
                                 "data_file=" + dir_ + "/data.raw", data, "4M"})
                  .ok());
  EXPECT_FALSE(
      CopyUntrustedQcow2Top(data, out, base_, "raw", UntrustedToolOptions(std::chrono::minutes(1)))
          .ok());
  EXPECT_FALSE(FileExists(out));
}

}  // namespace
}  // namespace vmgrid
