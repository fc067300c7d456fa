#include "vnet/egress_gateway.h"

#include <arpa/inet.h>
#include <libslirp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <sstream>

#include "common/util.h"

namespace vmgrid::vnet {

namespace {

constexpr int kFramesPerWakeup = 64;
// How long slirp's thread may wait for room in the switch's socket before a
// frame is dropped (TCP retransmits it). Short: a control call may wait for
// the gateway's lock meanwhile.
constexpr int kSendTimeoutMs = 20;
// How often the host's addresses are read again (an interface may gain one).
constexpr auto kAddressRefresh = std::chrono::seconds(1);

Error Errno(const std::string& what) {
  return MakeError(ErrorCode::kInternal, what + ": " + std::strerror(errno));
}
Error Invalid(const std::string& m) { return MakeError(ErrorCode::kInvalidArgument, m); }

}  // namespace

// Linux's default ephemeral range 32768-60999 gives 20000-32767.
PortRange ForwardPortRange() {
  int lo = 32768, hi = 60999;
  if (auto text = ReadFile("/proc/sys/net/ipv4/ip_local_port_range", 256); text.ok()) {
    std::istringstream in(*text);
    int a = 0, b = 0;
    if (in >> a >> b && a > 0 && b >= a && b < 65536) lo = a, hi = b;
  }
  if (lo - 1 - kForwardPortFloor >= 1000) return {kForwardPortFloor, lo - 1};
  return {lo, hi};
}

namespace {

in_addr InAddr(Ipv4Addr ip) {
  in_addr a{};
  a.s_addr = htonl(ip);
  return a;
}

bool InNet(Ipv4Addr ip, Ipv4Addr net, int prefix) {
  const Ipv4Addr mask = prefix == 0 ? 0 : ~Ipv4Addr{0} << (32 - prefix);
  return (ip & mask) == net;
}

int64_t MonotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace

// A slirp timer: slirp asks for it (timer_new), arms it in milliseconds of
// clock_get_ns's clock (timer_mod) and frees it; the loop runs due ones.
struct EgressGateway::Timer {
  SlirpTimerCb cb = nullptr;
  void* cb_opaque = nullptr;
  int64_t expire_ms = -1;  // -1: not armed
};

// libslirp's callbacks: C functions that find the gateway in `opaque`. They
// run on the thread that called into slirp, with mu_ held.
struct EgressGateway::Callbacks {
  static ssize_t SendPacket(const void* buf, size_t len, void* opaque) {
    auto* g = static_cast<EgressGateway*>(opaque);
    g->SendToSwitch({static_cast<const uint8_t*>(buf), len});
    return static_cast<ssize_t>(len);
  }
  static void GuestError(const char*, void* opaque) {
    ++static_cast<EgressGateway*>(opaque)->counters_.guest_errors;
  }
  static int64_t ClockGetNs(void*) { return MonotonicNs(); }
  static void* TimerNew(SlirpTimerCb cb, void* cb_opaque, void* opaque) {
    auto* g = static_cast<EgressGateway*>(opaque);
    auto t = std::make_unique<Timer>();
    t->cb = cb;
    t->cb_opaque = cb_opaque;
    Timer* raw = t.get();
    g->timers_.push_back(std::move(t));
    return raw;
  }
  static void TimerFree(void* timer, void* opaque) {
    auto& timers = static_cast<EgressGateway*>(opaque)->timers_;
    std::erase_if(timers, [timer](const std::unique_ptr<Timer>& t) { return t.get() == timer; });
  }
  static void TimerMod(void* timer, int64_t expire_ms, void*) {
    static_cast<Timer*>(timer)->expire_ms = expire_ms;
  }
  static void RegisterPollFd(int, void*) {}  // the loop asks slirp for its fds each round
  static void UnregisterPollFd(int, void*) {}
  static void Notify(void* opaque) { static_cast<EgressGateway*>(opaque)->Wake(); }

  static int AddPoll(int fd, int events, void* opaque) {
    auto& fds = static_cast<EgressGateway*>(opaque)->pollfds_;
    short ev = 0;
    if (events & SLIRP_POLL_IN) ev |= POLLIN;
    if (events & SLIRP_POLL_OUT) ev |= POLLOUT;
    if (events & SLIRP_POLL_PRI) ev |= POLLPRI;
    fds.push_back(pollfd{fd, ev, 0});
    return static_cast<int>(fds.size() - 1);
  }
  static int GetREvents(int idx, void* opaque) {
    auto& fds = static_cast<EgressGateway*>(opaque)->pollfds_;
    if (idx < 0 || static_cast<size_t>(idx) >= fds.size()) return 0;
    const short r = fds[static_cast<size_t>(idx)].revents;
    int out = 0;
    if (r & POLLIN) out |= SLIRP_POLL_IN;
    if (r & POLLOUT) out |= SLIRP_POLL_OUT;
    if (r & POLLPRI) out |= SLIRP_POLL_PRI;
    if (r & POLLERR) out |= SLIRP_POLL_ERR;
    if (r & POLLHUP) out |= SLIRP_POLL_HUP;
    return out;
  }
};

EgressGateway::EgressGateway(const NetworkConfig& network, vmm::UniqueFd link, size_t max_sockets)
    : mac_(EgressGatewayMac(network.gateway_ip())),
      max_sockets_(max_sockets),
      link_(std::move(link)),
      rx_(kMaxFrameLen + 1) {
  scope_.subnet = network.subnet;
  scope_.netmask = network.netmask();
  scope_.gateway_ip = network.gateway_ip();
}

Result<EgressGatewayPtr> EgressGateway::Start(const NetworkConfig& network, vmm::UniqueFd link,
                                              size_t max_sockets) {
  if (!network.egress) return Invalid("network " + network.name + " has no egress");
  if (network.prefix_len < 8 || network.prefix_len > 29 ||
      (network.subnet & ~network.netmask()) != 0)
    return Invalid("bad subnet " + FormatIpv4(network.subnet) + "/" +
                   std::to_string(network.prefix_len));
  if (InNet(network.subnet, 0x7f000000, 8) || InNet(network.subnet, 0xa9fe0000, 16) ||
      InNet(network.subnet, 0xe0000000, 3) || InNet(network.subnet, 0, 8))
    return Invalid("subnet " + FormatIpv4(network.subnet) + " is loopback, link-local or special");
  if (network.mtu != 0 && (network.mtu < 576 || network.mtu > 1500))
    return Invalid("mtu must be 576..1500");
  if (!link.valid()) return Invalid("egress gateway without a link to the switch");
  EgressGatewayPtr g(new EgressGateway(network, std::move(link), max_sockets));

  timeval tv{0, kSendTimeoutMs * 1000};
  if (setsockopt(g->link_.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
    return Errno("setsockopt SO_SNDTIMEO");
  g->wake_.Reset(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!g->wake_.valid()) return Errno("eventfd");
  VMG_ASSIGN_OR_RETURN(g->scope_.host_addresses, LocalIpv4Addresses());
  g->addresses_read_ = std::chrono::steady_clock::now();

  SlirpConfig cfg{};
  cfg.version = 4;  // up to disable_dhcp
  cfg.restricted = 0;
  cfg.in_enabled = true;
  cfg.vnetwork = InAddr(network.subnet);
  cfg.vnetmask = InAddr(network.netmask());
  cfg.vhost = InAddr(network.gateway_ip());
  cfg.in6_enabled = false;
  // slirp needs a nameserver address; the switch's (.2) is the one guests
  // are told, and with disable_dns slirp neither answers nor redirects it
  // (CheckToOutside drops it anyway: it is inside the subnet).
  cfg.vnameserver = InAddr(network.service_ip());
  cfg.vdhcp_start = InAddr(network.subnet + 10);  // unused: DHCP is off
  cfg.if_mtu = network.mtu;                       // 0: slirp's default (1500)
  cfg.if_mru = network.mtu;
  // slirp maps the gateway address (and 255.255.255.255) to the host's
  // 127.0.0.1 unless told not to: a guest must never reach the host's own
  // services (the agent's and controller's APIs).
  cfg.disable_host_loopback = true;
  cfg.enable_emu = false;
  cfg.disable_dns = true;
  cfg.disable_dhcp = true;

  static const SlirpCb callbacks = [] {
    SlirpCb cb{};
    cb.send_packet = Callbacks::SendPacket;
    cb.guest_error = Callbacks::GuestError;
    cb.clock_get_ns = Callbacks::ClockGetNs;
    cb.timer_new = Callbacks::TimerNew;
    cb.timer_free = Callbacks::TimerFree;
    cb.timer_mod = Callbacks::TimerMod;
    cb.register_poll_fd = Callbacks::RegisterPollFd;
    cb.unregister_poll_fd = Callbacks::UnregisterPollFd;
    cb.notify = Callbacks::Notify;
    return cb;
  }();
  {
    std::lock_guard lock(g->mu_);
    g->slirp_ = slirp_new(&cfg, &callbacks, g.get());
  }
  if (!g->slirp_) return MakeError(ErrorCode::kInternal, "slirp_new failed");
  g->thread_ = std::thread([p = g.get()] { p->Loop(); });
  return g;
}

EgressGateway::~EgressGateway() {
  stop_.store(true);
  Wake();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mu_);
  if (slirp_) slirp_cleanup(slirp_);  // closes slirp's sockets and frees its timers
  slirp_ = nullptr;
}

void EgressGateway::Wake() {
  if (!wake_.valid()) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_.get(), &one, sizeof one);
}

void EgressGateway::SendToSwitch(std::span<const uint8_t> frame) {
  // Blocking, with a short timeout: the switch drains its socket quickly,
  // and slirp's TCP would rather wait a moment than retransmit. Once a send
  // timed out, the rest of this round does not wait (the switch may itself
  // be waiting, e.g. for a control call that waits for our lock).
  const int flags = MSG_NOSIGNAL | (switch_full_ ? MSG_DONTWAIT : 0);
  if (::send(link_.get(), frame.data(), frame.size(), flags) ==
      static_cast<ssize_t>(frame.size())) {
    ++counters_.from_outside;
    return;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK) switch_full_ = true;
  ++counters_.to_switch_failed;
}

void EgressGateway::RefreshHostAddresses() {
  const auto now = std::chrono::steady_clock::now();
  if (now - addresses_read_ < kAddressRefresh) return;
  addresses_read_ = now;
  // On failure keep the last list (an interface cannot vanish from it
  // unsafely: an old address merely stays refused).
  if (auto a = LocalIpv4Addresses(); a.ok()) {
    for (Ipv4Addr ip : *a)
      if (!std::binary_search(scope_.host_addresses.begin(), scope_.host_addresses.end(), ip))
        scope_.host_addresses.insert(
            std::lower_bound(scope_.host_addresses.begin(), scope_.host_addresses.end(), ip), ip);
  }
}

void EgressGateway::ReadLink() {
  for (int i = 0; i < kFramesPerWakeup; ++i) {
    const ssize_t n = ::recv(link_.get(), rx_.data(), rx_.size(), MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0) return;  // EAGAIN: drained
    if (n > static_cast<ssize_t>(kMaxFrameLen)) {
      ++counters_.drops[static_cast<size_t>(EgressDrop::kMalformed)];
      continue;
    }
    const std::span<const uint8_t> data(rx_.data(), static_cast<size_t>(n));
    FrameParse parse = ParseFrame(data);
    EgressDrop why = parse.ok() ? EgressDrop::kNone : EgressDrop::kMalformed;
    if (why == EgressDrop::kNone) {
      RefreshHostAddresses();
      why = CheckToOutside(parse.frame, scope_);
    }
    if (why == EgressDrop::kNone && counters_.sockets >= max_sockets_ && parse.frame.ipv4 &&
        StartsNewFlow(parse.frame))
      why = EgressDrop::kTooManyFlows;
    if (why != EgressDrop::kNone) {
      ++counters_.drops[static_cast<size_t>(why)];
      continue;
    }
    ++counters_.to_outside;
    slirp_input(slirp_, data.data(), static_cast<int>(data.size()));
  }
}

int64_t EgressGateway::NextTimerMs() const {
  int64_t next = -1;
  for (const auto& t : timers_)
    if (t->expire_ms >= 0 && (next < 0 || t->expire_ms < next)) next = t->expire_ms;
  return next;
}

void EgressGateway::RunTimers() {
  // A callback may arm, add or free timers: look again after each one.
  for (;;) {
    const int64_t now_ms = MonotonicNs() / 1000000;
    Timer* due = nullptr;
    for (const auto& t : timers_)
      if (t->expire_ms >= 0 && t->expire_ms <= now_ms) due = t.get();
    if (!due) return;
    due->expire_ms = -1;
    due->cb(due->cb_opaque);
  }
}

void EgressGateway::Loop() {
  pthread_setname_np(pthread_self(), "vnet-egress");
  while (!stop_.load()) {
    int timeout_ms = -1;
    {
      std::lock_guard lock(mu_);
      pollfds_.clear();
      pollfds_.push_back(pollfd{wake_.get(), POLLIN, 0});
      pollfds_.push_back(pollfd{link_.get(), POLLIN, 0});
      uint32_t slirp_timeout = UINT32_MAX;
      slirp_pollfds_fill(slirp_, &slirp_timeout, Callbacks::AddPoll, this);
      counters_.sockets = pollfds_.size() - 2;
      if (slirp_timeout != UINT32_MAX)
        timeout_ms = static_cast<int>(std::min<uint32_t>(slirp_timeout, INT_MAX));
      if (const int64_t next = NextTimerMs(); next >= 0) {
        const int64_t wait = std::max<int64_t>(0, next - MonotonicNs() / 1000000);
        if (timeout_ms < 0 || wait < timeout_ms) timeout_ms = static_cast<int>(wait);
      }
    }
    // pollfds_ is only touched by this thread; control calls change slirp's
    // sockets meanwhile (a new forward), and Wake() makes us fill again.
    const int n = ::poll(pollfds_.data(), pollfds_.size(), timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // EFAULT/EINVAL: a bug; the destructor still joins
    }
    std::lock_guard lock(mu_);
    ++rounds_;
    round_done_.notify_all();
    if (stop_.load()) return;
    switch_full_ = false;
    if (n > 0 && (pollfds_[0].revents & POLLIN)) {
      uint64_t v;
      [[maybe_unused]] ssize_t r = read(wake_.get(), &v, sizeof v);
    }
    if (n > 0 && (pollfds_[1].revents & POLLIN)) ReadLink();
    slirp_pollfds_poll(slirp_, 0, Callbacks::GetREvents, this);
    RunTimers();
  }
}

Result<uint16_t> EgressGateway::AddForward(Ipv4Addr guest_ip, uint16_t guest_port,
                                           Ipv4Addr listen_ip, uint16_t listen_port) {
  std::lock_guard lock(mu_);
  if ((guest_ip & scope_.netmask) != scope_.subnet || guest_ip == scope_.subnet ||
      guest_ip == scope_.gateway_ip || guest_ip == scope_.subnet + 2 ||
      guest_ip == (scope_.subnet | ~scope_.netmask))
    return Invalid("guest address " + FormatIpv4(guest_ip) + " is not a VM address of the network");
  if (guest_port == 0) return Invalid("guest port 0");
  for (const PortForward& f : forwards_) {
    if (listen_port == 0 || f.listen_ip != listen_ip || f.listen_port != listen_port) continue;
    if (f.guest_ip == guest_ip && f.guest_port == guest_port) return listen_port;  // as asked
    return MakeError(ErrorCode::kAlreadyExists, "a forward already listens at " +
                                                    FormatIpv4(listen_ip) + ":" +
                                                    std::to_string(listen_port));
  }
  // Port 0: a free port of our own range, below the kernel's ephemeral
  // range. A port from that range (what bind to port 0 hands out) is
  // unsafe: once a resumed VM's forward lets go of it for a moment, any
  // outgoing connection of the host may take it as its source port, and the
  // forward cannot come back (that happened under load).
  const PortRange range = ForwardPortRange();
  std::uniform_int_distribution<int> pick(range.first, range.last);
  for (int attempt = 0; attempt < (listen_port == 0 ? 32 : 1); ++attempt) {
    uint16_t port = listen_port != 0 ? listen_port : static_cast<uint16_t>(pick(rng_));
    bool ours = false;
    for (const PortForward& f : forwards_)
      ours = ours || (f.listen_ip == listen_ip && f.listen_port == port);
    if (ours) continue;
    errno = 0;
    if (slirp_add_hostfwd(slirp_, /*is_udp=*/0, InAddr(listen_ip), port, InAddr(guest_ip),
                          guest_port) == 0) {
      forwards_.push_back(PortForward{listen_ip, port, guest_ip, guest_port});
      Wake();  // the loop polls the new listening socket from its next round
      return port;
    }
    if (errno != EADDRINUSE)
      return Errno("listen at " + FormatIpv4(listen_ip) + ":" + std::to_string(port));
    if (listen_port != 0)
      return MakeError(ErrorCode::kAlreadyExists,
                       FormatIpv4(listen_ip) + ":" + std::to_string(port) + " is in use");
  }
  return MakeError(ErrorCode::kUnavailable, "no free port at " + FormatIpv4(listen_ip));
}

Status EgressGateway::RemoveForwardLocked(Ipv4Addr listen_ip, uint16_t listen_port) {
  auto it = std::find_if(forwards_.begin(), forwards_.end(), [&](const PortForward& f) {
    return f.listen_ip == listen_ip && f.listen_port == listen_port;
  });
  if (it == forwards_.end())
    return MakeError(ErrorCode::kNotFound,
                     "no forward at " + FormatIpv4(listen_ip) + ":" + std::to_string(listen_port));
  if (slirp_remove_hostfwd(slirp_, /*is_udp=*/0, InAddr(listen_ip), listen_port) != 0)
    spdlog::warn("egress: slirp had no listener at {}:{} for the forward being removed",
                 FormatIpv4(listen_ip), listen_port);
  forwards_.erase(it);
  return Status::Ok();
}

void EgressGateway::WaitForLoopRound(std::unique_lock<std::mutex>& lock) {
  const uint64_t before = rounds_;
  Wake();
  round_done_.wait_for(lock, std::chrono::seconds(1),
                       [&] { return rounds_ != before || stop_.load(); });
}

Status EgressGateway::RemoveForward(Ipv4Addr listen_ip, uint16_t listen_port) {
  std::unique_lock lock(mu_);
  Status st = RemoveForwardLocked(listen_ip, listen_port);
  if (st.ok()) WaitForLoopRound(lock);
  return st;
}

void EgressGateway::RemoveForwardsTo(Ipv4Addr guest_ip) {
  std::unique_lock lock(mu_);
  std::vector<PortForward> gone;
  for (const PortForward& f : forwards_)
    if (f.guest_ip == guest_ip) gone.push_back(f);
  for (const PortForward& f : gone) (void)RemoveForwardLocked(f.listen_ip, f.listen_port);
  if (!gone.empty()) WaitForLoopRound(lock);
}

std::vector<PortForward> EgressGateway::forwards() const {
  std::lock_guard lock(mu_);
  return forwards_;
}

EgressCounters EgressGateway::counters() const {
  std::lock_guard lock(mu_);
  return counters_;
}

}  // namespace vmgrid::vnet
