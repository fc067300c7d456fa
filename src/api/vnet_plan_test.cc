#include "api/vnet_plan.h"

#include <gtest/gtest.h>

namespace vmgrid {
namespace {

Network Net(const std::string& id, int64_t vni) {
  Network n;
  n.id = id;
  n.name = id;
  n.subnet = "10.20.0.0/24";
  n.vni = vni;
  n.key_epoch = 3;
  n.tunnel_key_hex = std::string(64, 'a' + static_cast<char>(vni));
  return n;
}

PlacedNic At(const std::string& net, const std::string& vm, const std::string& host,
             const std::string& ip) {
  PlacedNic p;
  p.nic.network_id = net;
  p.nic.vm_id = vm;
  p.nic.ip = ip;
  p.nic.mac = "0a:00:00:01:00:" + ip.substr(ip.rfind('.') + 1);
  p.host_id = host;
  p.vm_name = vm;
  return p;
}

TEST(VnetPlanTest, EachHostLearnsItsNetworksPeersAndRemoteNicsOnly) {
  std::vector<Network> nets = {Net("blue", 1), Net("red", 2), Net("idle", 3)};
  std::vector<PlacedNic> nics = {
      At("blue", "a", "h1", "10.20.0.10"), At("blue", "b", "h2", "10.20.0.11"),
      At("blue", "c", "h2", "10.20.0.12"), At("red", "d", "h1", "10.20.0.10"),
      At("red", "e", "h3", "10.20.0.11")};
  std::map<std::string, TunnelEndpoint> eps = {{"h1", {1, "192.168.1.1", 4789}},
                                               {"h2", {2, "192.168.1.2", 4789}},
                                               {"h3", {3, "192.168.1.3", 4789}}};
  auto plan = PlanNetworks(nets, nics, eps);
  ASSERT_EQ(plan.size(), 3u);
  // h1 carries blue and red, in vni order.
  ASSERT_EQ(plan["h1"].size(), 2u);
  const auto& blue1 = plan["h1"][0];
  EXPECT_EQ(blue1.network_id, "blue");
  EXPECT_EQ(blue1.key_epoch, 3);
  EXPECT_EQ(blue1.key_hex, nets[0].tunnel_key_hex);
  ASSERT_EQ(blue1.peers.size(), 1u);
  EXPECT_EQ(blue1.peers[0].host_id, "h2");
  ASSERT_EQ(blue1.remote_nics.size(), 2u);  // b and c, not its own a
  for (const auto& r : blue1.remote_nics) EXPECT_EQ(r.host_id, "h2");
  const auto& red1 = plan["h1"][1];
  EXPECT_EQ(red1.network_id, "red");
  ASSERT_EQ(red1.peers.size(), 1u);
  EXPECT_EQ(red1.peers[0].host_id, "h3");
  // h3 carries red only: it learns nothing of blue (not its peers, NICs or key).
  ASSERT_EQ(plan["h3"].size(), 1u);
  EXPECT_EQ(plan["h3"][0].network_id, "red");
  for (const auto& r : plan["h3"][0].remote_nics) EXPECT_EQ(r.nic.network_id, "red");
  // A network without NICs is on no host.
  for (const auto& [host, list] : plan)
    for (const auto& n : list) EXPECT_NE(n.network_id, "idle");
}

TEST(VnetPlanTest, HostsWithoutAnEndpointAreNoPeers) {
  std::vector<Network> nets = {Net("blue", 1)};
  std::vector<PlacedNic> nics = {At("blue", "a", "h1", "10.20.0.10"),
                                 At("blue", "b", "h2", "10.20.0.11")};
  auto plan = PlanNetworks(nets, nics, {{"h1", {1, "192.168.1.1", 4789}}});
  ASSERT_EQ(plan["h1"].size(), 1u);
  EXPECT_TRUE(plan["h1"][0].peers.empty());
  EXPECT_TRUE(plan["h1"][0].remote_nics.empty());
  // h2 still gets its network (its local VMs talk among themselves) and h1 as peer.
  ASSERT_EQ(plan["h2"].size(), 1u);
  ASSERT_EQ(plan["h2"][0].peers.size(), 1u);
  EXPECT_EQ(plan["h2"][0].peers[0].endpoint.host_number, 1u);
}

}  // namespace
}  // namespace vmgrid
