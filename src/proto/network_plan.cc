#include "proto/network_plan.h"

#include <arpa/inet.h>

#include <set>

#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;

namespace {

constexpr int64_t kMaxVni = (int64_t{1} << 24) - 1;
constexpr size_t kMaxNicsPerVm = 8;
constexpr size_t kMaxPlanNetworks = 4096;
constexpr size_t kMaxPlanPeers = 4096;
constexpr size_t kMaxPlanNics = 65536;

Error NotObject(const std::string& what) {
  return MakeError(ErrorCode::kInvalidArgument, what + " must be an object");
}

const json* ArrayField(const json& j, const char* name, size_t max, Status* st) {
  auto it = j.find(name);
  if (it == j.end()) return nullptr;
  if (!it->is_array()) {
    *st = MakeError(ErrorCode::kInvalidArgument,
                    std::string("field '") + name + "' must be an array");
    return nullptr;
  }
  if (it->size() > max) {
    *st =
        MakeError(ErrorCode::kInvalidArgument, std::string("field '") + name + "' has more than " +
                                                   std::to_string(max) + " entries");
    return nullptr;
  }
  return &*it;
}

template <class T>
Status StatusOf(const Result<T>& r) {
  return r.ok() ? Status::Ok() : Status(r.error());
}

bool IsHexKey(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return false;
  return true;
}

}  // namespace

json ToJson(const NicSpec& n) {
  return {{"index", n.index},   {"vni", n.vni},       {"network", n.network},
          {"subnet", n.subnet}, {"egress", n.egress}, {"mac", n.mac},
          {"ip", n.ip}};
}

Result<NicSpec> NicSpecFromJson(const json& j) {
  if (!j.is_object()) return NotObject("a NIC");
  JsonFields f(j, {"index", "vni", "network", "subnet", "egress", "mac", "ip"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  NicSpec n;
  VMG_ASSIGN_OR_RETURN(int64_t index, f.Int("index", -1, 0, kMaxNicsPerVm - 1));
  if (index < 0) return MakeError(ErrorCode::kInvalidArgument, "a NIC needs its 'index'");
  n.index = static_cast<int>(index);
  VMG_ASSIGN_OR_RETURN(int64_t vni, f.Int("vni", 0, 1, kMaxVni));
  if (vni == 0) return MakeError(ErrorCode::kInvalidArgument, "a NIC needs its network's 'vni'");
  n.vni = static_cast<uint32_t>(vni);
  VMG_ASSIGN_OR_RETURN(n.network, f.String("network", true));
  VMG_ASSIGN_OR_RETURN(n.subnet, f.String("subnet", true));
  VMG_ASSIGN_OR_RETURN(n.egress, f.Bool("egress", false));
  VMG_ASSIGN_OR_RETURN(n.mac, f.String("mac", true));
  VMG_ASSIGN_OR_RETURN(n.ip, f.String("ip", true));
  return n;
}

Result<std::vector<NicSpec>> NicSpecsFromJson(const json& j) {
  if (!j.is_array()) return MakeError(ErrorCode::kInvalidArgument, "field 'nics' must be an array");
  if (j.size() > kMaxNicsPerVm)
    return MakeError(ErrorCode::kInvalidArgument, "a VM has at most 8 NICs");
  std::vector<NicSpec> out;
  std::set<uint32_t> vnis;
  for (const auto& e : j) {
    auto n = NicSpecFromJson(e);
    if (!n.ok()) return n.error().Wrap("nics[" + std::to_string(out.size()) + "]");
    if (n->index != static_cast<int>(out.size()))
      return MakeError(ErrorCode::kInvalidArgument, "nics[" + std::to_string(out.size()) +
                                                        "] has index " + std::to_string(n->index) +
                                                        " (NICs are listed in order)");
    if (!vnis.insert(n->vni).second)
      return MakeError(ErrorCode::kInvalidArgument,
                       "two NICs on the network with vni " + std::to_string(n->vni));
    out.push_back(std::move(*n));
  }
  return out;
}

json ToJson(const TunnelEndpointReport& t) { return {{"ip", t.ip}, {"port", t.port}}; }

Result<TunnelEndpointReport> TunnelEndpointFromJson(const json& j) {
  if (!j.is_object()) return NotObject("field 'tunnel'");
  JsonFields f(j, {"ip", "port"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  TunnelEndpointReport t;
  VMG_ASSIGN_OR_RETURN(t.ip, f.String("ip", true));
  in_addr a{};
  if (inet_pton(AF_INET, t.ip.c_str(), &a) != 1 || a.s_addr == 0)
    return MakeError(ErrorCode::kInvalidArgument, "tunnel: 'ip' must be an IPv4 address");
  VMG_ASSIGN_OR_RETURN(int64_t port, f.Int("port", 0, 1, 65535));
  if (port == 0) return MakeError(ErrorCode::kInvalidArgument, "field 'port' is required");
  t.port = static_cast<int>(port);
  return t;
}

json ToJson(const HostNetworkPlan& p) {
  json nets = json::array();
  for (const auto& n : p.networks) {
    json peers = json::array(), nics = json::array();
    for (const auto& h : n.peers)
      peers.push_back({{"number", h.number}, {"ip", h.ip}, {"port", h.port}});
    for (const auto& r : n.remote_nics)
      nics.push_back(
          {{"mac", r.mac}, {"ip", r.ip}, {"vm_name", r.vm_name}, {"host_number", r.host_number}});
    nets.push_back({{"vni", n.vni},
                    {"name", n.name},
                    {"subnet", n.subnet},
                    {"egress", n.egress},
                    {"key_epoch", n.key_epoch},
                    {"key_hex", n.key_hex},
                    {"peers", std::move(peers)},
                    {"remote_nics", std::move(nics)}});
  }
  return {{"host_number", p.host_number}, {"networks", std::move(nets)}};
}

Result<HostNetworkPlan> HostNetworkPlanFromJson(const json& j) {
  if (!j.is_object()) return NotObject("the network plan");
  JsonFields f(j, {"host_number", "networks"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  HostNetworkPlan p;
  VMG_ASSIGN_OR_RETURN(int64_t number, f.Int("host_number", 0, 0, UINT32_MAX));
  p.host_number = static_cast<uint32_t>(number);
  Status st = Status::Ok();
  const json* nets = ArrayField(j, "networks", kMaxPlanNetworks, &st);
  VMG_RETURN_IF_ERROR(st);
  if (!nets) return p;
  for (const auto& e : *nets) {
    const std::string where = "networks[" + std::to_string(p.networks.size()) + "]";
    if (!e.is_object()) return NotObject(where);
    JsonFields nf(
        e, {"vni", "name", "subnet", "egress", "key_epoch", "key_hex", "peers", "remote_nics"});
    if (Status u = nf.CheckUnknown(); !u.ok()) return u.error().Wrap(where);
    NetworkPlan n;
    auto vni = nf.Int("vni", 0, 1, kMaxVni);
    auto name = nf.String("name", true);
    auto subnet = nf.String("subnet", true);
    auto egress = nf.Bool("egress", false);
    auto epoch = nf.Int("key_epoch", 0, 0, UINT32_MAX);
    auto key = nf.String("key_hex", true);
    for (const Status& s : {StatusOf(vni), StatusOf(name), StatusOf(subnet), StatusOf(egress),
                            StatusOf(epoch), StatusOf(key)})
      if (!s.ok()) return s.error().Wrap(where);
    if (*vni == 0) return MakeError(ErrorCode::kInvalidArgument, where + ": 'vni' is required");
    if (!IsHexKey(*key))
      return MakeError(ErrorCode::kInvalidArgument, where + ": 'key_hex' must be 64 hex digits");
    n.vni = static_cast<uint32_t>(*vni);
    n.name = *name;
    n.subnet = *subnet;
    n.egress = *egress;
    n.key_epoch = *epoch;
    n.key_hex = *key;
    const json* peers = ArrayField(e, "peers", kMaxPlanPeers, &st);
    if (!st.ok()) return st.error().Wrap(where);
    for (const auto& h : peers ? *peers : json::array()) {
      if (!h.is_object()) return NotObject(where + ": a peer");
      JsonFields hf(h, {"number", "ip", "port"});
      auto num = hf.Int("number", 0, 1, UINT32_MAX);
      auto ip = hf.String("ip", true);
      auto port = hf.Int("port", 0, 1, 65535);
      for (const Status& s : {hf.CheckUnknown(), StatusOf(num), StatusOf(ip), StatusOf(port)})
        if (!s.ok()) return s.error().Wrap(where + ": a peer");
      if (*num == 0 || *port == 0)
        return MakeError(ErrorCode::kInvalidArgument, where + ": a peer needs number and port");
      n.peers.push_back({static_cast<uint32_t>(*num), *ip, static_cast<int>(*port)});
    }
    const json* nics = ArrayField(e, "remote_nics", kMaxPlanNics, &st);
    if (!st.ok()) return st.error().Wrap(where);
    for (const auto& r : nics ? *nics : json::array()) {
      if (!r.is_object()) return NotObject(where + ": a remote NIC");
      JsonFields rf(r, {"mac", "ip", "vm_name", "host_number"});
      auto mac = rf.String("mac", true);
      auto ip = rf.String("ip", true);
      auto vm_name = rf.String("vm_name", false);
      auto host = rf.Int("host_number", 0, 1, UINT32_MAX);
      for (const Status& s :
           {rf.CheckUnknown(), StatusOf(mac), StatusOf(ip), StatusOf(vm_name), StatusOf(host)})
        if (!s.ok()) return s.error().Wrap(where + ": a remote NIC");
      if (*host == 0)
        return MakeError(ErrorCode::kInvalidArgument, where + ": a remote NIC needs host_number");
      n.remote_nics.push_back({*mac, *ip, *vm_name, static_cast<uint32_t>(*host)});
    }
    p.networks.push_back(std::move(n));
  }
  return p;
}

namespace {

Result<std::string> Ipv4Field(const JsonFields& f, const char* name, const std::string& def) {
  VMG_ASSIGN_OR_RETURN(std::string ip, f.String(name, false, def));
  in_addr a{};
  if (inet_pton(AF_INET, ip.c_str(), &a) != 1)
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string("field '") + name + "' must be an IPv4 address");
  return ip;
}

}  // namespace

json ToJson(const ForwardRequest& f) {
  return {{"nic", f.nic},
          {"guest_port", f.guest_port},
          {"listen_ip", f.listen_ip},
          {"listen_port", f.listen_port}};
}

Result<ForwardRequest> ForwardRequestFromJson(const json& j) {
  if (!j.is_object()) return NotObject("a forward");
  JsonFields f(j, {"nic", "guest_port", "listen_ip", "listen_port"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  ForwardRequest r;
  VMG_ASSIGN_OR_RETURN(int64_t nic, f.Int("nic", 0, 0, kMaxNicsPerVm - 1));
  VMG_ASSIGN_OR_RETURN(int64_t guest, f.Int("guest_port", 0, 1, 65535));
  if (guest == 0) return MakeError(ErrorCode::kInvalidArgument, "field 'guest_port' is required");
  VMG_ASSIGN_OR_RETURN(r.listen_ip, Ipv4Field(f, "listen_ip", r.listen_ip));
  VMG_ASSIGN_OR_RETURN(int64_t listen, f.Int("listen_port", 0, 0, 65535));
  r.nic = static_cast<int>(nic);
  r.guest_port = static_cast<int>(guest);
  r.listen_port = static_cast<int>(listen);
  return r;
}

json ToJson(const ForwardInfo& f) {
  return {{"nic", f.nic},
          {"guest_ip", f.guest_ip},
          {"guest_port", f.guest_port},
          {"listen_ip", f.listen_ip},
          {"listen_port", f.listen_port}};
}

Result<ForwardInfo> ForwardInfoFromJson(const json& j) {
  if (!j.is_object()) return NotObject("a forward");
  JsonFields f(j, {"nic", "guest_ip", "guest_port", "listen_ip", "listen_port"});
  ForwardInfo r;
  VMG_ASSIGN_OR_RETURN(int64_t nic, f.Int("nic", 0, 0, kMaxNicsPerVm - 1));
  VMG_ASSIGN_OR_RETURN(r.guest_ip, Ipv4Field(f, "guest_ip", ""));
  VMG_ASSIGN_OR_RETURN(int64_t guest, f.Int("guest_port", 0, 1, 65535));
  VMG_ASSIGN_OR_RETURN(r.listen_ip, Ipv4Field(f, "listen_ip", ""));
  VMG_ASSIGN_OR_RETURN(int64_t listen, f.Int("listen_port", 0, 1, 65535));
  if (guest == 0 || listen == 0)
    return MakeError(ErrorCode::kInvalidArgument, "a forward needs both ports");
  r.nic = static_cast<int>(nic);
  r.guest_port = static_cast<int>(guest);
  r.listen_port = static_cast<int>(listen);
  return r;
}

}  // namespace vmgrid
