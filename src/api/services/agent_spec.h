// AgentVmSpec: the spec the controller sends an agent to run a VM record —
// one place that maps a VM, its image and its network cards onto the wire
// type, for creates and for the target of a migration alike.
#pragma once

#include <string>

#include "common/result.h"
#include "proto/vm_spec.h"
#include "store/store.h"

namespace vmgrid {

class NetworkService;

// Identity, size, disk mode, the image's files and blobs (with the image's
// own checkpoint when image_checkpoint), the workspace's path and the VM's
// network cards. The caller says how it starts (spec.start, checkpoint_dir).
Result<VmSpec> AgentVmSpec(const Vm& vm, const Image& image, const std::string& workspace_path,
                           bool image_checkpoint, NetworkService& networks);

// Durable workspaces (docs/vm-lifecycle.md): how the controller makes them.
struct DurableOptions {
  std::string grant_key{};      // the image server's (chunks/workspace_grant.h); "" = off
  int64_t push_interval_s = 0;  // sent to the agent; 0: on stop and checkpoint only
  bool enabled() const { return !grant_key.empty(); }
};

// Adds to the spec of a persistent VM with workspace `ws` on host
// `host_name` where to push its versions, that host's grant and, when the
// workspace has a durable version, that version (blobs["workspace"]: a host
// that lacks the workspace file makes it from there). No-op when off.
void AddDurable(VmSpec& spec, const Workspace& ws, const std::string& host_name,
                const DurableOptions& options);

// The workspace record fields (Store::RecordDurableVersion) of a durable
// version that host `host_id` pushed.
Workspace DurableRecord(const std::string& host_id, const DurableVersion& d);

}  // namespace vmgrid
