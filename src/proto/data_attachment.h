// Datasets attached to a VM (docs/datasets.md, "Attaching"): what the
// controller sends an agent for each, inside VmSpec, with its one codec, and
// the rules for a mount point in the guest, shared by the API, the CLI and
// the agent.
//
// An attachment is a version of one of the VM owner's `dir` datasets (an ext4
// image on the image server), seen by the guest as a virtio disk with serial
// "vmgdata-INDEX" and mounted at `mount` by the agent through the guest
// agent; or, with `blank_mb`, a new empty ext4 file system that becomes the
// next version of dataset `dataset` when committed. Read-write attachments
// write to an overlay on the host; nothing reaches the image server before a
// commit.
// Thread-safe (values and pure functions).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"
#include "proto/blob_ref.h"

namespace vmgrid {

// At most this many datasets are attached to one VM.
inline constexpr size_t kMaxDataAttachments = 4;
// A blank (new) attachment's size bounds, in MiB.
inline constexpr int64_t kMinBlankDataMb = 16;
inline constexpr int64_t kMaxBlankDataMb = 4096;

struct DataDiskSpec {
  std::string dataset;  // the dataset's name (errors, the guest's view)
  std::string mount;    // absolute path in the guest (ValidateGuestMountPoint)
  bool rw = false;
  BlobRef blob;          // the version attached (name "ds-ID"); empty when blank
  int64_t blank_mb = 0;  // > 0: a new empty file system of this size instead of a version
  bool operator==(const DataDiskSpec&) const = default;
};
nlohmann::json ToJson(const DataDiskSpec& d);
// Strict: known fields only; a valid mount point; exactly one of blob and
// blank_mb; a blank attachment is read-write.
Result<DataDiskSpec> DataDiskSpecFromJson(const nlohmann::json& j);
nlohmann::json DataDisksJson(const std::vector<DataDiskSpec>& disks);
// Strict as above, at most kMaxDataAttachments, mount points distinct and
// not inside each other.
Result<std::vector<DataDiskSpec>> DataDisksFromJson(const nlohmann::json& j);

// The virtio serial of attachment `index` ("vmgdata-0", ...), by which the
// guest finds its disk.
std::string DataDiskSerial(size_t index);

// A mount point the agent may create and mount on in a guest: absolute,
// normalized (no "." or ".." components, no "//", no trailing "/"), at most
// 200 bytes and 8 components of [A-Za-z0-9._-], and neither "/" nor in a
// system directory (/bin /boot /dev /etc /lib /lib64 /proc /run /sbin /sys
// /usr, or inside one). The error says which rule failed.
Status ValidateGuestMountPoint(const std::string& path);
// Distinct and none inside another (kInvalidArgument naming both).
Status CheckMountPointsApart(const std::vector<std::string>& paths);

// A dataset as users name it (docs/datasets.md, "Sharing"): NAME, the
// caller's own, or OWNER/NAME, user OWNER's dataset NAME (the caller's own
// when OWNER is the caller, else one shared with the caller). Both parts
// follow ValidateName, so a reference never holds more than one '/'.
struct DatasetRef {
  std::string owner;  // "" when not given
  std::string name;
  // The default guest mount point /data/NAME (the name without the owner).
  std::string DefaultMount() const { return "/data/" + name; }
};
Result<DatasetRef> ParseDatasetRef(const std::string& ref);

// The CLI's --data argument, NAME[:VERSION][:MOUNT][:ro|rw] (NAME may be
// OWNER/NAME; version 0 = latest; mount default /data/NAME without the
// owner; mode default ro), as the API's
// {"dataset", "version", "mount", "mode"} object. Validated.
Result<nlohmann::json> ParseDataArgument(const std::string& arg);
// The CLI's --new-data argument, NAME[:MOUNT][:SIZE_MB] (mount default
// /data/NAME; size default: the controller's), as {"dataset", "new": true,
// "mount", "size_mb"?}. Validated.
Result<nlohmann::json> ParseNewDataArgument(const std::string& arg);

}  // namespace vmgrid
