// UserService on a fresh store: users are created with a token, checked
// names and roles, and quotas replaced whole.
#include "api/services/user_service.h"

#include "api/services/service_test_fixture.h"

namespace vmgrid {
namespace {

class UserServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    users_ = std::make_unique<UserService>(*store_);
  }
  std::unique_ptr<UserService> users_;
};

TEST_P(UserServiceTest, CreateAnswersTheUserAndATokenThatAuthenticates) {
  auto created = users_->Create("bob", "user");
  ASSERT_TRUE(created.ok()) << created.error().message;
  EXPECT_EQ((*created)["user"]["name"], "bob");
  EXPECT_EQ((*created)["user"]["role"], "user");
  auto who = store_->AuthenticateToken((*created)["token"].get<std::string>());
  ASSERT_TRUE(who.ok()) << who.error().message;
  EXPECT_EQ(who->name, "bob");
  EXPECT_EQ(users_->Create("bob", "user").error().code, ErrorCode::kAlreadyExists);
}

TEST_P(UserServiceTest, BadNamesAndRolesAreRefusedNamingWhatIsWrong) {
  auto name = users_->Create("-bob", "user");
  ASSERT_FALSE(name.ok());
  EXPECT_EQ(name.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(name.error().message.find("user name '-bob'"), std::string::npos)
      << name.error().message;
  auto role = users_->Create("carol", "host");
  ASSERT_FALSE(role.ok());
  EXPECT_EQ(role.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(role.error().message.find("'role'"), std::string::npos) << role.error().message;
  auto list = users_->List({});
  ASSERT_TRUE(list.ok()) << list.error().message;
  for (const auto& u : (*list)["users"]) EXPECT_NE(u["name"], "carol");
}

TEST_P(UserServiceTest, QuotaIsReplacedWholeAndShownWithTheUsage) {
  UserQuota q;
  q.vms = 3;
  q.image_bytes = 1 << 20;
  auto set = users_->SetQuota("alice", q);
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ((*set)["quota"]["vms"], 3);
  EXPECT_EQ((*set)["quota"]["vcpus"], 0) << "left out: unlimited";
  EXPECT_EQ((*set)["usage"]["vms"], 0);
  q = UserQuota{};
  q.vcpus = 2;
  set = users_->SetQuota("alice", q);
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ((*set)["quota"]["vms"], 0);
  EXPECT_EQ((*set)["quota"]["vcpus"], 2);
  EXPECT_EQ(users_->SetQuota("nobody", q).error().code, ErrorCode::kNotFound);
  q.vms = -1;
  EXPECT_EQ(users_->SetQuota("alice", q).error().code, ErrorCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Backends, UserServiceTest, testing_db::Backends(),
                         testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
