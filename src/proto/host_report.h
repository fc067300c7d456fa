// HostReport: what an agent says about its host — the body of GET
// /agent/v1/status and of every heartbeat (POST /v1/agent/heartbeat): its
// name and agent URL, its capacity, the VMs it runs and its image cache
// statistics. The agent (agent/agent.cc) and the simulated hosts build it,
// the controller parses it with HostReportFromJson.
// Thread-safe (values and pure functions).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "proto/network_plan.h"
#include "proto/vm_status.h"

namespace vmgrid {

struct HostCapacityReport {
  int vcpus = 0;
  int64_t memory_mb = 0;
  int64_t disk_mb = 0;
  int64_t disk_total_bytes = 0;  // of the agent's state directory; 0 = not reported
  int64_t disk_free_bytes = 0;
  bool kvm = false;
  std::string site = "default";
  std::string network = "default";
  std::string arch = "x86_64";
  bool operator==(const HostCapacityReport&) const = default;
};

// The fields a report and its capacity may hold (api/routes.h documents the
// heartbeat with them).
inline constexpr const char* kHostReportFields[] = {"name",   "url",    "capacity", "vms",
                                                    "images", "tunnel", "networks"};
inline constexpr const char* kHostCapacityFields[] = {
    "vcpus", "memory_mb", "disk_mb", "disk_total_bytes", "disk_free_bytes", "kvm",
    "site",  "network",   "arch"};

struct HostReport {
  std::string name;
  std::string url;  // the agent API's base URL
  HostCapacityReport capacity;
  std::vector<VmStatus> vms;
  // The host's image cache and exports (HostImages::StatsJson: {"exports":
  // [{"name": EXPORT_NAME, ...}], counters...}); null without an image server.
  // Kept as JSON: the controller only shows it and reads the export names.
  nlohmann::json images;
  // Where the host's virtual-network tunnels listen; absent until its
  // switches run (an agent starts them at the first heartbeat reply).
  std::optional<TunnelEndpointReport> tunnel = std::nullopt;
  // The host's virtual switches' counters (HostNetworks::Stats: per port
  // and per network, drops by reason); null without. Shown, not parsed.
  nlohmann::json networks;
  // A heartbeat that leaves `vms` out: the host's VM list is the one the
  // controller acknowledged with this digest (HeartbeatReply::vms_digest).
  // On the wire `"vms": {"same_as": DIGEST}`, so a controller that predates
  // it refuses the report (vms must be an array) instead of reading an
  // empty list, and the agent sends the list in full.
  std::string vms_same_as = {};
  bool operator==(const HostReport&) const = default;
};

// A VM-list digest (HeartbeatReply::vms_digest): 1 to 64 lowercase hex digits.
bool ValidVmsDigest(const std::string& digest);

nlohmann::json ToJson(const HostCapacityReport& c);
nlohmann::json ToJson(const HostReport& r);

// Capacity: integer ranges, disk_free_bytes <= disk_total_bytes, site,
// network and arch valid names.
Result<HostCapacityReport> HostCapacityFromJson(const nlohmann::json& j);
// Strict on types: name and url required (the name a valid host name; the
// URL's form is the controller's policy), capacity an object, vms an array
// of VM statuses or {"same_as": DIGEST} (vms_same_as; the digest checked
// for form only) (an entry that does not parse is dropped and counted in
// `dropped_vms`: one odd VM must not silence a host's heartbeats), images an
// object if present. Fields a newer agent adds are ignored, so agents can be
// upgraded before their controller.
struct ParsedHostReport {
  HostReport report;
  int dropped_vms = 0;
};
Result<ParsedHostReport> HostReportFromJson(const nlohmann::json& j);

// The controller's answer to a heartbeat.
struct HeartbeatReply {
  std::string host_id;
  // The host's part of the virtual networks (absent from controllers that
  // predate them).
  std::optional<HostNetworkPlan> networks = std::nullopt;
  // Host failure fencing (docs/host-failure.md): the lease this heartbeat
  // grants, counted by the agent from when it *sent* the heartbeat on its
  // monotonic clock. An agent whose lease runs out pauses its VMs. 0: no
  // lease (controllers that predate it): the agent never fences.
  int64_t lease_ms = 0;
  // VMs this host runs that are no longer its own (recovered elsewhere or
  // declared failed while the host was away, or with no record at all for
  // a minute): the agent destroys them before it resumes anything
  // (docs/host-failure.md, docs/vm-lifecycle.md "After a crash").
  std::vector<std::string> stale_vms = {};
  // The digest of the VM list this heartbeat reported (empty: not kept; a
  // controller that predates it never sends one). While its VM list stays
  // the same the agent sends `vms_same_as` = this digest instead of the
  // list (docs/infosvc.md, "Heartbeats").
  std::string vms_digest = {};
};
nlohmann::json ToJson(const HeartbeatReply& r);
Result<HeartbeatReply> HeartbeatReplyFromJson(const nlohmann::json& j);

// A host's side of the VM-list digest: the list its controller last
// acknowledged. A heartbeat whose list is that one names the digest instead
// (Shorten); a refused short heartbeat is sent again in full at once
// (Forget, then the list). Not thread-safe: one per host's heartbeat loop.
class VmListAck {
 public:
  // Replaces report.vms by vms_same_as if they are the acknowledged list;
  // returns whether it did.
  bool Shorten(HostReport& report) const;
  // An answered heartbeat that reported `vms`: remembers them with the
  // digest of the answer (forgets them if it has none).
  void Acknowledged(std::vector<VmStatus> vms, const std::string& digest);
  void Forget() { digest_.clear(), vms_.clear(); }

  // One heartbeat through `post`: the list named by its digest when it is
  // the acknowledged one, else (or when that is refused) in full; the
  // answer's digest is kept. `*named` says whether it was named first and
  // `*refused` whether that was refused.
  using Post = std::function<Result<nlohmann::json>(const nlohmann::json&)>;
  Result<nlohmann::json> Send(HostReport report, const Post& post, bool* named = nullptr,
                              bool* refused = nullptr);

 private:
  std::string digest_;
  std::vector<VmStatus> vms_;
};

}  // namespace vmgrid
