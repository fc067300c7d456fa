#include "api/host_credentials.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"

namespace vmgrid {
namespace {

class HostCredentialsTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/vmgrid-hostcred-" + std::to_string(getpid());
    (void)RemoveTree(dir_);
    ASSERT_TRUE(MakeDirs(dir_, 0700).ok());
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  std::string dir_;
};

TEST_F(HostCredentialsTest, TokensAreBoundToTheirHostAndDirection) {
  auto c = HostCredentials::Open(dir_ + "/key");
  ASSERT_TRUE(c.ok()) << c.error().message;
  struct stat st {};
  ASSERT_EQ(stat((dir_ + "/key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  const std::string a = c->HostToken("host-a"), b = c->HostToken("host.b");
  EXPECT_EQ(c->VerifyHostToken(a), "host-a");
  EXPECT_EQ(c->VerifyHostToken(b), "host.b");
  // Another host's name with a's MAC, a's name with another MAC, the other
  // direction's token, truncations and junk: nobody.
  std::string forged = "vmgh.host.b" + a.substr(a.rfind('.'));
  EXPECT_FALSE(c->VerifyHostToken(forged));
  std::string flipped = a;
  flipped.back() = flipped.back() == '0' ? '1' : '0';
  EXPECT_FALSE(c->VerifyHostToken(flipped));
  EXPECT_FALSE(c->VerifyHostToken(c->AgentApiToken("host-a")));
  EXPECT_FALSE(c->VerifyHostToken(a.substr(0, a.size() - 1)));
  EXPECT_FALSE(c->VerifyHostToken("vmgh.."));
  EXPECT_FALSE(c->VerifyHostToken("vmgh."));
  EXPECT_FALSE(c->VerifyHostToken("vmgh.x"));
  EXPECT_FALSE(c->VerifyHostToken("vmgh.../etc.00"));
  EXPECT_NE(c->AgentApiToken("host-a"), c->AgentApiToken("host.b"));

  // The same key after a restart gives the same credentials; another key not.
  auto again = HostCredentials::Open(dir_ + "/key");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->VerifyHostToken(a), "host-a");
  auto other = HostCredentials::Open(dir_ + "/other-key");
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(other->VerifyHostToken(a));
}

TEST_F(HostCredentialsTest, ShortKeyIsRefused) {
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/key", "short\n", 0600).ok());
  EXPECT_FALSE(HostCredentials::Open(dir_ + "/key").ok());
}

}  // namespace
}  // namespace vmgrid
