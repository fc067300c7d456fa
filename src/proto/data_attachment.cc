#include "proto/data_attachment.h"

#include <algorithm>

#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;

json ToJson(const DataDiskSpec& d) {
  json j = {{"dataset", d.dataset}, {"mount", d.mount}, {"rw", d.rw}};
  if (!d.blob.empty()) j["blob"] = ToJson(d.blob);
  if (d.blank_mb > 0) j["blank_mb"] = d.blank_mb;
  return j;
}

Result<DataDiskSpec> DataDiskSpecFromJson(const json& j) {
  if (!j.is_object())
    return MakeError(ErrorCode::kInvalidArgument, "a data attachment must be an object");
  JsonFields f(j, {"dataset", "mount", "rw", "blob", "blank_mb"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  DataDiskSpec d;
  VMG_ASSIGN_OR_RETURN(d.dataset, f.String("dataset", true));
  VMG_RETURN_IF_ERROR(ValidateName("dataset name", d.dataset));
  VMG_ASSIGN_OR_RETURN(d.mount, f.String("mount", true));
  VMG_RETURN_IF_ERROR(ValidateGuestMountPoint(d.mount));
  VMG_ASSIGN_OR_RETURN(d.rw, f.Bool("rw", false));
  VMG_ASSIGN_OR_RETURN(d.blank_mb, f.Int("blank_mb", 0, 0, kMaxBlankDataMb));
  if (auto b = j.find("blob"); b != j.end()) {
    VMG_ASSIGN_OR_RETURN(d.blob, BlobRefFromJson(*b, "data attachment " + d.dataset));
  }
  if (d.blob.empty() == (d.blank_mb == 0))
    return MakeError(ErrorCode::kInvalidArgument,
                     "data attachment " + d.dataset + " needs exactly one of blob and blank_mb");
  if (d.blank_mb > 0 && (d.blank_mb < kMinBlankDataMb || !d.rw))
    return MakeError(ErrorCode::kInvalidArgument, "a new dataset " + d.dataset +
                                                      " is read-write and at least " +
                                                      std::to_string(kMinBlankDataMb) + " MiB");
  return d;
}

json DataDisksJson(const std::vector<DataDiskSpec>& disks) {
  json a = json::array();
  for (const auto& d : disks) a.push_back(ToJson(d));
  return a;
}

Result<std::vector<DataDiskSpec>> DataDisksFromJson(const json& j) {
  if (!j.is_array()) return MakeError(ErrorCode::kInvalidArgument, "field 'data' must be an array");
  if (j.size() > kMaxDataAttachments)
    return MakeError(ErrorCode::kInvalidArgument, "at most " + std::to_string(kMaxDataAttachments) +
                                                      " datasets can be attached to a VM");
  std::vector<DataDiskSpec> disks;
  std::vector<std::string> mounts;
  for (const auto& e : j) {
    VMG_ASSIGN_OR_RETURN(DataDiskSpec d, DataDiskSpecFromJson(e));
    mounts.push_back(d.mount);
    disks.push_back(std::move(d));
  }
  VMG_RETURN_IF_ERROR(CheckMountPointsApart(mounts));
  return disks;
}

std::string DataDiskSerial(size_t index) { return "vmgdata-" + std::to_string(index); }

Status ValidateGuestMountPoint(const std::string& path) {
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument, "mount point '" + path + "' " + why);
  };
  if (path.empty() || path[0] != '/') return bad("must be an absolute path in the guest");
  if (path.size() > 200) return bad("is longer than 200 bytes");
  if (path == "/") return bad("is the guest's root file system");
  if (path.back() == '/') return bad("must not end with '/'");
  std::vector<std::string> parts;
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    if (part.empty()) return bad("has an empty component ('//')");
    if (part == "." || part == "..") return bad("has a '" + part + "' component");
    for (char ch : part) {
      bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                ch == '.' || ch == '_' || ch == '-';
      if (!ok) return bad("may hold only [A-Za-z0-9._-] between '/'");
    }
    parts.push_back(part);
    start = end + 1;
  }
  if (parts.size() > 8) return bad("has more than 8 components");
  static const char* const kSystem[] = {"bin",  "boot", "dev",  "etc", "lib", "lib64",
                                        "proc", "run",  "sbin", "sys", "usr"};
  for (const char* s : kSystem)
    if (parts[0] == s)
      return bad("is in the guest's system directory /" + parts[0] +
                 "; use a directory such as /data or /mnt");
  return Status::Ok();
}

static bool Inside(const std::string& inner, const std::string& outer) {
  return inner.size() > outer.size() && inner.compare(0, outer.size(), outer) == 0 &&
         inner[outer.size()] == '/';
}

Status CheckMountPointsApart(const std::vector<std::string>& paths) {
  for (size_t i = 0; i < paths.size(); ++i)
    for (size_t k = 0; k < paths.size(); ++k) {
      if (i == k) continue;
      if (paths[i] == paths[k] && i < k)
        return MakeError(ErrorCode::kInvalidArgument,
                         "two datasets are mounted at " + paths[i] + "; each needs its own place");
      if (Inside(paths[i], paths[k]))
        return MakeError(ErrorCode::kInvalidArgument,
                         "mount point " + paths[i] + " is inside mount point " + paths[k]);
    }
  return Status::Ok();
}

Result<DatasetRef> ParseDatasetRef(const std::string& ref) {
  DatasetRef r;
  size_t slash = ref.find('/');
  if (slash == std::string::npos) {
    r.name = ref;
  } else {
    r.owner = ref.substr(0, slash);
    r.name = ref.substr(slash + 1);
    VMG_RETURN_IF_ERROR(ValidateName("dataset owner", r.owner));
  }
  VMG_RETURN_IF_ERROR(ValidateName("dataset", r.name));
  return r;
}

static std::vector<std::string> SplitColons(const std::string& arg) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t end = arg.find(':', start);
    parts.push_back(arg.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return parts;
}

static bool AllDigits(const std::string& v) {
  return !v.empty() && v.size() <= 9 &&
         std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
}

Result<json> ParseNewDataArgument(const std::string& arg) {
  std::vector<std::string> parts = SplitColons(arg);
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "--new-data " + arg + ": " + why + " (the form is NAME[:MOUNT][:SIZE_MB])");
  };
  if (parts.size() > 3) return bad("too many ':'");
  if (Status s = ValidateName("dataset name", parts[0]); !s.ok()) return bad(s.error().message);
  json j = {{"dataset", parts[0]}, {"new", true}, {"mount", "/data/" + parts[0]}};
  size_t i = 1;
  if (i < parts.size() && !parts[i].empty() && parts[i][0] == '/') j["mount"] = parts[i++];
  if (i < parts.size()) {
    if (!AllDigits(parts[i])) return bad("size '" + parts[i] + "' is not a number of MiB");
    int64_t mb = std::stoll(parts[i++]);
    if (mb < kMinBlankDataMb || mb > kMaxBlankDataMb)
      return bad("size must be " + std::to_string(kMinBlankDataMb) + " to " +
                 std::to_string(kMaxBlankDataMb) + " MiB");
    j["size_mb"] = mb;
  }
  if (i != parts.size()) return bad("'" + parts[i] + "' is neither a mount point nor a size");
  if (Status s = ValidateGuestMountPoint(j["mount"].get<std::string>()); !s.ok())
    return bad(s.error().message);
  return j;
}

Result<json> ParseDataArgument(const std::string& arg) {
  std::vector<std::string> parts = SplitColons(arg);
  auto bad = [&](const std::string& why) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "--data " + arg + ": " + why + " (the form is NAME[:VERSION][:MOUNT][:ro|rw])");
  };
  if (parts.size() > 4) return bad("too many ':'");
  json j;
  j["dataset"] = parts[0];
  auto ref = ParseDatasetRef(parts[0]);
  if (!ref.ok()) return bad(ref.error().message);
  size_t i = 1;
  int64_t version = 0;
  if (i < parts.size() && !parts[i].empty() && parts[i][0] != '/' && parts[i] != "ro" &&
      parts[i] != "rw") {
    const std::string& v = parts[i];
    if (!AllDigits(v)) return bad("version '" + v + "' is not a number");
    version = std::stoll(v);
    ++i;
  }
  std::string mount = ref->DefaultMount();
  if (i < parts.size() && !parts[i].empty() && parts[i][0] == '/') mount = parts[i++];
  std::string mode = "ro";
  if (i < parts.size() && (parts[i] == "ro" || parts[i] == "rw")) mode = parts[i++];
  if (i != parts.size())
    return bad("'" + parts[i] + "' is neither a version, a mount point nor ro|rw");
  if (Status s = ValidateGuestMountPoint(mount); !s.ok()) return bad(s.error().message);
  j["version"] = version;
  j["mount"] = mount;
  j["mode"] = mode;
  return j;
}

}  // namespace vmgrid
