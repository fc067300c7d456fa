#include "vnet/virtual_switch.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "vnet/dhcp.h"
#include "vnet/dns.h"

namespace vmgrid::vnet {

namespace {

constexpr uint32_t kDnsTtlSeconds = 10;

Error Invalid(const std::string& m) { return MakeError(ErrorCode::kInvalidArgument, m); }
Error Exists(const std::string& m) { return MakeError(ErrorCode::kAlreadyExists, m); }

bool ValidNetworkName(const std::string& n) {
  if (n.empty() || n.size() > 63 || n.front() == '-' || n.back() == '-') return false;
  for (char c : n)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  return true;
}

bool ValidVmName(const std::string& n) {
  if (n.size() > 63) return false;
  for (char c : n)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) return false;
  return true;
}

Result<sockaddr_un> UnixAddr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(a.sun_path))
    return Invalid("socket path empty or longer than " + std::to_string(sizeof(a.sun_path) - 1) +
                   " bytes: " + path);
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

Error Errno(const std::string& what) {
  return MakeError(ErrorCode::kInternal, what + ": " + std::strerror(errno));
}

}  // namespace

std::string QemuNetdevArg(const PortConfig& port, const std::string& netdev_id) {
  auto escape = [](const std::string& v) {
    std::string out;
    for (char c : v) {
      out.push_back(c);
      if (c == ',') out.push_back(',');
    }
    return out;
  };
  return "dgram,id=" + escape(netdev_id) + ",local.type=unix,local.path=" + escape(port.vm_path) +
         ",remote.type=unix,remote.path=" + escape(port.switch_path);
}

MacAddr NetworkConfig::switch_mac() const {
  MacAddr m{0x02, 0x56, 0, 0, 0, 0};
  Store32(&m[2], id);
  return m;
}

Port::~Port() {
  // Unlink only the socket file this port bound: a newer switch may have
  // replaced it already (a restart), and its socket must survive us.
  if (!fd.valid() || bound_inode == 0) return;
  struct stat now {};
  if (stat(config.switch_path.c_str(), &now) == 0 && now.st_ino == bound_inode &&
      now.st_dev == bound_dev)
    ::unlink(config.switch_path.c_str());
}

VirtualSwitch::VirtualSwitch(const NetworkConfig& config, HostId local_host)
    : config_(config), switch_mac_(config.switch_mac()), codec_(config.id, local_host) {}

VirtualSwitch::~VirtualSwitch() = default;

Result<VirtualSwitchPtr> VirtualSwitch::Create(const NetworkConfig& config, HostId local_host) {
  if (config.id == 0) return Invalid("network id 0 is reserved");
  if (!ValidNetworkName(config.name)) return Invalid("bad network name: " + config.name);
  if (config.prefix_len < 8 || config.prefix_len > 29)
    return Invalid("subnet prefix must be /8../29");
  if ((config.subnet & ~config.netmask()) != 0)
    return Invalid("subnet " + FormatIpv4(config.subnet) + " has host bits set");
  if (config.lease_seconds < 60) return Invalid("lease shorter than 60 s");
  if (config.mtu != 0 && (config.mtu < 576 || config.mtu > 1500))
    return Invalid("mtu must be 576..1500");
  auto sw = VirtualSwitchPtr(new VirtualSwitch(config, local_host));
  sw->RebuildTables();
  return sw;
}

Status VirtualSwitch::CheckNic(const MacAddr& mac, Ipv4Addr ip, const std::string& vm_name,
                               bool local) const {
  if (IsMulticast(mac) || mac == MacAddr{} || (mac[0] == 0x02 && mac[1] == 0x56))
    return Invalid("MAC " + FormatMac(mac) + " is multicast, zero or in the switch's range");
  if (ip != 0) {
    if ((ip & config_.netmask()) != config_.subnet)
      return Invalid("address " + FormatIpv4(ip) + " is outside " + FormatIpv4(config_.subnet));
    if (ip == config_.subnet || ip == config_.gateway_ip() || ip == config_.service_ip() ||
        ip == config_.broadcast_ip())
      return Invalid("address " + FormatIpv4(ip) + " is reserved");
  }
  if (!ValidVmName(vm_name)) return Invalid("bad VM name: " + vm_name);
  auto lp = local_by_mac_.find(MacKey(mac));
  auto rn = remote_by_mac_.find(MacKey(mac));
  const bool same_local = lp != local_by_mac_.end() && lp->second->config.ip == ip &&
                          lp->second->config.vm_name == vm_name;
  const bool same_remote =
      rn != remote_by_mac_.end() && rn->second->ip == ip && rn->second->vm_name == vm_name;
  // Only the other side may hold the same NIC (a migration); never its own.
  const bool taken =
      local ? (lp != local_by_mac_.end() || (rn != remote_by_mac_.end() && !same_remote))
            : (rn != remote_by_mac_.end() || (lp != local_by_mac_.end() && !same_local));
  if (taken) return Exists("MAC " + FormatMac(mac) + " already on network " + config_.name);
  if (ip != 0)
    if (auto it = mac_by_ip_.find(ip); it != mac_by_ip_.end() && it->second != mac)
      return Exists("address " + FormatIpv4(ip) + " already on network " + config_.name);
  if (!vm_name.empty())
    if (auto it = ip_by_name_.find(vm_name); it != ip_by_name_.end() && it->second != ip)
      return Exists("name " + vm_name + " already on network " + config_.name);
  return Status::Ok();
}

Result<Port*> VirtualSwitch::AddPort(const PortConfig& pc) {
  if (pc.name.empty()) return Invalid("port name empty");
  if (FindPort(pc.name)) return Exists("port " + pc.name + " already exists");
  VMG_RETURN_IF_ERROR(CheckNic(pc.mac, pc.ip, pc.vm_name, /*local=*/true));
  VMG_ASSIGN_OR_RETURN(sockaddr_un local, UnixAddr(pc.switch_path));
  VMG_ASSIGN_OR_RETURN(sockaddr_un remote, UnixAddr(pc.vm_path));

  auto port = std::make_unique<Port>();
  port->config = pc;
  port->identity = PortIdentity{pc.mac, pc.ip};
  port->vm_addr = remote;
  port->vm_addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + pc.vm_path.size());
  vmm::UniqueFd fd(socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Errno("socket");
  // Datagrams in flight to the VM are charged to this socket: a VM that does
  // not read fills only its own port's budget.
  int sndbuf = 1 << 20;
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  if (::unlink(pc.switch_path.c_str()) != 0 && errno != ENOENT)
    return Errno("unlink " + pc.switch_path);
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&local), sizeof local) != 0)
    return Errno("bind " + pc.switch_path);
  port->fd = std::move(fd);
  struct stat st {};
  if (stat(pc.switch_path.c_str(), &st) == 0) {  // from here ~Port unlinks the path
    port->bound_inode = st.st_ino;
    port->bound_dev = st.st_dev;
  }
  if (pc.socket_uid || pc.socket_gid) {
    if (::chown(pc.switch_path.c_str(), pc.socket_uid ? *pc.socket_uid : static_cast<uid_t>(-1),
                pc.socket_gid ? *pc.socket_gid : static_cast<gid_t>(-1)) != 0)
      return Errno("chown " + pc.switch_path);
    if (::chmod(pc.switch_path.c_str(), 0660) != 0) return Errno("chmod " + pc.switch_path);
  }
  Port* raw = port.get();
  ports_.push_back(std::move(port));
  RebuildTables();
  return raw;
}

Result<Port*> VirtualSwitch::AddRouterPort(const std::string& name, const MacAddr& mac, Ipv4Addr ip,
                                           vmm::UniqueFd fd) {
  if (name.empty()) return Invalid("port name empty");
  if (FindPort(name)) return Exists("port " + name + " already exists");
  if (!fd.valid()) return Invalid("router port " + name + " without a socket");
  if (IsMulticast(mac) || mac == MacAddr{} || mac == switch_mac_)
    return Invalid("router MAC " + FormatMac(mac) + " is multicast, zero or the switch's");
  if ((ip & config_.netmask()) != config_.subnet || ip == config_.subnet ||
      ip == config_.broadcast_ip())
    return Invalid("router address " + FormatIpv4(ip) + " is not a host of the subnet");
  if (local_by_mac_.count(MacKey(mac)) || remote_by_mac_.count(MacKey(mac)))
    return Exists("MAC " + FormatMac(mac) + " already on network " + config_.name);
  for (auto& p : ports_)
    if (p->identity.ip == ip) return Exists("address " + FormatIpv4(ip) + " already has a port");
  auto port = std::make_unique<Port>();
  port->config.name = name;
  port->config.mac = mac;
  port->config.ip = ip;
  port->identity = PortIdentity{mac, ip, /*router=*/true};
  port->fd = std::move(fd);  // connected: sends need no address (vm_addr_len 0)
  Port* raw = port.get();
  ports_.push_back(std::move(port));
  RebuildTables();
  return raw;
}

Status VirtualSwitch::RemovePort(const std::string& name) {
  for (auto it = ports_.begin(); it != ports_.end(); ++it) {
    if ((*it)->config.name == name) {
      ports_.erase(it);
      RebuildTables();
      return Status::Ok();
    }
  }
  return MakeError(ErrorCode::kNotFound, "no port " + name + " on network " + config_.name);
}

Port* VirtualSwitch::FindPort(const std::string& name) {
  for (auto& p : ports_)
    if (p->config.name == name) return p.get();
  return nullptr;
}

std::vector<Port*> VirtualSwitch::ports() {
  std::vector<Port*> out;
  for (auto& p : ports_) out.push_back(p.get());
  return out;
}

Status VirtualSwitch::SetRemote(const std::vector<PeerHost>& peers,
                                const std::vector<RemoteNic>& nics) {
  // Validate against the local ports and the new remote set only.
  std::vector<Peer> new_peers;
  std::unordered_map<HostId, bool> ids;
  for (const PeerHost& p : peers) {
    if (p.id == 0 || p.port == 0 || p.ip == 0) return Invalid("peer host needs id, address, port");
    if (ids.count(p.id)) return Exists("peer host " + std::to_string(p.id) + " given twice");
    ids[p.id] = true;
    Peer peer;
    peer.host = p;
    peer.addr.sin_family = AF_INET;
    peer.addr.sin_port = htons(p.port);
    peer.addr.sin_addr.s_addr = htonl(p.ip);
    new_peers.push_back(peer);
  }
  // Check the NICs with the remote tables emptied (they are being replaced).
  auto saved_remote = std::move(remote_nics_);
  remote_nics_.clear();
  RebuildTables();
  Status st = Status::Ok();
  for (const RemoteNic& n : nics) {
    if (!ids.count(n.host)) {
      st = Invalid("NIC " + FormatMac(n.mac) + " on host " + std::to_string(n.host) +
                   ", which is not a peer");
      break;
    }
    st = CheckNic(n.mac, n.ip, n.vm_name, /*local=*/false);
    if (!st.ok()) break;
    remote_nics_.push_back(n);
    RebuildTables();
  }
  if (!st.ok()) {
    remote_nics_ = std::move(saved_remote);
    RebuildTables();
    return st;
  }
  peers_ = std::move(new_peers);
  RebuildTables();
  return Status::Ok();
}

void VirtualSwitch::RebuildTables() {
  local_by_mac_.clear();
  remote_by_mac_.clear();
  peer_by_id_.clear();
  mac_by_ip_.clear();
  ip_by_name_.clear();
  mac_by_ip_[config_.service_ip()] = switch_mac_;
  if (config_.egress) mac_by_ip_[config_.gateway_ip()] = switch_mac_;
  for (auto& p : ports_) {
    local_by_mac_[MacKey(p->config.mac)] = p.get();
    if (p->config.ip != 0) {
      mac_by_ip_[p->config.ip] = p->config.mac;
      if (!p->config.vm_name.empty()) ip_by_name_[p->config.vm_name] = p->config.ip;
    }
  }
  for (const RemoteNic& n : remote_nics_) {
    // A VM that migrated here: its port wins until the plan moves its NIC.
    if (local_by_mac_.count(MacKey(n.mac))) continue;
    remote_by_mac_[MacKey(n.mac)] = &n;
    if (n.ip != 0) {
      mac_by_ip_[n.ip] = n.mac;
      if (!n.vm_name.empty()) ip_by_name_[n.vm_name] = n.ip;
    }
  }
  for (const Peer& p : peers_) peer_by_id_[p.host.id] = &p;
}

// ---- data path -------------------------------------------------------------

void VirtualSwitch::SendToPort(Port& to, const uint8_t* data, size_t len, SwitchIo& io) {
  io.tx.Add(to.fd.get(), reinterpret_cast<const sockaddr*>(&to.vm_addr), to.vm_addr_len, data, len,
            &to.counters.tx_frames, &to.counters.drops[static_cast<size_t>(DropReason::kTxFailed)]);
}

void VirtualSwitch::SendToPeers(std::span<const uint8_t> frame, const Peer* only, SwitchIo& io) {
  if (peers_.empty()) return;
  if (!codec_.has_key()) {
    ++tunnel_counters_.tx_no_key;
    return;
  }
  uint8_t* buf = io.scratch.Take();
  size_t n = buf ? codec_.Seal(frame, {buf, ScratchBuffers::kSlotSize}) : 0;
  if (n == 0) {
    ++tunnel_counters_.tx_failed;
    return;
  }
  // One sealed packet serves every peer: the key is the network's, and the
  // nonce (sender, sequence) is used once.
  for (const Peer& p : peers_) {
    if (only && only != &p) continue;
    io.tx.Add(io.tunnel_fd, reinterpret_cast<const sockaddr*>(&p.addr), sizeof p.addr, buf, n,
              &tunnel_counters_.tx_packets, &tunnel_counters_.tx_failed);
  }
}

void VirtualSwitch::Reply(Port& to, const UdpEndpoints& ends, std::span<const uint8_t> payload,
                          SwitchIo& io) {
  uint8_t* buf = io.scratch.Take();
  size_t n = buf ? BuildUdpFrame({buf, ScratchBuffers::kSlotSize}, ends, payload) : 0;
  if (n == 0) {
    to.counters.Drop(DropReason::kTxFailed);
    return;
  }
  SendToPort(to, buf, n, io);
}

void VirtualSwitch::HandleFromPort(Port& port, std::span<const uint8_t> data, bool truncated,
                                   SwitchIo& io) {
  ++port.counters.rx_frames;
  if (truncated) {
    port.counters.Drop(DropReason::kMalformed);
    return;
  }
  FrameParse parse = ParseFrame(data);
  if (!parse.ok()) {
    port.counters.Drop(parse.error);
    return;
  }
  const Frame& f = parse.frame;
  if (DropReason why = CheckFromPort(port.identity, f); why != DropReason::kNone) {
    port.counters.Drop(why);
    return;
  }
  // A router speaks for the outside: it must not impersonate a NIC of the
  // network (an outside peer whose address lies in our subnet).
  if (port.identity.router && f.ipv4 && f.ipv4->src != port.identity.ip &&
      (f.ipv4->src & config_.netmask()) == config_.subnet) {
    port.counters.Drop(DropReason::kSpoofedIp);
    return;
  }
  if (f.arp) return HandleArp(port, f, io);
  // IPv4 from here (the policy let nothing else through).
  if (IsDhcpClientMessage(f)) return HandleDhcp(port, f, io);
  if (f.eth.dst == switch_mac_) {
    if (f.udp && f.udp->dst_port == 53 && f.ipv4->dst == config_.service_ip())
      return HandleDns(port, f, io);
    const bool to_switch_ip = f.ipv4->dst == config_.service_ip() ||
                              (config_.egress && f.ipv4->dst == config_.gateway_ip());
    if (to_switch_ip && IsIcmpEchoRequest(f)) {
      uint8_t* buf = io.scratch.Take();
      UdpEndpoints ends;
      ends.src_mac = switch_mac_;
      ends.dst_mac = port.identity.mac;
      ends.src_ip = f.ipv4->dst;
      ends.dst_ip = port.identity.ip;
      const size_t n =
          buf ? BuildIcmpEchoReply({buf, ScratchBuffers::kSlotSize}, ends, f.ipv4->payload) : 0;
      if (n == 0) {
        port.counters.Drop(DropReason::kTxFailed);
        return;
      }
      ++port.counters.echo_answered;
      SendToPort(port, buf, n, io);
      return;
    }
    port.counters.Drop(DropReason::kNotServed);
    return;
  }
  if (IsMulticast(f.eth.dst)) {
    // Not to the gateway (it has no use for them) and, from the gateway,
    // not to other hosts (their own gateway serves their VMs).
    for (auto& other : ports_)
      if (other.get() != &port && !other->identity.router)
        SendToPort(*other, data.data(), data.size(), io);
    if (!port.identity.router) SendToPeers(data, nullptr, io);
    return;
  }
  const uint64_t dst = MacKey(f.eth.dst);
  if (auto it = local_by_mac_.find(dst); it != local_by_mac_.end() && it->second != &port) {
    SendToPort(*it->second, data.data(), data.size(), io);
    return;
  }
  if (auto it = remote_by_mac_.find(dst); it != remote_by_mac_.end() && !port.identity.router) {
    auto peer = peer_by_id_.find(it->second->host);
    if (peer != peer_by_id_.end()) {
      SendToPeers(data, peer->second, io);
      return;
    }
  }
  port.counters.Drop(DropReason::kUnknownDestination);
}

void VirtualSwitch::HandleArp(Port& port, const Frame& f, SwitchIo& io) {
  const ArpPacket& a = *f.arp;
  // ARP never leaves the switch: replies and announcements from guests are
  // consumed (the switch already knows every address), requests answered here.
  if (a.op != 1) return;
  if (a.sender_ip != 0 && a.sender_ip == a.target_ip) return;  // gratuitous
  if (a.target_ip == port.identity.ip) return;  // a probe for its own address: no conflict
  auto it = mac_by_ip_.find(a.target_ip);
  if (it == mac_by_ip_.end()) {
    port.counters.Drop(DropReason::kUnknownDestination);
    return;
  }
  uint8_t* buf = io.scratch.Take();
  size_t n = buf ? BuildArpReply({buf, ScratchBuffers::kSlotSize}, it->second, a.target_ip,
                                 port.identity.mac, a.sender_ip)
                 : 0;
  if (n == 0) {
    port.counters.Drop(DropReason::kTxFailed);
    return;
  }
  ++port.counters.arp_answered;
  SendToPort(port, buf, n, io);
}

void VirtualSwitch::HandleDhcp(Port& port, const Frame& f, SwitchIo& io) {
  auto req = ParseDhcpRequest(f.udp->payload);
  if (!req.ok() || req->chaddr != port.identity.mac || port.identity.ip == 0) {
    port.counters.Drop(DropReason::kDhcpRefused);
    return;
  }
  DhcpReply r;
  r.xid = req->xid;
  r.flags = req->flags;
  r.chaddr = port.identity.mac;
  r.server_id = config_.service_ip();
  switch (req->type) {
    case DhcpType::kDiscover:
      r.type = DhcpType::kOffer;
      break;
    case DhcpType::kRequest: {
      // A REQUEST selecting another server is not for us; one for another
      // address (stale lease, spoofing attempt) is refused.
      if (req->server_id && *req->server_id != config_.service_ip()) return;
      const Ipv4Addr wanted = req->requested_ip ? *req->requested_ip : req->ciaddr;
      r.type = (wanted == port.identity.ip) ? DhcpType::kAck : DhcpType::kNak;
      break;
    }
    default:
      return;  // DECLINE, RELEASE, INFORM: nothing to do, the address is fixed
  }
  r.yiaddr = port.identity.ip;
  r.subnet_mask = config_.netmask();
  if (config_.egress) r.router = config_.gateway_ip();
  r.dns_server = config_.service_ip();
  r.domain = config_.name;
  r.hostname = port.config.vm_name;
  r.lease_seconds = config_.lease_seconds;
  r.mtu = config_.mtu;
  const std::vector<uint8_t> payload = BuildDhcpReply(r);
  UdpEndpoints ends;
  ends.src_mac = switch_mac_;
  ends.dst_mac = port.identity.mac;
  ends.src_ip = config_.service_ip();
  // Broadcast when asked (or for a NAK); else to the address being given,
  // at the client's MAC (clients read DHCP on raw sockets before they have it).
  const bool broadcast = (req->flags & 0x8000) != 0 || r.type == DhcpType::kNak;
  ends.dst_ip = broadcast ? 0xffffffff : (req->ciaddr != 0 ? req->ciaddr : r.yiaddr);
  ends.src_port = 67;
  ends.dst_port = 68;
  ++port.counters.dhcp_answered;
  Reply(port, ends, payload, io);
}

void VirtualSwitch::HandleDns(Port& port, const Frame& f, SwitchIo& io) {
  auto q = ParseDnsQuery(f.udp->payload);
  if (!q.ok()) {
    port.counters.Drop(DropReason::kDnsRefused);
    return;
  }
  std::string name = q->name;
  const std::string suffix = "." + config_.name;
  if (name.size() > suffix.size() &&
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
    name.resize(name.size() - suffix.size());
  std::optional<Ipv4Addr> addr;
  if (auto it = ip_by_name_.find(name); it != ip_by_name_.end()) addr = it->second;
  DnsRcode rcode = addr ? DnsRcode::kNoError : DnsRcode::kNxDomain;
  // A name that exists but a question for another type or class: NOERROR, no answer.
  if (q->qtype != kDnsTypeA || q->qclass != kDnsClassIn) addr.reset();
  const std::vector<uint8_t> payload = BuildDnsResponse(*q, rcode, addr, kDnsTtlSeconds);
  UdpEndpoints ends;
  ends.src_mac = switch_mac_;
  ends.dst_mac = port.identity.mac;
  ends.src_ip = config_.service_ip();
  ends.dst_ip = port.identity.ip;
  ends.src_port = 53;
  ends.dst_port = f.udp->src_port;
  ++port.counters.dns_answered;
  Reply(port, ends, payload, io);
}

void VirtualSwitch::HandleFromTunnel(std::span<const uint8_t> packet, SwitchIo& io) {
  TunnelHeaderParse hp = ParseTunnelHeader(packet);
  if (!hp.ok()) {
    tunnel_counters_.Drop(hp.error);
    return;
  }
  auto peer = peer_by_id_.find(hp.header.sender);
  if (peer == peer_by_id_.end()) {
    tunnel_counters_.Drop(TunnelDrop::kUnknownSender);
    return;
  }
  uint8_t* buf = io.scratch.Take();
  if (!buf) {
    tunnel_counters_.Drop(TunnelDrop::kTruncated);
    return;
  }
  TunnelCodec::Opened o = codec_.Open(packet, {buf, ScratchBuffers::kSlotSize});
  if (!o.ok()) {
    tunnel_counters_.Drop(o.error);
    return;
  }
  ++tunnel_counters_.rx_packets;
  const std::span<const uint8_t> frame(buf, o.frame_len);
  FrameParse parse = ParseFrame(frame);
  if (!parse.ok()) {
    tunnel_counters_.FrameDrop(parse.error);
    return;
  }
  const Frame& f = parse.frame;
  // Defence in depth: the sending switch enforced its ports' policy; still
  // accept only IPv4 from a NIC that the controller placed on that host.
  auto src = remote_by_mac_.find(MacKey(f.eth.src));
  if (src == remote_by_mac_.end() || src->second->host != hp.header.sender) {
    tunnel_counters_.FrameDrop(DropReason::kSpoofedMac);
    return;
  }
  if (!f.ipv4) {
    tunnel_counters_.FrameDrop(DropReason::kUnsupportedProtocol);
    return;
  }
  if (f.ipv4->src != src->second->ip) {
    tunnel_counters_.FrameDrop(DropReason::kSpoofedIp);
    return;
  }
  if (IsMulticast(f.eth.dst)) {
    for (auto& p : ports_)
      if (!p->identity.router) SendToPort(*p, frame.data(), frame.size(), io);
    return;
  }
  auto dst = local_by_mac_.find(MacKey(f.eth.dst));
  if (dst == local_by_mac_.end()) {
    tunnel_counters_.FrameDrop(DropReason::kUnknownDestination);
    return;
  }
  SendToPort(*dst->second, frame.data(), frame.size(), io);
}

}  // namespace vmgrid::vnet
