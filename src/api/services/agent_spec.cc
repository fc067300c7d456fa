#include "api/services/agent_spec.h"

#include "api/services/data_attachments.h"
#include "api/services/image_service.h"
#include "api/services/network_service.h"
#include "chunks/workspace_grant.h"

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
  auto data = VmDataFromJson(vm.data);
  if (!data.ok()) return data.error().Wrap("reading the VM's datasets");
  spec.data = DataDiskSpecs(*data);
  return spec;
}

void AddDurable(VmSpec& spec, const Workspace& ws, const std::string& host_name,
                const DurableOptions& options) {
  if (!options.enabled() || spec.disk_mode != "persistent" || ws.id.empty()) return;
  spec.durable.name = ws.id;
  spec.durable.grant = MintWorkspaceGrant(options.grant_key,
                                          {ws.id, host_name, static_cast<uint64_t>(ws.generation)});
  spec.durable.push_interval_s = options.push_interval_s;
  if (ws.durable_version > 0)
    spec.blobs["workspace"] =
        BlobRef{ws.id, static_cast<uint64_t>(ws.durable_version), ws.durable_digest,
                static_cast<uint64_t>(ws.durable_size_bytes)};
}

Workspace DurableRecord(const std::string& host_id, const DurableVersion& d) {
  Workspace w;
  w.id = d.ref.name;
  w.durable_version = static_cast<int64_t>(d.ref.version);
  w.durable_digest = d.ref.digest;
  w.durable_size_bytes = static_cast<int64_t>(d.ref.size);
  w.durable_ms = d.time_ms;
  w.durable_chunks = static_cast<int64_t>(d.chunks);
  w.durable_sent_chunks = static_cast<int64_t>(d.chunks_sent);
  w.durable_sent_bytes = static_cast<int64_t>(d.bytes_sent);
  w.durable_host_id = host_id;
  return w;
}

}  // namespace vmgrid
