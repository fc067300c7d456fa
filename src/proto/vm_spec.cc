#include "proto/vm_spec.h"

#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;

json ToJson(const ImageFiles& i) {
  return {{"id", i.id},         {"disk", i.disk},     {"format", i.format},
          {"kernel", i.kernel}, {"initrd", i.initrd}, {"append", i.append}};
}

Result<ImageFiles> ImageFilesFromJson(const json& j) {
  if (!j.is_object())
    return MakeError(ErrorCode::kInvalidArgument, "field 'image' must be an object");
  JsonFields im(j, {"id", "disk", "format", "kernel", "initrd", "append"});
  VMG_RETURN_IF_ERROR(im.CheckUnknown());
  ImageFiles i;
  VMG_ASSIGN_OR_RETURN(i.id, im.String("id", false));
  VMG_ASSIGN_OR_RETURN(i.disk, im.String("disk", true));
  VMG_ASSIGN_OR_RETURN(i.format, im.Enum("format", {"raw", "qcow2"}, "raw"));
  VMG_ASSIGN_OR_RETURN(i.kernel, im.String("kernel", false));
  VMG_ASSIGN_OR_RETURN(i.initrd, im.String("initrd", false));
  VMG_ASSIGN_OR_RETURN(i.append, im.String("append", false));
  return i;
}

static json NicsJson(const std::vector<NicSpec>& nics) {
  json a = json::array();
  for (const auto& n : nics) a.push_back(ToJson(n));
  return a;
}

json ToJson(const VmSpec& s) {
  return {{"id", s.id},
          {"name", s.name},
          {"owner_id", s.owner_id},
          {"vcpus", s.vcpus},
          {"memory_mb", s.memory_mb},
          {"disk_mode", s.disk_mode},
          {"image", ToJson(s.image)},
          {"workspace_path", s.workspace_path},
          {"start", s.start},
          {"checkpoint_dir", s.checkpoint_dir},
          {"blobs", BlobsJson(s.blobs)},
          {"nics", NicsJson(s.nics)},
          {"restart", s.restart},
          {"durable", ToJson(s.durable)},
          {"data", DataDisksJson(s.data)}};
}

Result<VmSpec> VmSpecFromJson(const json& j) {
  if (!j.is_object()) return MakeError(ErrorCode::kInvalidArgument, "VM spec must be an object");
  // Strict, checked access: the spec crosses a process boundary.
  JsonFields f(j, kVmSpecFields);
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  VmSpec s;
  VMG_ASSIGN_OR_RETURN(s.id, f.String("id", true));
  VMG_ASSIGN_OR_RETURN(s.name, f.String("name", false, s.id));
  VMG_ASSIGN_OR_RETURN(s.owner_id, f.String("owner_id", false));
  VMG_ASSIGN_OR_RETURN(int64_t vcpus, f.Int("vcpus", 1, 1, 64));
  s.vcpus = static_cast<int>(vcpus);
  VMG_ASSIGN_OR_RETURN(s.memory_mb, f.Int("memory_mb", 256, 32, 1 << 20));
  VMG_ASSIGN_OR_RETURN(s.disk_mode, f.Enum("disk_mode", {"clone", "persistent"}, "clone"));
  VMG_ASSIGN_OR_RETURN(s.workspace_path, f.String("workspace_path", false));
  VMG_ASSIGN_OR_RETURN(s.start, f.Enum("start", {"boot", "resume"}, "boot"));
  VMG_ASSIGN_OR_RETURN(s.checkpoint_dir, f.String("checkpoint_dir", false));
  VMG_ASSIGN_OR_RETURN(s.restart, f.String("restart", false));
  if (!s.restart.empty() && s.restart != "never" && s.restart != "on-host-failure")
    return MakeError(ErrorCode::kInvalidArgument,
                     "field 'restart' is '" + s.restart + "'; it must be never or on-host-failure");
  if (auto b = j.find("blobs"); b != j.end()) {
    VMG_ASSIGN_OR_RETURN(s.blobs, BlobsFromJson(*b));
  }
  if (auto n = j.find("nics"); n != j.end()) {
    VMG_ASSIGN_OR_RETURN(s.nics, NicSpecsFromJson(*n));
  }
  if (auto d = j.find("durable"); d != j.end()) {
    VMG_ASSIGN_OR_RETURN(s.durable, DurableSpecFromJson(*d));
  }
  if (auto d = j.find("data"); d != j.end()) {
    VMG_ASSIGN_OR_RETURN(s.data, DataDisksFromJson(*d));
  }
  auto it = j.find("image");
  if (it == j.end())
    return MakeError(ErrorCode::kInvalidArgument, "field 'image' must be an object");
  VMG_ASSIGN_OR_RETURN(s.image, ImageFilesFromJson(*it));
  if (s.id.empty() || s.id.find('/') != std::string::npos || s.id[0] == '.')
    return MakeError(ErrorCode::kInvalidArgument, "bad VM id '" + s.id + "'");
  if (s.start == "resume" && s.checkpoint_dir.empty() && !s.blobs.count("ckpt_memory") &&
      !s.blobs.count("vm_ckpt_memory"))
    return MakeError(ErrorCode::kInvalidArgument,
                     "resume needs checkpoint_dir or checkpoint blobs");
  if (s.disk_mode == "persistent" && s.workspace_path.empty())
    return MakeError(ErrorCode::kInvalidArgument, "persistent disk needs workspace_path");
  return s;
}

}  // namespace vmgrid
