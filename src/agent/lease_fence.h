// LeaseFence: the agent's half of host-failure fencing (docs/host-failure.md).
// Each heartbeat answer grants a lease; when it runs out before the next
// answer renews it, the host's QEMUs are stopped (SIGSTOP: no vCPU, no I/O,
// no network), so that a host cut off from the controller stops all side
// effects before the controller may start its VMs elsewhere.
//
// The deadline is watched by a small process of its own (forked at Start, in
// memory shared with the agent): it fences even when the agent itself is
// frozen (SIGSTOP, a stuck disk) or was killed. It uses only
// async-signal-safe calls (the agent is multi-threaded when it forks). Times
// are CLOCK_MONOTONIC (std::chrono::steady_clock) on this host only.
// Thread-safe.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/result.h"

namespace vmgrid {

class LeaseFence {
 public:
  // Forks the watchdog. Until the first Renew there is no lease and nothing
  // is fenced (controllers that grant none never make it fence).
  static Result<std::unique_ptr<LeaseFence>> Start();
  // Tells the watchdog to exit (an agent that stops cleanly stops fencing).
  ~LeaseFence();
  LeaseFence(const LeaseFence&) = delete;
  LeaseFence& operator=(const LeaseFence&) = delete;

  // A heartbeat sent at `sent` was answered with a lease of `lease_ms`: the
  // lease now ends at sent + lease_ms (counted from the sending, so never
  // later than the controller's own count, which starts when it received it).
  void Renew(std::chrono::steady_clock::time_point sent, int64_t lease_ms);
  // The QEMU processes to stop when the lease runs out (replaces the list;
  // at most kMaxPids).
  void SetPids(const std::vector<pid_t>& pids);
  // Whether the watchdog stopped the VMs since the last Resume.
  bool fenced() const;
  // After a Renew: continues `pids` (SIGCONT) and clears fenced().
  void Resume(const std::vector<pid_t>& pids);
  // The watchdog's pid (tests).
  pid_t watchdog_pid() const { return child_; }

  static constexpr int kMaxPids = 1024;
  // The memory shared with the watchdog (defined in lease_fence.cc).
  struct Shared;

 private:
  LeaseFence(Shared* shared, pid_t child) : shared_(shared), child_(child) {}
  Shared* shared_;
  pid_t child_;
};

}  // namespace vmgrid
