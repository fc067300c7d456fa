#include "proto/checkpoint_ref.h"

#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;

json ToJson(const CheckpointRef& c) {
  json out = {{"dir", c.dir}};
  if (c.published()) {
    out["vm_ckpt_memory"] = ToJson(c.memory);
    out["vm_ckpt_disk"] = ToJson(c.disk);
  }
  return out;
}

Result<CheckpointRef> CheckpointRefFromJson(const json& j, bool require_published) {
  if (!j.is_object())
    return MakeError(ErrorCode::kInvalidArgument, "checkpoint reference must be an object");
  // An agent's answer: fields a newer agent adds are ignored.
  JsonFields f(j, {"dir", "vm_ckpt_memory", "vm_ckpt_disk"});
  CheckpointRef c;
  VMG_ASSIGN_OR_RETURN(c.dir, f.String("dir", false));
  const bool mem = j.contains("vm_ckpt_memory"), disk = j.contains("vm_ckpt_disk");
  if (mem != disk || (require_published && !mem))
    return MakeError(ErrorCode::kInvalidArgument,
                     "a published checkpoint names both vm_ckpt_memory and vm_ckpt_disk");
  if (mem) {
    VMG_ASSIGN_OR_RETURN(c.memory, BlobRefFromJson(j["vm_ckpt_memory"], "vm_ckpt_memory"));
    VMG_ASSIGN_OR_RETURN(c.disk, BlobRefFromJson(j["vm_ckpt_disk"], "vm_ckpt_disk"));
  }
  return c;
}

std::string CheckpointBlobStem(const std::string& owner) { return owner + "-ckpt"; }

bool IsImageCheckpointVm(std::string_view vm_id) {
  return vm_id.starts_with(std::string(kImageCheckpointVmPrefix) + "-");
}

json ToJson(const ImageCheckpointRequest& r) {
  json out = {{"image", ToJson(r.image)}, {"vcpus", r.vcpus}, {"memory_mb", r.memory_mb}};
  if (!r.blobs.empty()) out["blobs"] = BlobsJson(r.blobs);
  if (!r.push_as.empty()) out["push_as"] = r.push_as;
  if (!r.target_dir.empty()) out["target_dir"] = r.target_dir;
  return out;
}

Result<ImageCheckpointRequest> ImageCheckpointRequestFromJson(const json& j) {
  if (!j.is_object())
    return MakeError(ErrorCode::kInvalidArgument, "image checkpoint request must be an object");
  JsonFields f(j, {"image", "blobs", "vcpus", "memory_mb", "target_dir", "push_as"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  ImageCheckpointRequest r;
  VMG_ASSIGN_OR_RETURN(int64_t vcpus, f.Int("vcpus", 1, 1, 64));
  r.vcpus = static_cast<int>(vcpus);
  VMG_ASSIGN_OR_RETURN(r.memory_mb, f.Int("memory_mb", 256, 32, 1 << 20));
  VMG_ASSIGN_OR_RETURN(r.target_dir, f.String("target_dir", false));
  VMG_ASSIGN_OR_RETURN(r.push_as, f.String("push_as", false));
  if (r.push_as.empty() && (r.target_dir.empty() || r.target_dir[0] != '/'))
    return MakeError(ErrorCode::kInvalidArgument, "target_dir must be absolute");
  if (!r.push_as.empty())
    for (const char* suffix : {"-memory", "-disk"})
      VMG_RETURN_IF_ERROR(ValidateName("image", r.push_as + suffix));
  // The image and its blobs, checked as a VM spec checks them.
  VMG_ASSIGN_OR_RETURN(VmSpec spec, VmSpecFromJson({{"id", "image-checkpoint"},
                                                    {"image", j.value("image", json::object())},
                                                    {"blobs", j.value("blobs", json::object())}}));
  r.image = std::move(spec.image);
  r.blobs = std::move(spec.blobs);
  return r;
}

json ToJson(const ImageCheckpointResult& r) {
  if (!r.memory.empty()) return {{"ckpt_memory", ToJson(r.memory)}, {"ckpt_disk", ToJson(r.disk)}};
  return {{"dir", r.dir}};
}

Result<ImageCheckpointResult> ImageCheckpointResultFromJson(const json& j, bool pushed) {
  if (!j.is_object())
    return MakeError(ErrorCode::kInvalidArgument, "image checkpoint result must be an object");
  // An agent's answer: fields a newer agent adds are ignored.
  JsonFields f(j, {"dir", "ckpt_memory", "ckpt_disk"});
  ImageCheckpointResult r;
  VMG_ASSIGN_OR_RETURN(r.dir, f.String("dir", false));
  if (pushed) {
    if (!j.contains("ckpt_memory") || !j.contains("ckpt_disk"))
      return MakeError(ErrorCode::kInternal,
                       "the agent's answer lacks the published checkpoint versions");
    VMG_ASSIGN_OR_RETURN(r.memory, BlobRefFromJson(j["ckpt_memory"], "ckpt_memory"));
    VMG_ASSIGN_OR_RETURN(r.disk, BlobRefFromJson(j["ckpt_disk"], "ckpt_disk"));
  }
  return r;
}

}  // namespace vmgrid
