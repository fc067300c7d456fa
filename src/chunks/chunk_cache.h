// ChunkCache: a host's on-disk chunk cache, shared by all VMs on the host.
// Bounded in bytes with LRU eviction that never evicts a pinned chunk (a
// running VM or a persistent image pins its manifest's chunks). Every chunk
// is checked against its digest before it is returned, whether it came from
// disk or from the fetch function; corrupt bytes are never returned.
// Concurrent misses on one chunk are coalesced into a single fetch.
//
// Survives restarts: Open() rebuilds the index by scanning the directory.
// Leftover temp files (torn writes) are removed; a file whose bytes do not
// match its name is discarded at Open (verify_on_open) or, at the latest,
// when it is first read. Pins are not persisted: callers re-pin after a
// restart (the agent knows its VMs).
//
// Thread-safe. One process per directory (DIR/LOCK).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "chunks/chunk_files.h"
#include "common/result.h"

namespace vmgrid {

class ChunkCache;
using ChunkCachePtr = std::unique_ptr<ChunkCache>;

class ChunkCache {
 public:
  struct Options {
    // Soft bound on stored bytes: unpinned chunks are evicted, least
    // recently used first, to stay under it. Pinned chunks are never
    // evicted, so pinned bytes alone may exceed it (Stats shows it); the
    // caller should check a manifest's size against free capacity before
    // pinning it.
    uint64_t capacity_bytes = 10ull << 30;
    // fsync each chunk before it becomes visible. Not needed for safety
    // (a torn file fails verification and is refetched), only to keep
    // chunks across a power cut.
    bool sync_writes = false;
    // Hash every chunk at Open and discard mismatches. Off by default: reads
    // verify anyway, and hashing a full cache delays agent start.
    bool verify_on_open = false;
  };

  struct Stats {
    uint64_t hits = 0;       // Get served from disk (verified)
    uint64_t misses = 0;     // Get that needed a fetch (its own or a coalesced one)
    uint64_t coalesced = 0;  // misses that waited for another caller's fetch
    uint64_t fetches = 0;    // calls of a fetch function
    uint64_t fetch_failures = 0;
    uint64_t bytes_fetched = 0;          // bytes brought in by fetches and Insert
    uint64_t verification_failures = 0;  // corrupt chunks found on disk or fetched
    uint64_t evictions = 0;
    uint64_t discarded_at_open = 0;  // temp files, junk, corrupt chunks removed by Open
    uint64_t chunks = 0;
    uint64_t bytes = 0;
    uint64_t pinned_chunks = 0;  // cached chunks that are pinned
    uint64_t pinned_bytes = 0;
    uint64_t pins = 0;  // pin ids held
    uint64_t capacity_bytes = 0;
  };

  // Returns the chunk's bytes; must be thread-safe. The result is verified
  // by the cache (a mismatch is counted and fetched once more).
  using FetchFn = std::function<Result<std::string>(const std::string& digest)>;

  static Result<ChunkCachePtr> Open(const std::string& dir, Options options);

  // The chunk's bytes, verified: from disk, or else from `fetch` (stored,
  // then possibly evicted at once if everything else is pinned). While one
  // caller fetches a digest, other callers for it wait and share the result.
  // Errors: kInvalidArgument for a bad digest; the fetch's error; kInternal
  // "corrupt chunk" when the fetched bytes fail verification twice.
  Result<std::string> Get(const std::string& digest, const FetchFn& fetch);

  // Adds a chunk fetched elsewhere (e.g. a batch prefetch). kInvalidArgument
  // when `data` does not hash to `digest`. No-op when already cached.
  Status Insert(const std::string& digest, std::string_view data);

  bool Contains(const std::string& digest) const;
  // The distinct digests of `chunks` that are not cached (kZeroChunk skipped).
  std::vector<std::string> Missing(const std::vector<std::string>& chunks) const;

  // Pins `chunks` (digests; kZeroChunk entries ignored) under `pin_id`,
  // normally a manifest digest, including chunks not cached yet. Pins are
  // reference-counted per pin_id: pinning the same id again (same chunk
  // list) needs one more Unpin. Reusing an id for a different list is
  // kInvalidArgument. On failure: no side effects.
  Status Pin(const std::string& pin_id, const std::vector<std::string>& chunks);
  // Drops one reference; kNotFound for an unknown id. Chunks no longer
  // pinned become evictable (most recently used end) and eviction runs.
  Status Unpin(const std::string& pin_id);

  Stats stats() const;
  const std::string& dir() const { return dir_; }

 private:
  struct Entry {
    uint64_t size = 0;
    uint64_t gen = 0;  // distinguishes re-insertions of one digest
    bool pinned = false;
    std::list<std::string>::iterator lru;  // valid when !pinned
  };
  struct InFlight {
    std::condition_variable cv;
    bool done = false;
    Result<std::string> result = Error{};
  };
  struct PinSet {
    std::vector<std::string> chunks;  // sorted, distinct
    uint64_t refs = 0;
  };
  using EntryMap = std::unordered_map<std::string, Entry>;

  ChunkCache(std::string dir, Options options, chunkfs::DirLock lock);
  Result<std::string> FetchAndStore(const std::string& digest, const FetchFn& fetch);
  Status Store(const std::string& digest, std::string_view data);
  void AddEntryLocked(const std::string& digest, uint64_t size);
  void RemoveEntryLocked(EntryMap::iterator it);  // also unlinks the file
  void EvictLocked();

  const std::string dir_;
  const Options options_;
  chunkfs::DirLock lock_;

  mutable std::mutex mu_;
  // State below is protected by mu_.
  EntryMap entries_;
  std::list<std::string> lru_;  // unpinned cached digests, most recent first
  std::unordered_map<std::string, uint64_t> pin_counts_;  // digest -> pin sets holding it
  std::unordered_map<std::string, PinSet> pin_sets_;
  std::unordered_map<std::string, std::shared_ptr<InFlight>> inflight_;
  uint64_t next_gen_ = 1;
  Stats stats_;  // chunks/bytes/pinned_* kept current; the rest are counters
};

}  // namespace vmgrid
