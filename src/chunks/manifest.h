// Manifest: one immutable version of an image (or checkpoint) as a list of
// content-addressed chunks, with its canonical JSON form and digest, strict
// parsing of untrusted manifests, and converting between raw image files and
// chunks. See docs/chunk-store.md for the format.
// Thread-safe (no shared state).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "chunks/chunk_digest.h"
#include "common/result.h"

namespace vmgrid {

class ChunkStore;

// The chunk size new images get unless the caller chooses: 512 KiB, picked
// by measurement (chunk_size_bench; docs/chunk-store.md, "Chunk size").
inline constexpr uint32_t kDefaultChunkSize = 512u << 10;

// Bounds on untrusted manifests: 2^20 chunks is 1 TiB at 1 MiB chunks, and
// its JSON (67 bytes per chunk entry) stays under the byte limit.
inline constexpr size_t kMaxManifestChunks = size_t{1} << 20;
inline constexpr size_t kMaxManifestJsonBytes = size_t{72} << 20;
inline constexpr uint64_t kMaxManifestVersion = uint64_t{1} << 53;  // exact in a JSON double

struct Manifest {
  static constexpr int kFormat = 1;

  std::string name;      // image name (ValidateName rules)
  uint64_t version = 0;  // 1, 2, ... assigned at publication; 0 = not published
  uint64_t size = 0;     // bytes of the raw image, >= 1
  uint32_t chunk_size = 0;
  // One entry per chunk_size piece of the image (the last may be shorter):
  // a chunk digest, or kZeroChunk for a piece that is all zero bytes.
  std::vector<std::string> chunks;

  uint64_t ChunkOffset(size_t i) const { return static_cast<uint64_t>(i) * chunk_size; }
  // Length of piece i: chunk_size, or what is left for the last one.
  uint32_t ChunkLength(size_t i) const;
  bool IsZero(size_t i) const { return chunks[i] == kZeroChunk; }
  uint64_t NonZeroChunks() const;
  uint64_t NonZeroBytes() const;  // logical bytes that are stored chunks

  // {"chunk_size":..,"chunks":[..],"format":1,"name":..,"size":..,"version":..}
  // with sorted keys and no spaces; what Digest() hashes.
  std::string CanonicalJson() const;
  // Hex SHA-256 of CanonicalJson(): names this exact version everywhere
  // (controller records, cache pins).
  std::string Digest() const;
  // The canonical fields plus "digest".
  nlohmann::json ToJson() const;
};

// ceil(size / chunk_size).
uint64_t ChunkCountFor(uint64_t size, uint32_t chunk_size);

// Checks every invariant: chunk_size valid, 1 <= size, chunk count matches
// size, at most kMaxManifestChunks, entries are digests or "zero". With
// `published`, also a valid name and 1 <= version <= kMaxManifestVersion.
Status ValidateManifest(const Manifest& m, bool published);

// Parses a published manifest (as served by ImageServer or read from disk):
// exactly the fields of ToJson(), all required, no others, no duplicate
// keys, integers only where integers belong, and "digest" must equal the
// digest of the canonical form. Rejects anything over kMaxManifestJsonBytes.
// Errors are kInvalidArgument naming the problem.
Result<Manifest> ParseManifestJson(std::string_view text);

// Parses an unpublished manifest body {"size","chunk_size","chunks"} (and
// optionally "format") as uploaded to POST /v1/manifests/{name}; name and
// version stay empty/0 for the publisher to set.
Result<Manifest> ParseManifestDraftJson(std::string_view text);

// Called while a file is chunked or assembled; return false to cancel (the
// operation then fails with kInternal "canceled").
using ChunkProgressFn = std::function<bool(uint64_t bytes_done, uint64_t bytes_total)>;

// Called for each piece of a file, in order, with all of its bytes. `data` is
// valid only during the call; `all_zero` says it is all zero bytes.
using FileChunkVisitor = std::function<Status(size_t index, std::string_view data, bool all_zero)>;

// Reads `path` in chunk_size pieces. Holes of a sparse file are skipped
// without reading (SEEK_DATA). Fails on an empty file, a bad chunk size, or
// a file needing more than kMaxManifestChunks pieces.
Status ForEachFileChunk(const std::string& path, uint32_t chunk_size, const FileChunkVisitor& visit,
                        const ChunkProgressFn& progress = nullptr);

// Chunks a raw image file into `store` and returns its (unpublished)
// manifest: name empty, version 0. All-zero pieces become kZeroChunk and
// are not stored. The file must be raw: convert qcow2 first with
// `qemu-img convert -O raw` (chunks must be guest-visible bytes so that an
// NBD export can serve block reads straight from them).
Result<Manifest> ChunkImageFile(const std::string& path, uint32_t chunk_size, ChunkStore& store,
                                const ChunkProgressFn& progress = nullptr);

// Returns a chunk's bytes (from a ChunkStore, ChunkCache or ChunkClient).
using ChunkGetFn = std::function<Result<std::string>(const std::string& digest)>;

// Writes the raw image described by `m` to `out_path` (sparse: zero chunks
// are holes). Every chunk's length and hash are checked. Writes to
// out_path + ".partial" and renames at the end; on failure nothing is left.
Status WriteImageFile(const Manifest& m, const ChunkGetFn& get, const std::string& out_path,
                      const ChunkProgressFn& progress = nullptr);

// The raw image of a manifest written chunk by chunk in any order, so that
// chunks can land in the file as they arrive from the network: Open, Put
// every distinct chunk, Commit. The file is out_path + ".partial" (sparse:
// zero chunks stay holes) until Commit fsyncs it and renames it; a writer
// destroyed before a successful Commit removes it. `m` must outlive it.
// Thread-safety: Put may be called from several threads at once.
class ImageFileWriter {
 public:
  static Result<std::unique_ptr<ImageFileWriter>> Open(const Manifest& m,
                                                       const std::string& out_path);
  ~ImageFileWriter();
  ImageFileWriter(const ImageFileWriter&) = delete;
  ImageFileWriter& operator=(const ImageFileWriter&) = delete;

  // Writes `data` at every place of the manifest that holds `digest`. The
  // caller vouches that `data` hashes to `digest` (it verified it); Put
  // checks the length of each place. kInvalidArgument for a digest the
  // manifest does not hold.
  Status Put(const std::string& digest, std::string_view data);
  // The distinct non-zero digests not written yet, in file order.
  std::vector<std::string> Missing() const;
  // kFailedPrecondition while a chunk is missing; else fsync and rename.
  Status Commit();

 private:
  ImageFileWriter(const Manifest& m, std::string out_path, int fd);

  const Manifest& manifest_;
  const std::string out_path_, tmp_path_;
  int fd_;
  bool committed_ = false;
  std::map<std::string, std::vector<size_t>> places_;  // digest -> chunk indexes; fixed
  mutable std::mutex mu_;
  std::set<std::string> written_;  // guarded by mu_
};

}  // namespace vmgrid
