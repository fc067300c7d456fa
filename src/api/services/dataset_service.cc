#include "api/services/dataset_service.h"

#include <spdlog/spdlog.h>

#include <vector>

#include "api/admission.h"
#include "api/agent_client.h"
#include "api/op_queue.h"
#include "api/services/data_attachments.h"
#include "chunks/chunk_client.h"
#include "common/base64.h"
#include "common/http_json.h"
#include "common/util.h"

namespace vmgrid {

using nlohmann::json;

namespace {
constexpr size_t kMaxPendingChunks = size_t{1} << 16;  // per push: 32 GiB at 512 KiB
constexpr size_t kMaxCachedManifests = 64;
constexpr size_t kMaxPendingPushes = 16;  // per user: dataset names with chunks sent, unpublished
}  // namespace

DatasetService::DatasetService(Store& store, ChunkClient* image_server)
    : store_(store), image_server_(image_server) {}

Status DatasetService::NeedServer() const {
  if (!image_server_)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "datasets need an image server (controller --image-server)");
  return Status::Ok();
}

json DatasetService::View(const Caller& c, const UsableDataset& u, const std::string& owner_name,
                          const std::vector<DatasetVersion>& versions) {
  const Dataset& d = u.dataset;
  json vs = json::array();
  for (const auto& v : versions)
    vs.push_back({{"version", v.version},
                  {"kind", v.kind},
                  {"size_bytes", v.size_bytes},
                  {"digest", v.blob_digest},
                  {"chunks", v.chunks},
                  {"sent_chunks", v.sent_chunks},
                  {"sent_bytes", v.sent_bytes},
                  {"reused_chunks", v.chunks - v.sent_chunks},
                  {"created_at", FormatTimeMs(v.created_ms)}});
  json latest = versions.empty() ? json(nullptr) : vs.back();
  return {{"id", d.id},
          {"name", d.name},
          // NAME for the caller's own; OWNER/NAME for another's (shared, or the admin's view).
          {"ref", d.owner_id == c.user.id ? d.name : owner_name + "/" + d.name},
          {"owner_id", d.owner_id},
          {"owner", owner_name},
          {"shared", u.shared},
          {"created_at", FormatTimeMs(d.created_ms)},
          {"latest", latest},
          {"versions", vs}};
}

Result<UsableDataset> DatasetService::Find(const Caller& c, const std::string& ref) {
  auto u = FindUsableDataset(store_, c.user.id, ref);
  if (u.ok() || !c.admin() || u.error().code != ErrorCode::kNotFound) return u;
  // The admin sees (not reads) every dataset: by id, its owner's name, or OWNER/NAME.
  UsableDataset any;
  if (ref.find('/') == std::string::npos) {
    VMG_ASSIGN_OR_RETURN(any.dataset, store_.GetDataset(ref, ""));
    return any;
  }
  VMG_ASSIGN_OR_RETURN(DatasetRef r, ParseDatasetRef(ref));
  VMG_ASSIGN_OR_RETURN(auto found, store_.FindDatasetByOwnerName(r.owner, r.name));
  if (!found) return u.error();
  any.dataset = *found;
  return any;
}

Result<UsableDataset> DatasetService::FindReadable(const Caller& c, const std::string& ref) {
  VMG_ASSIGN_OR_RETURN(UsableDataset u, Find(c, ref));
  // Only the owner and the users it shared with read the bytes, the admin
  // included (docs/datasets.md, "Security").
  if (!u.shared && u.dataset.owner_id != c.user.id)
    return MakeError(ErrorCode::kNotFound, "dataset '" + ref + "' not found");
  return u;
}

Result<UsableDataset> DatasetService::FindOwned(const Caller& c, const std::string& ref,
                                                const std::string& what) {
  VMG_ASSIGN_OR_RETURN(UsableDataset u, Find(c, ref));
  if (u.shared)
    return MakeError(ErrorCode::kPermissionDenied,
                     "dataset " + u.Ref() + " is " + u.owner_name +
                         "'s, shared with you read-only; only its owner can " + what + " it");
  return u;
}

Result<json> DatasetService::List(const Caller& c, const PageRequest& page) {
  VMG_ASSIGN_OR_RETURN(auto own, store_.ListDatasets(c.owner()));
  std::vector<UsableDataset> all;
  for (auto& d : own) all.push_back(UsableDataset{std::move(d), false, ""});
  if (!c.admin()) {
    VMG_ASSIGN_OR_RETURN(auto shared, store_.ListDatasetsSharedWith(c.user.id));
    for (auto& d : shared) all.push_back(UsableDataset{std::move(d), true, ""});
  }
  auto got = PageOf(
      std::move(all), page,
      // One's own before one shared under the same name (names hold no space).
      [](const UsableDataset& u) {
        return u.dataset.name + (u.shared ? " 1" + u.dataset.owner_id : " 0");
      },
      [](const UsableDataset& u) { return u.dataset.id; });
  std::map<std::string, std::string> names;  // owner id -> name
  json out = json::array();
  for (auto& u : got.items) {
    auto& owner = names[u.dataset.owner_id];
    if (owner.empty()) {
      VMG_ASSIGN_OR_RETURN(User user, store_.GetUserById(u.dataset.owner_id));
      owner = user.name;
    }
    if (u.shared) u.owner_name = owner;
    VMG_ASSIGN_OR_RETURN(auto versions, store_.ListDatasetVersions(u.dataset.id));
    json v = View(c, u, owner, versions);
    v.erase("versions");
    v["version_count"] = versions.size();
    out.push_back(v);
  }
  json answer{{"datasets", std::move(out)}};
  AddNext(answer, got.next);
  return answer;
}

Result<json> DatasetService::Get(const Caller& c, const std::string& ref) {
  VMG_ASSIGN_OR_RETURN(UsableDataset u, Find(c, ref));
  VMG_ASSIGN_OR_RETURN(auto versions, store_.ListDatasetVersions(u.dataset.id));
  VMG_ASSIGN_OR_RETURN(User owner, store_.GetUserById(u.dataset.owner_id));
  json view = View(c, u, owner.name, versions);
  if (!u.shared) {
    // Whom it is shared with is the owner's (and the admin's) to know.
    VMG_ASSIGN_OR_RETURN(auto users, store_.ListDatasetShares(u.dataset.id));
    json names = json::array();
    for (const User& x : users) names.push_back(x.name);
    view["shared_with"] = names;
  }
  return view;
}

Result<json> DatasetService::Share(const Caller& c, const std::string& ref, const std::string& user,
                                   bool share) {
  VMG_ASSIGN_OR_RETURN(UsableDataset u, FindOwned(c, ref, share ? "share" : "unshare"));
  if (u.dataset.owner_id != c.user.id)
    return MakeError(ErrorCode::kPermissionDenied, "only the owner of dataset " + ref +
                                                       " can share it (the admin reads no " +
                                                       "other user's datasets)");
  VMG_RETURN_IF_ERROR(ValidateName("user", user));
  auto to = store_.GetUserByName(user);
  if (!to.ok() || (to->role != "user" && to->role != "admin"))
    return MakeError(ErrorCode::kNotFound, "no user named '" + user + "'");
  if (to->id == c.user.id)
    return MakeError(ErrorCode::kInvalidArgument, "dataset " + ref + " is yours already");
  if (share) {
    VMG_RETURN_IF_ERROR(store_.ShareDataset(u.dataset.id, to->id));
  } else {
    VMG_ASSIGN_OR_RETURN(bool was, store_.UnshareDataset(u.dataset.id, to->id));
    if (!was)
      return MakeError(ErrorCode::kNotFound, "dataset " + ref + " is not shared with " + user);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    manifest_chunks_.clear();
  }
  return Get(c, u.dataset.id);
}

Result<json> DatasetService::PutChunk(const Caller& c, const std::string& name,
                                      const std::string& data) {
  VMG_RETURN_IF_ERROR(NeedServer());
  VMG_RETURN_IF_ERROR(ValidateName("dataset name", name));
  if (data.empty() || data.size() > kDefaultChunkSize)
    return MakeError(ErrorCode::kInvalidArgument,
                     "a chunk is 1 to " + std::to_string(kDefaultChunkSize) + " bytes");
  std::string digest = ChunkDigest(data);
  auto key = std::make_pair(c.user.id, name);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!sent_.count(key)) {
      // Pushes never published leave their digests here until the next
      // publish of the name: bound how many names one user may hold.
      size_t pending = 0;
      for (auto it = sent_.lower_bound({c.user.id, ""});
           it != sent_.end() && it->first.first == c.user.id; ++it)
        ++pending;
      if (pending >= kMaxPendingPushes)
        return MakeError(ErrorCode::kResourceExhausted,
                         "too many unfinished pushes; finish one (push it again) first");
    }
    if (sent_[key].size() >= kMaxPendingChunks)
      return MakeError(ErrorCode::kResourceExhausted, "too many chunks in one push");
  }
  VMG_RETURN_IF_ERROR(image_server_->PutChunk(digest, data));
  std::lock_guard<std::mutex> lock(mu_);
  sent_[key].insert(digest);
  return json{{"digest", digest}};
}

Result<std::pair<DatasetVersion, Manifest>> DatasetService::LoadVersion(const Dataset& d,
                                                                        int64_t version) {
  VMG_ASSIGN_OR_RETURN(auto versions, store_.ListDatasetVersions(d.id));
  const DatasetVersion* found = nullptr;
  for (const auto& v : versions)
    if (version == 0 || v.version == version) found = &v;
  if (!found)
    return MakeError(ErrorCode::kNotFound,
                     version == 0
                         ? "dataset '" + d.name + "' has no version"
                         : "dataset '" + d.name + "' has no version " + std::to_string(version));
  VMG_ASSIGN_OR_RETURN(
      Manifest m,
      image_server_->GetManifest(d.id, static_cast<uint64_t>(found->version), found->blob_digest));
  return std::make_pair(*found, std::move(m));
}

Result<json> DatasetService::Publish(const Caller& c, const std::string& name,
                                     const std::string& kind, Manifest draft) {
  VMG_RETURN_IF_ERROR(NeedServer());
  VMG_RETURN_IF_ERROR(ValidateName("dataset name", name));
  if (kind != "file" && kind != "dir")
    return MakeError(ErrorCode::kInvalidArgument, "kind must be file or dir");
  VMG_RETURN_IF_ERROR(ValidateManifest(draft, false));
  if (draft.chunk_size != kDefaultChunkSize)
    return MakeError(ErrorCode::kInvalidArgument,
                     "chunk_size must be " + std::to_string(kDefaultChunkSize));
  if (draft.size > kMaxDatasetBytes)
    return MakeError(ErrorCode::kInvalidArgument,
                     "a dataset version is at most " + std::to_string(kMaxDatasetBytes) + " bytes");
  VMG_ASSIGN_OR_RETURN(auto existing, store_.FindDatasetByName(c.user.id, name));
  bool created = false;
  Dataset d;
  std::set<std::string> previous;
  if (existing) {
    d = *existing;
    auto prev = LoadVersion(d, 0);
    if (prev.ok()) {
      for (const auto& ch : prev->second.chunks) previous.insert(ch);
    } else if (prev.error().code != ErrorCode::kNotFound) {
      return prev.error();
    }
  } else {
    auto made = store_.CreateDataset(c.user.id, name);
    if (!made.ok()) return made.error();  // a concurrent first push: try again
    d = *made;
    created = true;
  }
  auto undo = [&](const Error& e) -> Error {
    if (created) {
      Status s = store_.DeleteDataset(d.id);
      if (!s.ok()) spdlog::warn("dataset {}: undoing its creation: {}", d.id, s.error().message);
    }
    return e;
  };
  auto key = std::make_pair(c.user.id, name);
  std::set<std::string> sent;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sent_.find(key);
    if (it != sent_.end()) sent = it->second;
  }
  DatasetVersion v;
  v.dataset_id = d.id;
  v.kind = kind;
  v.size_bytes = static_cast<int64_t>(draft.size);
  std::set<std::string> counted;
  for (size_t i = 0; i < draft.chunks.size(); ++i) {
    if (draft.IsZero(i)) continue;
    const std::string& ch = draft.chunks[i];
    ++v.chunks;
    if (previous.count(ch)) continue;
    if (!sent.count(ch))
      return undo(MakeError(ErrorCode::kInvalidArgument,
                            "chunk " + std::to_string(i) +
                                " was neither sent in this push nor is in the latest version"));
    if (counted.insert(ch).second) {
      ++v.sent_chunks;
      v.sent_bytes += draft.ChunkLength(i);
    }
  }
  auto m = image_server_->Publish(d.id, draft);
  if (!m.ok()) return undo(m.error());
  v.version = static_cast<int64_t>(m->version);
  v.blob_digest = m->Digest();
  v.created_ms = NowMs();
  Status s = store_.AddDatasetVersion(v);
  // The image server keeps a version the store does not name: it is never
  // served (pulls go by the store's records) and its chunks are shared.
  if (!s.ok()) return undo(s.error());
  {
    std::lock_guard<std::mutex> lock(mu_);
    sent_.erase(key);
    manifest_chunks_.clear();  // "latest" changed
  }
  return Get(c, d.id);
}

Result<json> DatasetService::GetManifest(const Caller& c, const std::string& ref, int64_t version) {
  VMG_RETURN_IF_ERROR(NeedServer());
  VMG_ASSIGN_OR_RETURN(UsableDataset u, FindReadable(c, ref));
  VMG_ASSIGN_OR_RETURN(auto loaded, LoadVersion(u.dataset, version));
  json out = loaded.second.ToJson();
  out["kind"] = loaded.first.kind;
  return out;
}

Result<json> DatasetService::GetChunk(const Caller& c, const std::string& ref, int64_t version,
                                      const std::string& digest) {
  VMG_RETURN_IF_ERROR(NeedServer());
  if (!IsChunkDigest(digest)) return MakeError(ErrorCode::kInvalidArgument, "not a chunk digest");
  VMG_ASSIGN_OR_RETURN(UsableDataset u, FindReadable(c, ref));
  const Dataset& d = u.dataset;
  std::string key = d.id + ":" + std::to_string(version);
  std::shared_ptr<const std::set<std::string>> chunks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = manifest_chunks_.find(key);
    if (it != manifest_chunks_.end()) chunks = it->second;
  }
  if (!chunks) {
    VMG_ASSIGN_OR_RETURN(auto loaded, LoadVersion(d, version));
    auto set = std::make_shared<std::set<std::string>>(loaded.second.chunks.begin(),
                                                       loaded.second.chunks.end());
    chunks = set;
    std::lock_guard<std::mutex> lock(mu_);
    if (manifest_chunks_.size() >= kMaxCachedManifests) manifest_chunks_.clear();
    manifest_chunks_[key] = chunks;
  }
  if (!chunks->count(digest))
    return MakeError(ErrorCode::kNotFound, "the version has no chunk " + digest);
  VMG_ASSIGN_OR_RETURN(std::string data, image_server_->FetchChunk(digest));
  return json{{"data", Base64Encode(data)}};
}

Status DatasetService::Delete(const Caller& c, const std::string& ref,
                              std::optional<int64_t> version) {
  VMG_ASSIGN_OR_RETURN(UsableDataset u, FindOwned(c, ref, "remove"));
  const Dataset& d = u.dataset;
  {
    std::lock_guard<std::mutex> lock(mu_);
    manifest_chunks_.clear();
  }
  VMG_ASSIGN_OR_RETURN(auto user, AttachedTo(d, version));
  if (user)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "dataset '" + d.name + "'" +
                         (version ? " version " + std::to_string(*version) : std::string()) +
                         " is attached to VM " + user->name + "; delete the VM first");
  if (!version) return store_.DeleteDataset(d.id);
  VMG_ASSIGN_OR_RETURN(bool deleted, store_.DeleteDatasetVersion(d.id, *version));
  if (!deleted)
    return MakeError(ErrorCode::kNotFound,
                     "dataset '" + d.name + "' has no version " + std::to_string(*version));
  return Status::Ok();
}

Result<std::optional<Vm>> DatasetService::AttachedTo(const Dataset& d,
                                                     std::optional<int64_t> version) {
  VMG_ASSIGN_OR_RETURN(std::vector<Vm> vms, store_.ListVms(d.owner_id));
  for (const Vm& vm : vms) {
    if (vm.data.empty() || vm.state == "deleting") continue;
    auto data = VmDataFromJson(vm.data);
    if (!data.ok()) continue;
    for (const VmDataAttachment& a : *data)
      if (a.dataset_id == d.id && (!version || a.version == *version)) return std::optional<Vm>(vm);
  }
  return std::optional<Vm>();
}

Result<DatasetService::CommitTarget> DatasetService::FindCommitTarget(const Vm& vm,
                                                                      const std::string& name) {
  VMG_RETURN_IF_ERROR(NeedServer());
  if (!agents_ || !ops_ || !long_ops_)
    return MakeError(ErrorCode::kFailedPrecondition, "this controller does not commit datasets");
  VMG_RETURN_IF_ERROR(ParseDatasetRef(name));  // NAME, or OWNER/NAME of a shared one
  VMG_ASSIGN_OR_RETURN(std::vector<VmDataAttachment> data, VmDataFromJson(vm.data));
  CommitTarget t;
  t.index = data.size();
  for (size_t i = 0; i < data.size(); ++i)
    if (data[i].dataset == name) t.index = i;
  if (t.index == data.size())
    return MakeError(ErrorCode::kNotFound,
                     "VM " + vm.name + " has no dataset named " + name + " attached");
  t.attachment = data[t.index];
  if (t.attachment.dataset.find('/') != std::string::npos)
    return MakeError(ErrorCode::kPermissionDenied,
                     "dataset " + name + " is another user's, shared with you read-only; only " +
                         "its owner stores new versions (push your own copy instead)");
  if (!t.attachment.rw)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "dataset " + name + " is attached read-only to VM " + vm.name +
                         "; only a read-write attachment has changes to commit");
  if (vm.state != "running" && vm.state != "stopped" && vm.state != "suspended")
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + vm.name + " is " + vm.state +
                                                         "; a commit needs it running or stopped");
  if (!store_.GetDataset(t.attachment.dataset_id, vm.owner_id).ok())
    return MakeError(ErrorCode::kFailedPrecondition,
                     "dataset " + name + " was removed since VM " + vm.name + " attached it");
  VMG_ASSIGN_OR_RETURN(t.host, store_.GetHost(vm.host_id));
  return t;
}

Result<json> DatasetService::PushAndRecord(const std::string& vm_id, const CommitTarget& t) {
  const VmDataAttachment& a = t.attachment;
  auto pushed = agents_->CommitData(t.host, vm_id, t.index, a.dataset_id);
  if (!pushed.ok()) return pushed.error().Wrap("commit of dataset " + a.dataset);
  const DurableVersion& p = *pushed;
  if (p.ref.name != a.dataset_id || p.ref.version == 0 || p.ref.size > kMaxDatasetBytes)
    return MakeError(ErrorCode::kInternal, "host " + t.host.name +
                                               " answered a commit of dataset " + a.dataset +
                                               " with another version");
  DatasetVersion v;
  v.dataset_id = a.dataset_id;
  v.version = static_cast<int64_t>(p.ref.version);
  v.kind = "dir";
  v.size_bytes = static_cast<int64_t>(p.ref.size);
  v.blob_digest = p.ref.digest;
  v.chunks = static_cast<int64_t>(p.chunks);
  v.sent_chunks = static_cast<int64_t>(p.chunks_sent);
  v.sent_bytes = static_cast<int64_t>(p.bytes_sent);
  v.created_ms = NowMs();
  if (Status s = store_.AddDatasetVersion(v); !s.ok())
    return s.error().Wrap("recording dataset " + a.dataset + " version " +
                          std::to_string(v.version));
  return json{{"dataset", a.dataset}, {"version", v.version},         {"size_bytes", v.size_bytes},
              {"chunks", v.chunks},   {"sent_chunks", v.sent_chunks}, {"sent_bytes", v.sent_bytes}};
}

Result<json> DatasetService::CommitNow(const Vm& vm, const std::string& name) {
  VMG_ASSIGN_OR_RETURN(CommitTarget t, FindCommitTarget(vm, name));
  return PushAndRecord(vm.id, t);
}

Result<json> DatasetService::Commit(const Caller& c, const std::string& vm_ref,
                                    const std::string& name) {
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(vm_ref, c.owner()));
  VMG_ASSIGN_OR_RETURN(CommitTarget t, FindCommitTarget(vm, name));
  return StartCommit(c, vm, [this, vm_id = vm.id, t] { return PushAndRecord(vm_id, t); });
}

Result<json> DatasetService::StartCommit(const Caller& c, const Vm& vm,
                                         std::function<Result<json>()> work) {
  VMG_ASSIGN_OR_RETURN(auto slot, long_ops_->Acquire(c.user.id, 1, c.admin()));
  OpQueue::Operation op;
  op.kind = "data_commit";
  op.owner_id = c.user.id;
  op.vm_id = vm.id;
  json answer = ops_->Start(op);
  ops_->Run(vm.id, [this, work = std::move(work), id = op.id, slot = std::move(slot)]() mutable {
    auto r = work();
    slot.reset();
    ops_->Finish(id, r);
  });
  return answer;
}

Result<json> DatasetService::CommitAllThen(const Caller& c, const std::string& vm_ref,
                                           const std::string& what,
                                           std::function<Result<json>(const Vm&)> then) {
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(vm_ref, c.owner()));
  VMG_ASSIGN_OR_RETURN(std::vector<VmDataAttachment> data, VmDataFromJson(vm.data));
  std::vector<CommitTarget> targets;
  for (const VmDataAttachment& a : data) {
    if (!a.rw) continue;
    auto t = FindCommitTarget(vm, a.dataset);
    if (!t.ok())
      return t.error().Wrap("VM " + vm.name + " not " + what + ": dataset " + a.dataset +
                            " cannot be committed");
    targets.push_back(std::move(*t));
  }
  if (targets.empty()) return then(vm);
  return StartCommit(c, vm, [this, vm, targets, what, then = std::move(then)]() -> Result<json> {
    json commits = json::array();
    for (const CommitTarget& t : targets) {
      auto r = PushAndRecord(vm.id, t);
      if (!r.ok())
        return r.error().Wrap("VM " + vm.name + " not " + what + " (its disks are as they were; " +
                              std::to_string(commits.size()) + " of " +
                              std::to_string(targets.size()) + " datasets committed)");
      commits.push_back(*r);
    }
    auto done = then(vm);
    if (!done.ok())
      return done.error().Wrap("committed " + std::to_string(commits.size()) + " datasets, then");
    return json{{"commits", commits}, {"vm", *done}};
  });
}

}  // namespace vmgrid
