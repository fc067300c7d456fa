// HostReport: what an agent says about its host — the body of GET
// /agent/v1/status and of every heartbeat (POST /v1/agent/heartbeat): its
// name and agent URL, its capacity, the VMs it runs and its image cache
// statistics. The agent (agent/agent.cc) and the simulated hosts build it,
// the controller parses it with HostReportFromJson.
// Thread-safe (values and pure functions).
#pragma once

#include <cstdint>
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
  bool operator==(const HostReport&) const = default;
};

nlohmann::json ToJson(const HostCapacityReport& c);
nlohmann::json ToJson(const HostReport& r);

// Capacity: integer ranges, disk_free_bytes <= disk_total_bytes, site,
// network and arch valid names.
Result<HostCapacityReport> HostCapacityFromJson(const nlohmann::json& j);
// Strict on types: name and url required (the name a valid host name; the
// URL's form is the controller's policy), capacity an object, vms an array
// of VM statuses (an entry that does not parse is dropped and counted in
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
};
nlohmann::json ToJson(const HeartbeatReply& r);
Result<HeartbeatReply> HeartbeatReplyFromJson(const nlohmann::json& j);

}  // namespace vmgrid
