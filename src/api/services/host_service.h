// HostService: the controller's side of its hosts — joining (the join token
// buys a host its credentials), heartbeats (a host's report updates its
// record and capacity) and reconciliation of the VM records with what the
// host's agent runs, plus the host views of the REST API.
//
// Dependencies are passed in (the store, the placement index, the host
// credentials, a clock, and which VMs have an operation in flight), so the
// service runs in unit tests on a SQLite store without a grid.
// Thread-safe: every method (heartbeats of many hosts arrive at once).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "api/services/failed_writes.h"
#include "common/clock.h"
#include "common/result.h"
#include "proto/host_report.h"
#include "store/store.h"

namespace vmgrid {

class CapacityIndex;
class HostCredentials;
class HostFailureService;

class HostService {
 public:
  using InFlightFn = std::function<bool(const std::string& vm_id)>;
  // `tls`: the controller talks TLS to agents (so agent URLs must be https
  // except on loopback). All references must outlive the service.
  HostService(Store& store, CapacityIndex& index, const HostCredentials& credentials,
              const Clock& clock, InFlightFn in_flight, bool tls);

  // The credentials of host `name` for a join-token holder: refused
  // (kAlreadyExists) while the host is up, so a stolen join token cannot
  // take over a live host. {"name", "host_token", "agent_api_token"}.
  Result<nlohmann::json> Register(const std::string& name);

  // A heartbeat of host `caller` (the name its credential belongs to): a
  // host speaks only for itself (kPermissionDenied). Records the capacity,
  // reconciles the VM records with the report, and notes the images the
  // host caches. `peer_ip` is the address the heartbeat came from: the
  // host's tunnel endpoint is recorded only if it is that address, so a
  // stolen host credential cannot point the peers' tunnel traffic at
  // someone else (a reflection attack); otherwise it is ignored and logged.
  Result<HeartbeatReply> Heartbeat(const std::string& caller, const HostReport& report,
                                   const std::string& peer_ip);

  // Brings the records of `host`'s VMs in line with what its agent reports
  // (received at `received_ms`): the agent is the authority on what runs,
  // the controller on what should. Records changed in the last 5 s and VMs
  // with an operation in flight are left alone. A VM the host runs that has
  // no record at all (deleted while the host was cut off) and has stayed so
  // for kUnrecordedGraceMs is added to `destroy` (the heartbeat answer's
  // stale_vms: the agent destroys it, keeping a workspace file); until then
  // it is only logged. Returns whether the records matched the report with
  // nothing left to do.
  bool Reconcile(const Host& host, const std::vector<VmStatus>& reported, int64_t received_ms,
                 std::vector<std::string>* destroy = nullptr);
  // How long a VM must run unrecorded before its host is told to destroy it
  // (a margin for records written by another controller in flight, and for
  // clocks: the grace counts on this controller's clock from the first report).
  static constexpr int64_t kUnrecordedGraceMs = 60'000;

  // An agent's URL: http(s)://HOST:PORT[/PATH]; with TLS, plain HTTP only on
  // loopback (a controller serving TLS never sends an agent token in the
  // clear).
  Status CheckAgentUrl(const std::string& url) const;

  // One page (common/paging.h) in name order: {"hosts": [...], "next"}.
  Result<nlohmann::json> List(bool admin, const PageRequest& page);
  Result<nlohmann::json> Get(const std::string& ref, bool admin);
  // The host as the REST API shows it; the admin also sees its URL, VM count
  // and image cache statistics.
  nlohmann::json HostJson(const Host& h, bool admin);

  // Where the admin's host view finds a running drain (DrainService::
  // Running): set once, before the service is used.
  void SetDrainStatus(std::function<nlohmann::json(const std::string& host_id)> status) {
    drain_status_ = std::move(status);
  }

  // Where heartbeats get their lease and a failed host learns its stale VMs
  // (docs/host-failure.md): set once, before the service is used. Without
  // it heartbeats grant no lease (agents never fence).
  void SetFailureDetector(HostFailureService* failures) { failures_ = failures; }

  // Creates again a VM whose record is `creating` on its host, holding its
  // room, while no operation of this controller runs for it and its agent
  // does not know it: the controller that accepted the create stopped before
  // the agent call (docs/ha.md). VmCreateService::Relaunch. Set once, before
  // the service is used; without it (or when it refuses) such a VM becomes
  // `error` ("the create was interrupted").
  using RelaunchFn = std::function<Status(const Vm& vm)>;
  void SetRelaunch(RelaunchFn relaunch) { relaunch_ = std::move(relaunch); }

  // What the store's writes dropped by reconciliation count (each is logged).
  int64_t failed_writes() const { return failed_writes_.total(); }

  // Heartbeats answered since the start, by how they gave their VM list:
  // in full, or by the digest of the list last acknowledged; and those
  // refused because this controller does not know that digest (the agent
  // then sends the list in full).
  struct HeartbeatCounts {
    int64_t full = 0;
    int64_t same_as = 0;
    int64_t unknown_digest = 0;
  };
  HeartbeatCounts heartbeat_counts() const {
    return {beats_full_.load(), beats_same_as_.load(), beats_unknown_digest_.load()};
  }

 private:
  void NoteHostImages(const std::string& host_id, const nlohmann::json& images);
  // The host's part of the virtual networks (api/vnet_plan.h), recomputed
  // when the Store's network generation moved or every kReplanMs.
  Result<HostNetworkPlan> NetworkPlanFor(const Host& host);

  Store& store_;
  CapacityIndex& index_;
  const HostCredentials& credentials_;
  const Clock& clock_;
  const InFlightFn in_flight_;
  const bool tls_;
  std::function<nlohmann::json(const std::string&)> drain_status_;
  HostFailureService* failures_ = nullptr;
  RelaunchFn relaunch_;

  mutable std::mutex mu_;
  // host id -> last reported cache stats
  std::map<std::string, nlohmann::json> host_images_;  // guarded by mu_
  // host id -> its virtual switches' counters, as last reported
  std::map<std::string, nlohmann::json> host_networks_;  // guarded by mu_
  // host name -> the tunnel address last refused (logged once per change); guarded by mu_
  std::map<std::string, std::string> refused_tunnels_;
  // (image, host) recorded in image_cache
  std::set<std::pair<std::string, std::string>> noted_cached_;  // guarded by mu_
  // Per host: the last report that matched the records, and the records'
  // version then (CapacityIndex::VmVersion).
  std::map<std::string, std::pair<size_t, uint64_t>> reconciled_;  // guarded by mu_
  // Per host name: the VM list of its last full report and that list's
  // digest (HeartbeatReply::vms_digest), which its next heartbeats may name
  // instead of sending the list (HostReport::vms_same_as).
  struct ReportedVms {
    std::string digest;
    std::shared_ptr<const std::vector<VmStatus>> vms;
  };
  std::unordered_map<std::string, ReportedVms> reported_;  // guarded by mu_
  // Per host: VMs it reports that have no record, and when each was first
  // reported so (this controller's clock).
  std::map<std::string, std::map<std::string, int64_t>> unrecorded_;  // guarded by mu_
  FailedWrites failed_writes_;
  std::atomic<int64_t> beats_full_{0}, beats_same_as_{0}, beats_unknown_digest_{0};
  struct CachedPlan {
    int64_t generation = 0;
    int64_t computed_ms = 0;
    HostNetworkPlan plan;
  };
  std::map<std::string, CachedPlan> plans_;  // host id -> its last plan; guarded by mu_
};

}  // namespace vmgrid
