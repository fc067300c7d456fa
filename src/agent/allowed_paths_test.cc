#include "agent/allowed_paths.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "common/util.h"

namespace vmgrid {
namespace {

class AllowedPathsTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir() + "/allowed_paths_" + std::to_string(getpid());
    (void)RemoveTree(dir_);
    ASSERT_TRUE(MakeDirs(dir_ + "/state/vms/vm-1").ok());
    ASSERT_TRUE(MakeDirs(dir_ + "/images/img-1").ok());
    ASSERT_TRUE(MakeDirs(dir_ + "/stateful").ok());
    ASSERT_TRUE(WriteFileAtomic(dir_ + "/secret", "s").ok());
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  std::string dir_;
};

TEST_F(AllowedPathsTest, AcceptsPathsUnderItsRoots) {
  AllowedPaths a({dir_ + "/state", dir_ + "/images"});
  auto p = a.Resolve(dir_ + "/state/vms/vm-1/checkpoint", "checkpoint");
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(*p, std::filesystem::canonical(dir_).string() + "/state/vms/vm-1/checkpoint");
  EXPECT_TRUE(a.Resolve(dir_ + "/images/img-1/disk.qcow2", "disk").ok());
  EXPECT_TRUE(a.Resolve(dir_ + "/images/./img-1/../img-1/disk.qcow2", "disk").ok());
}

TEST_F(AllowedPathsTest, RefusesEscapes) {
  AllowedPaths a({dir_ + "/state", dir_ + "/images"});
  for (const std::string& p :
       {dir_ + "/secret", dir_ + "/state/../secret", dir_ + "/images/img-1/../../secret",
        dir_ + "/stateful/x",  // a sibling whose name starts like a root
        dir_ + "/state", std::string("/etc/passwd"), std::string("relative/path"),
        std::string("")}) {
    auto r = a.Resolve(p, "disk");
    EXPECT_FALSE(r.ok()) << p;
    if (!r.ok()) {
      EXPECT_EQ(r.error().message.find(dir_), std::string::npos) << "no host paths in errors";
    }
  }
}

TEST_F(AllowedPathsTest, FollowsSymlinksBeforeDeciding) {
  AllowedPaths a({dir_ + "/state"});
  ASSERT_EQ(symlink((dir_ + "/secret").c_str(), (dir_ + "/state/link").c_str()), 0);
  ASSERT_EQ(symlink((dir_).c_str(), (dir_ + "/state/up").c_str()), 0);
  EXPECT_FALSE(a.Resolve(dir_ + "/state/link", "file").ok());
  EXPECT_FALSE(a.Resolve(dir_ + "/state/up/secret", "file").ok());
  EXPECT_FALSE(a.Resolve(dir_ + "/state/up/images/new-file", "file").ok());
}

}  // namespace
}  // namespace vmgrid
