#include "agent/host_images.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <future>

#include "chunks/chunk_cache.h"
#include "chunks/chunk_client.h"
#include "chunks/manifest_block_source.h"
#include "common/http_json.h"
#include "common/subprocess.h"
#include "common/util.h"
#include "nbd/nbd_server.h"

namespace vmgrid {

using nlohmann::json;

HostImages::HostImages(Options options) : options_(std::move(options)) {}

Result<std::unique_ptr<HostImages>> HostImages::Open(Options options) {
  if (options.server_url.empty())
    return MakeError(ErrorCode::kInvalidArgument, "no image server URL");
  std::unique_ptr<HostImages> h(new HostImages(options));
  const std::string& dir = h->options_.state_dir;
  for (const char* sub : {"/blobs", "/manifests"}) VMG_RETURN_IF_ERROR(MakeDirs(dir + sub, 0755));
  ChunkCache::Options co;
  co.capacity_bytes = options.cache_bytes;
  VMG_ASSIGN_OR_RETURN(h->cache_, ChunkCache::Open(dir + "/chunks", co));
  ChunkClient::Options cl;
  cl.connections = options.connections;
  cl.accept_zstd = options.compressed_transfer;
  h->client_ = std::make_unique<ChunkClient>(options.server_url, options.token, cl);
  h->socket_path_ = dir + "/nbd.sock";
  nbd::NbdServerOptions no;
  no.unix_socket_path = h->socket_path_;
  // The agent's own: every export, so no QEMU may connect (a VM's QEMU gets
  // a socket of its own that serves its export only).
  no.unix_socket_mode = 0600;
  h->nbd_ = std::make_unique<nbd::NbdServer>(no);
  VMG_RETURN_IF_ERROR(h->nbd_->Start());
  auto st = h->cache_->stats();
  spdlog::info("host images: cache {} ({} chunks, {} MiB of {} MiB), image server {}, NBD at {}",
               h->cache_->dir(), st.chunks, st.bytes >> 20, st.capacity_bytes >> 20,
               options.server_url, h->socket_path_);
  return h;
}

HostImages::~HostImages() {
  stop_ = true;
  std::vector<Prefetcher> threads;
  {
    std::lock_guard<std::mutex> l(mu_);
    threads.swap(prefetchers_);
  }
  for (auto& p : threads) p.thread.join();
  std::map<std::string, std::unique_ptr<nbd::NbdServer>> servers;
  {
    std::lock_guard<std::mutex> l(mu_);
    servers.swap(vm_servers_);
  }
  servers.clear();  // stops them (QEMU's NBD clients wait to reconnect)
  if (nbd_) nbd_->Stop();
  std::lock_guard<std::mutex> l(mu_);
  exports_.clear();  // unpins before the cache goes
}

std::shared_ptr<std::mutex> HostImages::LockFor(const std::string& key) {
  std::lock_guard<std::mutex> l(mu_);
  auto& m = key_locks_[key];
  if (!m) m = std::make_shared<std::mutex>();
  return m;
}

Result<Manifest> HostImages::GetManifest(const BlobRef& ref, const std::string& grant) {
  // Published versions are immutable: a local copy (checked against the
  // digest the controller recorded) is as good as the server's.
  std::string path = options_.state_dir + "/manifests/" + ref.digest + ".json";
  if (FileExists(path)) {
    auto text = ReadFile(path, kMaxManifestJsonBytes + 1);
    if (text.ok()) {
      auto m = ParseManifestJson(*text);
      if (m.ok() && m->Digest() == ref.digest) return m;
    }
    spdlog::warn("host images: discarding corrupt local manifest {}", path);
    unlink(path.c_str());
  }
  VMG_ASSIGN_OR_RETURN(Manifest m, client_->GetManifest(ref.name, ref.version, ref.digest, grant));
  if (m.size != ref.size)
    return MakeError(ErrorCode::kInternal,
                     "manifest " + ref.name + "/" + std::to_string(ref.version) + " has " +
                         std::to_string(m.size) + " bytes; expected " + std::to_string(ref.size));
  // A local copy saves asking the image server again; without it the next
  // open of this version fetches the manifest again.
  if (Status st = WriteFileAtomic(path, m.ToJson().dump() + "\n"); !st.ok())
    spdlog::warn("host images: cannot keep manifest {}: {}", path, st.error().message);
  return m;
}

std::string HostImages::BackingFor(const std::string& digest,
                                   const std::string& socket_path) const {
  json file = {
      {"driver", "nbd"},
      {"server", {{"type", "unix"}, {"path", socket_path.empty() ? socket_path_ : socket_path}}},
      {"export", digest},
      {"reconnect-delay", options_.reconnect_delay_s}};
  return "json:" + json{{"driver", "raw"}, {"file", file}}.dump();
}

Result<std::string> HostImages::AcquireDisk(const BlobRef& disk, const std::string& user,
                                            const std::string& mode,
                                            const VmNbdEndpoint& endpoint) {
  if (endpoint.socket_path.empty())
    return MakeError(ErrorCode::kInvalidArgument, "VM " + user + ": no NBD socket path");
  VMG_ASSIGN_OR_RETURN(std::shared_ptr<ManifestBlockSource> source, ExportFor(disk, user, mode));
  {
    std::lock_guard<std::mutex> l(mu_);
    if (vm_servers_.count(user)) return BackingFor(disk.digest, endpoint.socket_path);
  }
  // The VM's own server: one export, a handful of connections (QEMU opens
  // one per NBD node; qemu-img runs of the agent add one each).
  nbd::NbdServerOptions no;
  no.unix_socket_path = endpoint.socket_path;
  no.unix_socket_mode = 0600;
  no.max_connections = 16;
  auto server = std::make_unique<nbd::NbdServer>(no);
  Status st = server->AddExport(disk.digest, source);
  if (st.ok()) st = server->Start();
  // Before chown only root can connect (0600, ours), so there is no window
  // in which another user reaches the socket.
  if (st.ok() && (endpoint.uid >= 0 || endpoint.gid >= 0) &&
      chown(endpoint.socket_path.c_str(), static_cast<uid_t>(endpoint.uid),
            static_cast<gid_t>(endpoint.gid)) != 0)
    st = MakeError(ErrorCode::kInternal, "chown " + endpoint.socket_path + ": " + strerror(errno));
  if (!st.ok()) {
    server.reset();  // stops it and removes the socket
    ReleaseDisk(user);
    return st.error().Wrap("NBD socket of VM " + user);
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    vm_servers_[user] = std::move(server);
  }
  spdlog::info("host images: VM {} reads {} v{} through its own NBD socket {}", user, disk.name,
               disk.version, endpoint.socket_path);
  return BackingFor(disk.digest, endpoint.socket_path);
}

Result<std::shared_ptr<ManifestBlockSource>> HostImages::ExportFor(const BlobRef& disk,
                                                                   const std::string& user,
                                                                   const std::string& mode) {
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = user_of_.find(user);
    if (it != user_of_.end()) {
      if (it->second != disk.digest)
        return MakeError(ErrorCode::kFailedPrecondition,
                         user + " already uses another disk export");
      return exports_.at(disk.digest).source;
    }
    if (auto e = exports_.find(disk.digest); e != exports_.end()) {
      e->second.users.insert(user);
      user_of_[user] = disk.digest;
      return e->second.source;
    }
  }
  auto lock = LockFor("export:" + disk.digest);
  std::lock_guard<std::mutex> one(*lock);
  {  // created by another caller while we waited?
    std::lock_guard<std::mutex> l(mu_);
    if (auto e = exports_.find(disk.digest); e != exports_.end()) {
      e->second.users.insert(user);
      user_of_[user] = disk.digest;
      return e->second.source;
    }
  }
  VMG_ASSIGN_OR_RETURN(Manifest m, GetManifest(disk));
  ChunkClient* client = client_.get();
  auto fetch = [client](const std::string& digest) { return client->FetchChunk(digest); };
  VMG_ASSIGN_OR_RETURN(auto source, ManifestBlockSource::Create(m, *cache_, fetch));
  VMG_RETURN_IF_ERROR(nbd_->AddExport(disk.digest, source));
  size_t missing = cache_->Missing(m.chunks).size();
  {
    std::lock_guard<std::mutex> l(mu_);
    Export& e = exports_[disk.digest];
    e.source = source;
    e.ref = disk;
    e.users.insert(user);
    e.first_user = user;
    e.mode = mode;
    user_of_[user] = disk.digest;
  }
  spdlog::info("host images: exporting {} v{} ({} MiB, {} of {} stored chunks not cached)",
               disk.name, disk.version, disk.size >> 20, missing, m.NonZeroChunks());
  if (options_.prefetch && !mode.empty() && missing > 0) StartPrefetch(m, mode);
  return source;
}

Status HostImages::AllowLegacyClients(int gid) {
  if (gid >= 0 && chown(socket_path_.c_str(), static_cast<uid_t>(-1), static_cast<gid_t>(gid)) != 0)
    return MakeError(ErrorCode::kInternal, "chown " + socket_path_ + ": " + strerror(errno));
  if (chmod(socket_path_.c_str(), 0660) != 0)
    return MakeError(ErrorCode::kInternal, "chmod " + socket_path_ + ": " + strerror(errno));
  spdlog::warn(
      "host images: {} is open to group {} for VMs started by an older agent (they can read every "
      "export of this host); stop and resume them to give each its own socket",
      socket_path_, gid);
  return Status::Ok();
}

void HostImages::ReleaseDisk(const std::string& user) {
  std::shared_ptr<ManifestBlockSource> drop;  // destroyed (unpinned) outside mu_
  std::unique_ptr<nbd::NbdServer> server;     // stopped outside mu_
  std::string digest;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (auto s = vm_servers_.find(user); s != vm_servers_.end()) {
      server = std::move(s->second);
      vm_servers_.erase(s);
      const nbd::NbdStats v = server->stats();
      released_nbd_.connections += v.connections;
      released_nbd_.requests += v.requests;
      released_nbd_.bytes_read += v.bytes_read;
      released_nbd_.errors += v.errors;
      released_nbd_.source_errors += v.source_errors;
    }
    auto it = user_of_.find(user);
    if (it == user_of_.end()) return;
    digest = it->second;
    user_of_.erase(it);
    auto e = exports_.find(digest);
    if (e == exports_.end()) return;
    e->second.users.erase(user);
    if (!e->second.users.empty()) return;
    drop = std::move(e->second.source);
    exports_.erase(e);
  }
  server.reset();
  (void)nbd_->RemoveExport(digest);
  spdlog::info("host images: export {} removed (no VM uses it)", digest.substr(0, 12));
}

void HostImages::RecordPrefetch(const std::string& user) {
  BlobRef ref;
  std::string mode;
  std::vector<uint64_t> order;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto u = user_of_.find(user);
    if (u == user_of_.end()) return;
    auto e = exports_.find(u->second);
    if (e == exports_.end() || e->second.recorded || e->second.first_user != user ||
        e->second.mode.empty())
      return;
    e->second.recorded = true;
    ref = e->second.ref;
    mode = e->second.mode;
    order = e->second.source->FirstReads();
  }
  if (order.empty()) return;
  Status st = client_->PutPrefetch(ref.name, ref.version, mode, order);
  if (st.ok())
    spdlog::info("host images: recorded {} prefetch order of {} v{}: {} chunks", mode, ref.name,
                 ref.version, order.size());
  else if (st.error().code != ErrorCode::kAlreadyExists)
    spdlog::warn("host images: could not record the prefetch order of {}: {}", ref.name,
                 st.error().message);
}

void HostImages::StartPrefetch(const Manifest& m, const std::string& mode) {
  std::lock_guard<std::mutex> l(mu_);
  if (stop_) return;
  for (auto it = prefetchers_.begin(); it != prefetchers_.end();) {
    if (it->done->load()) {
      it->thread.join();
      it = prefetchers_.erase(it);
    } else {
      ++it;
    }
  }
  auto done = std::make_shared<std::atomic<bool>>(false);
  prefetchers_.push_back({std::thread([this, m, mode, done] {
                            Prefetch(m, mode);
                            *done = true;
                          }),
                          done});
}

void HostImages::Prefetch(const Manifest& m, const std::string& mode) {
  auto order = client_->GetPrefetch(m.name, m.version, mode);
  if (!order.ok()) {
    if (order.error().code != ErrorCode::kNotFound)
      spdlog::warn("host images: no prefetch for {}: {}", m.name, order.error().message);
    return;
  }
  prefetch_runs_++;
  // Stream the recorded order ahead of the guest, a batch at a time so the
  // first chunks the guest needs arrive first.
  constexpr size_t kBatch = 16;
  size_t fetched = 0;
  for (size_t i = 0; i < order->size() && !stop_; i += kBatch) {
    std::vector<std::string> batch;
    for (size_t j = i; j < std::min(order->size(), i + kBatch); ++j) {
      if ((*order)[j] >= m.chunks.size()) continue;  // the server's answer is not trusted
      const std::string& d = m.chunks[(*order)[j]];
      if (d != kZeroChunk && !cache_->Contains(d)) batch.push_back(d);
    }
    if (batch.empty()) continue;
    Status st =
        client_->FetchChunks(batch, [this, &fetched](const std::string& digest, std::string data) {
          fetched++;
          prefetched_chunks_++;
          return cache_->Insert(digest, data);
        });
    if (!st.ok()) {
      spdlog::warn("host images: prefetch of {} stopped: {}", m.name, st.error().message);
      return;
    }
  }
  spdlog::info("host images: prefetched {} chunks of {} v{} ({} order)", fetched, m.name, m.version,
               mode);
}

Status HostImages::Warm(const Manifest& m, const std::string& what, const ArrivedFn& arrived) {
  std::vector<std::string> missing = cache_->Missing(m.chunks);
  if (missing.empty()) return Status::Ok();
  const uint64_t total =
      missing.size() * uint64_t{m.chunk_size};  // at most; the last chunk may be shorter
  uint64_t id;
  {
    std::lock_guard<std::mutex> l(mu_);
    id = next_transfer_++;
    transfers_[id] = {what, 0, total};
  }
  auto started = std::chrono::steady_clock::now();
  std::mutex pm;
  uint64_t got = 0;
  int last_decile = -1;
  Status st =
      client_->FetchChunks(missing, [&](const std::string& digest, std::string data) -> Status {
        uint64_t n = data.size();
        VMG_RETURN_IF_ERROR(cache_->Insert(digest, data));
        if (arrived) VMG_RETURN_IF_ERROR(arrived(digest, data));
        std::lock_guard<std::mutex> l(pm);
        got += n;
        {
          std::lock_guard<std::mutex> g(mu_);
          transfers_[id].done = got;
        }
        // Progress of large transfers in quarters; every transfer logs its end.
        int quarter = static_cast<int>(got * 4 / std::max<uint64_t>(1, total));
        if (total >= (64u << 20) && quarter != last_decile && quarter < 4) {
          last_decile = quarter;
          double s =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
          spdlog::info("host images: {}: {} of ~{} MiB fetched ({:.0f} MiB/s)", what, got >> 20,
                       total >> 20, s > 0 ? static_cast<double>(got) / (1 << 20) / s : 0.0);
        }
        return Status::Ok();
      });
  {
    std::lock_guard<std::mutex> g(mu_);
    transfers_.erase(id);
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (st.ok())
    spdlog::info("host images: {}: fetched {} chunks, {:.1f} MiB in {:.2f} s ({:.0f} MiB/s)", what,
                 missing.size(), static_cast<double>(got) / (1 << 20), secs,
                 secs > 0 ? static_cast<double>(got) / (1 << 20) / secs : 0.0);
  return st;
}

std::string HostImages::BlobPath(const BlobRef& ref, const std::string& suffix) const {
  return options_.state_dir + "/blobs/" + ref.digest + suffix;
}

Result<std::string> HostImages::Materialize(const BlobRef& ref, const std::string& suffix,
                                            int mode) {
  std::string path = BlobPath(ref, suffix);
  auto lock = LockFor("blob:" + path);
  std::lock_guard<std::mutex> one(*lock);
  if (FileExists(path)) return path;
  VMG_RETURN_IF_ERROR(CopyTo(ref, path));
  if (chmod(path.c_str(), static_cast<mode_t>(mode)) != 0)
    return MakeError(ErrorCode::kInternal, "chmod " + path + ": " + strerror(errno));
  return path;
}

Result<std::string> HostImages::MaterializeCheckpoint(const BlobRef& memory, const BlobRef& disk,
                                                      const std::string& backing,
                                                      const std::string& kind) {
  std::string dir = options_.state_dir + "/blobs/" + kind + "ckpt-" + memory.digest.substr(0, 24) +
                    "-" + disk.digest.substr(0, 24);
  auto lock = LockFor("blob:" + dir);
  std::lock_guard<std::mutex> one(*lock);
  if (FileExists(dir + "/meta.json")) return dir;
  std::string tmp = dir + ".new";
  (void)RemoveTree(tmp);
  VMG_RETURN_IF_ERROR(MakeDirs(tmp, 0755));
  auto fail = [&](const Error& e) -> Error {
    (void)RemoveTree(tmp);
    return e.Wrap("checkpoint " + memory.name + " v" + std::to_string(memory.version));
  };
  // Both at once: the disk's fetch overlaps the memory state's.
  auto disk_copy =
      std::async(std::launch::async, [&] { return CopyTo(disk, tmp + "/disk.qcow2"); });
  Status st = CopyTo(memory, tmp + "/memory.state");
  Status disk_st = disk_copy.get();
  if (st.ok()) st = disk_st;
  if (!st.ok()) return fail(st.error());
  chmod((tmp + "/memory.state").c_str(), 0600);  // guest memory: root only
  chmod((tmp + "/disk.qcow2").c_str(), 0644);
  // The disk delta names the backing of the host that made it; point it at
  // this host's export of the same image version. (A persistent VM's
  // checkpoint disk is a whole disk without a backing file.)
  auto info = RunProcessChecked({"qemu-img", "info", "--output=json", "-U", tmp + "/disk.qcow2"},
                                std::chrono::minutes(1));
  if (!info.ok()) return fail(info.error());
  json ij = json::parse(*info, nullptr, false);
  if (!ij.is_object() || ij.value("format", "") != "qcow2")
    return fail(
        MakeError(ErrorCode::kInvalidArgument, "the checkpoint's disk is not a qcow2 image"));
  if (ij.contains("backing-filename")) {
    auto r = RunProcessChecked({"qemu-img", "rebase", "-u", "-f", "qcow2", "-b", backing, "-F",
                                "raw", tmp + "/disk.qcow2"},
                               std::chrono::minutes(1));
    if (!r.ok()) return fail(r.error());
  }
  json meta = {{"kind", kind}, {"memory", ToJson(memory)}, {"disk", ToJson(disk)}};
  st = WriteFileAtomic(tmp + "/meta.json", meta.dump(2) + "\n");
  if (st.ok() && rename(tmp.c_str(), dir.c_str()) != 0)
    st = MakeError(ErrorCode::kInternal, "rename " + tmp + ": " + strerror(errno));
  if (!st.ok()) return fail(st.error());
  return dir;
}

Status HostImages::CopyTo(const BlobRef& ref, const std::string& path, const std::string& grant) {
  VMG_ASSIGN_OR_RETURN(Manifest m, GetManifest(ref, grant));
  // Pinned while copying: a chunk fetched by Warm must still be there when
  // WriteImageFile reads it.
  std::string pin = "copy:" + path;
  VMG_RETURN_IF_ERROR(cache_->Pin(pin, m.chunks));
  ChunkClient* client = client_.get();
  auto fetch = [client](const std::string& digest) { return client->FetchChunk(digest); };
  // Fetched chunks land in the file as they arrive (verified by the client
  // and the cache); those the cache had are read from it afterwards.
  auto st = [&]() -> Status {
    VMG_ASSIGN_OR_RETURN(auto out, ImageFileWriter::Open(m, path));
    VMG_RETURN_IF_ERROR(
        Warm(m, ref.name + " v" + std::to_string(ref.version),
             [&out](const std::string& d, std::string_view data) { return out->Put(d, data); }));
    for (const std::string& d : out->Missing()) {
      VMG_ASSIGN_OR_RETURN(std::string data, cache_->Get(d, fetch));
      if (ChunkDigest(data) != d)
        return MakeError(ErrorCode::kInternal, "chunk " + d + " from the cache has other bytes");
      VMG_RETURN_IF_ERROR(out->Put(d, data));
    }
    return out->Commit();
  }();
  (void)cache_->Unpin(pin);
  if (!st.ok())
    return st.error().Wrap("copying " + ref.name + " v" + std::to_string(ref.version) + " to " +
                           path);
  return Status::Ok();
}

Result<BlobRef> HostImages::Push(const std::string& path, const std::string& name) {
  auto started = std::chrono::steady_clock::now();
  VMG_ASSIGN_OR_RETURN(Manifest m, client_->UploadImageFile(path, name, kDefaultChunkSize));
  // The host that made it is the likeliest to use it: keep its chunks.
  (void)ForEachFileChunk(path, m.chunk_size, [this](size_t, std::string_view data, bool zero) {
    if (!zero) (void)cache_->Insert(ChunkDigest(data), data);
    return Status::Ok();
  });
  spdlog::info("host images: pushed {} as {} v{} ({} MiB) in {:.2f} s", path, name, m.version,
               m.size >> 20,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return BlobRef{m.name, m.version, m.Digest(), m.size};
}

Result<DurableVersion> HostImages::PushWorkspace(const std::string& raw_path,
                                                 const DurableSpec& durable,
                                                 const std::string& trigger, int64_t time_ms) {
  auto started = std::chrono::steady_clock::now();
  ChunkClient::UploadCounts counts;
  auto m = client_->UploadImageFile(raw_path, durable.name, kDefaultChunkSize, nullptr,
                                    durable.grant, &counts);
  if (!m.ok()) {
    push_failures_++;
    return m.error().Wrap("pushing workspace " + durable.name);
  }
  pushes_++;
  push_chunks_ += counts.chunks;
  push_chunks_sent_ += counts.chunks_sent;
  push_bytes_sent_ += counts.bytes_sent;
  spdlog::info(
      "host images: pushed workspace {} v{} ({}): {} of {} chunks sent ({} KiB) in {:.2f} s",
      durable.name, m->version, trigger, counts.chunks_sent, counts.chunks, counts.bytes_sent >> 10,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  DurableVersion v;
  v.ref = BlobRef{m->name, m->version, m->Digest(), m->size};
  v.time_ms = time_ms;
  v.chunks = counts.chunks;
  v.chunks_sent = counts.chunks_sent;
  v.bytes_sent = counts.bytes_sent;
  v.trigger = trigger;
  return v;
}

HostImages::PushCounters HostImages::push_counters() const {
  return PushCounters{pushes_.load(),           push_failures_.load(),   push_chunks_.load(),
                      push_chunks_sent_.load(), push_bytes_sent_.load(), push_unchanged_.load()};
}

HostImages::Counters HostImages::counters() const {
  Counters out{cache_->stats(), client_->stats(), nbd_->stats(), prefetch_runs_.load(),
               prefetched_chunks_.load()};
  auto& n = out.nbd;
  std::lock_guard<std::mutex> l(mu_);
  n.connections += released_nbd_.connections;
  n.requests += released_nbd_.requests;
  n.bytes_read += released_nbd_.bytes_read;
  n.errors += released_nbd_.errors;
  n.source_errors += released_nbd_.source_errors;
  for (const auto& [vm, server] : vm_servers_) {
    auto v = server->stats();
    n.connections += v.connections;
    n.active_connections += v.active_connections;
    n.requests += v.requests;
    n.bytes_read += v.bytes_read;
    n.errors += v.errors;
    n.source_errors += v.source_errors;
  }
  return out;
}

json HostImages::StatsJson() const {
  const Counters all = counters();
  const auto& c = all.cache;
  const auto& cl = all.client;
  const auto& n = all.nbd;
  json out = {{"cache",
               {{"hits", c.hits},
                {"misses", c.misses},
                {"coalesced", c.coalesced},
                {"bytes_fetched", c.bytes_fetched},
                {"verification_failures", c.verification_failures + cl.verification_failures},
                {"evictions", c.evictions},
                {"chunks", c.chunks},
                {"bytes", c.bytes},
                {"pinned_bytes", c.pinned_bytes},
                {"capacity_bytes", c.capacity_bytes}}},
              {"image_server",
               {{"url", options_.server_url},
                {"requests", cl.requests},
                {"bytes_fetched", cl.bytes_fetched},
                {"raw_bytes_fetched", cl.raw_bytes_fetched},
                {"zstd_chunks", cl.zstd_chunks},
                {"refetches", cl.refetches}}},
              {"prefetch", {{"runs", all.prefetch_runs}, {"chunks", all.prefetched_chunks}}},
              {"workspace_pushes",
               {{"pushes", pushes_.load()},
                {"failures", push_failures_.load()},
                {"chunks", push_chunks_.load()},
                {"chunks_sent", push_chunks_sent_.load()},
                {"bytes_sent", push_bytes_sent_.load()},
                {"unchanged_skipped", push_unchanged_.load()}}},
              {"nbd",
               {{"connections", n.active_connections},
                {"requests", n.requests},
                {"bytes_read", n.bytes_read},
                {"errors", n.errors + n.source_errors}}}};
  json exports = json::array(), transfers = json::array();
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [digest, e] : exports_)
    exports.push_back({{"name", e.ref.name},
                       {"version", e.ref.version},
                       {"digest", digest},
                       {"vms", e.users.size()}});
  for (const auto& [id, t] : transfers_)
    transfers.push_back({{"what", t.what}, {"done", t.done}, {"total", t.total}});
  out["exports"] = exports;
  out["transfers"] = transfers;
  return out;
}

}  // namespace vmgrid
