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

// What a clone created from `image` lies on (Vm::disk_base): "image", or
// when it resumes the image's post-boot checkpoint, that checkpoint's blob
// versions (a JSON object), or "image_checkpoint" without an image server.
// A persistent VM: "" (its workspace is a whole disk).
std::string DiskBaseFor(const Vm& vm, const Image& image, bool image_checkpoint);

// The spec a live migration's target lays the VM out by: as AgentVmSpec,
// with start and blobs such that its new top layer lies on the same base as
// the source's (docs/migration.md). FailedPrecondition when the record does
// not say what the disk lies on (a resumed clone recorded before schema
// migration 24) or names a base the image no longer has files for.
Result<VmSpec> MigrationTargetSpec(const Vm& vm, const Image& image,
                                   const std::string& workspace_path, NetworkService& networks);
// MigrationTargetSpec's refusals alone, without building the spec (no NIC
// reads): for the checks before a migration starts.
Status CheckDiskBase(const Vm& vm, const Image& image);

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
