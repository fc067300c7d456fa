// ImageCatalog: the image server's published manifests, one file per
// version at DIR/manifests/<name>/<version>.json (Manifest::ToJson()).
// Versions are numbered 1, 2, ... per image name and immutable: publishing
// always creates a new version, never rewrites one.
//
// Thread-safe. One process per DIR (the ChunkStore sharing DIR holds its lock).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "chunks/manifest.h"
#include "common/result.h"

namespace vmgrid {

class ChunkStore;
class ImageCatalog;
using ImageCatalogPtr = std::unique_ptr<ImageCatalog>;

class ImageCatalog {
 public:
  struct VersionInfo {
    uint64_t version = 0;
    std::string digest;  // Manifest::Digest()
    uint64_t size = 0;
    uint32_t chunk_size = 0;
    uint64_t chunks = 0;
    uint64_t nonzero_bytes = 0;
  };

  struct Stats {
    uint64_t images = 0;
    uint64_t versions = 0;
    uint64_t logical_bytes = 0;     // sum of image sizes over all versions
    uint64_t referenced_bytes = 0;  // of which non-zero chunks (zero chunks are free)
    uint64_t physical_bytes = 0;    // bytes in the chunk store
    // referenced_bytes / physical_bytes: what content addressing saves
    // beyond sparseness (shared chunks across versions and images).
    double dedup_ratio = 0;
    // logical_bytes / physical_bytes: including the zero chunks.
    double total_ratio = 0;
    uint64_t corrupt_manifests = 0;  // files skipped at Open
  };

  // Loads every manifest under DIR/manifests. A file that does not parse,
  // whose digest does not match, or whose name/version differ from its path
  // is skipped (logged, counted in Stats::corrupt_manifests).
  static Result<ImageCatalogPtr> Open(const std::string& dir);

  // Publishes `draft` (size, chunk_size, chunks; name from the argument) as
  // the next version of `name`. Every non-zero chunk must already be in
  // `store` with the length the manifest implies (else kFailedPrecondition
  // naming the missing ones). The manifest is written atomically and
  // fsynced before this returns. On failure: no side effects.
  Result<Manifest> Publish(const std::string& name, Manifest draft, const ChunkStore& store);

  // kNotFound when the image has no versions.
  Result<std::vector<VersionInfo>> Versions(const std::string& name) const;
  // Re-reads and re-verifies the file. kNotFound for an unknown version.
  Result<Manifest> Get(const std::string& name, uint64_t version) const;
  Result<Manifest> Latest(const std::string& name) const;
  std::vector<std::string> Names() const;

  // Prefetch hints of a version: the order in which a VM first read its
  // chunks (chunk indexes) while it booted or resumed from it; `mode` is
  // "boot" or "resume". Advisory and written once: the first recording
  // stays (kAlreadyExists for later ones), so hosts agree on one order.
  // kNotFound for an unknown version; kInvalidArgument for a bad mode, an
  // index out of range, a repeated index, or an empty list.
  Status PutPrefetch(const std::string& name, uint64_t version, const std::string& mode,
                     const std::vector<uint64_t>& order);
  // kNotFound when none was recorded.
  Result<std::vector<uint64_t>> GetPrefetch(const std::string& name, uint64_t version,
                                            const std::string& mode) const;

  Stats ComputeStats(const ChunkStore& store) const;

 private:
  explicit ImageCatalog(std::string dir) : dir_(std::move(dir)) {}
  std::string PathFor(const std::string& name, uint64_t version) const;
  Result<uint64_t> ChunkCount(const std::string& name, uint64_t version) const;

  const std::string dir_;  // DIR/manifests
  mutable std::mutex mu_;
  std::map<std::string, std::map<uint64_t, VersionInfo>> index_;  // protected by mu_
  uint64_t corrupt_manifests_ = 0;                                // protected by mu_
};

}  // namespace vmgrid
