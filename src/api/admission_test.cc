#include "api/admission.h"

#include <gtest/gtest.h>

namespace vmgrid {
namespace {

TEST(AdmissionTest, BoundsEachUserAndReleasesWithTheSlot) {
  Admission a("execs", 2, 0, 5);
  auto s1 = a.Acquire("alice");
  auto s2 = a.Acquire("alice");
  ASSERT_TRUE(s1.ok() && s2.ok());
  auto s3 = a.Acquire("alice");
  ASSERT_FALSE(s3.ok());
  EXPECT_EQ(s3.error().code, ErrorCode::kTooManyRequests);
  EXPECT_NE(s3.error().message.find("at most 2 per user"), std::string::npos) << s3.error().message;
  EXPECT_TRUE(a.Acquire("bob").ok());  // bob's own bound
  s1->reset();
  EXPECT_EQ(a.held("alice"), 1);
  EXPECT_TRUE(a.Acquire("alice").ok());
}

TEST(AdmissionTest, TotalBoundsAllUsersAndTrustedOnlyByIt) {
  Admission a("requests", 1, 3, 1);
  auto x = a.Acquire("admin", 2, true);  // trusted: over its per-user bound
  ASSERT_TRUE(x.ok());
  auto y = a.Acquire("alice");
  ASSERT_TRUE(y.ok());
  auto z = a.Acquire("bob");
  ASSERT_FALSE(z.ok());
  EXPECT_NE(z.error().message.find("busy"), std::string::npos) << z.error().message;
  EXPECT_FALSE(a.Acquire("admin", 1, true).ok());
  // A gang of n takes n units at once, or none.
  x->reset();
  EXPECT_FALSE(a.Acquire("carol", 2).ok());
  EXPECT_EQ(a.held("carol"), 0);
}

}  // namespace
}  // namespace vmgrid
