#include "common/base64.h"

#include <gtest/gtest.h>

#include <string>

#include "vmm/json_util.h"

namespace vmgrid::vmm {
namespace {

TEST(Base64Test, KnownVectors) {
  EXPECT_EQ(Base64Encode(""), "");
  EXPECT_EQ(Base64Encode("f"), "Zg==");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_EQ(Base64Encode("foo"), "Zm9v");
  EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(*Base64Decode("Zg=="), "f");
  EXPECT_EQ(*Base64Decode("Zm8="), "fo");
  EXPECT_EQ(*Base64Decode("Zm9vYmFy"), "foobar");
  EXPECT_EQ(*Base64Decode(""), "");
}

TEST(Base64Test, RoundTripsBinaryAndLargeInputs) {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  for (size_t len = 0; len <= all.size(); ++len) {
    std::string in = all.substr(0, len);
    Result<std::string> out = Base64Decode(Base64Encode(in));
    ASSERT_TRUE(out.ok()) << len;
    EXPECT_EQ(*out, in);
  }
  // Crosses the internal chunk boundaries.
  std::string big(10 * 1024 * 1024 + 7, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131);
  Result<std::string> out = Base64Decode(Base64Encode(big));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, big);
}

TEST(Base64Test, RejectsMalformedInput) {
  for (const char* bad : {"Zg=", "Zg", "Z===", "=Zg=", "Zg=a", " Zg==", "Zg==\n", "Zm9v!mFy",
                          "Zg==Zg==", "\xff\xff\xff\xff"}) {
    EXPECT_FALSE(Base64Decode(bad).ok()) << bad;
  }
}

TEST(JsonUtilTest, ParsesAndRejectsUntrustedText) {
  EXPECT_TRUE(ParseUntrustedJson(R"({"a": [1, {"b": "}]]]"}]})").ok());
  EXPECT_FALSE(ParseUntrustedJson("{").ok());
  EXPECT_FALSE(ParseUntrustedJson("").ok());
  EXPECT_FALSE(ParseUntrustedJson("{\"a\": \"\xff\"}").ok());  // invalid UTF-8
  std::string deep(100000, '[');
  deep += std::string(100000, ']');
  Result<nlohmann::json> r = ParseUntrustedJson(deep);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("nested"), std::string::npos);
  std::string ok_depth = std::string(64, '[') + std::string(64, ']');
  EXPECT_TRUE(ParseUntrustedJson(ok_depth).ok());
}

TEST(JsonUtilTest, TypedGettersNeverThrow) {
  nlohmann::json j = {{"s", "x"}, {"i", 5}, {"b", true}, {"f", 1.5}, {"big", UINT64_MAX}};
  EXPECT_EQ(GetString(j, "s"), "x");
  EXPECT_EQ(GetString(j, "i"), std::nullopt);
  EXPECT_EQ(GetInt(j, "i"), 5);
  EXPECT_EQ(GetInt(j, "f"), std::nullopt);
  EXPECT_EQ(GetInt(j, "big"), std::nullopt);
  EXPECT_EQ(GetBool(j, "b"), true);
  EXPECT_EQ(GetBool(j, "missing"), std::nullopt);
  EXPECT_EQ(GetString(nlohmann::json::array({1}), "s"), std::nullopt);
  EXPECT_EQ(FindField(nlohmann::json("str"), "s"), nullptr);
}

TEST(JsonUtilTest, DumpReportsInvalidUtf8) {
  EXPECT_FALSE(DumpJson(nlohmann::json{{"k", std::string("\xff")}}).ok());
  EXPECT_EQ(*DumpJson(nlohmann::json{{"k", 1}}), R"({"k":1})");
}

}  // namespace
}  // namespace vmgrid::vmm
