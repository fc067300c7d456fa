// ImageServer: serves a ChunkStore and its ImageCatalog over HTTP (what
// `vmgrid image-server` will run): manifests, single and batched chunk
// reads, and the push protocol (PUT chunks, then POST a manifest). The
// protocol is specified in docs/chunk-store.md.
//
// Thread-safe: handlers run on the server's thread pool; Start/Stop from one
// thread. The store and catalog must outlive the server.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/metrics.h"
#include "common/result.h"

namespace httplib {
class Server;
}

namespace vmgrid {

class GuardedServer;
class TlsContext;

class ChunkStore;
class ImageCatalog;

class ImageServer {
 public:
  struct Options {
    // Every request must carry "Authorization: Bearer TOKEN". Start() refuses
    // an empty token unless allow_anonymous (unit tests and benchmarks only):
    // the server hands out every image and checkpoint memory file.
    std::string token;
    bool allow_anonymous = false;
    // Key of workspace grants (chunks/workspace_grant.h), shared with the
    // controller only. Names in the workspace namespace ("ws-...") are served
    // and published only with a valid grant for that name; with no key they
    // are refused altogether.
    std::string grant_key{};
    // Where the highest grant generation seen per workspace name is kept
    // (one small file per name); "" = in memory only (tests).
    std::string grant_dir{};
    // TLS (common/tls.h); null: plain HTTP (the caller checked it may).
    std::shared_ptr<TlsContext> tls = nullptr;
    // Worker threads; each keep-alive connection holds one while open, and
    // each host keeps up to 4 (ChunkClient::Options::connections): enough
    // for 64 hosts fetching at once. Beyond, new connections wait for a
    // thread (hosts retry: ChunkClient::Call).
    int threads = 256;
    // A batch answer stops adding chunks once it would exceed this many
    // bytes (it always carries at least one); the client asks again for the
    // rest. Bounds the server's memory per request.
    uint64_t max_batch_bytes = 32ull << 20;
    // Hash every chunk before sending it. A corrupt chunk then answers 500
    // and is quarantined. Clients verify anyway, so turning this off trades
    // server CPU for detecting rot only at the client.
    bool verify_on_read = true;
    // Send chunks as zstd frames to clients that accept them (batch
    // requests with "encodings":["zstd"]), where compressing pays.
    bool compress = true;
    // An idle keep-alive connection is closed after this long (the client
    // reconnects transparently). Stop() waits for open idle connections up
    // to this long, so keep it short.
    int keep_alive_timeout_s = 5;
    int io_timeout_s = 60;
  };

  struct Stats {
    uint64_t requests = 0;
    uint64_t chunks_served = 0;
    uint64_t bytes_served = 0;      // as sent: a zstd frame counts its own length
    uint64_t raw_bytes_served = 0;  // the chunks' own lengths
    uint64_t zstd_chunks_served = 0;
    uint64_t batch_requests = 0;
    uint64_t chunks_uploaded = 0;  // PUTs that stored a new chunk
    uint64_t bytes_uploaded = 0;
    uint64_t manifests_published = 0;
    uint64_t auth_failures = 0;
    uint64_t grant_refusals = 0;  // workspace-namespace requests refused for their grant
  };

  ImageServer(ChunkStore& store, ImageCatalog& catalog, Options options);
  ~ImageServer();  // Stop()s
  ImageServer(const ImageServer&) = delete;
  ImageServer& operator=(const ImageServer&) = delete;

  // Binds host:port (port 0 picks a free one) and serves on a background
  // thread. Returns the bound port; kUnavailable when the bind fails.
  Result<int> Start(const std::string& host, int port);
  // Stops accepting and waits for the serving thread. Idempotent.
  void Stop();

  // "http://host:port" once started.
  std::string url() const { return url_; }
  Stats stats() const;
  // Server, store and catalog counters, as served by GET /v1/stats.
  nlohmann::json StatsJson() const;
  // The server's and the store's counters as metric families (/metrics;
  // docs/operations.md). Cheap: no catalog scan.
  std::vector<metrics::FamilySnapshot> MetricFamilies() const;

 private:
  void InstallRoutes();
  // For a request on a workspace name: OK with a valid grant whose
  // generation is at least the highest seen for the name (a higher one is
  // recorded: the first request of the host the workspace moved to locks out
  // the hosts it left); else the error to send.
  Status CheckWorkspaceGrant(const std::string& name, const std::string& token);

  ChunkStore& store_;
  ImageCatalog& catalog_;
  const Options options_;
  std::unique_ptr<GuardedServer> server_;
  std::thread thread_;
  std::atomic<bool> listen_returned_{false};
  std::string url_;
  std::mutex grant_mu_;
  std::map<std::string, uint64_t> generations_;  // highest seen per name; guarded by grant_mu_

  std::atomic<uint64_t> requests_{0}, chunks_served_{0}, bytes_served_{0}, raw_bytes_served_{0},
      zstd_chunks_served_{0}, batch_requests_{0}, chunks_uploaded_{0}, bytes_uploaded_{0},
      manifests_published_{0}, auth_failures_{0}, grant_refusals_{0};
};

}  // namespace vmgrid
