#include "api/placement.h"

#include <gtest/gtest.h>

namespace vmgrid {
namespace {

Host MakeHost(const std::string& id, int vcpus, int64_t memory_mb, int used_vcpus = 0,
              int64_t used_memory_mb = 0) {
  Host h;
  h.id = id;
  h.name = id;
  h.state = "up";
  h.vcpus = vcpus;
  h.memory_mb = memory_mb;
  h.reserved_vcpus = used_vcpus;
  h.reserved_memory_mb = used_memory_mb;
  return h;
}

PlacementRequest Request(const std::string& image, int vcpus, int64_t memory_mb,
                         const std::string& policy = "spread") {
  PlacementRequest r;
  r.image_id = image;
  r.vcpus = vcpus;
  r.memory_mb = memory_mb;
  r.policy = policy;
  return r;
}

TEST(CapacityIndex, SpreadRanksCachedHostsFirstThenMostFreeMemory) {
  CapacityIndex ix;
  ix.OnSnapshot({MakeHost("a", 4, 4096), MakeHost("b", 4, 8192), MakeHost("c", 4, 2048)},
                {{"img", "c"}});
  EXPECT_EQ(ix.Rank(Request("img", 1, 512)), (std::vector<std::string>{"c", "b", "a"}));
  EXPECT_EQ(ix.Rank(Request("other", 1, 512)), (std::vector<std::string>{"b", "a", "c"}));
  EXPECT_EQ(ix.Rank(Request("other", 1, 512, "pack")), (std::vector<std::string>{"c", "a", "b"}));
  EXPECT_EQ(ix.Rank(Request("other", 1, 3000)), (std::vector<std::string>{"b", "a"}));
}

TEST(CapacityIndex, HostsCachingMoreOfTheVmsDatasetsComeFirstThenTheImage) {
  CapacityIndex ix;
  ix.OnSnapshot({MakeHost("a", 4, 4096), MakeHost("b", 4, 8192), MakeHost("c", 4, 2048),
                 MakeHost("d", 4, 3000), MakeHost("full", 1, 65536, 1, 256)},
                {{"img", "c"},
                 {DatasetCacheKey("ds-1"), "a"},
                 {DatasetCacheKey("ds-1"), "d"},
                 {"img", "d"},
                 {DatasetCacheKey("ds-2"), "c"},
                 {DatasetCacheKey("ds-1"), "full"}});
  PlacementRequest r = Request("img", 1, 512);
  r.datasets = {"ds-1"};
  // d holds ds-1 and the image, a only ds-1; then c (the image); then b. The
  // full host caching ds-1 does not fit.
  EXPECT_EQ(ix.Rank(r), (std::vector<std::string>{"d", "a", "c", "b"}));
  r.datasets = {"ds-1", "ds-2"};  // c holds ds-2 and the image: on a par with d, less free
  EXPECT_EQ(ix.Rank(r), (std::vector<std::string>{"d", "c", "a", "b"}));
  ix.OnImageCached(DatasetCacheKey("ds-2"), "a");  // a now holds both
  EXPECT_EQ(ix.Rank(r), (std::vector<std::string>{"a", "d", "c", "b"}));
  r.policy = "pack";  // among equals, least free memory first
  r.datasets = {"ds-1"};
  EXPECT_EQ(ix.Rank(r), (std::vector<std::string>{"d", "a", "c", "b"}));
  r.image_id = "other";
  EXPECT_EQ(ix.Rank(r), (std::vector<std::string>{"d", "a", "c", "b"}));
  // A dataset no host caches changes nothing.
  r.datasets = {"ds-none"};
  r.policy = "spread";
  EXPECT_EQ(ix.Rank(r), ix.Rank(Request("other", 1, 512)));
  EXPECT_TRUE(ix.IsCached(DatasetCacheKey("ds-2"), "a"));
  EXPECT_FALSE(ix.IsCached(DatasetCacheKey("ds-2"), "b"));
}

TEST(CapacityIndex, HostWithoutFreeVcpuIsNeverRankedAndComesBackWhenFreed) {
  CapacityIndex ix;
  ix.OnSnapshot({MakeHost("full", 2, 65536, 2, 512), MakeHost("small", 2, 1024)},
                {{"img", "full"}});
  // "full" has the most free memory and the image, but no vCPU to give.
  EXPECT_EQ(ix.Rank(Request("img", 1, 256)), (std::vector<std::string>{"small"}));
  ix.OnUsage("full", -1, -256, 0);
  EXPECT_EQ(ix.Rank(Request("img", 1, 256)), (std::vector<std::string>{"full", "small"}));
  ix.OnUsage("full", 1, 256, 0);  // full again
  EXPECT_EQ(ix.Rank(Request("img", 1, 256)), (std::vector<std::string>{"small"}));
  ix.OnHostDown("small");
  EXPECT_TRUE(ix.Rank(Request("img", 1, 256)).empty());
  ix.OnHost(MakeHost("small", 2, 1024));
  EXPECT_EQ(ix.Rank(Request("img", 1, 256)), (std::vector<std::string>{"small"}));
}

TEST(CapacityIndex, CachedButFullHostsDoNotCrowdOutOthers) {
  // Many hosts that hold the image are full: a create still gets its
  // max_candidates from the others.
  CapacityIndex ix;
  std::vector<Host> hosts;
  std::vector<std::pair<std::string, std::string>> cached;
  for (int i = 0; i < 500; ++i) {
    hosts.push_back(MakeHost("full" + std::to_string(i), 16, 65536, 16, 4096));
    cached.push_back({"img", hosts.back().id});
  }
  for (int i = 0; i < 100; ++i) hosts.push_back(MakeHost("free" + std::to_string(i), 16, 32768));
  ix.OnSnapshot(hosts, cached);
  PlacementRequest r = Request("img", 1, 256);
  r.max_candidates = 8;
  auto ranked = ix.Rank(r);
  ASSERT_EQ(ranked.size(), 8u);
  for (const auto& id : ranked) EXPECT_EQ(id.rfind("free", 0), 0u) << id;
}

TEST(CapacityIndex, ImageCachedOnAFullHostJoinsTheCachedSetWhenItFrees) {
  CapacityIndex ix;
  ix.OnSnapshot({MakeHost("a", 1, 4096, 1, 256), MakeHost("b", 1, 8192)}, {});
  ix.OnImageCached("img", "a");
  EXPECT_EQ(ix.Rank(Request("img", 1, 256)), (std::vector<std::string>{"b"}));
  ix.OnUsage("a", -1, -256, 0);
  EXPECT_EQ(ix.Rank(Request("img", 1, 256)), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(ix.IsCached("img", "a"));
}

// Issue 9 §3: a host without free disk for what the VM's disk can grow to
// (plus its memory checkpoint) is not ranked; usage moves the room, and a
// host that reports no disk is not limited.
TEST(CapacityIndex, HostWithoutDiskRoomIsNotRanked) {
  CapacityIndex ix;
  Host small = MakeHost("small", 8, 65536), big = MakeHost("big", 8, 1024),
       legacy = MakeHost("old", 8, 512);
  small.disk_total_bytes = big.disk_total_bytes = int64_t{100} << 30;
  small.disk_free_bytes = int64_t{2} << 30;
  big.disk_free_bytes = int64_t{50} << 30;
  big.reserved_disk_bytes = int64_t{10} << 30;
  ix.OnSnapshot({small, big, legacy}, {});
  PlacementRequest r = Request("img", 1, 256);
  r.disk_bytes = int64_t{3} << 30;
  EXPECT_EQ(ix.Rank(r), (std::vector<std::string>{"big", "old"}));
  ix.OnUsage("big", 1, 256, int64_t{38} << 30);  // 40 - 38 = 2 GiB left
  EXPECT_EQ(ix.Rank(r), (std::vector<std::string>{"old"}));
  ix.OnUsage("big", -1, -256, -(int64_t{38} << 30));
  EXPECT_EQ(ix.Rank(r), (std::vector<std::string>{"big", "old"}));
}

}  // namespace
}  // namespace vmgrid
