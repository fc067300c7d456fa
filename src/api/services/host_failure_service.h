// HostFailureService: the controller's side of host failure
// (docs/host-failure.md). A host that misses heartbeats becomes suspect
// (placement skips it), then failed; every heartbeat grants the host's agent
// a lease, and a failed host's VMs are recovered elsewhere by their restart
// policy only once lease + grace has passed since the controller last heard
// from it, so that the agent has fenced (paused) them first. A failed host
// that returns is told which of its VMs are no longer its own.
//
// Suspicion and failure are measured with `monotonic` (a steady clock in the
// controller): a duration since the last heartbeat this controller received,
// never a wall time compared across machines. A controller that starts counts
// from its own start.
//
// Several controllers on one database (docs/ha.md): heartbeats may reach any
// of them, and only the leader runs Check. Every controller writes the
// heartbeat times it received to hosts.last_heartbeat_ms (Store's batched
// FlushHeartbeats); Check treats a change of that value since its previous
// pass as a heartbeat heard now, which is never earlier than the heartbeat
// was received, so the timing argument holds. A controller that becomes
// leader calls CountFromNow: every host counts from then.
// Thread-safe: Renew (heartbeats) and Check (the reconcile loop) serialize.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "proto/vm_status.h"
#include "store/store.h"

namespace vmgrid {

// The controller's failure-detection settings (--host-suspect-after,
// --host-failed-after, --host-lease, --host-lease-grace).
struct HostFailureOptions {
  int64_t suspect_after_ms = 10'000;
  int64_t failed_after_ms = 30'000;
  int64_t lease_ms = 10'000;
  int64_t grace_ms = 5'000;
};
// A persistent VM that was stopped or suspended on a failed host is moved,
// stopped, to another host without being started (docs/host-failure.md): its
// record's error text ends with this, and its next start creates it there
// from its workspace's latest durable version instead of asking the agent
// to resume it (the agent has never had it).
inline constexpr char kStartsFromDurable[] =
    "; its next start boots it there from that durable version";
// Whether `vm` is such a VM: stopped, with the mark.
bool StartsFromDurable(const Vm& vm);

// kInvalidArgument unless 0 < suspect_after < failed_after, lease >= 3 s
// (agents heartbeat every 2 s), grace >= 1 s and lease + grace <= failed_after.
Status CheckHostFailureOptions(const HostFailureOptions& o);

class HostFailureService {
 public:
  using InFlightFn = std::function<bool(const std::string& vm_id)>;
  // Starts VM `vm` (in `error` on its failed host, holding no room)
  // elsewhere; `note` goes to its record. With `keep_stopped`, moves it to
  // another host `stopped` instead, without starting it (its note ends with
  // kStartsFromDurable). VmCreateService::Recover.
  using RecoverFn = std::function<Status(const Vm& vm, const std::string& note, bool keep_stopped)>;
  HostFailureService(Store& store, const Clock& monotonic, HostFailureOptions options,
                     InFlightFn in_flight, RecoverFn recover);

  struct Renewal {
    int64_t lease_ms = 0;
    // Reported VMs that are no longer the host's own: to be destroyed.
    std::vector<std::string> stale_vms;
  };
  // A heartbeat of `host` reporting `reported`: notes when it was heard
  // and answers the lease and the stale VMs. A failed host that reports no
  // stale VM any more is cleared (it may take placements again).
  Result<Renewal> Renew(const Host& host, const std::vector<VmStatus>& reported);

  // One pass of the detector: marks hosts suspect, declares failed hosts
  // and recovers their VMs. Returns the ids of hosts declared failed now.
  // `still_leader` is asked before each host's decision (several
  // controllers: the lease may have run out during the pass).
  std::vector<std::string> Check(const std::function<bool()>& still_leader = nullptr);

  // Leadership taken (docs/ha.md): every host counts from now, as at a
  // controller's start; what a previous term of this controller decided is
  // forgotten (the store has it: hosts.failed_ms, the VMs' records).
  void CountFromNow();

  const HostFailureOptions& options() const { return options_; }

 private:
  void RecoverHostLocked(const Host& host, int64_t silent_ms);
  bool FailedLocked(const Host& host) const;
  // "durable version N (taken at TIME)" of a persistent VM's workspace, ""
  // when it has none.
  std::string DurableVersionOf(const Vm& vm) const;

  Store& store_;
  const Clock& monotonic_;
  const HostFailureOptions options_;
  const InFlightFn in_flight_;
  const RecoverFn recover_;
  int64_t started_ms_;  // monotonic: hosts not heard since count from here; guarded by mu_

  mutable std::mutex mu_;
  std::map<std::string, int64_t> last_heard_;  // host id -> monotonic ms; guarded by mu_
  // hosts.last_heartbeat_ms as the previous pass read it (a change: a
  // heartbeat another controller received). Guarded by mu_.
  std::map<std::string, int64_t> seen_heartbeat_;
  std::set<std::string> declared_;  // failed by this controller; guarded by mu_
  // VMs with restart=on-host-failure that found no room yet: retried each
  // pass. Their error says so (kWaitingForRoom), so a controller that
  // restarted or took over the leadership finds them again.
  std::map<std::string, std::string> waiting_room_;  // vm id -> note; guarded by mu_
  static constexpr char kWaitingForRoom[] = "; waiting for a host with room: ";
};

}  // namespace vmgrid
