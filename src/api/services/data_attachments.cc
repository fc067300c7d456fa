#include "api/services/data_attachments.h"

#include <spdlog/spdlog.h>

#include <set>

#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;

namespace {
constexpr int64_t kDefaultBlankMb = 1024;
}  // namespace

Result<UsableDataset> FindUsableDataset(Store& store, const std::string& user_id,
                                        const std::string& ref) {
  const Error not_found = MakeError(ErrorCode::kNotFound, "dataset '" + ref + "' not found");
  UsableDataset u;
  if (ref.find('/') == std::string::npos) {
    auto own = store.GetDataset(ref, user_id);
    if (own.ok()) {
      u.dataset = *own;
      return u;
    }
    if (own.error().code != ErrorCode::kNotFound) return own.error();
    if (ref.rfind("ds-", 0) != 0) return not_found;
    // Another user's dataset by id: only when shared with this user.
    auto any = store.GetDataset(ref, "");
    if (!any.ok()) return any.error().code == ErrorCode::kNotFound ? not_found : any.error();
    u.dataset = *any;
  } else {
    VMG_ASSIGN_OR_RETURN(DatasetRef r, ParseDatasetRef(ref));
    VMG_ASSIGN_OR_RETURN(auto found, store.FindDatasetByOwnerName(r.owner, r.name));
    if (!found) return not_found;
    u.dataset = *found;
    if (u.dataset.owner_id == user_id) return u;
  }
  VMG_ASSIGN_OR_RETURN(bool shared, store.IsDatasetSharedWith(u.dataset.id, user_id));
  if (!shared) return not_found;
  VMG_ASSIGN_OR_RETURN(User owner, store.GetUserById(u.dataset.owner_id));
  u.shared = true;
  u.owner_name = owner.name;
  return u;
}

Result<std::vector<DataRequest>> ParseDataRequests(const json& j) {
  if (!j.is_array())
    return MakeError(ErrorCode::kInvalidArgument,
                     "field 'data' must be an array of {dataset, version, mount, mode, new}");
  if (j.size() > kMaxDataAttachments)
    return MakeError(ErrorCode::kInvalidArgument, "at most " + std::to_string(kMaxDataAttachments) +
                                                      " datasets can be attached to a VM");
  std::vector<DataRequest> out;
  std::vector<std::string> mounts;
  std::set<std::string> names;
  for (const json& e : j) {
    if (!e.is_object())
      return MakeError(ErrorCode::kInvalidArgument, "each element of 'data' must be an object");
    JsonFields f(e, {"dataset", "version", "mount", "mode", "new", "size_mb"});
    VMG_RETURN_IF_ERROR(f.CheckUnknown());
    DataRequest r;
    VMG_ASSIGN_OR_RETURN(r.dataset, f.String("dataset", true));
    VMG_ASSIGN_OR_RETURN(DatasetRef ref, ParseDatasetRef(r.dataset));
    VMG_ASSIGN_OR_RETURN(r.version, f.Int("version", 0, 0, int64_t{1} << 40));
    VMG_ASSIGN_OR_RETURN(r.mount, f.String("mount", false, ref.DefaultMount()));
    VMG_RETURN_IF_ERROR(ValidateGuestMountPoint(r.mount));
    VMG_ASSIGN_OR_RETURN(r.create, f.Bool("new", false));
    VMG_ASSIGN_OR_RETURN(std::string mode, f.Enum("mode", {"ro", "rw"}, r.create ? "rw" : "ro"));
    r.rw = mode == "rw";
    VMG_ASSIGN_OR_RETURN(r.size_mb, f.Int("size_mb", 0, kMinBlankDataMb, kMaxBlankDataMb));
    if (r.create) {
      if (!ref.owner.empty())
        return MakeError(ErrorCode::kInvalidArgument,
                         "new dataset " + r.dataset + ": a new dataset is the VM owner's (NAME)");
      if (!r.rw || r.version != 0)
        return MakeError(ErrorCode::kInvalidArgument,
                         "new dataset " + r.dataset + " is read-write and has no version yet");
      if (r.size_mb == 0) r.size_mb = kDefaultBlankMb;
    } else if (e.contains("size_mb")) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "size_mb is for a new dataset; " + r.dataset + " has its size");
    }
    if (!names.insert(r.dataset).second)
      return MakeError(ErrorCode::kInvalidArgument,
                       "dataset " + r.dataset + " is attached twice; attach it once");
    mounts.push_back(r.mount);
    out.push_back(std::move(r));
  }
  VMG_RETURN_IF_ERROR(CheckMountPointsApart(mounts));
  return out;
}

std::string VmDataJson(const std::vector<VmDataAttachment>& data) {
  if (data.empty()) return "";
  json a = json::array();
  for (const auto& d : data)
    a.push_back({{"dataset_id", d.dataset_id},
                 {"dataset", d.dataset},
                 {"version", d.version},
                 {"blob_digest", d.blob_digest},
                 {"size_bytes", d.size_bytes},
                 {"mount", d.mount},
                 {"rw", d.rw},
                 {"blank_mb", d.blank_mb}});
  return a.dump();
}

Result<std::vector<VmDataAttachment>> VmDataFromJson(const std::string& text) {
  std::vector<VmDataAttachment> out;
  if (text.empty()) return out;
  json a = json::parse(text, nullptr, false);
  if (!a.is_array())
    return MakeError(ErrorCode::kInternal, "a VM's recorded data attachments are not an array");
  for (const json& e : a) {
    if (!e.is_object())
      return MakeError(ErrorCode::kInternal, "a VM's recorded data attachment is not an object");
    JsonFields f(e, {"dataset_id", "dataset", "version", "blob_digest", "size_bytes", "mount", "rw",
                     "blank_mb"});
    VMG_RETURN_IF_ERROR(f.CheckUnknown());
    VmDataAttachment d;
    VMG_ASSIGN_OR_RETURN(d.dataset_id, f.String("dataset_id", true));
    VMG_ASSIGN_OR_RETURN(d.dataset, f.String("dataset", true));
    VMG_ASSIGN_OR_RETURN(d.version, f.Int("version", 0, 0, int64_t{1} << 40));
    VMG_ASSIGN_OR_RETURN(d.blob_digest, f.String("blob_digest", false));
    VMG_ASSIGN_OR_RETURN(d.size_bytes, f.Int("size_bytes", 0, 0, int64_t{1} << 50));
    VMG_ASSIGN_OR_RETURN(d.mount, f.String("mount", true));
    VMG_ASSIGN_OR_RETURN(d.rw, f.Bool("rw", false));
    VMG_ASSIGN_OR_RETURN(d.blank_mb, f.Int("blank_mb", 0, 0, kMaxBlankDataMb));
    out.push_back(std::move(d));
  }
  return out;
}

Result<std::vector<VmDataAttachment>> ResolveDataRequests(
    Store& store, const std::string& owner_id, const std::vector<DataRequest>& requests) {
  std::vector<VmDataAttachment> out;
  for (const DataRequest& r : requests) {
    VmDataAttachment a;
    a.dataset = r.dataset;
    a.mount = r.mount;
    a.rw = r.rw;
    if (r.create) {
      VMG_ASSIGN_OR_RETURN(auto found, store.FindDatasetByName(owner_id, r.dataset));
      if (found)
        return MakeError(ErrorCode::kAlreadyExists,
                         "dataset " + r.dataset +
                             " already exists; a new dataset needs a name not in use "
                             "(or attach the existing one with mode rw)");
      a.blank_mb = r.size_mb;
      out.push_back(std::move(a));
      continue;
    }
    auto usable = FindUsableDataset(store, owner_id, r.dataset);
    if (!usable.ok() && usable.error().code == ErrorCode::kNotFound)
      return MakeError(ErrorCode::kNotFound,
                       "dataset " + r.dataset + " not found (`vmgrid data push` makes one)");
    if (!usable.ok()) return usable.error();
    if (usable->shared && r.rw)
      return MakeError(ErrorCode::kPermissionDenied,
                       "dataset " + r.dataset + " is shared with you read-only by " +
                           usable->owner_name + "; attach it with mode ro (only its owner " +
                           "writes new versions)");
    const Dataset* found = &usable->dataset;
    VMG_ASSIGN_OR_RETURN(auto versions, store.ListDatasetVersions(found->id));
    const DatasetVersion* v = nullptr;
    for (const auto& x : versions)
      if (r.version == 0 ? (!v || x.version > v->version) : x.version == r.version) v = &x;
    if (!v)
      return MakeError(ErrorCode::kNotFound, r.version == 0
                                                 ? "dataset " + r.dataset + " has no version yet"
                                                 : "dataset " + r.dataset + " has no version " +
                                                       std::to_string(r.version));
    if (v->kind != "dir")
      return MakeError(ErrorCode::kInvalidArgument,
                       "dataset " + r.dataset + " version " + std::to_string(v->version) +
                           " is a single file, not a file system; only directory datasets "
                           "can be mounted (push a directory holding the file)");
    a.dataset = usable->Ref();
    a.dataset_id = found->id;
    a.version = v->version;
    a.blob_digest = v->blob_digest;
    a.size_bytes = v->size_bytes;
    out.push_back(std::move(a));
  }
  return out;
}

Status CreateNewDatasets(Store& store, const std::string& owner_id,
                         std::vector<VmDataAttachment>& data) {
  std::vector<VmDataAttachment*> made;
  for (VmDataAttachment& d : data) {
    if (d.blank_mb == 0) continue;
    auto created = store.CreateDataset(owner_id, d.dataset);
    if (!created.ok()) {
      for (VmDataAttachment* m : made) (void)store.DeleteDataset(m->dataset_id);
      if (created.error().code == ErrorCode::kAlreadyExists)
        return MakeError(ErrorCode::kAlreadyExists, "dataset " + d.dataset + " already exists");
      return created.error();
    }
    d.dataset_id = created->id;
    made.push_back(&d);
  }
  return Status::Ok();
}

void DropNewDatasets(Store& store, const std::vector<VmDataAttachment>& data) {
  for (const VmDataAttachment& d : data) {
    if (d.blank_mb == 0 || d.dataset_id.empty()) continue;
    auto versions = store.ListDatasetVersions(d.dataset_id);
    if (versions.ok() && versions->empty()) {
      Status s = store.DeleteDataset(d.dataset_id);
      if (!s.ok())
        spdlog::warn("dataset {}: undoing its creation: {}", d.dataset_id, s.error().message);
    }
  }
}

std::vector<DataDiskSpec> DataDiskSpecs(const std::vector<VmDataAttachment>& data) {
  std::vector<DataDiskSpec> out;
  for (const VmDataAttachment& d : data) {
    DataDiskSpec s;
    // The agent and the guest see the name alone (OWNER/ is the controller's).
    size_t slash = d.dataset.find('/');
    s.dataset = slash == std::string::npos ? d.dataset : d.dataset.substr(slash + 1);
    s.mount = d.mount;
    s.rw = d.rw;
    if (d.blank_mb > 0) {
      s.blank_mb = d.blank_mb;
    } else {
      s.blob = BlobRef{d.dataset_id, static_cast<uint64_t>(d.version), d.blob_digest,
                       static_cast<uint64_t>(d.size_bytes)};
    }
    out.push_back(std::move(s));
  }
  return out;
}

json DataAttachmentsView(const std::vector<VmDataAttachment>& data) {
  json a = json::array();
  for (const VmDataAttachment& d : data)
    a.push_back({{"dataset", d.dataset},
                 {"version", d.version},
                 {"mount", d.mount},
                 {"mode", d.rw ? "rw" : "ro"},
                 {"new", d.blank_mb > 0}});
  return a;
}

}  // namespace vmgrid
