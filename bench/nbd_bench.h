// What the NBD read benchmarks (bench/nbd_read, bench/image_transfer's NBD
// table) share: our export of a raw image next to qemu-nbd serving the same
// file, and the two clients that time them (nbdcopy of the whole export,
// bench/nbd_read_bench.py). Errors are returned, not fatal: the caller
// decides (the benchmarks Die, see die.h).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "chunks/chunk_cache.h"
#include "chunks/chunk_store.h"
#include "chunks/manifest.h"
#include "chunks/manifest_block_source.h"
#include "common/child_process.h"
#include "common/result.h"
#include "nbd/nbd_server.h"

namespace vmgrid::bench {

struct NbdExportPairOptions {
  std::string image;  // the raw file both servers serve
  // Emptied, then holds the chunk store, the cache, both sockets, qemu-nbd's
  // log and data-chunks.txt.
  std::string work;
  std::string manifest_name = "bench";  // Manifest::name of our export
  ManifestBlockSource::Options source;
  int session_workers = -1;  // NbdServerOptions::session_workers; -1: its default
};

// Export "disk" of `image` twice on unix sockets: ours (ChunkStore ->
// ChunkCache with every chunk already fetched -> ManifestBlockSource ->
// nbd::NbdServer, in this process) and qemu-nbd's (--read-only
// --shared=8 --format=raw, a child process). The destructor stops both.
class NbdExportPair {
 public:
  static Result<std::unique_ptr<NbdExportPair>> Start(const NbdExportPairOptions& options);
  ~NbdExportPair();
  NbdExportPair(const NbdExportPair&) = delete;
  NbdExportPair& operator=(const NbdExportPair&) = delete;

  const std::string& ours_uri() const { return ours_uri_; }  // nbd+unix:///disk?socket=...
  const std::string& qemu_uri() const { return qemu_uri_; }
  const Manifest& manifest() const { return manifest_; }
  // The chunk size, then the index of each chunk that holds data, one a
  // line: nbd_read_bench.py's --data-chunks.
  const std::string& chunks_file() const { return chunks_file_; }
  uint64_t data_chunks() const { return data_chunks_; }
  ChunkCache::Stats cache_stats() const { return cache_->stats(); }

 private:
  NbdExportPair() = default;

  // Declared in the order they are made: destroyed source before cache
  // before store.
  ChunkStorePtr store_;
  ChunkCachePtr cache_;
  std::shared_ptr<ManifestBlockSource> source_;
  std::unique_ptr<nbd::NbdServer> server_;
  std::unique_ptr<ChildProcess> qemu_nbd_;
  Manifest manifest_;
  std::string ours_uri_, qemu_uri_, chunks_file_;
  uint64_t data_chunks_ = 0;
};

// Bench/nbd_read_bench.py against `uri`: sequential 1 MiB reads at queue
// depth 8 over the whole export, then `random_reads` random 4 KiB reads at
// depth 1 and 16 inside the chunks `chunks_file` lists. Its JSON output
// ({"seq": {"mib_s"}, "rand_qd1": {"iops", "mib_s"}, "rand_qd16": ...}).
Result<nlohmann::json> RunReadBench(const std::string& uri, const std::string& chunks_file,
                                    int random_reads);

// MiB/s of `nbdcopy --no-extents URI null:` over an export of `size` bytes.
Result<double> NbdcopyMiBs(const std::string& uri, uint64_t size);

}  // namespace vmgrid::bench
