#include "vnet/switch_host.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace vmgrid::vnet {

namespace {
constexpr uint64_t kWakeToken = 0;
constexpr uint64_t kTunnelToken = 1;
constexpr size_t kRxSlot = 2048;  // > kMaxFrameLen + kTunnelOverhead
constexpr int kRoundsPerWakeup = 4;

Error Errno(const std::string& what) {
  return MakeError(ErrorCode::kInternal, what + ": " + std::strerror(errno));
}
Error NoNetwork(uint32_t id) {
  return MakeError(ErrorCode::kNotFound, "no network " + std::to_string(id) + " on this host");
}
}  // namespace

Result<int> EnsureUnixDgramQueueLength(int wanted) {
  constexpr const char* kPath = "/proc/sys/net/unix/max_dgram_qlen";
  auto read_value = [&]() -> Result<int> {
    FILE* f = std::fopen(kPath, "re");
    if (!f) return Errno(std::string("open ") + kPath);
    int v = -1;
    const int n = std::fscanf(f, "%d", &v);
    std::fclose(f);
    if (n != 1) return MakeError(ErrorCode::kInternal, std::string("cannot parse ") + kPath);
    return v;
  };
  VMG_ASSIGN_OR_RETURN(int current, read_value());
  if (current >= wanted) return current;
  FILE* f = std::fopen(kPath, "we");
  if (!f) return Errno(std::string("cannot raise ") + kPath);
  const bool ok = std::fprintf(f, "%d\n", wanted) > 0;
  if (std::fclose(f) != 0 || !ok) return Errno(std::string("write ") + kPath);
  return read_value();
}

SwitchHost::SwitchHost(const SwitchHostOptions& options)
    : options_(options), scratch_(options.batch * 2 + 8) {
  rx_data_.resize(options_.batch * kRxSlot);
  rx_msgs_.resize(options_.batch);
  rx_iovs_.resize(options_.batch);
  rx_addrs_.resize(options_.batch);
}

Result<SwitchHostPtr> SwitchHost::Start(const SwitchHostOptions& options) {
  if (options.host_id == 0) return MakeError(ErrorCode::kInvalidArgument, "host id 0 is reserved");
  if (options.batch == 0 || options.batch > 1024)
    return MakeError(ErrorCode::kInvalidArgument, "batch must be 1..1024");
  SwitchHostPtr h(new SwitchHost(options));
  h->epoll_.Reset(epoll_create1(EPOLL_CLOEXEC));
  if (!h->epoll_.valid()) return Errno("epoll_create1");
  h->wake_.Reset(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!h->wake_.valid()) return Errno("eventfd");
  h->tunnel_.Reset(socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!h->tunnel_.valid()) return Errno("socket(udp)");
  int buf = 4 << 20;
  setsockopt(h->tunnel_.get(), SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  setsockopt(h->tunnel_.get(), SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(options.tunnel_port);
  a.sin_addr.s_addr = htonl(options.tunnel_ip);
  if (bind(h->tunnel_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return Errno("bind tunnel socket " + FormatIpv4(options.tunnel_ip) + ":" +
                 std::to_string(options.tunnel_port));
  socklen_t alen = sizeof a;
  if (getsockname(h->tunnel_.get(), reinterpret_cast<sockaddr*>(&a), &alen) != 0)
    return Errno("getsockname");
  h->tunnel_port_ = ntohs(a.sin_port);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeToken;
  if (epoll_ctl(h->epoll_.get(), EPOLL_CTL_ADD, h->wake_.get(), &ev) != 0)
    return Errno("epoll_ctl");
  ev.data.u64 = kTunnelToken;
  if (epoll_ctl(h->epoll_.get(), EPOLL_CTL_ADD, h->tunnel_.get(), &ev) != 0)
    return Errno("epoll_ctl");
  h->thread_ = std::thread([p = h.get()] { p->Loop(); });
  return h;
}

SwitchHost::~SwitchHost() {
  stop_.store(true);
  if (wake_.valid()) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wake_.get(), &one, sizeof one);
  }
  if (thread_.joinable()) thread_.join();
}

VirtualSwitch* SwitchHost::Find(uint32_t network_id) const {
  auto it = switches_.find(network_id);
  return it == switches_.end() ? nullptr : it->second.get();
}

Status SwitchHost::AddNetwork(const NetworkConfig& config) {
  std::lock_guard lock(mu_);
  if (switches_.count(config.id))
    return MakeError(ErrorCode::kAlreadyExists,
                     "network " + std::to_string(config.id) + " already on this host");
  VMG_ASSIGN_OR_RETURN(VirtualSwitchPtr sw, VirtualSwitch::Create(config, options_.host_id));
  EgressGatewayPtr gateway;
  Port* router = nullptr;
  if (config.egress) {
    // A socket pair, not a path: nothing else on the host can send frames
    // into the gateway or the switch's router port.
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pair) != 0) return Errno("socketpair");
    vmm::UniqueFd switch_end(pair[0]);
    vmm::UniqueFd gateway_end(pair[1]);
    if (fcntl(switch_end.get(), F_SETFL, O_NONBLOCK) != 0) return Errno("fcntl O_NONBLOCK");
    VMG_ASSIGN_OR_RETURN(router,
                         sw->AddRouterPort(kEgressPortName, EgressGatewayMac(config.gateway_ip()),
                                           config.gateway_ip(), std::move(switch_end)));
    VMG_ASSIGN_OR_RETURN(gateway, EgressGateway::Start(config, std::move(gateway_end)));
    VMG_RETURN_IF_ERROR(Register(router));
  }
  if (router) sources_[router->token] = Source{sw.get(), router};
  if (gateway) gateways_[config.id] = std::move(gateway);
  switches_[config.id] = std::move(sw);
  return Status::Ok();
}

Status SwitchHost::RemoveNetwork(uint32_t network_id) {
  std::lock_guard lock(mu_);
  auto it = switches_.find(network_id);
  if (it == switches_.end()) return NoNetwork(network_id);
  gateways_.erase(network_id);  // stops its thread, closes its connections
  for (Port* p : it->second->ports()) sources_.erase(p->token);
  switches_.erase(it);  // closing the fds removes them from the epoll set
  return Status::Ok();
}

Result<EgressGateway*> SwitchHost::FindGateway(uint32_t network_id) const {
  if (!Find(network_id)) return NoNetwork(network_id);
  auto it = gateways_.find(network_id);
  if (it == gateways_.end())
    return MakeError(ErrorCode::kFailedPrecondition,
                     "network " + std::to_string(network_id) + " has no egress");
  return it->second.get();
}

Result<uint16_t> SwitchHost::AddForward(uint32_t network_id, Ipv4Addr guest_ip, uint16_t guest_port,
                                        Ipv4Addr listen_ip, uint16_t listen_port) {
  std::lock_guard lock(mu_);
  VMG_ASSIGN_OR_RETURN(EgressGateway * gateway, FindGateway(network_id));
  bool ours = false;
  for (Port* p : Find(network_id)->ports())
    ours = ours || (!p->identity.router && guest_ip != 0 && p->identity.ip == guest_ip);
  if (!ours)
    return MakeError(ErrorCode::kNotFound, FormatIpv4(guest_ip) + " is not a NIC of network " +
                                               std::to_string(network_id) + " on this host");
  return gateway->AddForward(guest_ip, guest_port, listen_ip, listen_port);
}

Status SwitchHost::RemoveForward(uint32_t network_id, Ipv4Addr listen_ip, uint16_t listen_port) {
  std::lock_guard lock(mu_);
  VMG_ASSIGN_OR_RETURN(EgressGateway * gateway, FindGateway(network_id));
  return gateway->RemoveForward(listen_ip, listen_port);
}

Result<std::vector<PortForward>> SwitchHost::GetForwards(uint32_t network_id) const {
  std::lock_guard lock(mu_);
  VMG_ASSIGN_OR_RETURN(EgressGateway * gateway, FindGateway(network_id));
  return gateway->forwards();
}

Result<EgressCounters> SwitchHost::GetEgressCounters(uint32_t network_id) const {
  std::lock_guard lock(mu_);
  VMG_ASSIGN_OR_RETURN(EgressGateway * gateway, FindGateway(network_id));
  return gateway->counters();
}

Status SwitchHost::Register(Port* port) {
  port->token = next_token_++;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = port->token;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, port->fd.get(), &ev) != 0) return Errno("epoll_ctl");
  return Status::Ok();
}

Status SwitchHost::AddPort(uint32_t network_id, const PortConfig& pc) {
  std::lock_guard lock(mu_);
  VirtualSwitch* sw = Find(network_id);
  if (!sw) return NoNetwork(network_id);
  VMG_ASSIGN_OR_RETURN(Port * port, sw->AddPort(pc));
  if (Status st = Register(port); !st.ok()) {
    (void)sw->RemovePort(pc.name);
    return st;
  }
  sources_[port->token] = Source{sw, port};
  return Status::Ok();
}

Status SwitchHost::RemovePort(uint32_t network_id, const std::string& name) {
  std::lock_guard lock(mu_);
  VirtualSwitch* sw = Find(network_id);
  if (!sw) return NoNetwork(network_id);
  Port* port = sw->FindPort(name);
  if (!port) return MakeError(ErrorCode::kNotFound, "no port " + name);
  if (port->identity.router)
    return MakeError(ErrorCode::kInvalidArgument, "the egress port goes with its network");
  if (auto g = gateways_.find(network_id); g != gateways_.end() && port->identity.ip != 0)
    g->second->RemoveForwardsTo(port->identity.ip);
  sources_.erase(port->token);
  return sw->RemovePort(name);
}

Status SwitchHost::SetRemote(uint32_t network_id, const std::vector<PeerHost>& peers,
                             const std::vector<RemoteNic>& nics) {
  std::lock_guard lock(mu_);
  VirtualSwitch* sw = Find(network_id);
  if (!sw) return NoNetwork(network_id);
  for (const PeerHost& p : peers)
    if (p.id == options_.host_id)
      return MakeError(ErrorCode::kInvalidArgument, "this host cannot be its own peer");
  return sw->SetRemote(peers, nics);
}

Status SwitchHost::InstallTunnelKey(uint32_t network_id, uint32_t epoch,
                                    std::span<const uint8_t> key, KeyUse use) {
  std::lock_guard lock(mu_);
  VirtualSwitch* sw = Find(network_id);
  if (!sw) return NoNetwork(network_id);
  return sw->InstallTunnelKey(epoch, key, use);
}

Result<PortCounters> SwitchHost::GetPortCounters(uint32_t network_id,
                                                 const std::string& name) const {
  std::lock_guard lock(mu_);
  VirtualSwitch* sw = Find(network_id);
  if (!sw) return NoNetwork(network_id);
  Port* port = sw->FindPort(name);
  if (!port) return MakeError(ErrorCode::kNotFound, "no port " + name);
  return port->counters;
}

Result<TunnelCounters> SwitchHost::GetTunnelCounters(uint32_t network_id) const {
  std::lock_guard lock(mu_);
  VirtualSwitch* sw = Find(network_id);
  if (!sw) return NoNetwork(network_id);
  return sw->tunnel_counters();
}

TunnelCounters SwitchHost::host_tunnel_counters() const {
  std::lock_guard lock(mu_);
  return host_counters_;
}

void SwitchHost::Loop() {
  pthread_setname_np(pthread_self(), "vnet-switch");  // for top and the benchmark
  epoll_event events[64];
  while (!stop_.load()) {
    int n = epoll_wait(epoll_.get(), events, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // only EBADF/EINVAL: a bug; the destructor still joins
    }
    std::lock_guard lock(mu_);
    for (int i = 0; i < n && !stop_.load(); ++i) {
      const uint64_t token = events[i].data.u64;
      if (token == kWakeToken) continue;
      if (token == kTunnelToken) {
        ReadTunnel();
        continue;
      }
      auto it = sources_.find(token);
      if (it == sources_.end()) continue;  // removed after epoll_wait returned
      ReadPort(*it->second.sw, *it->second.port);
    }
  }
}

void SwitchHost::ReadPort(VirtualSwitch& sw, Port& port) {
  const size_t batch = options_.batch;
  // A few batches per wake-up while the port has more (saves epoll_wait
  // calls under load); then back to the loop so other ports get their turn.
  for (int round = 0; round < kRoundsPerWakeup; ++round) {
    for (size_t i = 0; i < batch; ++i) {
      rx_iovs_[i] = iovec{&rx_data_[i * kRxSlot], kMaxFrameLen + 1};
      rx_msgs_[i].msg_hdr = msghdr{};
      rx_msgs_[i].msg_hdr.msg_iov = &rx_iovs_[i];
      rx_msgs_[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(port.fd.get(), rx_msgs_.data(), static_cast<unsigned>(batch), MSG_DONTWAIT,
                     nullptr);
    if (n <= 0) return;
    SwitchIo io{tx_, scratch_, tunnel_.get()};
    for (int i = 0; i < n; ++i) {
      const mmsghdr& m = rx_msgs_[static_cast<size_t>(i)];
      const bool truncated = (m.msg_hdr.msg_flags & MSG_TRUNC) != 0 || m.msg_len > kMaxFrameLen;
      // Each frame needs at most one scratch slot (a reply or a sealed copy).
      sw.HandleFromPort(port, {&rx_data_[static_cast<size_t>(i) * kRxSlot], m.msg_len}, truncated,
                        io);
    }
    tx_.Flush();
    scratch_.Reset();
    if (static_cast<size_t>(n) < batch) return;
  }
}

void SwitchHost::ReadTunnel() {
  const size_t batch = options_.batch;
  for (size_t i = 0; i < batch; ++i) {
    rx_iovs_[i] = iovec{&rx_data_[i * kRxSlot], kRxSlot};
    rx_msgs_[i] = mmsghdr{};
    rx_msgs_[i].msg_hdr.msg_iov = &rx_iovs_[i];
    rx_msgs_[i].msg_hdr.msg_iovlen = 1;
  }
  int n =
      recvmmsg(tunnel_.get(), rx_msgs_.data(), static_cast<unsigned>(batch), MSG_DONTWAIT, nullptr);
  if (n <= 0) return;
  SwitchIo io{tx_, scratch_, tunnel_.get()};
  for (int i = 0; i < n; ++i) {
    const mmsghdr& m = rx_msgs_[static_cast<size_t>(i)];
    std::span<const uint8_t> pkt(&rx_data_[static_cast<size_t>(i) * kRxSlot], m.msg_len);
    if (m.msg_hdr.msg_flags & MSG_TRUNC) {
      host_counters_.Drop(TunnelDrop::kTruncated);  // larger than any frame we send
      continue;
    }
    TunnelHeaderParse hp = ParseTunnelHeader(pkt);
    if (!hp.ok()) {
      host_counters_.Drop(hp.error);
      continue;
    }
    VirtualSwitch* sw = Find(hp.header.network_id);
    if (!sw) {
      host_counters_.Drop(TunnelDrop::kUnknownNetwork);
      continue;
    }
    sw->HandleFromTunnel(pkt, io);
  }
  tx_.Flush();
  scratch_.Reset();
}

}  // namespace vmgrid::vnet
