#include "nbd/block_source.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "common/util.h"

namespace vmgrid::nbd {
namespace {

class FileBlockSourceTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir() + "/nbd_source_" + std::to_string(getpid());
    ASSERT_TRUE(MakeDirs(dir_).ok());
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  std::string dir_;
};

TEST_F(FileBlockSourceTest, ReadsRanges) {
  std::string data;
  for (int i = 0; i < 10000; ++i) data.push_back(static_cast<char>(i % 253));
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/f", data).ok());
  auto src = FileBlockSource::Open(dir_ + "/f");
  ASSERT_TRUE(src.ok()) << src.error().message;
  EXPECT_EQ((*src)->size(), data.size());
  std::string out(100, '\0');
  ASSERT_TRUE((*src)->Read(9900, 100, out.data()).ok());
  EXPECT_EQ(out, data.substr(9900));
  EXPECT_EQ((*src)->Read(9901, 100, out.data()).error().code, ErrorCode::kInvalidArgument);
}

TEST_F(FileBlockSourceTest, ShrunkFileIsAnErrorNotGarbage) {
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/f", std::string(8192, 'a')).ok());
  auto src = FileBlockSource::Open(dir_ + "/f");
  ASSERT_TRUE(src.ok());
  ASSERT_EQ(::truncate((dir_ + "/f").c_str(), 4096), 0);
  std::string out(4096, '\0');
  auto st = (*src)->Read(4096, 4096, out.data());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("short read"), std::string::npos);
}

TEST_F(FileBlockSourceTest, OpenErrors) {
  EXPECT_EQ(FileBlockSource::Open(dir_ + "/missing").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(FileBlockSource::Open(dir_).error().code, ErrorCode::kInvalidArgument);
}

TEST(MemoryBlockSourceTest, Bounds) {
  MemoryBlockSource src("hello");
  char out[5];
  ASSERT_TRUE(src.Read(1, 4, out).ok());
  EXPECT_EQ(std::string(out, 4), "ello");
  EXPECT_FALSE(src.Read(2, 4, out).ok());
  EXPECT_FALSE(src.Read(~0ull, 2, out).ok());
}

}  // namespace
}  // namespace vmgrid::nbd
