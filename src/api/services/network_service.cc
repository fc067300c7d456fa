#include "api/services/network_service.h"

#include <algorithm>
#include <set>

#include "common/http_json.h"
#include "common/util.h"

namespace vmgrid {

using nlohmann::json;

Status ValidateNetworkName(const std::string& name) {
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "network name '" + name + "' " + why +
                         " (it is the VMs' DNS domain: lowercase letters, digits and '-')");
  };
  if (name.empty() || name.size() > 63) return bad("must be 1 to 63 characters long");
  if (name.front() == '-' || name.back() == '-') return bad("must not start or end with '-'");
  for (char ch : name)
    if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-'))
      return bad("may contain only lowercase letters, digits and '-'");
  return Status::Ok();
}

json NetworkService::NetworkJson(const Caller& c, const Network& n) {
  auto owner = store_.GetUserById(n.owner_id);
  const bool mine = c.admin() || n.owner_id == c.user.id;
  json j = {{"id", n.id},
            {"name", n.name},
            {"owner", mine && owner.ok() ? owner->name : std::string()},
            {"subnet", n.subnet},
            {"egress", n.egress},
            {"created_at", FormatTimeMs(n.created_ms)}};
  if (mine) {
    json shared = json::array();
    for (const auto& id : n.shared_with)
      if (auto u = store_.GetUserById(id); u.ok()) shared.push_back(u->name);
    j["shared_with"] = shared;
  }
  return j;
}

Result<json> NetworkService::Create(const Caller& c, const std::string& name, std::string subnet,
                                    bool egress) {
  VMG_RETURN_IF_ERROR(ValidateNetworkName(name));
  if (subnet.empty()) subnet = "10.20.0.0/24";
  VMG_ASSIGN_OR_RETURN(Network n, store_.CreateNetwork(c.user.id, name, subnet, egress));
  return NetworkJson(c, n);
}

Result<json> NetworkService::List(const Caller& c, const PageRequest& page) {
  VMG_ASSIGN_OR_RETURN(auto nets, store_.ListNetworks(c.user.id, c.admin()));
  auto got = PageOf(
      std::move(nets), page, [](const Network& n) { return NumberKey(n.created_ms); },
      [](const Network& n) { return n.id; });
  json list = json::array();
  for (const auto& n : got.items) list.push_back(NetworkJson(c, n));
  json answer{{"networks", std::move(list)}};
  AddNext(answer, got.next);
  return answer;
}

Result<json> NetworkService::Get(const Caller& c, const std::string& ref) {
  VMG_ASSIGN_OR_RETURN(Network n, store_.GetNetwork(ref, c.user.id, c.admin()));
  json j = NetworkJson(c, n);
  VMG_ASSIGN_OR_RETURN(auto nics, store_.ListNetworkNics(n.id));
  json cards = json::array();
  for (const auto& nic : nics) {
    json card = {{"index", nic.index}, {"mac", nic.mac}, {"ip", nic.ip}};
    auto vm = store_.GetVm(nic.vm_id, c.owner());
    if (vm.ok()) {
      card["vm"] = vm->name;
      card["vm_id"] = vm->id;
      auto host = store_.GetHost(vm->host_id);
      card["host"] = host.ok() ? host->name : vm->host_id;
    }
    cards.push_back(card);
  }
  j["nics"] = cards;
  return j;
}

Status NetworkService::Delete(const Caller& c, const std::string& ref) {
  VMG_ASSIGN_OR_RETURN(Network n, store_.GetNetwork(ref, c.user.id, c.admin()));
  if (!c.admin() && n.owner_id != c.user.id)
    return MakeError(ErrorCode::kPermissionDenied,
                     "network '" + ref + "' was shared with you; only its owner may delete it");
  return store_.DeleteNetwork(n.id);
}

Result<json> NetworkService::Share(const Caller& c, const std::string& ref,
                                   const std::string& user_name) {
  if (!c.admin()) return MakeError(ErrorCode::kPermissionDenied, "only the admin shares networks");
  VMG_ASSIGN_OR_RETURN(Network n, store_.GetNetwork(ref, c.user.id, true));
  VMG_ASSIGN_OR_RETURN(auto users, store_.ListUsers());
  auto u =
      std::find_if(users.begin(), users.end(), [&](const User& x) { return x.name == user_name; });
  if (u == users.end())
    return MakeError(ErrorCode::kNotFound, "user '" + user_name + "' not found");
  if (u->role != "admin" && u->role != "user")
    return MakeError(ErrorCode::kInvalidArgument, "'" + user_name + "' is not a user");
  if (u->id != n.owner_id) VMG_RETURN_IF_ERROR(store_.ShareNetwork(n.id, u->id));
  VMG_ASSIGN_OR_RETURN(Network now, store_.GetNetwork(n.id, c.user.id, true));
  return NetworkJson(c, now);
}

Result<std::vector<std::string>> NetworkService::Resolve(const Caller& c,
                                                         const std::vector<std::string>& refs) {
  if (refs.size() > 8)
    return MakeError(ErrorCode::kInvalidArgument, "a VM has at most 8 network cards");
  std::vector<std::string> ids;
  std::set<std::string> seen;
  for (const auto& ref : refs) {
    VMG_ASSIGN_OR_RETURN(Network n, store_.GetNetwork(ref, c.user.id, c.admin()));
    if (!seen.insert(n.id).second)
      return MakeError(ErrorCode::kInvalidArgument,
                       "network '" + ref + "' is named twice; a VM has one card per network");
    ids.push_back(n.id);
  }
  return ids;
}

Result<json> NetworkService::VmNics(const std::string& vm_id) {
  VMG_ASSIGN_OR_RETURN(auto nics, store_.ListVmNics(vm_id));
  json cards = json::array();
  for (const auto& n : nics)
    cards.push_back({{"index", n.index},
                     {"network", n.network},
                     {"network_id", n.network_id},
                     {"mac", n.mac},
                     {"ip", n.ip},
                     {"prefix", n.prefix}});
  return cards;
}

Result<std::vector<NicSpec>> NetworkService::VmNicSpecs(const std::string& vm_id) {
  VMG_ASSIGN_OR_RETURN(auto nics, store_.ListVmNics(vm_id));
  std::vector<NicSpec> out;
  std::map<std::string, Network> nets;
  for (const Nic& n : nics) {
    auto it = nets.find(n.network_id);
    if (it == nets.end()) {
      VMG_ASSIGN_OR_RETURN(Network net, store_.GetNetwork(n.network_id, "", true));
      it = nets.emplace(n.network_id, std::move(net)).first;
    }
    const Network& net = it->second;
    out.push_back(
        {n.index, static_cast<uint32_t>(net.vni), net.name, net.subnet, net.egress, n.mac, n.ip});
  }
  return out;
}

}  // namespace vmgrid
