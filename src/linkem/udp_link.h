// UdpLink: a WAN link between two UDP endpoints A and B, for benchmarks of
// the virtual networks' tunnels (LinkEmulator is its TCP counterpart; the
// kernel here has no netem, so the delay is added in user space).
//
// It owns two loopback sockets. A is told that B is at b_facing_port(), and
// B that A is at a_facing_port(). A datagram from A arrives at the b-facing
// socket and, after the link's delay, leaves through the a-facing one
// towards B, so B sees it come from the address it knows as A's; the other
// way round for B's datagrams.
//
// Link model, per direction: a bottleneck of rate_bps serialises datagrams
// (one starts when the previous one has left); each then travels rtt/2; a
// datagram that finds more than queue_bytes waiting is dropped (drop-tail,
// like a router's buffer) and counted. Datagrams are never reordered or
// duplicated. One thread; Stop() (or the destructor) ends it.
// Thread-safety: stats() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>

#include "common/result.h"
#include "vmm/unique_fd.h"

namespace vmgrid {

struct UdpLinkOptions {
  uint16_t a_port = 0;  // A's UDP port on 127.0.0.1
  uint16_t b_port = 0;  // B's
  std::chrono::microseconds rtt{0};
  uint64_t rate_bps = 0;           // per direction; 0 = unlimited
  size_t queue_bytes = 256 << 10;  // per direction; 20 ms at 100 Mbit/s
};

struct UdpLinkStats {
  uint64_t delivered = 0;  // datagrams, both directions
  uint64_t delivered_bytes = 0;
  uint64_t dropped = 0;  // at a full queue
};

class UdpLink {
 public:
  static Result<std::unique_ptr<UdpLink>> Start(const UdpLinkOptions& options);
  ~UdpLink();
  UdpLink(const UdpLink&) = delete;
  UdpLink& operator=(const UdpLink&) = delete;

  // Where A sends to reach B, and B to reach A (127.0.0.1).
  uint16_t b_facing_port() const { return b_facing_port_; }
  uint16_t a_facing_port() const { return a_facing_port_; }
  UdpLinkStats stats() const;
  void Stop();

 private:
  UdpLink() = default;
  void Run();

  UdpLinkOptions options_;
  vmm::UniqueFd b_facing_;  // A's datagrams arrive here; B's leave from here towards A
  vmm::UniqueFd a_facing_;  // B's datagrams arrive here; A's leave from here towards B
  vmm::UniqueFd wake_;
  uint16_t b_facing_port_ = 0, a_facing_port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> delivered_{0}, delivered_bytes_{0}, dropped_{0};
  std::thread thread_;
};

}  // namespace vmgrid
