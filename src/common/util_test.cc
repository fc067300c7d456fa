#include "common/util.h"

#include <gtest/gtest.h>

#include <set>

namespace vmgrid {
namespace {

TEST(UtilTest, IdsAreUniqueAndPrefixed) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    std::string id = NewId("vm");
    EXPECT_EQ(id.rfind("vm-", 0), 0u);
    EXPECT_TRUE(seen.insert(id).second);
  }
}

TEST(UtilTest, Sha256KnownAnswer) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(UtilTest, UuidShape) {
  std::string u = NewUuid();
  ASSERT_EQ(u.size(), 36u);
  EXPECT_EQ(u[14], '4');
}

TEST(UtilTest, AtomicWriteReplaces) {
  std::string dir = testing::TempDir() + "/atomic";
  ASSERT_TRUE(MakeDirs(dir).ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/f", "one").ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/f", "two", 0600).ok());
  auto r = ReadFile(dir + "/f");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "two");
  EXPECT_FALSE(ReadFile(dir + "/missing").ok());
  ASSERT_TRUE(RemoveTree(dir).ok());
  EXPECT_FALSE(FileExists(dir));
}

TEST(UtilTest, ResultPropagation) {
  auto f = [](bool fail) -> Result<int> {
    if (fail) return MakeError(ErrorCode::kNotFound, "nope");
    return 7;
  };
  auto g = [&](bool fail) -> Result<int> {
    VMG_ASSIGN_OR_RETURN(int v, f(fail));
    return v + 1;
  };
  EXPECT_EQ(*g(false), 8);
  EXPECT_EQ(g(true).error().code, ErrorCode::kNotFound);
}

TEST(HexTest, RoundTripsAndRejectsWhatIsNotHex) {
  const std::string bytes("\x00\x01\xab\xff", 4);
  EXPECT_EQ(HexEncode(bytes), "0001abff");
  auto back = HexDecode("0001ABff");
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, bytes);
  EXPECT_EQ(HexDecode("")->size(), 0u);
  for (const char* bad : {"0", "0g", " 1", "+1", "1 "}) {
    auto r = HexDecode(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace vmgrid
