// EgressGateway: the NAT through which one virtual network's VMs on this host
// reach outside (`vmgrid net create --egress`) and through which the host
// reaches a guest's TCP port (`vmgrid vm forward`). It is libslirp (user-mode
// TCP/IP, no root, no tap device): the guests' connections become ordinary
// sockets of this process. It sits on the network's switch as a router port
// (VirtualSwitch::AddRouterPort) at the gateway address .1, on one end of a
// unix datagram socket pair; a thread of its own runs slirp's poll loop and
// timers.
//
// What a guest may reach (docs/vnet.md, "Egress and port forwards"): any
// outside IPv4 address by TCP, UDP and ICMP echo, except this host itself —
// its loopback (127.0.0.0/8, and .1 which slirp would map to it), every
// address of its interfaces, 0.0.0.0/8 — link-local 169.254.0.0/16 (cloud
// metadata services), multicast/reserved space and the network's own subnet
// (its VMs are reached through the switch, not the NAT). CheckToOutside
// (egress_policy.h) decides, before slirp sees a frame. No DHCP (the switch serves it), no DNS
// (the switch answers at .2; outside names are not resolved), no IPv6.
//
// Thread-safety: every public method may be called from any thread; a mutex
// guards the slirp instance, the loop holds it while it feeds slirp and
// releases it while it sleeps in poll(). Control methods fail without side
// effects.
#pragma once

#include <poll.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"
#include "vmm/unique_fd.h"
#include "vnet/egress_policy.h"
#include "vnet/frame.h"
#include "vnet/virtual_switch.h"

struct Slirp;

namespace vmgrid::vnet {

// slirp opens one host socket per guest flow (TCP connection, UDP source
// port, ICMP echo): sockets of the agent's process. Beyond this many per
// network, new TCP connections and all UDP/ICMP are dropped, so that a guest
// cannot use up the agent's file descriptors; flows end (and their sockets
// close) as usual and traffic resumes.
inline constexpr size_t kMaxEgressSockets = 256;

struct EgressCounters {
  uint64_t to_outside = 0;        // frames from guests handed to slirp
  uint64_t from_outside = 0;      // frames slirp sent towards guests
  uint64_t to_switch_failed = 0;  // slirp's frames the switch socket refused (full, gone)
  uint64_t guest_errors = 0;      // slirp's guest_error reports (malformed traffic it met)
  uint64_t sockets = 0;           // slirp's host sockets (flows, forwards) at the last poll
  std::array<uint64_t, kEgressDropCount> drops{};  // by EgressDrop

  uint64_t drop(EgressDrop r) const { return drops[static_cast<size_t>(r)]; }
};

// A TCP port forward: the host listens at listen_ip:listen_port and each
// connection is carried to guest_ip:guest_port from the gateway address
// (loopback peers) or from the peer's own address.
struct PortForward {
  Ipv4Addr listen_ip = 0;
  uint16_t listen_port = 0;
  Ipv4Addr guest_ip = 0;
  uint16_t guest_port = 0;
};

// The ports a forward that names none may get: [first, last].
struct PortRange {
  int first = 0, last = 0;
};
inline constexpr int kForwardPortFloor = 20000;
// Below the kernel's ephemeral range (ip_local_port_range), from
// kForwardPortFloor; the ephemeral range itself if that leaves < 1000 ports.
PortRange ForwardPortRange();

class EgressGateway;
using EgressGatewayPtr = std::unique_ptr<EgressGateway>;

class EgressGateway {
 public:
  // Creates the slirp instance for `network` (its subnet, .1 as slirp's
  // host address, its MTU) and starts the thread. `link` is the gateway's
  // end of a connected unix datagram socket pair whose other end is the
  // switch's router port. kInvalidArgument for a network without egress or a
  // bad subnet; kInternal when slirp or a socket cannot be made.
  // max_sockets: see kMaxEgressSockets (tests use less).
  static Result<EgressGatewayPtr> Start(const NetworkConfig& network, vmm::UniqueFd link,
                                        size_t max_sockets = kMaxEgressSockets);
  // Stops the thread, closes every connection and listening socket.
  ~EgressGateway();
  EgressGateway(const EgressGateway&) = delete;
  EgressGateway& operator=(const EgressGateway&) = delete;

  MacAddr mac() const { return mac_; }
  Ipv4Addr ip() const { return scope_.gateway_ip; }

  // Listens at listen_ip:listen_port (0: a free port of ForwardPortRange(),
  // chosen here) and
  // returns the port. The caller checks that guest_ip is a NIC of the
  // network. kInvalidArgument for a guest address outside the subnet or
  // reserved, or port 0; kAlreadyExists when the address is taken (by
  // another forward or anything else on the host); on failure nothing
  // listens. Adding a forward that exists as asked returns its port.
  // (A forward to another guest address or port at the same address is
  // kAlreadyExists.)
  Result<uint16_t> AddForward(Ipv4Addr guest_ip, uint16_t guest_port, Ipv4Addr listen_ip,
                              uint16_t listen_port);
  // Stops listening (connections already made go on until they close).
  // kNotFound if no forward listens there.
  Status RemoveForward(Ipv4Addr listen_ip, uint16_t listen_port);
  // Removes every forward to guest_ip (its NIC left the network).
  void RemoveForwardsTo(Ipv4Addr guest_ip);
  std::vector<PortForward> forwards() const;

  EgressCounters counters() const;

 private:
  struct Timer;
  struct Callbacks;
  EgressGateway(const NetworkConfig& network, vmm::UniqueFd link, size_t max_sockets);
  void Loop();
  void ReadLink();
  void SendToSwitch(std::span<const uint8_t> frame);
  void RunTimers();
  int64_t NextTimerMs() const;
  void RefreshHostAddresses();
  void Wake();
  Status RemoveForwardLocked(Ipv4Addr listen_ip, uint16_t listen_port);
  // Wakes the loop and waits (up to a second) until it has come back from
  // poll(): a socket slirp closed meanwhile is only released by the kernel
  // once no poll() holds it, so its port is free when this returns.
  void WaitForLoopRound(std::unique_lock<std::mutex>& lock);

  const MacAddr mac_;
  const size_t max_sockets_;
  vmm::UniqueFd link_;
  vmm::UniqueFd wake_;  // eventfd: stop, or slirp's sockets changed
  std::atomic<bool> stop_{false};
  std::thread thread_;

  mutable std::mutex mu_;
  // State below is protected by mu_.
  Slirp* slirp_ = nullptr;
  EgressScope scope_;
  std::chrono::steady_clock::time_point addresses_read_{};
  std::vector<std::unique_ptr<Timer>> timers_;
  std::vector<PortForward> forwards_;
  std::minstd_rand rng_{std::random_device{}()};  // picks forward ports
  EgressCounters counters_;
  bool switch_full_ = false;  // a send to the switch timed out in this round of the loop
  std::vector<uint8_t> rx_;
  std::vector<pollfd> pollfds_;  // the loop's, between slirp_pollfds_fill and _poll
  uint64_t rounds_ = 0;          // times the loop came back from poll()
  std::condition_variable round_done_;
};

}  // namespace vmgrid::vnet
