#include "chunks/chunk_cache.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_set>

#include "chunks/chunk_digest.h"
#include "common/util.h"

namespace vmgrid {

namespace {

Error BadDigest(const std::string& s) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "'" + s.substr(0, 80) + "' is not a chunk digest (64 lowercase hex)");
}

int64_t Nanos(const struct timespec& t) {
  return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

ChunkFileStamp StampOf(const struct stat& st) {
  return ChunkFileStamp{st.st_dev, st.st_ino, static_cast<int64_t>(st.st_size), Nanos(st.st_mtim),
                        Nanos(st.st_ctim)};
}

// pread until `len` bytes or end of file; the count read, or -1 (errno set).
ssize_t PreadFull(int fd, char* out, size_t len, uint64_t offset) {
  size_t done = 0;
  while (done < len) {
    ssize_t r = ::pread(fd, out + done, len - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(done);
}

}  // namespace

CachedChunk::~CachedChunk() {
  if (fd_ >= 0) ::close(fd_);
}

Status CachedChunk::Read(uint64_t offset, size_t len, char* out) const {
  if (offset > size_ || len > size_ - offset)
    return MakeError(ErrorCode::kInvalidArgument, "read past the end of chunk " + digest_);
  if (fd_ < 0) {
    std::memcpy(out, bytes_.data() + offset, len);
    return Status::Ok();
  }
  ssize_t got = PreadFull(fd_, out, len, offset);
  if (got < 0)
    return MakeError(ErrorCode::kInternal,
                     "read of chunk " + digest_ + ": " + std::string(std::strerror(errno)));
  // After the copy: a change that raced with it has updated the stamp by now
  // (the kernel updates mtime/ctime before it copies a write's bytes).
  struct stat st;
  if (static_cast<size_t>(got) != len || ::fstat(fd_, &st) != 0 || StampOf(st) != stamp_)
    return MakeError(ErrorCode::kInternal,
                     "chunk file " + digest_ + " changed since it was verified");
  return Status::Ok();
}

Result<std::string> CachedChunk::ReadAll() const {
  if (fd_ < 0) return bytes_;
  std::string out(size_, '\0');
  VMG_RETURN_IF_ERROR(Read(0, out.size(), out.data()));
  return out;
}

ChunkCache::ChunkCache(std::string dir, Options options, chunkfs::DirLock lock)
    : dir_(std::move(dir)), options_(options), lock_(std::move(lock)) {
  stats_.capacity_bytes = options_.capacity_bytes;
}

Result<ChunkCachePtr> ChunkCache::Open(const std::string& dir, Options options) {
  uint64_t torn = 0;
  VMG_ASSIGN_OR_RETURN(chunkfs::DirLock lock, chunkfs::OpenLayout(dir, &torn));
  // Cached chunks may belong to private images: only the agent reads them
  // (QEMU reads through its NBD socket). The directory's mode covers every
  // chunk file, including those written by older versions with 0644.
  if (::chmod(dir.c_str(), 0700) != 0)
    return MakeError(ErrorCode::kInternal, "chmod " + dir + ": " + std::strerror(errno));
  std::vector<std::string> junk;
  VMG_ASSIGN_OR_RETURN(auto files, chunkfs::ScanChunks(dir, &junk));
  ChunkCachePtr cache(new ChunkCache(dir, options, std::move(lock)));
  uint64_t discarded = torn;
  for (const auto& p : junk) {
    if (RemoveTree(p).ok()) discarded++;
  }
  if (options.verify_on_open) {
    std::vector<chunkfs::ChunkFileInfo> good;
    for (auto& f : files) {
      std::string path = chunkfs::ChunkPath(dir, f.digest);
      auto data = chunkfs::ReadChunkFile(path);
      if (data.ok() && ChunkDigest(*data) == f.digest) {
        good.push_back(std::move(f));
        continue;
      }
      spdlog::warn("chunk cache: discarding corrupt chunk {}", path);
      ::unlink(path.c_str());
      cache->stats_.verification_failures++;
      discarded++;
    }
    files = std::move(good);
  }
  // Oldest first, so the newest end up at the front of the LRU list. mtime
  // is the time a chunk was written: after a restart the order is "least
  // recently fetched", an approximation of LRU.
  std::sort(files.begin(), files.end(),
            [](const auto& a, const auto& b) { return a.mtime_ns < b.mtime_ns; });
  std::lock_guard<std::mutex> l(cache->mu_);
  cache->stats_.discarded_at_open = discarded;
  for (const auto& f : files) cache->AddEntryLocked(f.digest, f.size);
  cache->EvictLocked();
  if (discarded)
    spdlog::info("chunk cache {}: discarded {} torn or corrupt files at open", dir, discarded);
  return cache;
}

void ChunkCache::AddEntryLocked(const std::string& digest, uint64_t size) {
  Entry e;
  e.size = size;
  e.gen = next_gen_++;
  e.pinned = pin_counts_.count(digest) > 0;
  if (e.pinned) {
    stats_.pinned_chunks++;
    stats_.pinned_bytes += size;
  } else {
    lru_.push_front(digest);
    e.lru = lru_.begin();
  }
  stats_.chunks++;
  stats_.bytes += size;
  entries_.emplace(digest, e);
}

void ChunkCache::RemoveEntryLocked(EntryMap::iterator it) {
  const Entry& e = it->second;
  if (e.pinned) {
    stats_.pinned_chunks--;
    stats_.pinned_bytes -= e.size;
  } else {
    lru_.erase(e.lru);
  }
  stats_.chunks--;
  stats_.bytes -= e.size;
  // Unlinked under the lock so that a concurrent Store of the same digest
  // cannot have its fresh file removed by a stale eviction.
  ::unlink(chunkfs::ChunkPath(dir_, it->first).c_str());
  entries_.erase(it);
}

void ChunkCache::EvictLocked() {
  while (stats_.bytes > options_.capacity_bytes && !lru_.empty()) {
    auto it = entries_.find(lru_.back());
    RemoveEntryLocked(it);
    stats_.evictions++;
  }
}

Result<std::string> ChunkCache::Get(const std::string& digest, const FetchFn& fetch) {
  VMG_ASSIGN_OR_RETURN(CachedChunkPtr chunk, OpenChunk(digest, fetch));
  auto bytes = chunk->ReadAll();
  if (bytes.ok()) return bytes;
  // The file changed between the open and the read: once more, which hashes it.
  VMG_ASSIGN_OR_RETURN(chunk, OpenChunk(digest, fetch));
  return chunk->ReadAll();
}

ChunkCache::Opened ChunkCache::OpenFile(const std::string& digest,
                                        const std::optional<ChunkFileStamp>& trusted) const {
  Opened o;
  const std::string path = chunkfs::ChunkPath(dir_, digest);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    o.absent = errno == ENOENT;
    o.problem = "open: " + std::string(std::strerror(errno));
    return o;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
      static_cast<uint64_t>(st.st_size) > kMaxChunkBytes) {
    ::close(fd);
    o.problem = "not a chunk file";
    return o;
  }
  const ChunkFileStamp stamp = StampOf(st);
  if (trusted && *trusted == stamp) {
    o.chunk.reset(new CachedChunk(digest, fd, stamp));
    return o;
  }
  // Hash it. The bytes served are the bytes hashed (kept in memory), so
  // nothing can change between the check and the use.
  struct timespec began;
  ::clock_gettime(CLOCK_REALTIME, &began);
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  ssize_t got = PreadFull(fd, bytes.data(), bytes.size(), 0);
  struct stat after;
  bool same = ::fstat(fd, &after) == 0 && StampOf(after) == stamp;
  ::close(fd);
  o.hashed = true;
  if (got != static_cast<ssize_t>(bytes.size()) || ChunkDigest(bytes) != digest) {
    o.problem = got < 0 ? "read: " + std::string(std::strerror(errno)) : "hash mismatch";
    return o;
  }
  if (!same) {
    o.problem = "changed while it was verified";
    return o;
  }
  if (stamp.ctime_ns + options_.settle.count() < Nanos(began)) o.trust = stamp;
  o.chunk.reset(new CachedChunk(digest, std::move(bytes)));
  return o;
}

Result<CachedChunkPtr> ChunkCache::OpenChunk(const std::string& digest, const FetchFn& fetch) {
  if (!IsChunkDigest(digest)) return BadDigest(digest);
  std::unique_lock<std::mutex> l(mu_);
  std::optional<std::string> fetched;  // the bytes of this call's fetch, once it happened
  for (;;) {
    auto it = entries_.find(digest);
    if (it != entries_.end()) {
      Entry& e = it->second;
      if (!e.pinned) lru_.splice(lru_.begin(), lru_, e.lru);
      const uint64_t gen = e.gen;
      const std::optional<ChunkFileStamp> trusted = e.trusted;
      l.unlock();
      Opened o = OpenFile(digest, trusted);
      l.lock();
      if (o.hashed) stats_.file_hashes++;
      it = entries_.find(digest);
      const bool same_entry = it != entries_.end() && it->second.gen == gen;
      if (o.chunk) {
        if (!fetched) stats_.hits++;
        if (o.trust && same_entry) it->second.trusted = o.trust;
        return o.chunk;
      }
      if (same_entry) {
        // Evicted between lookup and open: just a miss. Anything else is a
        // damaged file: drop it and fetch a good copy.
        if (!o.absent) {
          stats_.verification_failures++;
          spdlog::warn("chunk cache: chunk {} on disk is corrupt ({}); refetching", digest,
                       o.problem);
        }
        RemoveEntryLocked(it);
      }
    }
    if (fetched) {
      // Fetched and verified, but its file is gone or bad already: serve
      // the verified bytes from memory.
      return CachedChunkPtr(new CachedChunk(digest, std::move(*fetched)));
    }
    Result<std::string> r = Fetch(digest, fetch, l);
    if (!r.ok()) return r.error();
    fetched = std::move(r).value();
  }
}

Result<std::string> ChunkCache::Fetch(const std::string& digest, const FetchFn& fetch,
                                      std::unique_lock<std::mutex>& l) {
  stats_.misses++;
  if (auto fl = inflight_.find(digest); fl != inflight_.end()) {
    std::shared_ptr<InFlight> f = fl->second;
    stats_.coalesced++;
    f->cv.wait(l, [&] { return f->done; });
    return f->result;
  }
  auto f = std::make_shared<InFlight>();
  inflight_.emplace(digest, f);
  l.unlock();
  Result<std::string> r = FetchAndStore(digest, fetch);
  l.lock();
  f->result = r;
  f->done = true;
  inflight_.erase(digest);
  f->cv.notify_all();
  return r;
}

Result<std::string> ChunkCache::FetchAndStore(const std::string& digest, const FetchFn& fetch) {
  std::string bad_hash;
  for (int attempt = 0; attempt < 2; ++attempt) {
    {
      std::lock_guard<std::mutex> l(mu_);
      stats_.fetches++;
    }
    Result<std::string> r =
        fetch ? fetch(digest)
              : Result<std::string>(
                    MakeError(ErrorCode::kUnavailable,
                              "chunk " + digest + " is not cached and there is no fetcher"));
    bool good = false;
    if (r.ok() && !r->empty() && r->size() <= kMaxChunkBytes) {
      bad_hash = ChunkDigest(*r);
      good = bad_hash == digest;
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!r.ok()) {
        stats_.fetch_failures++;
        return r;
      }
      stats_.bytes_fetched += r->size();
      if (!good) {
        stats_.verification_failures++;
        continue;
      }
    }
    if (Status st = Store(digest, *r); !st.ok())  // still a good chunk: serve it uncached
      spdlog::warn("chunk cache: cannot store chunk {}: {}", digest, st.error().message);
    return r;
  }
  return MakeError(ErrorCode::kInternal, "corrupt chunk " + digest +
                                             ": fetched twice and both copies were wrong (hash " +
                                             bad_hash + ")");
}

Status ChunkCache::Store(const std::string& digest, std::string_view data) {
  // replace=true: the bytes are verified, so whatever is at the path (a
  // stray file not in the index) is at best identical.
  auto written = chunkfs::WriteChunkFile(dir_, digest, data, options_.sync_writes, true);
  if (!written.ok()) return written.error();
  std::lock_guard<std::mutex> l(mu_);
  if (!entries_.count(digest)) {
    AddEntryLocked(digest, data.size());
    EvictLocked();
  }
  return Status::Ok();
}

Status ChunkCache::Insert(const std::string& digest, std::string_view data) {
  if (!IsChunkDigest(digest)) return BadDigest(digest);
  if (data.empty() || data.size() > kMaxChunkBytes)
    return MakeError(ErrorCode::kInvalidArgument, "chunk " + digest + " has an impossible length");
  if (ChunkDigest(data) != digest) {
    std::lock_guard<std::mutex> l(mu_);
    stats_.verification_failures++;
    return MakeError(ErrorCode::kInvalidArgument, "data does not match chunk digest " + digest);
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    if (entries_.count(digest)) return Status::Ok();
    stats_.bytes_fetched += data.size();
  }
  return Store(digest, data);
}

bool ChunkCache::Contains(const std::string& digest) const {
  std::lock_guard<std::mutex> l(mu_);
  return entries_.count(digest) > 0;
}

std::vector<std::string> ChunkCache::Missing(const std::vector<std::string>& chunks) const {
  std::vector<std::string> out;
  std::unordered_set<std::string> seen;
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& d : chunks)
    if (d != kZeroChunk && !entries_.count(d) && seen.insert(d).second) out.push_back(d);
  return out;
}

Status ChunkCache::Pin(const std::string& pin_id, const std::vector<std::string>& chunks) {
  if (pin_id.empty()) return MakeError(ErrorCode::kInvalidArgument, "pin id is empty");
  std::vector<std::string> set;
  for (const auto& d : chunks) {
    if (d == kZeroChunk) continue;
    if (!IsChunkDigest(d)) return BadDigest(d);
    set.push_back(d);
  }
  std::sort(set.begin(), set.end());
  set.erase(std::unique(set.begin(), set.end()), set.end());
  std::lock_guard<std::mutex> l(mu_);
  auto [it, created] = pin_sets_.try_emplace(pin_id);
  if (!created) {
    if (it->second.chunks != set)
      return MakeError(ErrorCode::kInvalidArgument,
                       "pin id '" + pin_id + "' is already held for a different chunk list");
    it->second.refs++;
    return Status::Ok();
  }
  it->second.refs = 1;
  for (const auto& d : set) {
    if (pin_counts_[d]++ != 0) continue;
    auto e = entries_.find(d);
    if (e == entries_.end()) continue;
    lru_.erase(e->second.lru);
    e->second.pinned = true;
    stats_.pinned_chunks++;
    stats_.pinned_bytes += e->second.size;
  }
  it->second.chunks = std::move(set);
  stats_.pins = pin_sets_.size();
  return Status::Ok();
}

Status ChunkCache::Unpin(const std::string& pin_id) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = pin_sets_.find(pin_id);
  if (it == pin_sets_.end()) return MakeError(ErrorCode::kNotFound, "no pin '" + pin_id + "'");
  if (--it->second.refs > 0) return Status::Ok();
  for (const auto& d : it->second.chunks) {
    auto pc = pin_counts_.find(d);
    if (--pc->second > 0) continue;
    pin_counts_.erase(pc);
    auto e = entries_.find(d);
    if (e == entries_.end()) continue;
    e->second.pinned = false;
    lru_.push_front(d);
    e->second.lru = lru_.begin();
    stats_.pinned_chunks--;
    stats_.pinned_bytes -= e->second.size;
  }
  pin_sets_.erase(it);
  stats_.pins = pin_sets_.size();
  EvictLocked();
  return Status::Ok();
}

ChunkCache::Stats ChunkCache::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
}

}  // namespace vmgrid
