// LinkEmulator: a TCP proxy that makes a loopback path behave like a WAN
// link (propagation delay and a bandwidth cap in each direction), for
// benchmarks of the image server, NBD and migration over "remote" links. The
// kernel here has no netem qdisc, so delay is added in user space.
//
// Link model, per direction (client->target and target->client):
//   - A bottleneck of rate_bps serialises bytes: a byte may start across the
//     link only when the link is free, and occupies it for 8/rate_bps seconds
//     (a token bucket with a bucket of one segment: no bursts above the rate).
//     By default the bottleneck is shared by all connections, like a real
//     link; shared_link=false gives each connection its own.
//   - After serialisation each byte travels for rtt/2 (propagation delay).
//   - So every byte arrives no earlier than rtt/2 after it was read, and the
//     sustained throughput in a direction never exceeds rate_bps.
//   - Bytes are never reordered, lost or duplicated. A half-close (FIN) is
//     delivered after the data before it, also delayed by rtt/2. A reset or
//     read error on one side is delivered as a FIN after the data.
//   - When the bottleneck queue holds more than queue_bytes, the emulator
//     stops reading the sender (TCP flow control pushes back, nothing is
//     dropped), as a router's buffer would fill.
//   - The TCP handshake is not delayed (the client's connect() completes at
//     once); the emulator connects to the target rtt/2 after accepting, and if
//     the target refuses, closes the client another rtt/2 later. The first
//     bytes of a connection are delayed exactly like later ones.
//
// Threads: one accept thread; per connection a main thread (connect, then
// writer client->target) plus a reader client->target and a reader and writer
// target->client. Fine up to a few hundred connections and ~1 Gbit/s.
//
// Thread-safety: stats() may be called from any thread; Start and Stop must
// not race each other. The destructor calls Stop.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/result.h"
#include "vmm/unique_fd.h"

namespace vmgrid::linkem {

struct LinkEmulatorOptions {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;  // 0: any free port (returned by Start)
  std::string target_host = "127.0.0.1";
  uint16_t target_port = 0;
  std::chrono::microseconds rtt{0};  // rtt/2 is added in each direction
  uint64_t rate_bps = 0;             // bits per second per direction; 0 = unlimited
  bool shared_link = true;           // one bottleneck per direction for all connections
  // Bottleneck buffer per direction (per link): beyond this the sender is not
  // read. At 100 Mbit/s, 1 MiB is 84 ms of queueing delay.
  size_t queue_bytes = 1 << 20;
  // Memory cap per direction per connection for bytes read but not yet
  // delivered (queued plus propagating). Caps throughput at about
  // max_inflight_bytes / (rtt/2) when rate_bps is 0.
  size_t max_inflight_bytes = 8 << 20;
  size_t max_connections = 256;  // beyond this, new clients are closed at once
};

struct LinkEmulatorStats {
  uint64_t connections = 0;         // accepted and proxied since Start
  uint64_t active_connections = 0;  // currently open
  uint64_t rejected = 0;            // closed at once: max_connections reached
  uint64_t target_failures = 0;     // the target refused or was unreachable
  uint64_t bytes_to_target = 0;     // delivered client -> target
  uint64_t bytes_to_client = 0;     // delivered target -> client
};

class LinkEmulator {
 public:
  explicit LinkEmulator(LinkEmulatorOptions options);
  ~LinkEmulator();
  LinkEmulator(const LinkEmulator&) = delete;
  LinkEmulator& operator=(const LinkEmulator&) = delete;

  // Resolves the target, binds the listener and starts accepting. Returns
  // the bound port. kInvalidArgument for an unresolvable host;
  // kFailedPrecondition if already started; kInternal for socket errors.
  // On failure: no side effects (nothing listening, no threads).
  Result<int> Start();

  // Stops accepting and tears down every connection at once (data still in
  // the emulated link is dropped, both sides see the sockets close), joins
  // all threads. Idempotent; does not block on slow peers.
  void Stop();

  LinkEmulatorStats stats() const;

  struct Link;        // one direction's bottleneck (link_emulator.cc)
  struct Connection;  // one proxied connection (link_emulator.cc)

 private:
  void AcceptLoop();
  void ReapFinished();

  LinkEmulatorOptions options_;
  sockaddr_storage target_addr_{};  // resolved by Start
  socklen_t target_addr_len_ = 0;
  std::unique_ptr<Link> link_to_target_;  // shared links (shared_link)
  std::unique_ptr<Link> link_to_client_;
  vmm::UniqueFd listen_fd_;
  vmm::UniqueFd stop_fd_;  // eventfd: readable once Stop has begun
  std::atomic<bool> stopping_{false};
  bool started_ = false;
  std::thread accept_thread_;

  mutable std::mutex mu_;
  std::list<std::unique_ptr<Connection>> connections_;  // guarded by mu_

  std::atomic<uint64_t> connections_total_{0};
  std::atomic<uint64_t> rejected_{0};
  std::atomic<uint64_t> target_failures_{0};
  std::atomic<uint64_t> bytes_to_target_{0};
  std::atomic<uint64_t> bytes_to_client_{0};
};

}  // namespace vmgrid::linkem
