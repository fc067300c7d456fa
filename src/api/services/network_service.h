// NetworkService: users' virtual networks (docs/vnet.md) as the REST API
// shows them: create, list, show (with the cards on it), delete, share. The
// Store assigns the addresses (IPAM) when a VM with cards is created; the
// tunnel key never leaves the controller through this service.
// Thread-safe (the Store is).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "api/routes/route.h"
#include "common/result.h"
#include "store/store.h"

namespace vmgrid {

// A network's name is the guests' DNS domain (VM.NAME): a DNS label,
// lowercase letters, digits and '-', 1 to 63, not starting or ending with '-'.
Status ValidateNetworkName(const std::string& name);

class NetworkService {
 public:
  explicit NetworkService(Store& store) : store_(store) {}

  // `subnet` "" = 10.20.0.0/24 (networks are isolated, so they may overlap).
  Result<nlohmann::json> Create(const Caller& c, const std::string& name, std::string subnet,
                                bool egress);
  // One page (common/paging.h), oldest first: {"networks": [...], "next"}.
  Result<nlohmann::json> List(const Caller& c, const PageRequest& page);
  // With its cards: MAC and address of every card; the VM's name and host
  // only for the caller's own VMs (or for the admin).
  Result<nlohmann::json> Get(const Caller& c, const std::string& ref);
  // The owner or the admin; refused while a VM has a card on it.
  Status Delete(const Caller& c, const std::string& ref);
  // The admin lets user `user_name` put VMs on the network.
  Result<nlohmann::json> Share(const Caller& c, const std::string& ref,
                               const std::string& user_name);
  // The networks (ids) of `refs` the caller may put a VM on, in order;
  // refused if one is missing, not the caller's, or named twice.
  Result<std::vector<std::string>> Resolve(const Caller& c, const std::vector<std::string>& refs);
  // A VM's cards for its JSON: [{network, network_id, index, mac, ip, prefix}].
  Result<nlohmann::json> VmNics(const std::string& vm_id);
  // The VM's NICs as its agent gets them in the VM spec (proto/network_plan.h).
  Result<std::vector<NicSpec>> VmNicSpecs(const std::string& vm_id);

 private:
  nlohmann::json NetworkJson(const Caller& c, const Network& n);
  Store& store_;
};

}  // namespace vmgrid
