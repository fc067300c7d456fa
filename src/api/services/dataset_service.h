// DatasetService: users' datasets (docs/datasets.md) — named, versioned,
// immutable blobs (a file's bytes, or an ext4 image of a directory built by
// the CLI) whose bytes live on the image server, chunked and deduplicated
// like images, under the dataset's id ("ds-...").
//
// The CLI never talks to the image server (its token would give every
// image): it sends chunks through the controller, which hashes each one
// itself, and publishes a version naming only chunks it sent during this
// push or that the dataset's latest version already has — so a push cannot
// name (and then pull) another user's chunk, and no route says whether a
// chunk exists elsewhere. Pulls read chunks listed in the version's
// manifest only. A dataset is its owner's; the owner may share it
// read-only with named users (Share), who then see it as OWNER/NAME, pull
// it and attach it read-only. Another user's dataset not shared with the
// caller is not found, exactly as for images. The admin lists, shows and
// removes every dataset but reads the bytes (manifest, chunks) only of its
// own and of those shared with it. A crafted `dir` version is met by the
// pulling CLI, which vets every entry before extracting
// (images/ext4_listing.h).
//
// The controller never interprets a dataset's bytes (a `dir` version is
// opened as a file system only by the pulling user's CLI).
// Thread-safe: every method.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>

#include "api/routes/route.h"
#include "api/services/data_attachments.h"
#include "chunks/manifest.h"
#include "common/result.h"
#include "store/store.h"

namespace vmgrid {

class Admission;
class AgentClient;
class ChunkClient;
class OpQueue;

// The largest dataset version: its draft manifest (67 bytes a chunk) must
// fit a 1 MiB request body.
inline constexpr uint64_t kMaxDatasetBytes = uint64_t{4} << 30;

class DatasetService {
 public:
  // `image_server` may be null (no --image-server): every route then fails
  // with kFailedPrecondition.
  DatasetService(Store& store, ChunkClient* image_server);

  // The caller's datasets and those shared with it ({shared, owner, ref}
  // tell them apart); the admin: every dataset.
  // One page (common/paging.h) in name order: {"datasets": [...], "next"}.
  Result<nlohmann::json> List(const Caller& c, const PageRequest& page);
  // The dataset with its versions; `ref` is NAME, an id or OWNER/NAME
  // (docs/datasets.md, "Sharing"). The owner's view lists shared_with.
  Result<nlohmann::json> Get(const Caller& c, const std::string& ref);
  // Shares (`share`) or unshares the caller's own dataset `ref` with the
  // user named `user`; answers the dataset. Only the owner shares
  // (kPermissionDenied for a dataset shared with the caller or, for the
  // admin, another user's); an unknown user, or unsharing what is not
  // shared -> kNotFound; oneself -> kInvalidArgument. Unsharing stops new
  // pulls and attachments; VMs attached already keep their attachment.
  Result<nlohmann::json> Share(const Caller& c, const std::string& ref, const std::string& user,
                               bool share);
  // Stores one chunk (at most the default chunk size) for a push of the
  // caller's dataset `name`; answers {digest}. The digest is computed here.
  Result<nlohmann::json> PutChunk(const Caller& c, const std::string& name,
                                  const std::string& data);
  // Publishes `draft` (size, chunk_size, chunks) as the next version of the
  // caller's dataset `name` (created on its first version); kind "file" or
  // "dir". Every non-zero chunk must have been sent by this caller for
  // `name` since its last publish or be in the dataset's latest version
  // (else kInvalidArgument). On failure nothing is visible.
  Result<nlohmann::json> Publish(const Caller& c, const std::string& name, const std::string& kind,
                                 Manifest draft);
  // Version 0: the latest. The manifest as the image server has it.
  Result<nlohmann::json> GetManifest(const Caller& c, const std::string& ref, int64_t version);
  // One chunk of a version ({data: base64}); kNotFound unless the version
  // lists it.
  Result<nlohmann::json> GetChunk(const Caller& c, const std::string& ref, int64_t version,
                                  const std::string& digest);
  // The whole dataset, or one version (the dataset stays, perhaps empty).
  // kFailedPrecondition while a VM of its owner has it (that version)
  // attached; kPermissionDenied for a dataset shared with the caller.
  // Another user's VMs that attached it keep reading it (the image server
  // keeps its bytes, docs/datasets.md "Sharing").
  Status Delete(const Caller& c, const std::string& ref, std::optional<int64_t> version);

  // `data commit` (docs/datasets.md, "Commit"): VM `vm_ref` of the caller
  // pushes its read-write attachment of dataset `name` as the dataset's next
  // version, on the operation pool (answers the operation; its result is
  // {dataset, version, chunks, sent_chunks, sent_bytes}). Another user's VM
  // -> kNotFound; no such attachment -> kNotFound; read-only, or a VM
  // neither running nor stopped -> kFailedPrecondition; over the caller's
  // long operations -> kTooManyRequests. Needs EnableCommits.
  Result<nlohmann::json> Commit(const Caller& c, const std::string& vm_ref,
                                const std::string& name);
  // The same, synchronously, for the controller's own use (a job task's
  // output, docs/jobs.md): VM `vm` (already the caller's, any owner)
  // pushes its read-write attachment of `name`; answers the operation's
  // result.
  Result<nlohmann::json> CommitNow(const Vm& vm, const std::string& name);
  // `vm stop/rm --commit` (docs/datasets.md, "Commit"): commits every
  // read-write attachment of the caller's VM `vm_ref`, one after the other,
  // then runs `then` (the stop or the delete) and answers its result. All
  // attachments are checked first (as Commit does) and nothing starts if
  // one cannot be committed. Without read-write attachments `then` runs at
  // once and its answer is returned as it is; else the answer is an
  // operation whose result is {commits: [...], vm: then's answer}. On a
  // failed commit the operation fails naming the dataset, the versions
  // committed before it stay, and `then` does not run (nothing is lost).
  Result<nlohmann::json> CommitAllThen(const Caller& c, const std::string& vm_ref,
                                       const std::string& what,
                                       std::function<Result<nlohmann::json>(const Vm&)> then);
  // Where commits go; set before serving (without it Commit fails).
  void EnableCommits(AgentClient& agents, OpQueue& ops, Admission& long_ops) {
    agents_ = &agents;
    ops_ = &ops;
    long_ops_ = &long_ops;
  }

 private:
  Status NeedServer() const;
  // The version's record (0: the latest) and its manifest.
  Result<std::pair<DatasetVersion, Manifest>> LoadVersion(const Dataset& d, int64_t version);
  nlohmann::json View(const Caller& c, const UsableDataset& u, const std::string& owner_name,
                      const std::vector<DatasetVersion>& versions);
  // The dataset `ref` as the caller sees it: its own, shared with it, or
  // (the admin) anyone's; else kNotFound.
  Result<UsableDataset> Find(const Caller& c, const std::string& ref);
  // ... and only if the caller may read its bytes: its own or shared with it.
  Result<UsableDataset> FindReadable(const Caller& c, const std::string& ref);
  // ... and not one shared with the caller (kPermissionDenied: only its
  // owner may `what` it).
  Result<UsableDataset> FindOwned(const Caller& c, const std::string& ref, const std::string& what);

  // VM `vm`'s read-write attachment of dataset `name`, its index and host,
  // checked as Commit documents.
  struct CommitTarget {
    size_t index = 0;
    VmDataAttachment attachment;
    Host host;
  };
  Result<CommitTarget> FindCommitTarget(const Vm& vm, const std::string& name);
  // Runs `work` as a data_commit operation of the caller's on VM `vm` (one
  // of the caller's long operations); answers the operation.
  Result<nlohmann::json> StartCommit(const Caller& c, const Vm& vm,
                                     std::function<Result<nlohmann::json>()> work);
  // The agent's push of `t` and the version's record.
  Result<nlohmann::json> PushAndRecord(const std::string& vm_id, const CommitTarget& t);
  // A VM of the dataset's owner that has `dataset_id` (version `version`,
  // or any) attached and is not being deleted, if any.
  Result<std::optional<Vm>> AttachedTo(const Dataset& d, std::optional<int64_t> version);

  Store& store_;
  ChunkClient* const image_server_;
  AgentClient* agents_ = nullptr;
  OpQueue* ops_ = nullptr;
  Admission* long_ops_ = nullptr;
  std::mutex mu_;
  // Chunks sent per (owner id, dataset name) since its last publish; guarded by mu_.
  std::map<std::pair<std::string, std::string>, std::set<std::string>> sent_;
  // Chunk sets of recently read versions ("ds-ID:VERSION"); guarded by mu_.
  std::map<std::string, std::shared_ptr<const std::set<std::string>>> manifest_chunks_;
};

}  // namespace vmgrid
