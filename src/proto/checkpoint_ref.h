// Checkpoints as the protocol names them.
//  - CheckpointRef: where a VM's latest checkpoint is (GET
//    /agent/v1/vms/ID/checkpoint answers {"dir"}; with ?publish=true also its
//    two image server versions "vm_ckpt_memory", "vm_ckpt_disk"), which a
//    create on another host resumes from.
//  - ImageCheckpointRequest/-Result: POST /agent/v1/image-checkpoints, an
//    image's post-boot checkpoint made on one host, either written to a
//    directory or pushed to the image server as "ckpt_memory"/"ckpt_disk".
//  - The image server names of checkpoint files: OWNER-ckpt-memory and
//    OWNER-ckpt-disk, OWNER an image id (post-boot checkpoint) or a VM id.
//  - The throwaway VMs an agent boots to make an image checkpoint have ids
//    "ckpt-..." and are never recorded by the controller.
// Thread-safe (values and pure functions).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "common/result.h"
#include "proto/blob_ref.h"
#include "proto/vm_spec.h"

namespace vmgrid {

struct CheckpointRef {
  std::string dir;  // on the host that has it; "" if the VM has none
  BlobRef memory;   // published only (else empty)
  BlobRef disk;     // published only (else empty)
  bool published() const { return !memory.empty(); }
  bool operator==(const CheckpointRef&) const = default;
};
nlohmann::json ToJson(const CheckpointRef& c);
// {"dir"} and optionally both published versions; `require_published` fails
// when they are missing (the answer to ?publish=true).
Result<CheckpointRef> CheckpointRefFromJson(const nlohmann::json& j, bool require_published);

// The image server name stem of a checkpoint of `owner` (an image or VM id):
// its files are STEM-memory and STEM-disk.
std::string CheckpointBlobStem(const std::string& owner);
// The id prefix of the agent's throwaway image-checkpoint VMs (NewId(prefix)).
inline constexpr const char* kImageCheckpointVmPrefix = "ckpt";
bool IsImageCheckpointVm(std::string_view vm_id);

struct ImageCheckpointRequest {
  ImageFiles image;
  BlobSet blobs;  // the image's disk/kernel/initrd versions (with an image server)
  int vcpus = 1;
  int64_t memory_mb = 256;
  std::string target_dir;  // absolute, on the host; or
  std::string push_as;     // a stem (CheckpointBlobStem) to publish under
  bool operator==(const ImageCheckpointRequest&) const = default;
};
nlohmann::json ToJson(const ImageCheckpointRequest& r);
// Strict: known fields; exactly one of target_dir (absolute) and push_as
// (STEM-memory and STEM-disk must be valid names).
Result<ImageCheckpointRequest> ImageCheckpointRequestFromJson(const nlohmann::json& j);

struct ImageCheckpointResult {
  std::string dir;  // target_dir, when written there
  BlobRef memory;   // when pushed
  BlobRef disk;     // when pushed
  bool operator==(const ImageCheckpointResult&) const = default;
};
nlohmann::json ToJson(const ImageCheckpointResult& r);
// `pushed`: the request named push_as, so both versions are required.
Result<ImageCheckpointResult> ImageCheckpointResultFromJson(const nlohmann::json& j, bool pushed);

}  // namespace vmgrid
