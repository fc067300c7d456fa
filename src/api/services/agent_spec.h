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

}  // namespace vmgrid
