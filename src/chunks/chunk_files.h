// The on-disk layout shared by ChunkStore (image server) and ChunkCache
// (host): ROOT/chunks/ab/<digest> holds one chunk, ROOT/tmp/ holds writes in
// progress (anything there at open is a torn write and is removed), and
// ROOT/LOCK is flock()ed by the one process that owns ROOT.
// Internal to src/chunks. Thread-safe (stateless apart from the lock fd).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace vmgrid::chunkfs {

// Holds ROOT/LOCK exclusively for its lifetime.
class DirLock {
 public:
  DirLock() = default;
  explicit DirLock(int fd) : fd_(fd) {}
  DirLock(DirLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  DirLock& operator=(DirLock&& o) noexcept;
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  ~DirLock();

 private:
  int fd_ = -1;
};

// Creates ROOT, ROOT/chunks (shard directories ROOT/chunks/00..ff appear
// on first use) and ROOT/tmp, takes ROOT/LOCK (fails with
// kFailedPrecondition when another process holds it) and empties ROOT/tmp.
// *torn_files (optional) receives how many leftover temp files were removed.
Result<DirLock> OpenLayout(const std::string& root, uint64_t* torn_files);

// ROOT/TREE/ab/<digest>; TREE is "chunks" except for the image server's
// kept zstd frames ("zstd", ChunkStore::GetForTransfer).
std::string ChunkPath(const std::string& root, std::string_view digest,
                      std::string_view tree = "chunks");

// Writes `data` as chunk `digest`: temp file in ROOT/tmp, fsync (when `sync`),
// rename into place, fsync of the shard directory (when `sync`). A reader
// never sees a partial file. Without `replace`, an existing file is left
// alone and the result is false; otherwise true (created or replaced).
// The caller has checked that `data` hashes to `digest`.
Result<bool> WriteChunkFile(const std::string& root, std::string_view digest, std::string_view data,
                            bool sync, bool replace, std::string_view tree = "chunks");

// Reads a whole chunk file (or kept frame). kNotFound when absent; kInternal
// when it is larger than kMaxChunkBytes or unreadable.
Result<std::string> ReadChunkFile(const std::string& path);

struct ChunkFileInfo {
  std::string digest;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
};

// Lists ROOT/chunks. Entries that cannot be chunks (a name that is not a
// digest, a file in the wrong shard, not a regular file, empty or larger
// than kMaxChunkBytes) are appended to *junk as paths and not listed.
Result<std::vector<ChunkFileInfo>> ScanChunks(const std::string& root,
                                              std::vector<std::string>* junk);

}  // namespace vmgrid::chunkfs
