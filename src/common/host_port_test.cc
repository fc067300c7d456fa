#include "common/host_port.h"

#include <gtest/gtest.h>

namespace vmgrid {
namespace {

TEST(HostPortTest, SplitsAtTheLastColon) {
  auto v4 = ParseHostPort("127.0.0.1:8470");
  ASSERT_TRUE(v4.ok()) << v4.error().message;
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 8470);
  auto v6 = ParseHostPort("[::1]:0");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "[::1]");
  EXPECT_EQ(v6->port, 0);
  EXPECT_EQ(UnbracketHost(v6->host), "::1");
  EXPECT_EQ(UnbracketHost("example"), "example");
  EXPECT_EQ(ParseHostPort("h:65535")->port, 65535);
}

TEST(HostPortTest, RejectsWhatIsNotHostColonPortAndSaysWhich) {
  for (const char* bad :
       {"", "8470", ":8470", "h:", "h:65536", "h:-1", "h:12a", "h:123456", "h: 80", "h:+80"}) {
    auto r = ParseHostPort(bad, "--listen");
    ASSERT_FALSE(r.ok()) << "'" << bad << "' was accepted";
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message.find("--listen"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find(std::string("'") + bad + "'"), std::string::npos)
        << r.error().message;
    // With no name, the message starts with what is wrong.
    const std::string bare = ParseHostPort(bad).error().message;
    EXPECT_TRUE(bare.rfind("expected HOST:PORT", 0) == 0 || bare.rfind("bad port", 0) == 0) << bare;
  }
}

}  // namespace
}  // namespace vmgrid
