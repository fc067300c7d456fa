// ManifestBlockSource: the bytes of one published image version, for an NBD
// export (nbd::BlockSource), assembled from its manifest's chunks through
// the host's ChunkCache; a miss is fetched on demand (e.g. with
// ChunkClient::FetchChunk) and verified by the cache. Zero chunks cost no
// I/O and are reported as holes (MapExtents), which the NBD server sends as
// NBD_REPLY_TYPE_OFFSET_HOLE. A read copies just the bytes asked for with
// pread from the verified cache file (ChunkCache::OpenChunk: each file is
// hashed once, then trusted while its stamp is unchanged); the last chunks
// used stay open, so a run of reads inside one chunk costs no open(2).
//
// Thread-safe (NBD calls Read from every connection's thread).
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "chunks/chunk_cache.h"
#include "chunks/manifest.h"
#include "common/result.h"
#include "nbd/block_source.h"

namespace vmgrid {

class ChunkClient;

class ManifestBlockSource final : public nbd::BlockSource {
 public:
  struct Options {
    // Recently used chunks kept open (CachedChunk: a descriptor, or for a
    // chunk verified moments ago its bytes in memory, at most this many x
    // 512 KiB). Saves an open + fstat per read; correctness does not depend
    // on it (0 works).
    size_t open_chunks = 64;
    // Pin the manifest's chunks in the cache (pin id: the manifest digest)
    // for the life of this object, so a running VM's image is never evicted.
    bool pin = true;
  };

  // kInvalidArgument for an invalid manifest; Pin's errors.
  static Result<std::shared_ptr<ManifestBlockSource>> Create(Manifest manifest, ChunkCache& cache,
                                                             ChunkCache::FetchFn fetch,
                                                             Options options);
  static Result<std::shared_ptr<ManifestBlockSource>> Create(Manifest manifest, ChunkCache& cache,
                                                             ChunkCache::FetchFn fetch) {
    return Create(std::move(manifest), cache, std::move(fetch), Options());
  }
  ~ManifestBlockSource() override;  // unpins

  uint64_t size() const override { return manifest_.size; }
  // kInvalidArgument outside [0, size()); the cache's errors (kUnavailable
  // when the image server is unreachable, kInternal for a chunk that cannot
  // be verified). Never returns unverified bytes: a cache file that changed
  // since it was verified is verified again (and refetched if corrupt).
  Status Read(uint64_t offset, size_t len, char* out) override;
  // Zero chunks are holes; everything else is data. No I/O.
  void MapExtents(uint64_t offset, uint64_t len, std::vector<nbd::Extent>* out) const override;

  const Manifest& manifest() const { return manifest_; }

  // The indexes of the non-zero chunks read so far, in the order of their
  // first read: what a prefetch hint records (ImageCatalog::PutPrefetch).
  std::vector<uint64_t> FirstReads() const;

 private:
  ManifestBlockSource(Manifest manifest, ChunkCache& cache, ChunkCache::FetchFn fetch,
                      Options options);
  Result<CachedChunkPtr> Chunk(size_t index);
  void Forget(size_t index, const CachedChunkPtr& chunk);

  const Manifest manifest_;
  std::string pin_id_;  // set once by Create; empty when not pinned
  ChunkCache& cache_;
  const ChunkCache::FetchFn fetch_;
  const Options options_;

  mutable std::mutex mu_;
  std::list<std::pair<size_t, CachedChunkPtr>> recent_;  // most recent first; protected by mu_
  std::unordered_map<size_t, std::list<std::pair<size_t, CachedChunkPtr>>::iterator>
      recent_index_;                   // protected by mu_
  std::vector<bool> touched_;          // per chunk; protected by mu_
  std::vector<uint64_t> first_reads_;  // protected by mu_
};

// Brings every chunk of `m` that the cache lacks into it, in batches over
// the client's parallel connections (a cold start without one round trip
// per chunk). Safe to run while a ManifestBlockSource serves reads.
Status PrefetchManifest(const Manifest& m, ChunkCache& cache, ChunkClient& client);

}  // namespace vmgrid
