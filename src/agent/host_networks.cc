#include "agent/host_networks.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <set>

#include "common/util.h"
#include "vnet/frame.h"

namespace vmgrid {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

bool SamePort(const vnet::PortConfig& a, const vnet::PortConfig& b) {
  return a.name == b.name && a.mac == b.mac && a.ip == b.ip && a.vm_name == b.vm_name &&
         a.switch_path == b.switch_path && a.vm_path == b.vm_path && a.socket_uid == b.socket_uid &&
         a.socket_gid == b.socket_gid;
}

Result<std::vector<uint8_t>> KeyBytes(const std::string& hex) {
  auto bytes = HexDecode(hex);
  if (hex.size() != 64 || !bytes.ok())
    return MakeError(ErrorCode::kInvalidArgument, "a key is 64 hex digits");
  return std::vector<uint8_t>(bytes->begin(), bytes->end());
}

struct Cidr {
  vnet::Ipv4Addr base = 0;
  int prefix = 0;
};

// "A.B.C.D/P" with no host bits set, P in 8..29 (the switch's range).
Result<Cidr> ParseCidr(const std::string& text) {
  auto slash = text.find('/');
  if (slash == std::string::npos)
    return MakeError(ErrorCode::kInvalidArgument, "subnet '" + text + "' is not A.B.C.D/P");
  VMG_ASSIGN_OR_RETURN(vnet::Ipv4Addr base, vnet::ParseIpv4(text.substr(0, slash)));
  const std::string p = text.substr(slash + 1);
  if (p.empty() || p.size() > 2 || p.find_first_not_of("0123456789") != std::string::npos)
    return MakeError(ErrorCode::kInvalidArgument, "subnet '" + text + "' has a bad prefix");
  const int prefix = std::stoi(p);
  if (prefix < 8 || prefix > 29)
    return MakeError(ErrorCode::kInvalidArgument, "subnet '" + text + "': prefix out of range");
  if (base & ~(~vnet::Ipv4Addr{0} << (32 - prefix)))
    return MakeError(ErrorCode::kInvalidArgument, "subnet '" + text + "' has host bits set");
  return Cidr{base, prefix};
}

std::string PortName(const std::string& vm_id, int index) {
  return vm_id + "-" + std::to_string(index);
}

json CountersJson(const vnet::PortCounters& c) {
  json drops = json::object();
  for (size_t i = 1; i < vnet::kDropReasonCount; ++i)
    if (c.drops[i]) drops[vnet::DropReasonName(static_cast<vnet::DropReason>(i))] = c.drops[i];
  return {{"rx_frames", c.rx_frames},       {"tx_frames", c.tx_frames},
          {"arp_answered", c.arp_answered}, {"dhcp_answered", c.dhcp_answered},
          {"dns_answered", c.dns_answered}, {"drops", drops}};
}

json CountersJson(const vnet::TunnelCounters& c) {
  json drops = json::object();
  for (size_t i = 1; i < vnet::kTunnelDropCount; ++i)
    if (c.drops[i]) drops[vnet::TunnelDropName(static_cast<vnet::TunnelDrop>(i))] = c.drops[i];
  return {{"tx_packets", c.tx_packets},
          {"tx_failed", c.tx_failed},
          {"tx_no_key", c.tx_no_key},
          {"rx_packets", c.rx_packets},
          {"drops", drops}};
}

json CountersJson(const vnet::EgressCounters& c) {
  json drops = json::object();
  for (size_t i = 1; i < vnet::kEgressDropCount; ++i)
    if (c.drops[i]) drops[vnet::EgressDropName(static_cast<vnet::EgressDrop>(i))] = c.drops[i];
  return {{"to_outside", c.to_outside},
          {"from_outside", c.from_outside},
          {"to_switch_failed", c.to_switch_failed},
          {"guest_errors", c.guest_errors},
          {"sockets", c.sockets},
          {"drops", drops}};
}

}  // namespace

HostNetworks::HostNetworks(HostNetworksOptions options) : options_(std::move(options)) {}

HostNetworks::~HostNetworks() {
  std::lock_guard<std::mutex> l(mu_);
  host_.reset();
}

std::string HostNetworks::PlanFile() const { return options_.state_dir + "/vnet/plan.json"; }

Result<std::unique_ptr<HostNetworks>> HostNetworks::Open(const HostNetworksOptions& options) {
  if (!vnet::ParseIpv4(options.tunnel_ip).ok())
    return MakeError(ErrorCode::kInvalidArgument,
                     "tunnel address '" + options.tunnel_ip + "' is not an IPv4 address");
  auto self = std::unique_ptr<HostNetworks>(new HostNetworks(options));
  // The port sockets' directory: QEMU (the VM's uid) must reach its port.
  VMG_RETURN_IF_ERROR(MakeDirs(options.state_dir + "/vnet", 0711));
  chmod((options.state_dir + "/vnet").c_str(), 0711);
  if (auto q = vnet::EnsureUnixDgramQueueLength(options.dgram_queue_length); !q.ok())
    spdlog::warn(
        "virtual networks: {}; a burst of more frames than the queue holds is lost "
        "(docs/vnet.md, \"Queue length\")",
        q.error().message);
  else if (*q < options.dgram_queue_length)
    spdlog::warn("virtual networks: net.unix.max_dgram_qlen is {} (wanted {})", *q,
                 options.dgram_queue_length);
  const std::string file = self->PlanFile();
  if (!FileExists(file)) return self;
  auto text = ReadFile(file, 64 << 20);
  json j = text.ok() ? json::parse(*text, nullptr, false) : json();
  Result<HostNetworkPlan> plan = MakeError(ErrorCode::kInvalidArgument, "not a JSON object");
  if (j.is_object() && j.contains("plan")) plan = HostNetworkPlanFromJson(j["plan"]);
  if (!plan.ok()) {
    spdlog::warn("virtual networks: {} is unusable ({}); set aside, waiting for the controller",
                 file, text.ok() ? plan.error().message : text.error().message);
    std::rename(file.c_str(), (file + ".bad").c_str());
    return self;
  }
  if (options.tunnel_port == 0 && j.value("tunnel_port", 0) > 0)
    self->tunnel_port_ = j.value("tunnel_port", 0);
  if (Status st = self->ApplyPlan(*plan); !st.ok())
    spdlog::warn("virtual networks: the saved plan applied in part: {}", st.error().message);
  return self;
}

std::optional<TunnelEndpointReport> HostNetworks::Endpoint() const {
  std::lock_guard<std::mutex> l(mu_);
  if (!host_) return std::nullopt;
  return TunnelEndpointReport{options_.tunnel_ip, host_->tunnel_port()};
}

Status HostNetworks::StartSwitchesLocked(uint32_t host_number) {
  vnet::SwitchHostOptions so;
  so.host_id = host_number;
  VMG_ASSIGN_OR_RETURN(so.tunnel_ip, vnet::ParseIpv4(options_.tunnel_ip));
  const int wanted = options_.tunnel_port > 0 ? options_.tunnel_port : tunnel_port_;
  so.tunnel_port = static_cast<uint16_t>(wanted);
  auto started = vnet::SwitchHost::Start(so);
  if (!started.ok() && options_.tunnel_port == 0 && wanted != 0) {
    // The last run's port is taken: any port will do (peers learn it from
    // the next heartbeat; until then they send to the old one).
    spdlog::warn("virtual networks: tunnel port {} is taken ({}); using another", wanted,
                 started.error().message);
    so.tunnel_port = 0;
    started = vnet::SwitchHost::Start(so);
  }
  if (!started.ok()) return started.error().Wrap("starting the virtual switches");
  host_ = std::move(*started);
  host_number_ = host_number;
  tunnel_port_ = host_->tunnel_port();
  spdlog::info("virtual networks: switches running; host number {}, tunnels at {}:{}", host_number,
               options_.tunnel_ip, tunnel_port_);
  started_cv_.notify_all();
  return Status::Ok();
}

Status HostNetworks::EnsureNetworkLocked(uint32_t vni, const std::string& name,
                                         const std::string& subnet, bool egress) {
  if (nets_.count(vni)) return Status::Ok();
  VMG_ASSIGN_OR_RETURN(Cidr parsed, ParseCidr(subnet));
  vnet::NetworkConfig c;
  c.id = vni;
  c.name = name;
  c.subnet = parsed.base;
  c.prefix_len = parsed.prefix;
  c.egress = egress;
  VMG_RETURN_IF_ERROR(host_->AddNetwork(c));
  NetState& st = nets_[vni];
  st.name = name;
  st.subnet = subnet;
  st.egress = egress;
  return Status::Ok();
}

Status HostNetworks::ApplyNetworkLocked(const NetworkPlan& n) {
  const std::string what = "network " + n.name + " (vni " + std::to_string(n.vni) + ")";
  if (auto it = nets_.find(n.vni);
      it != nets_.end() && (it->second.subnet != n.subnet || it->second.name != n.name ||
                            it->second.egress != n.egress)) {
    // Another network now holds this vni (this host missed a delete):
    // start it afresh if no VM here still uses the old one.
    if (!it->second.ports.empty())
      return MakeError(ErrorCode::kFailedPrecondition,
                       what + " differs from the local switch, which VMs still use");
    (void)host_->RemoveNetwork(n.vni);  // kNotFound only if already gone
    nets_.erase(it);
  }
  if (Status st = EnsureNetworkLocked(n.vni, n.name, n.subnet, n.egress); !st.ok())
    return st.error().Wrap(what);
  NetState& st = nets_[n.vni];
  std::vector<vnet::PeerHost> peers;
  for (const auto& p : n.peers) {
    auto ip = vnet::ParseIpv4(p.ip);
    if (!ip.ok()) return ip.error().Wrap(what + ": peer " + std::to_string(p.number));
    peers.push_back({p.number, *ip, static_cast<uint16_t>(p.port)});
  }
  std::vector<vnet::RemoteNic> nics;
  for (const auto& r : n.remote_nics) {
    auto mac = vnet::ParseMac(r.mac);
    auto ip = vnet::ParseIpv4(r.ip);
    if (!mac.ok() || !ip.ok())
      return MakeError(ErrorCode::kInvalidArgument,
                       what + ": remote NIC " + r.mac + " / " + r.ip + " is malformed");
    nics.push_back({*mac, *ip, r.vm_name, r.host_number});
  }
  if (Status s = host_->SetRemote(n.vni, peers, nics); !s.ok()) return s.error().Wrap(what);
  if (n.key_epoch > st.sealing_epoch && n.key_epoch != st.pending_epoch) {
    VMG_ASSIGN_OR_RETURN(auto key, KeyBytes(n.key_hex));
    const auto epoch = static_cast<uint32_t>(n.key_epoch);
    if (st.sealing_epoch == 0) {
      // The first key this switch has: nothing older to stay compatible with.
      VMG_RETURN_IF_ERROR(host_->InstallTunnelKey(n.vni, epoch, key, vnet::KeyUse::kSealAndOpen));
      st.sealing_epoch = n.key_epoch;
    } else {
      VMG_RETURN_IF_ERROR(host_->InstallTunnelKey(n.vni, epoch, key, vnet::KeyUse::kOpenOnly));
      st.pending_epoch = n.key_epoch;
      st.pending_key = std::move(key);
      st.promote_at = Clock::now() + options_.promote_after;
    }
  }
  return Status::Ok();
}

void HostNetworks::PromoteKeysLocked() {
  const auto now = Clock::now();
  for (auto& [vni, st] : nets_) {
    if (st.pending_epoch == 0 || now < st.promote_at) continue;
    Status s = host_->InstallTunnelKey(vni, static_cast<uint32_t>(st.pending_epoch), st.pending_key,
                                       vnet::KeyUse::kSealAndOpen);
    if (!s.ok()) {
      spdlog::warn("virtual networks: sealing with key epoch {} of network {}: {}",
                   st.pending_epoch, st.name, s.error().message);
      continue;
    }
    st.sealing_epoch = st.pending_epoch;
    st.pending_epoch = 0;
    st.pending_key.clear();
  }
}

Status HostNetworks::ApplyPlan(const HostNetworkPlan& plan) {
  std::lock_guard<std::mutex> l(mu_);
  if (plan.host_number == 0) return Status::Ok();  // the controller has not numbered us yet
  if (host_ && host_number_ != plan.host_number) {
    // Renumbered (a new controller database): peers know us by the new number.
    spdlog::warn("virtual networks: host number changes from {} to {}; restarting the switches",
                 host_number_, plan.host_number);
    host_.reset();
    for (auto& [vni, st] : nets_) st.sealing_epoch = st.pending_epoch = 0;
    nets_.clear();
  }
  if (!host_) VMG_RETURN_IF_ERROR(StartSwitchesLocked(plan.host_number));
  Status first = Status::Ok();
  std::set<uint32_t> listed;
  for (const auto& n : plan.networks) {
    listed.insert(n.vni);
    if (Status st = ApplyNetworkLocked(n); !st.ok()) {
      spdlog::warn("virtual networks: {}", st.error().message);
      if (first.ok()) first = st;
    }
  }
  for (auto it = nets_.begin(); it != nets_.end();) {
    if (listed.count(it->first) || !it->second.ports.empty()) {
      ++it;
      continue;
    }
    (void)host_->RemoveNetwork(it->first);  // kNotFound: already gone, as wanted
    it = nets_.erase(it);
  }
  PromoteKeysLocked();
  json saved = {{"tunnel_port", tunnel_port_}, {"plan", ToJson(plan)}};
  if (Status w = WriteFileAtomic(PlanFile(), saved.dump() + "\n", 0600); !w.ok())
    // Only a restart's quick recovery needs it: the next heartbeat brings the plan again.
    spdlog::warn("virtual networks: cannot save {}: {}", PlanFile(), w.error().message);
  return first;
}

Result<std::vector<NicConfig>> HostNetworks::Attach(const std::string& vm_id,
                                                    const std::string& vm_name,
                                                    const std::vector<NicSpec>& nics,
                                                    const std::string& run_dir, int uid, int gid) {
  std::vector<NicConfig> out;
  if (nics.empty()) return out;
  std::unique_lock<std::mutex> l(mu_);
  if (!started_cv_.wait_for(l, options_.first_plan_wait, [&] { return host_ != nullptr; }))
    return MakeError(ErrorCode::kUnavailable,
                     "virtual networks are not running on this host yet (waiting for the "
                     "controller's first heartbeat answer)");
  std::vector<std::pair<uint32_t, std::string>> added;
  auto undo = [&] {
    for (const auto& [vni, name] : added) {
      (void)host_->RemovePort(vni, name);
      nets_[vni].ports.erase(name);
      nets_[vni].configs.erase(name);
    }
  };
  for (const NicSpec& n : nics) {
    if (Status st = EnsureNetworkLocked(n.vni, n.network, n.subnet, n.egress); !st.ok()) {
      undo();
      return st.error().Wrap("network " + n.network);
    }
    vnet::PortConfig p;
    p.name = PortName(vm_id, n.index);
    auto mac = vnet::ParseMac(n.mac);
    auto ip = vnet::ParseIpv4(n.ip);
    if (!mac.ok() || !ip.ok()) {
      undo();
      return MakeError(ErrorCode::kInvalidArgument,
                       "NIC " + std::to_string(n.index) + ": bad MAC or address");
    }
    p.mac = *mac;
    p.ip = *ip;
    p.vm_name = vm_name;
    p.switch_path = options_.state_dir + "/vnet/" + p.name + ".sock";
    p.vm_path = DefaultNicSocketPath(run_dir, n.index);
    if (uid >= 0) p.socket_uid = static_cast<uid_t>(uid);
    if (gid >= 0) p.socket_gid = static_cast<gid_t>(gid);
    NetState& net = nets_[n.vni];
    auto kept = net.configs.find(p.name);
    if (kept != net.configs.end() && SamePort(kept->second, p) &&
        host_->GetPortCounters(n.vni, p.name).ok()) {
      // Attached before with the same values: the port stays, and so do
      // the forwards to it (nothing to undo on a later failure either).
    } else {
      (void)host_->RemovePort(n.vni, p.name);  // an earlier run's port: replaced
      if (Status st = host_->AddPort(n.vni, p); !st.ok()) {
        undo();
        return st.error().Wrap("NIC " + std::to_string(n.index) + " on network " + n.network);
      }
      net.ports[p.name] = n.index;
      net.configs[p.name] = p;
      added.emplace_back(n.vni, p.name);
    }
    NicConfig c;
    c.mac = n.mac;
    c.backend = NicBackend::kDgram;
    c.local_path = p.vm_path;
    c.remote_path = p.switch_path;
    out.push_back(std::move(c));
  }
  return out;
}

void HostNetworks::Detach(const std::string& vm_id, const std::vector<NicSpec>& nics) {
  std::lock_guard<std::mutex> l(mu_);
  if (!host_) return;
  for (const NicSpec& n : nics) {
    const std::string name = PortName(vm_id, n.index);
    (void)host_->RemovePort(n.vni, name);  // kNotFound: never attached (or already removed)
    if (auto it = nets_.find(n.vni); it != nets_.end()) {
      it->second.ports.erase(name);
      it->second.configs.erase(name);
    }
  }
}

json HostNetworks::Stats() const {
  std::lock_guard<std::mutex> l(mu_);
  json nets = json::array();
  if (!host_) return {{"running", false}};
  for (const auto& [vni, st] : nets_) {
    json ports = json::object();
    for (const auto& [name, index] : st.ports)
      if (auto c = host_->GetPortCounters(vni, name); c.ok()) ports[name] = CountersJson(*c);
    json tunnel;
    if (auto t = host_->GetTunnelCounters(vni); t.ok()) tunnel = CountersJson(*t);
    json net = {{"vni", vni},
                {"name", st.name},
                {"key_epoch", st.sealing_epoch},
                {"ports", ports},
                {"tunnel", tunnel}};
    // Networks with egress: the gateway's traffic and what its policy refused.
    if (auto e = host_->GetEgressCounters(vni); e.ok()) net["egress"] = CountersJson(*e);
    nets.push_back(std::move(net));
  }
  return {{"running", true},
          {"host_number", host_number_},
          {"tunnel_port", tunnel_port_},
          {"networks", nets},
          {"host_tunnel", CountersJson(host_->host_tunnel_counters())}};
}

HostNetworks::Totals HostNetworks::totals() const {
  Totals t;
  std::lock_guard<std::mutex> l(mu_);
  if (!host_) return t;
  t.running = true;
  auto add_tunnel = [&t](const vnet::TunnelCounters& c) {
    t.tunnels.tx_packets += c.tx_packets;
    t.tunnels.tx_failed += c.tx_failed;
    t.tunnels.tx_no_key += c.tx_no_key;
    t.tunnels.rx_packets += c.rx_packets;
    for (size_t i = 0; i < vnet::kTunnelDropCount; ++i) t.tunnels.drops[i] += c.drops[i];
    for (size_t i = 0; i < vnet::kDropReasonCount; ++i)
      t.tunnels.frame_drops[i] += c.frame_drops[i];
  };
  add_tunnel(host_->host_tunnel_counters());
  for (const auto& [vni, st] : nets_) {
    ++t.networks;
    for (const auto& [name, index] : st.ports) {
      auto c = host_->GetPortCounters(vni, name);
      if (!c.ok()) continue;
      ++t.ports;
      auto& p = t.ports_total;
      p.rx_frames += c->rx_frames;
      p.tx_frames += c->tx_frames;
      p.arp_answered += c->arp_answered;
      p.dhcp_answered += c->dhcp_answered;
      p.dns_answered += c->dns_answered;
      p.echo_answered += c->echo_answered;
      for (size_t i = 0; i < vnet::kDropReasonCount; ++i) p.drops[i] += c->drops[i];
    }
    if (auto c = host_->GetTunnelCounters(vni); c.ok()) add_tunnel(*c);
    if (auto e = host_->GetEgressCounters(vni); e.ok()) {
      t.egress.to_outside += e->to_outside;
      t.egress.from_outside += e->from_outside;
      t.egress.to_switch_failed += e->to_switch_failed;
      t.egress.guest_errors += e->guest_errors;
      t.egress.sockets += e->sockets;
      for (size_t i = 0; i < vnet::kEgressDropCount; ++i) t.egress.drops[i] += e->drops[i];
    }
  }
  return t;
}

// The checks AddForward and CheckForward share: where it listens, and that
// the network can carry it.
static Status ForwardAllowed(const NicSpec& nic, const ForwardRequest& request,
                             const std::string& tunnel_ip) {
  VMG_ASSIGN_OR_RETURN(vnet::Ipv4Addr listen, vnet::ParseIpv4(request.listen_ip));
  if ((listen >> 24) != 127 && request.listen_ip != tunnel_ip)
    return MakeError(ErrorCode::kPermissionDenied,
                     "a forward listens on loopback or on the host's tunnel address " + tunnel_ip +
                         ", not on " + request.listen_ip);
  if (auto guest = vnet::ParseIpv4(nic.ip); !guest.ok()) return guest.error();
  if (!nic.egress)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "network " + nic.network + " has no egress gateway (create it with --egress)");
  return Status::Ok();
}

Result<ForwardInfo> HostNetworks::CheckForward(const NicSpec& nic,
                                               const ForwardRequest& request) const {
  VMG_RETURN_IF_ERROR(ForwardAllowed(nic, request, options_.tunnel_ip));
  if (request.listen_port <= 0 || request.listen_port > 65535)
    return MakeError(ErrorCode::kInvalidArgument,
                     "a stopped VM's forward needs its listen port (it is opened at start)");
  return ForwardInfo{nic.index, nic.ip, request.guest_port, request.listen_ip, request.listen_port};
}

Result<ForwardInfo> HostNetworks::AddForward(const NicSpec& nic, const ForwardRequest& request) {
  VMG_RETURN_IF_ERROR(ForwardAllowed(nic, request, options_.tunnel_ip));
  vnet::Ipv4Addr listen = *vnet::ParseIpv4(request.listen_ip);
  vnet::Ipv4Addr guest = *vnet::ParseIpv4(nic.ip);
  std::lock_guard<std::mutex> l(mu_);
  if (!host_)
    return MakeError(ErrorCode::kUnavailable, "virtual networks are not running on this host yet");
  VMG_ASSIGN_OR_RETURN(uint16_t port,
                       host_->AddForward(nic.vni, guest, static_cast<uint16_t>(request.guest_port),
                                         listen, static_cast<uint16_t>(request.listen_port)));
  return ForwardInfo{nic.index, nic.ip, request.guest_port, request.listen_ip, port};
}

Status HostNetworks::RemoveForward(const NicSpec& nic, const std::string& listen_ip,
                                   int listen_port) {
  VMG_ASSIGN_OR_RETURN(vnet::Ipv4Addr listen, vnet::ParseIpv4(listen_ip));
  std::lock_guard<std::mutex> l(mu_);
  if (!host_) return MakeError(ErrorCode::kNotFound, "no such forward");
  return host_->RemoveForward(nic.vni, listen, static_cast<uint16_t>(listen_port));
}

}  // namespace vmgrid
