#include "agent/agent_metrics.h"

#include <gtest/gtest.h>

#include "common/metrics_text.h"

namespace vmgrid {
namespace {

metrics::ParsedExposition Parse(const std::vector<metrics::FamilySnapshot>& families) {
  auto parsed = metrics::ParseExposition(metrics::RenderText(families));
  EXPECT_TRUE(parsed.ok()) << (parsed.ok() ? "" : parsed.error().message);
  return parsed.ok() ? *parsed : metrics::ParsedExposition{};
}

TEST(AgentMetricsTest, VmsByStateWithoutImagesOrNetworks) {
  std::vector<VmStatus> vms(3);
  vms[0].state = "running";
  vms[1].state = "running";
  vms[2].state = "stopped";
  vms[0].name = "alice-secret";
  const std::string text = metrics::RenderText(AgentMetrics(vms, nullptr, {}));
  EXPECT_EQ(text.find("alice-secret"), std::string::npos);
  auto p = Parse(AgentMetrics(vms, nullptr, {}));
  EXPECT_EQ(p.Sum("vmgrid_agent_vms", {{"state", "running"}}), 2);
  EXPECT_EQ(p.Sum("vmgrid_agent_vms", {{"state", "stopped"}}), 1);
  EXPECT_EQ(p.Sum("vmgrid_agent_vms", {{"state", "creating"}}), 0);
  EXPECT_FALSE(p.Has("vmgrid_chunk_cache_hits_total"));
  EXPECT_FALSE(p.Has("vmgrid_vnet_ports"));
}

TEST(AgentMetricsTest, CacheNbdAndSwitchCounters) {
  HostImages::Counters images;
  images.cache.hits = 7;
  images.cache.misses = 3;
  images.cache.bytes_fetched = 3 << 20;
  images.cache.verification_failures = 1;
  images.client.verification_failures = 2;
  images.nbd.bytes_read = 4096;
  images.nbd.requests = 5;
  HostNetworks::Totals net;
  net.running = true;
  net.networks = 1;
  net.ports = 2;
  net.ports_total.rx_frames = 10;
  net.ports_total.Drop(vnet::DropReason::kSpoofedMac);
  net.tunnels.tx_packets = 4;
  net.tunnels.Drop(vnet::TunnelDrop::kAuthFailed);
  auto p = Parse(AgentMetrics({}, &images, net));
  EXPECT_EQ(p.Sum("vmgrid_chunk_cache_hits_total"), 7);
  EXPECT_EQ(p.Sum("vmgrid_chunk_cache_misses_total"), 3);
  EXPECT_EQ(p.Sum("vmgrid_chunk_cache_fetched_bytes_total"), 3 << 20);
  EXPECT_EQ(p.Sum("vmgrid_chunk_verification_failures_total"), 3);
  EXPECT_EQ(p.Sum("vmgrid_nbd_read_bytes_total"), 4096);
  EXPECT_EQ(p.Sum("vmgrid_nbd_requests_total"), 5);
  EXPECT_EQ(p.Sum("vmgrid_vnet_port_frames_total", {{"direction", "rx"}}), 10);
  EXPECT_EQ(p.Sum("vmgrid_vnet_port_drops_total", {{"reason", "spoofed_mac"}}), 1);
  EXPECT_EQ(p.Sum("vmgrid_vnet_tunnel_packets_total", {{"direction", "tx"}}), 4);
  EXPECT_EQ(p.Sum("vmgrid_vnet_tunnel_drops_total"), 1);
  EXPECT_EQ(p.Sum("vmgrid_vnet_ports"), 2);
}

}  // namespace
}  // namespace vmgrid
