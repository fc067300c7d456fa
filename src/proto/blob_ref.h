// Image server versions as the protocol names them: a BlobRef (one
// published version of one name), the set of them a VM boots from (by kind),
// and the naming convention of image server names (`IMAGEID-disk`,
// `IMAGEID-kernel`, ...), which host reports echo back as export names.
// Thread-safe (values and pure functions).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace vmgrid {

// One published version on the image server, as the controller records it.
struct BlobRef {
  std::string name;
  uint64_t version = 0;
  std::string digest;  // the manifest's digest: 64 lowercase hex digits
  uint64_t size = 0;
  bool empty() const { return name.empty(); }
  bool operator==(const BlobRef&) const = default;
};
nlohmann::json ToJson(const BlobRef& b);
// Strict: exactly name, version, digest, size; `what` names it in errors.
Result<BlobRef> BlobRefFromJson(const nlohmann::json& j, const std::string& what);

// The versions a VM's files come from, by kind: "disk", "kernel", "initrd";
// an image's post-boot checkpoint "ckpt_memory" + "ckpt_disk"; another VM's
// checkpoint "vm_ckpt_memory" + "vm_ckpt_disk"; a durable workspace version
// "workspace" (proto/durable_workspace.h).
using BlobSet = std::map<std::string, BlobRef>;
nlohmann::json BlobsJson(const BlobSet& blobs);
// Strict: known kinds only, each a valid BlobRef; disk required when any; a
// checkpoint's memory and disk come together.
Result<BlobSet> BlobsFromJson(const nlohmann::json& j);

// The image server name of one file of an image: IMAGEID-KIND (KIND one of
// disk, kernel, initrd). A host's NBD exports carry the same names, which is
// how a host report tells the controller which images a host caches.
struct ExportRef {
  std::string image_id;
  std::string kind;  // "disk", "kernel" or "initrd"
  std::string Name() const { return image_id + "-" + kind; }
};
// The image file names only (a checkpoint's names end in -memory/-disk too,
// but contain "-ckpt-"); nullopt for any other name.
std::optional<ExportRef> ParseExportRef(std::string_view name);

}  // namespace vmgrid
