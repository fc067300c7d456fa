// HostImages: how a host gets the bytes of images and checkpoints from the
// image server (docs/chunk-store.md, "On a host"). It owns the host's chunk
// cache (shared by every VM here), a chunk client for the image server, and
// the NBD server that exports each base-disk version to local QEMUs:
//
//   image server --HTTP batches--> ChunkCache (verified, bounded) --> NBD export
//        ^                                                             |
//        | push (checkpoints)                  qcow2 overlay backed by json:{nbd...}
//
// * A VM's clone overlay is backed by the export of its image's disk
//   version; chunks are fetched on the guest's first read and verified.
// * Kernels, initrds and checkpoint files (memory state, disk delta) are
//   materialized as local files under STATE/blobs, fetched in parallel
//   batches; persistent workspaces are full local copies (CopyTo).
// * Prefetch: the order in which a VM first read a disk's chunks while
//   booting (or resuming) is recorded on the image server; a host that
//   starts cold streams those chunks ahead of the guest.
// * Exports are reference-counted by VM id and pin their chunks in the
//   cache, so a chunk a VM needs is never evicted.
// * Restart: QEMU's NBD client reconnects (reconnect-delay) once the new
//   agent re-exports the disks of its VMs (VmRunner::Recover calls
//   AcquireDisk again); manifests are kept under STATE/manifests so that
//   this works while the image server is unreachable.
// * Isolation: each VM's QEMU reaches its disk through a unix socket of its
//   own (in the VM's run directory, 0600, owned by the VM's uid) whose server
//   lists and opens only that VM's export. The host-wide STATE/nbd.sock is
//   for the agent's own qemu-img runs: 0600, owned by the agent, never named
//   to a QEMU (files shared between VMs name it in their headers; VmRunner
//   points QEMU's NBD node at the VM's socket when it launches).
//
// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "chunks/chunk_cache.h"
#include "chunks/chunk_client.h"
#include "chunks/manifest.h"
#include "common/result.h"
#include "nbd/nbd_server.h"
#include "proto/blob_ref.h"
#include "proto/durable_workspace.h"

namespace vmgrid {

class ChunkCache;
class ChunkClient;
class ManifestBlockSource;
namespace nbd {
class NbdServer;
}

class HostImages {
 public:
  struct Options {
    std::string state_dir;   // chunks/, blobs/, manifests/, nbd.sock
    std::string server_url;  // http://host:port of the image server
    std::string token;       // its bearer token ("" = none)
    uint64_t cache_bytes = 10ull << 30;
    int socket_gid = -1;          // unused: the host-wide socket is agent-only (see VmNbdEndpoint)
    bool prefetch = true;         // stream recorded first-read orders on cold starts
    int connections = 4;          // parallel connections to the image server
    int reconnect_delay_s = 300;  // how long QEMU holds I/O while the export is away
    bool compressed_transfer = true;  // ask for chunks as zstd frames (ChunkClient)
  };

  struct Transfer {  // a materialization or full copy in progress
    std::string what;
    uint64_t done = 0, total = 0;
  };

  static Result<std::unique_ptr<HostImages>> Open(Options options);
  ~HostImages();
  HostImages(const HostImages&) = delete;
  HostImages& operator=(const HostImages&) = delete;

  // Where one VM's QEMU connects for its disk: a socket only it may open.
  struct VmNbdEndpoint {
    std::string socket_path;  // e.g. STATE/vms/ID/run/nbd.sock
    int uid = -1, gid = -1;   // owner of the socket (-1: the agent's)
  };

  // Exports `disk` over NBD for VM `user` on a server of that VM's own,
  // listening on `endpoint` and serving nothing else, and returns the
  // backing-file string for a qcow2 overlay naming that socket
  // (json:{"driver":"raw","file":{"driver":"nbd",...}}). `mode`
  // ("boot"/"resume") names the prefetch hint streamed when this creates the
  // export on a cold cache ("" = no prefetch). Acquiring again for the same
  // user is a no-op. On failure: no export, no server, no socket left.
  Result<std::string> AcquireDisk(const BlobRef& disk, const std::string& user,
                                  const std::string& mode, const VmNbdEndpoint& endpoint);
  // For VMs whose QEMU an older agent started on the host-wide socket (it
  // reconnects there after a restart): lets group `gid` connect to it again
  // (0660), until the agent restarts with no such VM left. Logged.
  Status AllowLegacyClients(int gid);
  // Drops `user`'s reference and stops its NBD server (its socket goes); the
  // last reference removes the export (unpins).
  void ReleaseDisk(const std::string& user);
  // Records the order of first reads of `user`'s disk as the image's
  // prefetch hint, if this user started the export and none is recorded.
  void RecordPrefetch(const std::string& user);
  // The backing string of an exported digest on the host-wide, agent-only
  // socket (for files shared by VMs and for the agent's qemu-img runs), or
  // on `socket_path` when given.
  std::string BackingFor(const std::string& digest, const std::string& socket_path = "") const;

  // A local file with the bytes of `ref` (BlobPath(ref, suffix)), fetched in
  // parallel batches and verified when not there yet.
  Result<std::string> Materialize(const BlobRef& ref, const std::string& suffix, int mode);
  // Where Materialize puts `ref` (STATE/blobs/DIGEST + suffix); the file
  // exists only once materialized.
  std::string BlobPath(const BlobRef& ref, const std::string& suffix) const;
  // A local checkpoint directory (memory.state, disk.qcow2 rebased onto
  // `backing` when it has a backing file, meta.json with `kind` "image" or
  // "vm") as VmRunner resumes from; made once per version, atomically.
  Result<std::string> MaterializeCheckpoint(const BlobRef& memory, const BlobRef& disk,
                                            const std::string& backing, const std::string& kind);
  // Writes all of `ref` to `path` (sparse raw), fetching missing chunks in
  // parallel batches first; progress is logged and shown in StatsJson.
  // `grant`: a workspace grant, for a durable workspace version.
  Status CopyTo(const BlobRef& ref, const std::string& path, const std::string& grant = "");
  // Uploads a local raw file as a new version of `name`.
  Result<BlobRef> Push(const std::string& path, const std::string& name);
  // Uploads the raw contents of a persistent workspace as a new durable
  // version of `durable.name` with its grant: only the chunks the image
  // server lacks travel (the previous version's and the image's are there).
  // On failure nothing is published (chunks sent stay, unreferenced).
  Result<DurableVersion> PushWorkspace(const std::string& raw_path, const DurableSpec& durable,
                                       const std::string& trigger, int64_t time_ms);
  // Durable pushes so far and the chunks and bytes they sent.
  struct PushCounters {
    uint64_t pushes = 0, failures = 0, chunks = 0, chunks_sent = 0, bytes_sent = 0;
    uint64_t unchanged = 0;  // interval pushes skipped: the guest wrote nothing since
  };
  PushCounters push_counters() const;
  // An interval push skipped because the workspace had not changed.
  void CountUnchangedPush() { push_unchanged_++; }

  // Cache, client and NBD counters, transfers in progress, exported digests.
  nlohmann::json StatsJson() const;
  // The counters of StatsJson, typed (for /metrics).
  struct Counters {
    ChunkCache::Stats cache;
    ChunkClient::Stats client;
    nbd::NbdStats nbd;  // the host's export server and every VM's, summed
    uint64_t prefetch_runs = 0, prefetched_chunks = 0;
  };
  Counters counters() const;
  const std::string& socket_path() const { return socket_path_; }
  ChunkCache& cache() { return *cache_; }

 private:
  struct Export {
    std::shared_ptr<ManifestBlockSource> source;
    BlobRef ref;
    std::set<std::string> users;
    std::string first_user, mode;
    bool recorded = false;
  };

  explicit HostImages(Options options);
  // The shared export of `disk` (created on first use) with `user` counted.
  Result<std::shared_ptr<ManifestBlockSource>> ExportFor(const BlobRef& disk,
                                                         const std::string& user,
                                                         const std::string& mode);
  Result<Manifest> GetManifest(const BlobRef& ref, const std::string& grant = "");
  // Called with each chunk Warm fetched (verified), after the cache took it;
  // from several threads at once.
  using ArrivedFn = std::function<Status(const std::string& digest, std::string_view data)>;
  // Fetches every missing chunk of `m` in parallel batches; `what` names the
  // transfer in logs and StatsJson.
  Status Warm(const Manifest& m, const std::string& what, const ArrivedFn& arrived = nullptr);
  void StartPrefetch(const Manifest& m, const std::string& mode);
  void Prefetch(const Manifest& m, const std::string& mode);  // runs on a prefetcher thread
  std::shared_ptr<std::mutex> LockFor(const std::string& key);

  const Options options_;
  std::string socket_path_;
  std::unique_ptr<ChunkCache> cache_;
  std::unique_ptr<ChunkClient> client_;
  std::unique_ptr<nbd::NbdServer> nbd_;

  mutable std::mutex mu_;
  std::map<std::string, Export> exports_;       // by digest; guarded by mu_
  std::map<std::string, std::string> user_of_;  // user -> digest; guarded by mu_
  // One NBD server per VM, serving only that VM's export; guarded by mu_.
  std::map<std::string, std::unique_ptr<nbd::NbdServer>> vm_servers_;
  // The counters of VMs' NBD servers already released (so that the host's
  // totals do not drop when a VM goes); guarded by mu_.
  nbd::NbdStats released_nbd_;
  std::map<std::string, std::shared_ptr<std::mutex>> key_locks_;  // guarded by mu_
  std::map<uint64_t, Transfer> transfers_;                        // guarded by mu_
  uint64_t next_transfer_ = 1;                                    // guarded by mu_
  struct Prefetcher {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<Prefetcher>
      prefetchers_;  // guarded by mu_; finished ones are joined by the next start
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> prefetched_chunks_{0}, prefetch_runs_{0};
  std::atomic<uint64_t> push_unchanged_{0};
  std::atomic<uint64_t> pushes_{0}, push_failures_{0}, push_chunks_{0}, push_chunks_sent_{0},
      push_bytes_sent_{0};
};

}  // namespace vmgrid
