// ChunkCache: a host's on-disk chunk cache, shared by all VMs on the host.
// Bounded in bytes with LRU eviction that never evicts a pinned chunk (a
// running VM or a persistent image pins its manifest's chunks). Every chunk
// is checked against its digest before its bytes are returned, whether they
// came from the fetch function or from disk; corrupt bytes are never returned.
// Concurrent misses on one chunk are coalesced into a single fetch.
//
// Verified once, then trusted: the first time this process reads a chunk
// file it hashes the whole file and remembers the file's stamp (device,
// inode, size, mtime, ctime). Later opens whose stamp is unchanged are
// served without hashing, straight from the file with pread (page-cache
// speed). Any write, truncate, replacement or rename of the file changes its
// stamp and makes the next open (and the next CachedChunk::Read) hash again.
// A stamp is only trusted when the file last changed more than
// Options::settle before the hash began, so a change within one timestamp
// tick of the verification cannot hide (the "racy git" rule). Only the
// agent's uid can write the cache directory (0700); docs/chunk-store.md
// explains the threat model.
//
// Survives restarts: Open() rebuilds the index by scanning the directory.
// Leftover temp files (torn writes) are removed; a file whose bytes do not
// match its name is discarded at Open (verify_on_open) or, at the latest,
// when it is first read after the restart (trust is not persisted). Pins are
// not persisted: callers re-pin after a restart (the agent knows its VMs).
//
// Thread-safe. One process per directory (DIR/LOCK).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "chunks/chunk_files.h"
#include "common/result.h"

namespace vmgrid {

class ChunkCache;
using ChunkCachePtr = std::unique_ptr<ChunkCache>;

// What identifies one version of a chunk file: a change to its bytes or a
// replacement of the file changes at least one field.
struct ChunkFileStamp {
  dev_t dev = 0;
  ino_t ino = 0;
  int64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  bool operator==(const ChunkFileStamp&) const = default;
};

// One verified chunk, opened for reading (ChunkCache::OpenChunk). Either an
// open descriptor of a cache file whose stamp is trusted, or the bytes that
// were just hashed, held in memory (a chunk fetched or verified moments ago,
// or one the cache could not store). Immutable and thread-safe; closes its
// descriptor when the last reference goes. Keeping one open keeps the
// file's inode (its verified bytes) alive even if the cache evicts it.
class CachedChunk {
 public:
  ~CachedChunk();
  CachedChunk(const CachedChunk&) = delete;
  CachedChunk& operator=(const CachedChunk&) = delete;

  const std::string& digest() const { return digest_; }
  uint64_t size() const { return size_; }
  bool in_memory() const { return fd_ < 0; }

  // Copies bytes [offset, offset + len) of the chunk to `out`; the caller
  // guarantees offset + len <= size(). From a file: pread, then fstat; if
  // the file's stamp is no longer the verified one, kInternal ("changed
  // since it was verified") and `out` must be discarded: drop this chunk and
  // open it again from the cache, which hashes it again.
  Status Read(uint64_t offset, size_t len, char* out) const;
  // The whole chunk (Read of [0, size())).
  Result<std::string> ReadAll() const;

 private:
  friend class ChunkCache;
  CachedChunk(std::string digest, int fd, ChunkFileStamp stamp)
      : digest_(std::move(digest)),
        fd_(fd),
        size_(static_cast<uint64_t>(stamp.size)),
        stamp_(stamp) {}
  CachedChunk(std::string digest, std::string bytes)
      : digest_(std::move(digest)), size_(bytes.size()), bytes_(std::move(bytes)) {}

  const std::string digest_;
  const int fd_ = -1;  // owned; -1 when the bytes are in memory
  const uint64_t size_;
  const ChunkFileStamp stamp_{};  // the stamp that was verified (fd_ >= 0)
  const std::string bytes_;       // fd_ < 0
};
using CachedChunkPtr = std::shared_ptr<const CachedChunk>;

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
    // A verified file's stamp is trusted (later opens skip the hash) only if
    // the file last changed at least this long before the hash began. More
    // than a file timestamp tick (a kernel jiffy, <= 10 ms): a write in the
    // same tick as the verification would not change the stamp.
    std::chrono::nanoseconds settle = std::chrono::milliseconds(50);
  };

  struct Stats {
    uint64_t hits = 0;       // Get/OpenChunk served from disk (verified)
    uint64_t misses = 0;     // Get that needed a fetch (its own or a coalesced one)
    uint64_t coalesced = 0;  // misses that waited for another caller's fetch
    uint64_t fetches = 0;    // calls of a fetch function
    uint64_t fetch_failures = 0;
    uint64_t bytes_fetched = 0;          // bytes brought in by fetches and Insert
    uint64_t verification_failures = 0;  // corrupt chunks found on disk or fetched
    uint64_t file_hashes = 0;            // cache files hashed (first read, or changed since)
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

  // Like Get, but returns the verified chunk opened for reading instead of a
  // copy of its bytes: a trusted file costs an open and an fstat, no hash
  // (see the file comment). Same errors as Get, plus kInternal when the
  // process is out of file descriptors.
  Result<CachedChunkPtr> OpenChunk(const std::string& digest, const FetchFn& fetch);

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
    std::optional<ChunkFileStamp> trusted;  // the file verified with this stamp
    std::list<std::string>::iterator lru;   // valid when !pinned
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

  struct Opened {
    CachedChunkPtr chunk;                 // null: absent or corrupt
    bool absent = false;                  // no file (evicted meanwhile)
    bool hashed = false;                  // the file was hashed
    std::optional<ChunkFileStamp> trust;  // stamp to trust from now on
    std::string problem;                  // why chunk is null
  };

  ChunkCache(std::string dir, Options options, chunkfs::DirLock lock);
  Opened OpenFile(const std::string& digest, const std::optional<ChunkFileStamp>& trusted) const;
  Result<std::string> Fetch(const std::string& digest, const FetchFn& fetch,
                            std::unique_lock<std::mutex>& l);
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
