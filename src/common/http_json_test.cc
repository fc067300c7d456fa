#include "common/http_json.h"

#include <gtest/gtest.h>

namespace vmgrid {
namespace {

using nlohmann::json;

TEST(HttpJsonTest, ParseJsonObjectRejectsWhatItShould) {
  EXPECT_TRUE(ParseJsonObject("{\"a\":1}").ok());
  EXPECT_TRUE(ParseJsonObject("").ok());
  EXPECT_FALSE(ParseJsonObject("", false).ok());
  EXPECT_NE(ParseJsonObject("{\"a\":").error().message.find("malformed JSON at byte"),
            std::string::npos);
  EXPECT_NE(ParseJsonObject("[1]").error().message.find("not array"), std::string::npos);
  EXPECT_FALSE(ParseJsonObject("{\"n\":1e400}").ok());
  EXPECT_FALSE(ParseJsonObject(std::string(kMaxJsonBody + 1, ' ')).ok());
  // Deep nesting is refused before parsing (it would overflow the stack later).
  std::string deep = "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_NE(ParseJsonObject(deep).error().message.find("nested deeper"), std::string::npos);
  EXPECT_TRUE(ParseJsonObject(
                  "{\"s\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}")
                  .ok());
}

TEST(HttpJsonTest, FieldsAreStrict) {
  json j = {{"name", "x"}, {"n", 5}, {"f", 1.5}, {"b", true}, {"list", {"a", "b"}}, {"bad", {1}}};
  JsonFields f(j, {"name", "n", "f", "b", "list", "bad"});
  EXPECT_TRUE(f.CheckUnknown().ok());
  EXPECT_EQ(*f.String("name", true), "x");
  EXPECT_EQ(f.String("n", true).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(*f.String("missing", false, "def"), "def");
  EXPECT_FALSE(f.String("missing", true).ok());
  EXPECT_EQ(*f.Int("n", 0, 1, 10), 5);
  EXPECT_NE(f.Int("n", 0, 6, 10).error().message.find("between 6 and 10"), std::string::npos);
  EXPECT_NE(f.Int("f", 0, 0, 10).error().message.find("fraction"), std::string::npos);
  EXPECT_FALSE(f.Int("name", 0, 0, 10).ok());
  EXPECT_TRUE(*f.Bool("b", false));
  EXPECT_FALSE(f.Bool("n", false).ok());
  EXPECT_EQ(f.StringList("list", true, 5)->size(), 2u);
  EXPECT_FALSE(f.StringList("list", true, 1).ok());
  EXPECT_FALSE(f.StringList("bad", true, 5).ok());
  EXPECT_EQ(*f.Enum("name", {"x", "y"}, "y"), "x");
  EXPECT_NE(f.Enum("name", {"p", "q"}, "p").error().message.find("one of: p, q"),
            std::string::npos);
  JsonFields strict(j, {"name"});
  EXPECT_NE(strict.CheckUnknown().error().message.find("unknown field"), std::string::npos);
}

TEST(HttpJsonTest, HugeUnsignedIsOutOfRange) {
  json j = json::parse("{\"n\": 18446744073709551615}");
  JsonFields f(j, {"n"});
  EXPECT_FALSE(f.Int("n", 0, 0, 100).ok());
}

TEST(HttpJsonTest, Names) {
  EXPECT_TRUE(ValidateName("vm", "web-1.a_b").ok());
  EXPECT_FALSE(ValidateName("vm", "").ok());
  EXPECT_FALSE(ValidateName("vm", "-x").ok());
  EXPECT_FALSE(ValidateName("vm", "../etc").ok());
  EXPECT_FALSE(ValidateName("vm", "a b").ok());
  EXPECT_FALSE(ValidateName("vm", std::string(64, 'a')).ok());
}

TEST(HttpJsonTest, StatusMapping) {
  EXPECT_EQ(HttpStatusFor(ErrorCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusFor(ErrorCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatusFor(ErrorCode::kPermissionDenied), 403);
  EXPECT_EQ(HttpStatusFor(ErrorCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusFor(ErrorCode::kResourceExhausted), 409);
  EXPECT_EQ(HttpStatusFor(ErrorCode::kUnavailable), 503);
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
}

}  // namespace
}  // namespace vmgrid
