#include "api/services/agent_spec.h"

#include "api/services/image_service.h"
#include "api/services/network_service.h"

namespace vmgrid {

Result<VmSpec> AgentVmSpec(const Vm& vm, const Image& image, const std::string& workspace_path,
                           bool image_checkpoint, NetworkService& networks) {
  VmSpec spec;
  spec.id = vm.id;
  spec.name = vm.name;
  spec.owner_id = vm.owner_id;
  spec.vcpus = vm.vcpus;
  spec.memory_mb = vm.memory_mb;
  spec.disk_mode = vm.disk;
  spec.image = ImageService::AgentImageFiles(image);
  spec.workspace_path = workspace_path;
  spec.start = vm.start;
  spec.restart = vm.restart;
  VMG_ASSIGN_OR_RETURN(spec.blobs, ImageService::AgentBlobs(image, image_checkpoint));
  auto nics = networks.VmNicSpecs(vm.id);
  if (!nics.ok()) return nics.error().Wrap("reading the VM's network cards");
  spec.nics = std::move(*nics);
  return spec;
}

}  // namespace vmgrid
