#include "chunks/image_catalog.h"

#include <dirent.h>
#include <spdlog/spdlog.h>

#include <cstring>

#include "chunks/chunk_store.h"
#include "common/http_json.h"
#include "common/util.h"

namespace vmgrid {

namespace {

ImageCatalog::VersionInfo InfoOf(const Manifest& m) {
  return {m.version, m.Digest(), m.size, m.chunk_size, m.chunks.size(), m.NonZeroBytes()};
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
        out.push_back(e->d_name);
    ::closedir(d);
  }
  return out;
}

// "<digits>.json" -> version, or 0.
uint64_t VersionFromFileName(const std::string& f) {
  const std::string ext = ".json";
  if (f.size() <= ext.size() || f.compare(f.size() - ext.size(), ext.size(), ext) != 0) return 0;
  std::string num = f.substr(0, f.size() - ext.size());
  if (num.empty() || num.size() > 16 || num[0] == '0') return 0;
  for (char c : num)
    if (c < '0' || c > '9') return 0;
  return std::stoull(num);
}

}  // namespace

std::string ImageCatalog::PathFor(const std::string& name, uint64_t version) const {
  return dir_ + "/" + name + "/" + std::to_string(version) + ".json";
}

Result<ImageCatalogPtr> ImageCatalog::Open(const std::string& dir) {
  ImageCatalogPtr cat(new ImageCatalog(dir + "/manifests"));
  VMG_RETURN_IF_ERROR(MakeDirs(cat->dir_));
  for (const auto& name : ListDir(cat->dir_)) {
    if (!ValidateName("image", name).ok()) continue;
    for (const auto& file : ListDir(cat->dir_ + "/" + name)) {
      uint64_t version = VersionFromFileName(file);
      if (version == 0) continue;  // temp files of an interrupted publish, strays
      std::string path = cat->dir_ + "/" + name + "/" + file;
      auto text = ReadFile(path, kMaxManifestJsonBytes + 1);
      Result<Manifest> m = text.ok() ? ParseManifestJson(*text) : Result<Manifest>(text.error());
      if (m.ok() && (m->name != name || m->version != version))
        m = MakeError(ErrorCode::kInvalidArgument, "name or version differ from the file's path");
      if (!m.ok()) {
        spdlog::warn("image catalog: skipping {}: {}", path, m.error().message);
        cat->corrupt_manifests_++;
        continue;
      }
      cat->index_[name][version] = InfoOf(*m);
    }
  }
  return cat;
}

Result<Manifest> ImageCatalog::Publish(const std::string& name, Manifest draft,
                                       const ChunkStore& store) {
  VMG_RETURN_IF_ERROR(ValidateName("image", name));
  VMG_RETURN_IF_ERROR(ValidateManifest(draft, false));
  std::vector<std::string> missing;
  for (size_t i = 0; i < draft.chunks.size(); ++i) {
    if (draft.IsZero(i)) continue;
    auto size = store.Size(draft.chunks[i]);
    if (!size.ok() || *size != draft.ChunkLength(i)) missing.push_back(draft.chunks[i]);
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 3; ++i) list += (i ? ", " : "") + missing[i];
    return MakeError(ErrorCode::kFailedPrecondition,
                     std::to_string(missing.size()) +
                         " chunk(s) of the manifest are not on the server " +
                         "(or have the wrong length); upload them first: " + list +
                         (missing.size() > 3 ? ", ..." : ""));
  }
  std::lock_guard<std::mutex> l(mu_);
  auto& versions = index_[name];
  draft.name = name;
  draft.version = versions.empty() ? 1 : versions.rbegin()->first + 1;
  std::string path = PathFor(name, draft.version);
  auto fail = [&](Error e) -> Result<Manifest> {
    if (versions.empty()) index_.erase(name);
    return e;
  };
  if (FileExists(path))
    return fail(MakeError(ErrorCode::kAlreadyExists, "manifest file " + path + " already exists"));
  Status st = MakeDirs(dir_ + "/" + name);
  if (st.ok()) st = WriteFileAtomic(path, draft.ToJson().dump() + "\n");
  if (!st.ok()) return fail(st.error());
  versions[draft.version] = InfoOf(draft);
  return draft;
}

Result<std::vector<ImageCatalog::VersionInfo>> ImageCatalog::Versions(
    const std::string& name) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = index_.find(name);
  if (it == index_.end()) return MakeError(ErrorCode::kNotFound, "no image named '" + name + "'");
  std::vector<VersionInfo> out;
  for (const auto& [v, info] : it->second) out.push_back(info);
  return out;
}

Result<Manifest> ImageCatalog::Get(const std::string& name, uint64_t version) const {
  std::string digest;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = index_.find(name);
    if (it == index_.end()) return MakeError(ErrorCode::kNotFound, "no image named '" + name + "'");
    auto v = it->second.find(version);
    if (v == it->second.end())
      return MakeError(ErrorCode::kNotFound,
                       "image '" + name + "' has no version " + std::to_string(version));
    digest = v->second.digest;
  }
  std::string path = PathFor(name, version);
  VMG_ASSIGN_OR_RETURN(std::string text, ReadFile(path, kMaxManifestJsonBytes + 1));
  auto m = ParseManifestJson(text);
  if (!m.ok() || m->Digest() != digest)
    return MakeError(ErrorCode::kInternal,
                     "manifest file " + path + " is corrupt" +
                         (m.ok() ? std::string(" (digest changed)") : ": " + m.error().message));
  return m;
}

Result<Manifest> ImageCatalog::Latest(const std::string& name) const {
  uint64_t version = 0;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = index_.find(name);
    if (it == index_.end() || it->second.empty())
      return MakeError(ErrorCode::kNotFound, "no image named '" + name + "'");
    version = it->second.rbegin()->first;
  }
  return Get(name, version);
}

std::vector<std::string> ImageCatalog::Names() const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<std::string> out;
  for (const auto& [name, v] : index_) out.push_back(name);
  return out;
}

Result<uint64_t> ImageCatalog::ChunkCount(const std::string& name, uint64_t version) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = index_.find(name);
  if (it == index_.end()) return MakeError(ErrorCode::kNotFound, "no image named '" + name + "'");
  auto v = it->second.find(version);
  if (v == it->second.end())
    return MakeError(ErrorCode::kNotFound,
                     "image '" + name + "' has no version " + std::to_string(version));
  return v->second.chunks;
}

static Status CheckPrefetchMode(const std::string& mode) {
  if (mode != "boot" && mode != "resume")
    return MakeError(ErrorCode::kInvalidArgument,
                     "prefetch mode '" + mode.substr(0, 40) + "' must be 'boot' or 'resume'");
  return Status::Ok();
}

Status ImageCatalog::PutPrefetch(const std::string& name, uint64_t version, const std::string& mode,
                                 const std::vector<uint64_t>& order) {
  VMG_RETURN_IF_ERROR(CheckPrefetchMode(mode));
  VMG_ASSIGN_OR_RETURN(uint64_t chunks, ChunkCount(name, version));
  if (order.empty()) return MakeError(ErrorCode::kInvalidArgument, "the prefetch order is empty");
  if (order.size() > chunks)
    return MakeError(ErrorCode::kInvalidArgument,
                     "the prefetch order lists " + std::to_string(order.size()) +
                         " chunks; the image has " + std::to_string(chunks));
  std::vector<bool> seen(chunks, false);
  for (uint64_t i : order) {
    if (i >= chunks)
      return MakeError(ErrorCode::kInvalidArgument, "prefetch index " + std::to_string(i) +
                                                        " is out of range (the image has " +
                                                        std::to_string(chunks) + " chunks)");
    if (seen[i])
      return MakeError(ErrorCode::kInvalidArgument,
                       "prefetch index " + std::to_string(i) + " repeats");
    seen[i] = true;
  }
  std::string path =
      dir_ + "/" + name + "/" + std::to_string(version) + ".prefetch-" + mode + ".json";
  std::lock_guard<std::mutex> l(mu_);  // one writer at a time, so "first one wins" holds
  if (FileExists(path))
    return MakeError(ErrorCode::kAlreadyExists, "a " + mode + " prefetch order of " + name +
                                                    " version " + std::to_string(version) +
                                                    " is already recorded");
  return WriteFileAtomic(path, nlohmann::json{{"order", order}}.dump() + "\n");
}

Result<std::vector<uint64_t>> ImageCatalog::GetPrefetch(const std::string& name, uint64_t version,
                                                        const std::string& mode) const {
  VMG_RETURN_IF_ERROR(CheckPrefetchMode(mode));
  VMG_ASSIGN_OR_RETURN(uint64_t chunks, ChunkCount(name, version));
  std::string path =
      dir_ + "/" + name + "/" + std::to_string(version) + ".prefetch-" + mode + ".json";
  if (!FileExists(path))
    return MakeError(ErrorCode::kNotFound, "no " + mode + " prefetch order for " + name +
                                               " version " + std::to_string(version));
  VMG_ASSIGN_OR_RETURN(std::string text, ReadFile(path, 64ull << 20));
  auto j = nlohmann::json::parse(text, nullptr, false);
  std::vector<uint64_t> order;
  if (j.is_object() && j.contains("order") && j["order"].is_array()) {
    for (const auto& v : j["order"]) {
      if (!v.is_number_unsigned() || v.get<uint64_t>() >= chunks) {
        order.clear();
        break;
      }
      order.push_back(v.get<uint64_t>());
    }
  }
  if (order.empty())
    return MakeError(ErrorCode::kInternal, "prefetch file " + path + " is corrupt");
  return order;
}

ImageCatalog::Stats ImageCatalog::ComputeStats(const ChunkStore& store) const {
  Stats s;
  {
    std::lock_guard<std::mutex> l(mu_);
    s.images = index_.size();
    s.corrupt_manifests = corrupt_manifests_;
    for (const auto& [name, versions] : index_) {
      for (const auto& [v, info] : versions) {
        s.versions++;
        s.logical_bytes += info.size;
        s.referenced_bytes += info.nonzero_bytes;
      }
    }
  }
  s.physical_bytes = store.stats().bytes;
  s.dedup_ratio = DedupRatio(s.referenced_bytes, s.physical_bytes);
  s.total_ratio = DedupRatio(s.logical_bytes, s.physical_bytes);
  return s;
}

}  // namespace vmgrid
