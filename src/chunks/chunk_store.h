// ChunkStore: the image server's content-addressed chunk store on disk.
// A chunk is stored once under DIR/chunks/ab/<sha256 hex> however many image
// versions reference it; every read is checked against the digest. Beside
// it, DIR/zstd/ab/<sha256 hex> keeps the chunk's zstd frame for transfer (an
// empty file there: compressing did not pay); frames are a cache, made again
// when missing or bad.
//
// Thread-safe. One process per DIR (enforced with DIR/LOCK).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "chunks/chunk_files.h"
#include "common/result.h"

namespace vmgrid {

class ChunkStore;
using ChunkStorePtr = std::unique_ptr<ChunkStore>;

class ChunkStore {
 public:
  struct Options {
    // fsync each new chunk and its directory before Put returns. Off only
    // for benchmarks and throwaway stores.
    bool sync = true;
    // Keep each chunk's zstd frame for compressed transfer (GetForTransfer),
    // made when the chunk is stored. Off: frames are made on first transfer.
    bool frames_on_put = true;
  };

  struct Stats {
    uint64_t chunks = 0;      // distinct chunks stored
    uint64_t bytes = 0;       // physical bytes of those chunks
    uint64_t puts = 0;        // Put/PutVerified calls that succeeded
    uint64_t put_bytes = 0;   // bytes offered by those calls
    uint64_t dedup_hits = 0;  // puts of a chunk that was already stored
    uint64_t gets = 0;
    uint64_t corrupt_reads = 0;  // Gets that found a chunk whose hash did not match
    uint64_t frames_made = 0;    // zstd frames (or "raw" marks) written
    uint64_t bad_frames = 0;     // kept frames that did not decode to their chunk (removed)
  };

  // A chunk as it travels to a client that accepts zstd.
  struct TransferChunk {
    std::string data;  // the zstd frame when `zstd`, else the chunk's bytes
    bool zstd = false;
    uint64_t raw_size = 0;
  };

  // Opens (creating if needed) the store at `dir`. Leftover temp files from
  // a crash are removed; the chunk count and size come from a scan.
  static Result<ChunkStorePtr> Open(const std::string& dir, Options options);
  static Result<ChunkStorePtr> Open(const std::string& dir) { return Open(dir, Options()); }

  // Stores `data` (1 byte to kMaxChunkBytes) and returns its digest.
  // Idempotent: a chunk already present is not written again. On failure
  // nothing is visible under the digest (atomic temp + fsync + rename).
  Result<std::string> Put(std::string_view data);
  // As Put, for a chunk that arrives with its claimed digest (uploads):
  // kInvalidArgument when `data` does not hash to `digest`.
  Status PutVerified(const std::string& digest, std::string_view data);

  // Returns the chunk, verified. kNotFound when absent; kInternal with
  // "corrupt chunk" when the stored bytes do not hash to `digest` — the file
  // is then moved to DIR/quarantine (so a later Put of the right bytes
  // repairs the store) and Stats::corrupt_reads counts it. Corrupt bytes are
  // never returned.
  Result<std::string> Get(const std::string& digest);

  // Returns the stored bytes without hashing them, for a server whose
  // clients verify every chunk themselves (ImageServer::Options).
  Result<std::string> GetUnverified(const std::string& digest);

  // The chunk's kept zstd frame when compressing it paid (CompressChunk),
  // else its raw bytes. A missing frame is made (and kept) from the raw
  // chunk, read as Get (verify) or GetUnverified. With `verify` a kept frame
  // is decoded and hashed before it is returned; one that does not give the
  // chunk back is removed (Stats::bad_frames) and the raw chunk served.
  // Errors as Get.
  Result<TransferChunk> GetForTransfer(const std::string& digest, bool verify);

  bool Has(const std::string& digest) const;
  // Stored length of the chunk (not verified). kNotFound when absent.
  Result<uint64_t> Size(const std::string& digest) const;

  Stats stats() const;
  const std::string& dir() const { return dir_; }

 private:
  ChunkStore(std::string dir, Options options, chunkfs::DirLock lock);
  Status PutChecked(const std::string& digest, std::string_view data);
  // Writes the frame (or the empty "raw" mark) of `data`; returns the frame
  // when compressing paid. Failures only log: frames are a cache.
  std::optional<std::string> KeepFrame(const std::string& digest, std::string_view data);

  const std::string dir_;
  const Options options_;
  chunkfs::DirLock lock_;

  mutable std::mutex mu_;
  Stats stats_;  // protected by mu_
};

// logical / physical, or 0 when nothing is stored. See ImageCatalog::Stats.
double DedupRatio(uint64_t logical_bytes, uint64_t physical_bytes);

}  // namespace vmgrid
