#include "api/vnet_plan.h"

#include <algorithm>
#include <set>

namespace vmgrid {

std::map<std::string, std::vector<PlannedNetwork>> PlanNetworks(
    const std::vector<Network>& networks, const std::vector<PlacedNic>& nics,
    const std::map<std::string, TunnelEndpoint>& endpoints) {
  std::map<std::string, const Network*> by_id;
  for (const auto& n : networks) by_id[n.id] = &n;
  // network -> host -> its NICs there
  std::map<std::string, std::map<std::string, std::vector<const PlacedNic*>>> where;
  for (const auto& p : nics)
    if (by_id.count(p.nic.network_id) && !p.host_id.empty())
      where[p.nic.network_id][p.host_id].push_back(&p);

  std::map<std::string, std::vector<PlannedNetwork>> plan;
  for (const auto& [net_id, hosts] : where) {
    const Network& net = *by_id.at(net_id);
    for (const auto& [host, local] : hosts) {
      PlannedNetwork pn;
      pn.network_id = net.id;
      pn.vni = static_cast<uint32_t>(net.vni);
      pn.name = net.name;
      pn.subnet = net.subnet;
      pn.egress = net.egress;
      pn.key_epoch = net.key_epoch;
      pn.key_hex = net.tunnel_key_hex;
      for (const auto& [other, theirs] : hosts) {
        if (other == host) continue;
        auto ep = endpoints.find(other);
        if (ep == endpoints.end() || ep->second.host_number == 0) continue;
        pn.peers.push_back({other, ep->second});
        for (const PlacedNic* p : theirs) pn.remote_nics.push_back(*p);
      }
      plan[host].push_back(std::move(pn));
    }
  }
  for (auto& [host, list] : plan)
    std::sort(list.begin(), list.end(),
              [](const PlannedNetwork& a, const PlannedNetwork& b) { return a.vni < b.vni; });
  return plan;
}

}  // namespace vmgrid
