#include "proto/blob_ref.h"

#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;

namespace {

bool IsDigest(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

json ToJson(const BlobRef& b) {
  return {{"name", b.name}, {"version", b.version}, {"digest", b.digest}, {"size", b.size}};
}

Result<BlobRef> BlobRefFromJson(const json& j, const std::string& what) {
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument, what + ": " + why);
  };
  if (!j.is_object()) return bad("must be an object {name, version, digest, size}");
  JsonFields f(j, {"name", "version", "digest", "size"});
  if (Status st = f.CheckUnknown(); !st.ok()) return st.error().Wrap(what);
  BlobRef b;
  auto name = f.String("name", true);
  auto digest = f.String("digest", true);
  auto version = f.Int("version", 0, 1, int64_t{1} << 53);
  auto size = f.Int("size", 0, 1, int64_t{1} << 50);
  if (!name.ok()) return name.error().Wrap(what);
  if (!digest.ok()) return digest.error().Wrap(what);
  if (!version.ok()) return version.error().Wrap(what);
  if (!size.ok()) return size.error().Wrap(what);
  if (!j.contains("version") || !j.contains("size")) return bad("version and size are required");
  if (Status st = ValidateName("image", *name); !st.ok()) return st.error().Wrap(what);
  if (!IsDigest(*digest)) return bad("digest must be 64 lowercase hex digits");
  b.name = *name;
  b.digest = *digest;
  b.version = static_cast<uint64_t>(*version);
  b.size = static_cast<uint64_t>(*size);
  return b;
}

json BlobsJson(const BlobSet& blobs) {
  json out = json::object();
  for (const auto& [kind, ref] : blobs) out[kind] = ToJson(ref);
  return out;
}

Result<BlobSet> BlobsFromJson(const json& j) {
  BlobSet out;
  if (!j.is_object())
    return MakeError(ErrorCode::kInvalidArgument, "field 'blobs' must be an object");
  for (const auto& [kind, ref] : j.items()) {
    if (kind != "disk" && kind != "kernel" && kind != "initrd" && kind != "ckpt_memory" &&
        kind != "ckpt_disk" && kind != "vm_ckpt_memory" && kind != "vm_ckpt_disk" &&
        kind != "workspace")
      return MakeError(ErrorCode::kInvalidArgument,
                       "unknown blob kind '" + kind.substr(0, 40) + "'");
    VMG_ASSIGN_OR_RETURN(out[kind], BlobRefFromJson(ref, "blobs." + kind));
  }
  if (!out.empty() && !out.count("disk"))
    return MakeError(ErrorCode::kInvalidArgument, "blobs must include the disk");
  if (out.count("ckpt_memory") != out.count("ckpt_disk") ||
      out.count("vm_ckpt_memory") != out.count("vm_ckpt_disk"))
    return MakeError(ErrorCode::kInvalidArgument,
                     "a checkpoint's memory and disk blobs come together");
  return out;
}

std::optional<ExportRef> ParseExportRef(std::string_view name) {
  if (name.find("-ckpt-") != std::string_view::npos) return std::nullopt;
  for (std::string_view kind : {"disk", "kernel", "initrd"}) {
    if (name.size() > kind.size() + 1 && name.ends_with(kind) &&
        name[name.size() - kind.size() - 1] == '-')
      return ExportRef{std::string(name.substr(0, name.size() - kind.size() - 1)),
                       std::string(kind)};
  }
  return std::nullopt;
}

}  // namespace vmgrid
