// VmCgroups against a directory laid out like cgroupfs (a real cgroup v2
// hierarchy is not required, and this host has a v1/hybrid one).
#include "vmm/vm_cgroup.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <fstream>

#include "common/util.h"

namespace vmgrid {
namespace {

class FakeCgroupRoot {
 public:
  FakeCgroupRoot() {
    std::string t = "/tmp/vmgrid-cgroup-XXXXXX";
    if (::mkdtemp(t.data()) == nullptr) ADD_FAILURE() << "mkdtemp";
    path_ = t;
  }
  ~FakeCgroupRoot() { (void)RemoveTree(path_); }
  const std::string& path() const { return path_; }
  void Write(const std::string& rel, const std::string& text) const {
    std::ofstream(path_ + "/" + rel) << text;
  }
  std::string Read(const std::string& rel) const {
    auto r = ReadFile(path_ + "/" + rel, 4096);
    return r.ok() ? *r : "<missing>";
  }

 private:
  std::string path_;
};

TEST(VmCgroupsTest, UnavailableWithoutCgroupV2) {
  FakeCgroupRoot root;  // no cgroup.controllers: what a v1/hybrid host looks like
  auto c = VmCgroups::Open(root.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kUnavailable);
  root.Write("cgroup.controllers", "cpuset io pids\n");
  c = VmCgroups::Open(root.path());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("cpu and memory"), std::string::npos) << c.error().message;
}

TEST(VmCgroupsTest, PreparesLimitsFromWhatWasPlaced) {
  FakeCgroupRoot root;
  root.Write("cgroup.controllers", "cpuset cpu io memory pids\n");
  root.Write("cgroup.subtree_control", "");
  // The kernel creates these in a new cgroup; a plain directory needs them.
  ASSERT_EQ(::mkdir((root.path() + "/vmgrid").c_str(), 0755), 0);
  root.Write("vmgrid/cgroup.subtree_control", "");
  auto c = VmCgroups::Open(root.path());
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(root.Read("cgroup.subtree_control"), "+cpu +memory");
  EXPECT_EQ(root.Read("vmgrid/cgroup.subtree_control"), "+cpu +memory");
  ASSERT_EQ(::mkdir((root.path() + "/vmgrid/vm-1").c_str(), 0755), 0);
  for (const char* f : {"memory.max", "cpu.max", "cgroup.procs"})
    root.Write(std::string("vmgrid/vm-1/") + f, "");
  auto dir = c->Prepare("vm-1", {.vcpus = 2, .memory_mb = 256, .overhead_mb = 64});
  ASSERT_TRUE(dir.ok()) << dir.error().message;
  EXPECT_EQ(*dir, root.path() + "/vmgrid/vm-1");
  EXPECT_EQ(root.Read("vmgrid/vm-1/memory.max"), std::to_string(320ll << 20));
  EXPECT_EQ(root.Read("vmgrid/vm-1/cpu.max"), "200000 100000");
  EXPECT_FALSE(c->Prepare("../escape", {}).ok());
  EXPECT_FALSE(c->Prepare("vm-1", {.vcpus = 0}).ok());
}

}  // namespace
}  // namespace vmgrid
