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

std::string DiskBaseFor(const Vm& vm, const Image& image, bool image_checkpoint) {
  if (vm.disk != "clone") return "";
  if (!image_checkpoint) return "image";
  nlohmann::json all = nlohmann::json::parse(image.blobs, nullptr, false);
  if (all.is_object() && all.contains("ckpt_memory") && all.contains("ckpt_disk"))
    return nlohmann::json{{"ckpt_memory", all["ckpt_memory"]}, {"ckpt_disk", all["ckpt_disk"]}}
        .dump();
  return "image_checkpoint";
}

namespace {

// Sets spec.start, checkpoint_dir and the checkpoint blobs so that the
// target's top layer lies on what vm.disk_base records; spec.blobs holds the
// image's own versions.
Status LayOnDiskBase(const Vm& vm, const Image& image, VmSpec& spec) {
  spec.start = "boot";
  // A clone of another VM's checkpoint got that checkpoint's disk copied into
  // its top layer (the mirror carries it); the target needs the image only.
  spec.blobs.erase("vm_ckpt_memory");
  spec.blobs.erase("vm_ckpt_disk");
  if (vm.disk != "clone") return Status::Ok();  // a workspace is a whole disk
  std::string base = vm.disk_base;
  if (base.empty() && vm.start == "boot") base = "image";
  if (base == "image") return Status::Ok();
  if (base.empty())
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + vm.name +
                         " was resumed from a checkpoint before this controller recorded what "
                         "its disk lies on; it cannot migrate (stop and start it, or create it "
                         "again)");
  // The target's top layer lies over the same image checkpoint disk as the
  // source's: the agent materializes it (as for a resume) but boots nothing
  // from it; the RAM comes by the migration.
  spec.start = "resume";
  if (base == "image_checkpoint") {
    if (image.ckpt_state != "ready")
      return MakeError(ErrorCode::kFailedPrecondition,
                       "VM " + vm.name + " lies on the post-boot checkpoint of image " +
                           image.name + ", which is gone");
    spec.checkpoint_dir = image.dir + "/checkpoint";
    return Status::Ok();
  }
  nlohmann::json blobs = nlohmann::json::parse(base, nullptr, false);
  for (const char* kind : {"ckpt_memory", "ckpt_disk"}) {
    auto ref = blobs.is_object() && blobs.contains(kind)
                   ? BlobRefFromJson(blobs[kind], kind)
                   : Result<BlobRef>(MakeError(ErrorCode::kInvalidArgument, "missing"));
    if (!ref.ok())
      return MakeError(ErrorCode::kInternal,
                       "VM " + vm.name + ": its recorded disk base is invalid (" + kind + ")");
    spec.blobs[kind] = *ref;
  }
  if (!spec.blobs.count("disk"))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + vm.name + " lies on a checkpoint on the image server, but image " +
                         image.name + " has no versions there");
  return Status::Ok();
}

}  // namespace

Result<VmSpec> MigrationTargetSpec(const Vm& vm, const Image& image,
                                   const std::string& workspace_path, NetworkService& networks) {
  VMG_ASSIGN_OR_RETURN(VmSpec spec, AgentVmSpec(vm, image, workspace_path, false, networks));
  VMG_RETURN_IF_ERROR(LayOnDiskBase(vm, image, spec));
  return spec;
}

Status CheckDiskBase(const Vm& vm, const Image& image) {
  VmSpec probe;
  VMG_ASSIGN_OR_RETURN(probe.blobs, ImageService::AgentBlobs(image, false));
  return LayOnDiskBase(vm, image, probe);
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
