// Datasets attached to VMs, on the controller (docs/datasets.md,
// "Attaching"): the `data` field of POST /v1/vms as parsed, what the store
// keeps for each attachment (vms.data, resolved once at create: the version
// and its blob, so a restart elsewhere attaches the same bytes), and the
// spec the agent gets (proto/data_attachment.h).
//
// The VM's owner's own datasets can be attached, and, read-only, other
// users' datasets shared with the owner (OWNER/NAME, docs/datasets.md
// "Sharing"); any other is not found. Only `dir` versions (ext4 images) are
// attached: a `file` version is not a file system.
// Thread-safe (pure functions and calls on the store).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"
#include "proto/data_attachment.h"
#include "store/store.h"

namespace vmgrid {

// A dataset a user may use (docs/datasets.md, "Sharing").
struct UsableDataset {
  Dataset dataset;
  bool shared = false;     // another user's, shared with this one: read-only
  std::string owner_name;  // set when shared
  // NAME for one's own, OWNER/NAME for a shared one.
  std::string Ref() const { return shared ? owner_name + "/" + dataset.name : dataset.name; }
};
// The dataset `ref` (NAME, OWNER/NAME or an id) names for user `user_id`:
// its own, or another user's that is shared with it. Anything else —
// missing, or another user's not shared — is kNotFound with the same
// message, so a reference tells nothing about datasets one may not see.
Result<UsableDataset> FindUsableDataset(Store& store, const std::string& user_id,
                                        const std::string& ref);

// One element of POST /v1/vms's `data`.
struct DataRequest {
  std::string dataset;  // the caller's dataset name, or OWNER/NAME of a shared one
  int64_t version = 0;  // 0: the latest
  std::string mount;    // default /data/NAME
  bool rw = false;
  bool create = false;  // "new": a new dataset, empty until committed
  int64_t size_mb = 0;  // of a new one (default 1024)
};
// Strict: {dataset, version?, mount?, mode? ro|rw, new?, size_mb?}; at most
// kMaxDataAttachments, mount points valid and apart, a dataset once.
Result<std::vector<DataRequest>> ParseDataRequests(const nlohmann::json& j);

// An attachment as recorded with the VM.
struct VmDataAttachment {
  std::string dataset_id;  // "ds-..."
  std::string dataset;     // its name; OWNER/NAME when shared with the VM's owner
  int64_t version = 0;     // 0: a new dataset (blank)
  std::string blob_digest;
  int64_t size_bytes = 0;
  std::string mount;
  bool rw = false;
  int64_t blank_mb = 0;  // > 0: new
  bool operator==(const VmDataAttachment&) const = default;
};
std::string VmDataJson(const std::vector<VmDataAttachment>& data);  // "" when empty
// The record's column, strictly ("" = none).
Result<std::vector<VmDataAttachment>> VmDataFromJson(const std::string& text);

// Checks `requests` against the store for `owner_id` and resolves them: each
// dataset is the owner's or shared with it (then read-only, else
// kPermissionDenied), has the version asked for (or any, for the latest)
// and it is a `dir` version; a new one's name is not taken. Nothing is
// written: CreateNewDatasets does that once placement is sure.
Result<std::vector<VmDataAttachment>> ResolveDataRequests(Store& store, const std::string& owner_id,
                                                          const std::vector<DataRequest>& requests);
// Creates the (empty) datasets of the new attachments and fills in their
// ids; on failure the ones it created are removed again.
Status CreateNewDatasets(Store& store, const std::string& owner_id,
                         std::vector<VmDataAttachment>& data);
// Removes new datasets that are still empty (a create that did not happen).
void DropNewDatasets(Store& store, const std::vector<VmDataAttachment>& data);

// The agent's view (VmSpec::data).
std::vector<DataDiskSpec> DataDiskSpecs(const std::vector<VmDataAttachment>& data);

// The API's view of a VM's attachments: [{dataset, version, mount, mode, new}].
nlohmann::json DataAttachmentsView(const std::vector<VmDataAttachment>& data);

}  // namespace vmgrid
