// ChunkClient: a host's view of an ImageServer: fetches manifests and chunks
// over HTTP keep-alive — batched (POST /v1/chunks:batch) and over up to N
// parallel connections — and verifies every chunk against its digest; also
// the push side (upload a raw image file as a new version).
//
// Thread-safe: calls may run concurrently; they share a pool of at most
// Options::connections connections.
//
// Errors: transport failures are kUnavailable; a server error answer keeps
// the server's code and message; a chunk that fails verification twice
// (batch copy or first GET, then one refetch) is kInternal "corrupt chunk".
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "chunks/manifest.h"
#include "common/result.h"

namespace httplib {
class Client;
}

namespace vmgrid {

class ChunkClient {
 public:
  struct Options {
    int connections = 4;       // parallel keep-alive connections
    size_t batch_chunks = 16;  // digests per batch request (<= kMaxBatchChunks)
    int connect_timeout_s = 5;
    int io_timeout_s = 60;
    // A request that could not be sent (no connection, or no TLS handshake
    // in connect_timeout_s: a busy or restarting image server) is tried
    // again, with growing pauses, for up to this long.
    int retry_unsent_s = 15;
    // Ask for chunks as zstd frames where the server finds compressing pays
    // (docs/chunk-store.md, "Compressed transfer"); decoded and verified here.
    bool accept_zstd = true;
  };

  struct Stats {
    uint64_t requests = 0;
    uint64_t chunks_fetched = 0;     // verified chunks handed to callers
    uint64_t bytes_fetched = 0;      // chunk bytes received, good or bad (a zstd frame: its length)
    uint64_t raw_bytes_fetched = 0;  // the same chunks' own lengths (after decoding)
    uint64_t zstd_chunks = 0;        // chunks received as zstd frames
    uint64_t verification_failures = 0;  // chunks received that did not match their digest
    uint64_t refetches = 0;
    uint64_t connections_opened = 0;
    uint64_t unsent_retries = 0;  // requests tried again after they could not be sent
  };

  struct VersionInfo {
    uint64_t version = 0;
    std::string digest;
    uint64_t size = 0;
    uint32_t chunk_size = 0;
  };

  // base_url: "http://host:port" (no path). token: bearer token or "".
  ChunkClient(std::string base_url, std::string token, Options options);
  ChunkClient(std::string base_url, std::string token)
      : ChunkClient(std::move(base_url), std::move(token), Options()) {}
  ~ChunkClient();
  ChunkClient(const ChunkClient&) = delete;
  ChunkClient& operator=(const ChunkClient&) = delete;

  // `grant`: a workspace grant (chunks/workspace_grant.h), needed for
  // workspace names ("ws-..."), sent with the manifest requests of the call.
  Result<std::vector<VersionInfo>> ListVersions(const std::string& name,
                                                const std::string& grant = "");
  // version 0 means the latest. The answer is parsed strictly
  // (ParseManifestJson: self-digest checked) and must be the requested
  // name/version; with a non-empty expected_digest (e.g. from the
  // controller's records) it must also have that digest.
  Result<Manifest> GetManifest(const std::string& name, uint64_t version,
                               const std::string& expected_digest = "",
                               const std::string& grant = "");

  // One chunk, verified (refetched once on a mismatch).
  Result<std::string> FetchChunk(const std::string& digest);

  // Receives a verified chunk. Called from worker threads, up to
  // Options::connections at once; a non-OK status stops the fetch.
  using ChunkSink = std::function<Status(const std::string& digest, std::string data)>;
  // Fetches every digest (duplicates once; kZeroChunk is not allowed) in
  // batches over parallel connections; calls `sink` once per distinct
  // digest, in no particular order. Stops at the first error and returns it;
  // chunks already handed to the sink stay handed.
  Status FetchChunks(const std::vector<std::string>& digests, const ChunkSink& sink);

  // Prefetch hints (ImageCatalog::GetPrefetch/PutPrefetch). Get: kNotFound
  // when none is recorded. Put: kAlreadyExists when another host was first.
  Result<std::vector<uint64_t>> GetPrefetch(const std::string& name, uint64_t version,
                                            const std::string& mode);
  Status PutPrefetch(const std::string& name, uint64_t version, const std::string& mode,
                     const std::vector<uint64_t>& order);

  // --- push side ---
  // Which of `digests` the server lacks (each once, in first-seen order).
  Result<std::vector<std::string>> MissingChunks(const std::vector<std::string>& digests);
  Status PutChunk(const std::string& digest, std::string_view data);
  // Publishes a draft (size, chunk_size, chunks) as the next version of
  // `name`; all its chunks must be on the server.
  Result<Manifest> Publish(const std::string& name, const Manifest& draft,
                           const std::string& grant = "");
  // What one upload sent: the chunks the server lacked (only those travel).
  struct UploadCounts {
    uint64_t chunks = 0;       // non-zero chunks of the file
    uint64_t chunks_sent = 0;  // of those, PUT because the server lacked them
    uint64_t bytes_sent = 0;
  };
  // Chunks a raw image file, uploads the chunks the server lacks and
  // publishes the result as a new version. Reads the file twice (hash, then
  // upload); fails with kFailedPrecondition if it changes in between.
  // `progress` is called for both passes; `counts` (optional) receives what
  // travelled.
  Result<Manifest> UploadImageFile(const std::string& path, const std::string& name,
                                   uint32_t chunk_size, const ChunkProgressFn& progress = nullptr,
                                   const std::string& grant = "", UploadCounts* counts = nullptr);

  Stats stats() const;
  const std::string& base_url() const { return base_url_; }

 private:
  struct Answer {
    int status = 0;
    std::string body;
  };
  class Lease;

  std::unique_ptr<httplib::Client> NewConnection();
  // One HTTP exchange on a pooled connection; non-2xx answers become errors.
  // A request that could not be sent is tried again (Options::retry_unsent_s).
  Result<Answer> Call(const std::string& method, const std::string& path, std::string body,
                      const std::string& content_type, uint64_t max_answer_bytes,
                      const std::string& grant = "");
  // One try; `*unsent` says whether a failure happened before the request
  // could have reached the server.
  Result<Answer> CallOnce(const std::string& method, const std::string& path,
                          const std::string& body, const std::string& content_type,
                          uint64_t max_answer_bytes, const std::string& grant, bool* unsent);
  // GETs the chunk up to `attempts` times until it verifies; every attempt
  // after the first, and the first too when `refetch`, counts as a refetch.
  Result<std::string> FetchSingle(const std::string& digest, int attempts, bool refetch);
  Status FetchBatch(std::vector<std::string> digests, const ChunkSink& sink);

  const std::string base_url_;
  const std::string token_;
  const Options options_;

  std::mutex pool_mu_;
  std::condition_variable pool_cv_;
  std::vector<std::unique_ptr<httplib::Client>> idle_;  // protected by pool_mu_
  int open_ = 0;                                        // protected by pool_mu_

  std::atomic<bool> server_refuses_zstd_{false};  // an old server refused "encodings"
  std::atomic<uint64_t> requests_{0}, chunks_fetched_{0}, bytes_fetched_{0}, raw_bytes_fetched_{0},
      zstd_chunks_{0}, verification_failures_{0}, refetches_{0}, connections_opened_{0},
      unsent_retries_{0};
};

}  // namespace vmgrid
