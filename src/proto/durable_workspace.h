// Durable workspaces on the wire (docs/vm-lifecycle.md, "Durable
// workspaces"): what the controller tells an agent about a persistent
// workspace's versions on the image server (DurableSpec, in the VM spec) and
// what the agent answers after a push (DurableVersion, in the VM status).
// Thread-safe (values and pure functions).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"
#include "proto/blob_ref.h"

namespace vmgrid {

struct DurableSpec {
  std::string name;   // image server name of the versions: the workspace id ("ws-...")
  std::string grant;  // chunks/workspace_grant.h, for this host
  // Seconds between pushes of the running VM's disk; 0: on stop and
  // checkpoint only.
  int64_t push_interval_s = 0;
  bool empty() const { return name.empty(); }
  bool operator==(const DurableSpec&) const = default;
};
nlohmann::json ToJson(const DurableSpec& d);
// Strict: name, grant, push_interval_s; name must start with "ws-".
Result<DurableSpec> DurableSpecFromJson(const nlohmann::json& j);

// One pushed version and what its push cost.
struct DurableVersion {
  BlobRef ref;
  int64_t time_ms = 0;       // wall clock when the disk was copied (what the version holds)
  uint64_t chunks = 0;       // non-zero chunks of the disk
  uint64_t chunks_sent = 0;  // chunks the image server lacked: the only ones that travelled
  uint64_t bytes_sent = 0;
  // "stop", "checkpoint" or "interval"; "commit" for a dataset's version
  // pushed from a VM (agent/guest_data.h).
  std::string trigger;
  bool empty() const { return ref.empty(); }
  bool operator==(const DurableVersion&) const = default;
};
nlohmann::json ToJson(const DurableVersion& d);
Result<DurableVersion> DurableVersionFromJson(const nlohmann::json& j);

}  // namespace vmgrid
