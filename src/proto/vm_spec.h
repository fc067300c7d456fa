// VmSpec: what the controller sends an agent to create a VM (POST
// /agent/v1/vms) and what the agent keeps as the VM's spec.json, with its one
// codec. The controller fills it (api/services), the agent and the simulated
// hosts parse it with VmSpecFromJson; nothing else builds or reads that JSON.
//
// Adding a field: a member here (a struct of its own with its own codec
// when it has parts), one line in ToJson, one in VmSpecFromJson with its
// validation, the name in kVmSpecFields, and proto_test's round trip. Older
// spec.json files lack it, so its default must mean "none".
// Thread-safe (values and pure functions).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"
#include "proto/blob_ref.h"
#include "proto/data_attachment.h"
#include "proto/durable_workspace.h"
#include "proto/network_plan.h"

namespace vmgrid {

// The image files a VM boots from (absolute paths on the host, or names the
// agent resolves through the image server when `blobs` are given).
struct ImageFiles {
  std::string id;
  std::string disk;
  std::string format;  // "raw" or "qcow2"
  std::string kernel;  // empty: boot from the disk
  std::string initrd;
  std::string append;
  bool operator==(const ImageFiles&) const = default;
};
nlohmann::json ToJson(const ImageFiles& image);
// Strict: known fields only, disk required, format raw|qcow2 (default raw).
Result<ImageFiles> ImageFilesFromJson(const nlohmann::json& j);

struct VmSpec {
  std::string id;
  std::string name;
  std::string owner_id;
  int vcpus = 1;
  int64_t memory_mb = 256;
  std::string disk_mode = "clone";  // "clone" or "persistent"
  ImageFiles image;
  std::string workspace_path;  // persistent: the user's full-copy disk
  std::string start = "boot";  // "boot" or "resume"
  // For start == "resume": a checkpoint directory (memory.state, disk.qcow2,
  // meta.json), either an image's post-boot checkpoint or another VM's.
  std::string checkpoint_dir;
  // Image server versions this VM's files come from, when the controller
  // has an image server (proto/blob_ref.h). With an image server configured
  // on the agent they take the place of the paths above.
  BlobSet blobs;
  // One NIC per virtual network, in order (proto/network_plan.h); older
  // spec.json files have none.
  std::vector<NicSpec> nics;
  // The VM's restart policy, "never" or "on-host-failure" ("" in specs
  // written before it was sent). Only a VM that may be restarted elsewhere
  // can run twice, so the agent's lease fence stops every VM whose policy
  // is not "never" (docs/host-failure.md, "Fencing").
  std::string restart;
  // Persistent disks with durable workspaces (proto/durable_workspace.h):
  // where to push versions; older spec.json files have none (no pushes).
  // blobs["workspace"], when present, is the version a missing workspace
  // file is made from (a restart on another host).
  DurableSpec durable = {};
  // Datasets attached (proto/data_attachment.h), disk i with serial
  // DataDiskSerial(i); older spec.json files have none.
  std::vector<DataDiskSpec> data;
  bool operator==(const VmSpec&) const = default;
};

// The fields a VM spec may hold (anything else is refused).
inline constexpr const char* kVmSpecFields[] = {
    "id",        "name",  "owner_id",       "vcpus",   "memory_mb",
    "disk_mode", "image", "workspace_path", "start",   "checkpoint_dir",
    "blobs",     "nics",  "restart",        "durable", "data"};

nlohmann::json ToJson(const VmSpec& spec);
// Strict: unknown fields, wrong types and out-of-range values are errors
// naming the field; a resume needs a checkpoint (a directory or checkpoint
// blobs), a persistent disk a workspace path; the id is a path component.
Result<VmSpec> VmSpecFromJson(const nlohmann::json& j);

}  // namespace vmgrid
