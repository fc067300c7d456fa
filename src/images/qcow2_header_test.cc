#include "images/qcow2_header.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "common/subprocess.h"
#include "common/util.h"
#include "images/image_file.h"

namespace vmgrid {
namespace {

constexpr uint64_t kLimit = uint64_t{1} << 40;

class Qcow2HeaderTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir() + "/qcow2hdr_" + std::to_string(getpid());
    (void)RemoveTree(dir_);
    ASSERT_TRUE(MakeDirs(dir_).ok());
    ASSERT_TRUE(WriteFileAtomic(dir_ + "/secret", std::string(1 << 20, 's'), 0600).ok());
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  std::string Create(const std::string& name, const std::vector<std::string>& opts) {
    std::vector<std::string> argv = {"qemu-img", "create", "-q", "-f", "qcow2"};
    argv.insert(argv.end(), opts.begin(), opts.end());
    argv.insert(argv.end(), {dir_ + "/" + name, "1M"});
    auto r = RunProcessChecked(argv);
    EXPECT_TRUE(r.ok()) << r.error().message;
    return dir_ + "/" + name;
  }
  std::string dir_;
};

TEST_F(Qcow2HeaderTest, PlainImagesPass) {
  for (const auto& [name, opts] : std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"v3.qcow2", {}},
           {"v2.qcow2", {"-o", "compat=0.10"}},
           {"l2.qcow2", {"-o", "extended_l2=on"}}}) {
    auto h = CheckUntrustedQcow2File(Create(name, opts), kLimit);
    ASSERT_TRUE(h.ok()) << name << ": " << h.error().message;
    EXPECT_EQ(h->virtual_size, 1u << 20);
    EXPECT_TRUE(h->backing_file.empty());
  }
}

TEST_F(Qcow2HeaderTest, BackingFileIsRefusedWithoutOpeningIt) {
  std::string p = Create("backed.qcow2", {"-u", "-b", dir_ + "/secret", "-F", "raw"});
  auto b = Qcow2BackingFile(p);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, dir_ + "/secret");
  auto h = CheckUntrustedQcow2File(p, kLimit);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.error().message.find("backing file"), std::string::npos) << h.error().message;
  EXPECT_EQ(h.error().message.find(dir_), std::string::npos) << "no host paths in messages";
  // Also when the backing file does not exist (qemu-img info would fail
  // differently) or is relative.
  EXPECT_FALSE(
      CheckUntrustedQcow2File(Create("b2.qcow2", {"-u", "-b", "nowhere", "-F", "raw"}), kLimit)
          .ok());
  auto full = InspectDisk(p, "qcow2", false);
  ASSERT_FALSE(full.ok());
  EXPECT_NE(full.error().message.find("backing file"), std::string::npos) << full.error().message;
}

TEST_F(Qcow2HeaderTest, ExternalDataFileIsRefused) {
  std::string p = Create("ext.qcow2", {"-o", "data_file=" + dir_ + "/ext.raw"});
  auto h = CheckUntrustedQcow2File(p, kLimit);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.error().message.find("data file"), std::string::npos) << h.error().message;
  EXPECT_FALSE(InspectDisk(p, "qcow2", false).ok());
}

TEST_F(Qcow2HeaderTest, EncryptionCorruptionAndUnknownFeaturesAreRefused) {
  auto data = ReadFile(Create("x.qcow2", {}), 1 << 20);
  ASSERT_TRUE(data.ok());
  auto parse = [](std::string s) { return ParseQcow2Header(s); };
  auto check = [&](std::string s) {
    auto h = parse(s);
    return h.ok() ? CheckUntrustedQcow2(*h, kLimit) : Status(h.error());
  };
  EXPECT_TRUE(check(*data).ok());
  std::string enc = *data;
  enc[35] = 1;  // crypt_method = AES
  EXPECT_FALSE(check(enc).ok());
  std::string corrupt = *data;
  corrupt[79] |= 2;  // incompatible: corrupt
  EXPECT_FALSE(check(corrupt).ok());
  std::string unknown = *data;
  unknown[78] |= 1;  // incompatible bit 8: unknown
  EXPECT_FALSE(check(unknown).ok());
  std::string ext_bit = *data;
  ext_bit[79] |= 4;  // incompatible: external data file
  EXPECT_FALSE(check(ext_bit).ok());
  std::string huge = *data;
  huge[24] = 0x7f;  // virtual size over the limit
  EXPECT_FALSE(check(huge).ok());
  // Truncations never read past the buffer (and fail or pass cleanly).
  for (size_t n = 0; n < 512; ++n) (void)parse(data->substr(0, n));
  EXPECT_FALSE(parse(std::string("QFI\xfb", 4)).ok());
  EXPECT_FALSE(
      parse("not a qcow2 at all, just some text that is long enough to be a header ......").ok());
}

TEST_F(Qcow2HeaderTest, InspectDiskFdValidatesTheOpenFileNotThePath) {
  std::string p = Create("fd.qcow2", {});
  int fd = open(p.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  // Whatever the path names now, the fd's file is what is checked.
  ASSERT_EQ(unlink(p.c_str()), 0);
  ASSERT_TRUE(RunProcessChecked({"cp", dir_ + "/secret", p}).ok());
  auto info = InspectDiskFd(fd, "qcow2", false);
  close(fd);
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->virtual_size, 1 << 20);
}

TEST_F(Qcow2HeaderTest, ConvertToRawCopiesTheGuestBytesAndRefusesBackedImages) {
  std::string p = Create("data.qcow2", {});
  ASSERT_TRUE(RunProcessChecked({"qemu-io", "-c", "write -P 0x61 0 4k", p}).ok());
  std::string raw = dir_ + "/out.raw";
  Status st = ConvertUntrustedQcow2ToRaw(p, raw, std::chrono::seconds(60));
  ASSERT_TRUE(st.ok()) << st.error().message;
  auto bytes = ReadFile(raw, 2 << 20);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->size(), 1u << 20);
  EXPECT_EQ(bytes->substr(0, 4), "aaaa");
  EXPECT_EQ((*bytes)[4096], '\0');
  std::string backed = Create("backed2.qcow2", {"-u", "-b", dir_ + "/secret", "-F", "raw"});
  EXPECT_FALSE(ConvertUntrustedQcow2ToRaw(backed, raw, std::chrono::seconds(60)).ok());
  EXPECT_FALSE(FileExists(raw));
}

TEST(UntrustedToolTest, RunsUnprivilegedWhenWeAreRoot) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to drop privileges";
  auto out = RunProcess({"id", "-u"}, UntrustedToolOptions(std::chrono::seconds(10)));
  ASSERT_TRUE(out.ok());
  ASSERT_EQ(out->exit_code, 0) << out->err;
  EXPECT_NE(out->out, "0\n");
  auto groups = RunProcess({"id", "-G"}, UntrustedToolOptions(std::chrono::seconds(10)));
  ASSERT_TRUE(groups.ok());
  EXPECT_EQ(groups->out.find("0 "), std::string::npos) << groups->out;
}

}  // namespace
}  // namespace vmgrid
