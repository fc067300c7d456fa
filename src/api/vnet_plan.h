// What each host must know of the virtual networks it carries
// (docs/vnet.md, "Control plane"): for every network with a NIC on the
// host, the network's parameters, its tunnel key, the other hosts of the
// network (tunnel peers) and the NICs on them (the switch's forwarding
// table and ARP/DNS answers). The controller computes it from the Store and
// sends each agent its part; a pure function, so it is tested without a grid.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "store/model.h"

namespace vmgrid {

struct PlannedPeer {
  std::string host_id;
  TunnelEndpoint endpoint;
};

struct PlannedNetwork {
  std::string network_id;
  uint32_t vni = 0;
  std::string name;
  std::string subnet;  // CIDR
  bool egress = false;
  int64_t key_epoch = 0;
  std::string key_hex;
  std::vector<PlannedPeer> peers;      // the network's other hosts
  std::vector<PlacedNic> remote_nics;  // its NICs on those hosts
};

// host id -> the networks it carries (sorted by vni). A network on one
// host only has no peers. Hosts without an endpoint cannot be tunnel peers:
// they get their own networks, and are left out of the others' peer lists
// (their NICs too), until they report one.
std::map<std::string, std::vector<PlannedNetwork>> PlanNetworks(
    const std::vector<Network>& networks, const std::vector<PlacedNic>& nics,
    const std::map<std::string, TunnelEndpoint>& endpoints);

}  // namespace vmgrid
