// VmStatus: what an agent says about one of its VMs — the answer to every
// VM operation on the agent API and each entry of a host report's `vms`.
// The state is a VmState string (common/vm_state.h); the controller decides
// what to make of a state it does not know (it waits), so the codec does not
// refuse one. Thread-safe (values and pure functions).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"
#include "proto/durable_workspace.h"

namespace vmgrid {

struct VmStatus {
  std::string id;
  std::string owner_id;
  std::string name;
  std::string state;
  std::string error;
  int pid = 0;
  int vcpus = 0;
  int64_t memory_mb = 0;
  bool has_checkpoint = false;
  int64_t ready_ms = 0;  // duration of the last create/resume until the guest agent answered
  std::string
      restart;  // the spec's restart policy ("" unknown): the lease fence guards all but "never"
  // A persistent VM's latest durable version pushed by this host (empty: none).
  DurableVersion durable = {};
  // The generation id of the VM's running QEMU (a UUID; "" when unknown): a
  // live migration's target starts with it (IncomingRequest::vmgenid).
  std::string vmgenid = {};
  bool operator==(const VmStatus&) const = default;
};

nlohmann::json ToJson(const VmStatus& status);
// Strict on types and ranges (an id is required); fields a newer agent adds
// are ignored, so a controller can be upgraded after its agents.
Result<VmStatus> VmStatusFromJson(const nlohmann::json& j);

}  // namespace vmgrid
