// ParseDiskWrites over query-blockstats replies as QEMU 7.2 sends them: the
// counters that say the disk changed are kept, reads, flushes and idle times
// are not, so an idle disk reads the same twice and any write differs.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "vmm/machine_ops.h"

namespace vmgrid {
namespace {

using nlohmann::json;

json Blockstats(int64_t wr_operations, int64_t wr_bytes, int64_t unmap_operations,
                int64_t rd_operations, int64_t idle_ns) {
  return json::array({{{"device", "disk0"},
                       {"node-name", "#block143"},
                       {"qdev", "/machine/peripheral-anon/device[1]/virtio-backend"},
                       {"stats",
                        {{"rd_bytes", rd_operations * 4096},
                         {"wr_bytes", wr_bytes},
                         {"unmap_bytes", unmap_operations * 65536},
                         {"rd_operations", rd_operations},
                         {"wr_operations", wr_operations},
                         {"flush_operations", 7},
                         {"unmap_operations", unmap_operations},
                         {"failed_wr_operations", 0},
                         {"invalid_wr_operations", 0},
                         {"wr_total_time_ns", wr_operations * 1000},
                         {"wr_highest_offset", wr_bytes},
                         {"idle_time_ns", idle_ns},
                         {"account_invalid", true},
                         {"timed_stats", json::array()}}}},
                      {{"device", ""}, {"node-name", "cdrom"}, {"stats", {{"wr_operations", 0}}}}});
}

TEST(DiskWritesTest, WritesAndDiscardsCountReadsFlushesAndIdleTimeDoNot) {
  auto idle = ParseDiskWrites(Blockstats(10, 40960, 1, 100, 5), "disk0");
  ASSERT_TRUE(idle.ok()) << idle.error().message;
  EXPECT_EQ(idle->at("wr_operations"), 10);
  EXPECT_EQ(idle->at("wr_bytes"), 40960);
  EXPECT_EQ(idle->count("rd_operations"), 0u);
  EXPECT_EQ(idle->count("flush_operations"), 0u);
  EXPECT_EQ(idle->count("idle_time_ns"), 0u);
  // Reads and time passing: the same.
  EXPECT_EQ(*ParseDiskWrites(Blockstats(10, 40960, 1, 900, 99), "disk0"), *idle);
  // A write, or a discard: different.
  EXPECT_NE(*ParseDiskWrites(Blockstats(11, 45056, 1, 100, 5), "disk0"), *idle);
  EXPECT_NE(*ParseDiskWrites(Blockstats(10, 40960, 2, 100, 5), "disk0"), *idle);
}

TEST(DiskWritesTest, TheDeviceIsFoundByAnyOfItsNamesElseNotFound) {
  const json stats = Blockstats(1, 512, 0, 0, 0);
  EXPECT_TRUE(ParseDiskWrites(stats, "#block143").ok());
  EXPECT_TRUE(ParseDiskWrites(stats, "/machine/peripheral-anon/device[1]/virtio-backend").ok());
  auto none = ParseDiskWrites(stats, "disk1");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::kNotFound);
  EXPECT_FALSE(ParseDiskWrites(json::object(), "disk0").ok());
  // No counters at all: empty, which callers treat as unknown (they push).
  auto bare = ParseDiskWrites(json::array({{{"device", "disk0"}}}), "disk0");
  ASSERT_TRUE(bare.ok());
  EXPECT_TRUE(bare->empty());
}

}  // namespace
}  // namespace vmgrid
