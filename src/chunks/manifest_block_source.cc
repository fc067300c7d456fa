#include "chunks/manifest_block_source.h"

#include <algorithm>
#include <cstring>

#include "chunks/chunk_client.h"

namespace vmgrid {

ManifestBlockSource::ManifestBlockSource(Manifest manifest, ChunkCache& cache,
                                         ChunkCache::FetchFn fetch, Options options)
    : manifest_(std::move(manifest)),
      cache_(cache),
      fetch_(std::move(fetch)),
      options_(options),
      touched_(manifest_.chunks.size(), false) {}

std::vector<uint64_t> ManifestBlockSource::FirstReads() const {
  std::lock_guard<std::mutex> l(mu_);
  return first_reads_;
}

Result<std::shared_ptr<ManifestBlockSource>> ManifestBlockSource::Create(Manifest manifest,
                                                                         ChunkCache& cache,
                                                                         ChunkCache::FetchFn fetch,
                                                                         Options options) {
  VMG_RETURN_IF_ERROR(ValidateManifest(manifest, false));
  std::shared_ptr<ManifestBlockSource> src(
      new ManifestBlockSource(std::move(manifest), cache, std::move(fetch), options));
  if (options.pin) {
    std::string id = src->manifest_.Digest();
    VMG_RETURN_IF_ERROR(cache.Pin(id, src->manifest_.chunks));
    src->pin_id_ = std::move(id);
  }
  return src;
}

ManifestBlockSource::~ManifestBlockSource() {
  if (!pin_id_.empty()) (void)cache_.Unpin(pin_id_);
}

Result<ManifestBlockSource::ChunkData> ManifestBlockSource::Chunk(size_t index) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!touched_[index]) {
      touched_[index] = true;
      first_reads_.push_back(index);
    }
    if (auto it = recent_index_.find(index); it != recent_index_.end()) {
      recent_.splice(recent_.begin(), recent_, it->second);  // now most recent
      return it->second->second;
    }
  }
  const std::string& digest = manifest_.chunks[index];
  VMG_ASSIGN_OR_RETURN(std::string bytes, cache_.Get(digest, fetch_));
  if (bytes.size() != manifest_.ChunkLength(index))
    return MakeError(ErrorCode::kInternal,
                     "chunk " + std::to_string(index) + " (" + digest + ") of " + manifest_.name +
                         " has " + std::to_string(bytes.size()) + " bytes; the manifest says " +
                         std::to_string(manifest_.ChunkLength(index)));
  auto data = std::make_shared<const std::string>(std::move(bytes));
  if (options_.memory_chunks > 0) {
    std::lock_guard<std::mutex> l(mu_);
    if (!recent_index_.count(index)) {  // another reader may have added it meanwhile
      if (recent_.size() >= options_.memory_chunks) {
        recent_index_.erase(recent_.back().first);
        recent_.pop_back();
      }
      recent_.emplace_front(index, data);
      recent_index_[index] = recent_.begin();
    }
  }
  return data;
}

Status ManifestBlockSource::Read(uint64_t offset, size_t len, char* out) {
  if (len == 0 || offset > manifest_.size || len > manifest_.size - offset)
    return MakeError(ErrorCode::kInvalidArgument,
                     "read of " + std::to_string(len) + " bytes at " + std::to_string(offset) +
                         " is outside the image (" + std::to_string(manifest_.size) + " bytes)");
  while (len > 0) {
    size_t index = static_cast<size_t>(offset / manifest_.chunk_size);
    size_t within = static_cast<size_t>(offset % manifest_.chunk_size);
    size_t n = std::min<size_t>(len, manifest_.ChunkLength(index) - within);
    if (manifest_.IsZero(index)) {
      std::memset(out, 0, n);
    } else {
      VMG_ASSIGN_OR_RETURN(ChunkData data, Chunk(index));
      std::memcpy(out, data->data() + within, n);
    }
    out += n;
    offset += n;
    len -= n;
  }
  return Status::Ok();
}

Status PrefetchManifest(const Manifest& m, ChunkCache& cache, ChunkClient& client) {
  std::vector<std::string> missing = cache.Missing(m.chunks);
  if (missing.empty()) return Status::Ok();
  return client.FetchChunks(missing, [&cache](const std::string& digest, std::string data) {
    return cache.Insert(digest, data);
  });
}

}  // namespace vmgrid
