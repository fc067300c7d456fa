#include "chunks/manifest_block_source.h"

#include <spdlog/spdlog.h>

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

Result<CachedChunkPtr> ManifestBlockSource::Chunk(size_t index) {
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
  VMG_ASSIGN_OR_RETURN(CachedChunkPtr chunk, cache_.OpenChunk(digest, fetch_));
  if (chunk->size() != manifest_.ChunkLength(index))
    return MakeError(ErrorCode::kInternal,
                     "chunk " + std::to_string(index) + " (" + digest + ") of " + manifest_.name +
                         " has " + std::to_string(chunk->size()) + " bytes; the manifest says " +
                         std::to_string(manifest_.ChunkLength(index)));
  if (options_.open_chunks > 0) {
    std::lock_guard<std::mutex> l(mu_);
    if (!recent_index_.count(index)) {  // another reader may have added it meanwhile
      if (recent_.size() >= options_.open_chunks) {
        recent_index_.erase(recent_.back().first);
        recent_.pop_back();
      }
      recent_.emplace_front(index, chunk);
      recent_index_[index] = recent_.begin();
    }
  }
  return chunk;
}

void ManifestBlockSource::Forget(size_t index, const CachedChunkPtr& chunk) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = recent_index_.find(index);
  if (it == recent_index_.end() || it->second->second != chunk) return;
  recent_.erase(it->second);
  recent_index_.erase(it);
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
      VMG_ASSIGN_OR_RETURN(CachedChunkPtr chunk, Chunk(index));
      if (Status st = chunk->Read(within, n, out); !st.ok()) {
        // The file changed since it was verified: the cache hashes it again
        // (and refetches it if it is corrupt). Once; a second failure is
        // reported.
        spdlog::warn("{}: {}; verifying it again", manifest_.name, st.error().message);
        Forget(index, chunk);
        VMG_ASSIGN_OR_RETURN(chunk, Chunk(index));
        VMG_RETURN_IF_ERROR(chunk->Read(within, n, out));
      }
    }
    out += n;
    offset += n;
    len -= n;
  }
  return Status::Ok();
}

void ManifestBlockSource::MapExtents(uint64_t offset, uint64_t len,
                                     std::vector<nbd::Extent>* out) const {
  out->clear();
  const uint64_t end = std::min(manifest_.size, offset + len);
  while (offset < end) {
    size_t index = static_cast<size_t>(offset / manifest_.chunk_size);
    uint64_t chunk_end = std::min<uint64_t>(
        end, static_cast<uint64_t>(index) * manifest_.chunk_size + manifest_.ChunkLength(index));
    bool zero = manifest_.IsZero(index);
    if (!out->empty() && out->back().zero == zero)
      out->back().length += chunk_end - offset;
    else
      out->push_back(nbd::Extent{chunk_end - offset, zero});
    offset = chunk_end;
  }
}

Status PrefetchManifest(const Manifest& m, ChunkCache& cache, ChunkClient& client) {
  std::vector<std::string> missing = cache.Missing(m.chunks);
  if (missing.empty()) return Status::Ok();
  return client.FetchChunks(missing, [&cache](const std::string& digest, std::string data) {
    return cache.Insert(digest, data);
  });
}

}  // namespace vmgrid
