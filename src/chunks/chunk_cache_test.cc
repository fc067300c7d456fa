#include "chunks/chunk_cache.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <map>
#include <thread>

#include "chunks/chunk_digest.h"
#include "chunks/test_dir.h"

namespace vmgrid {
namespace {

constexpr size_t kSize = 4096;

struct Chunk {
  std::string data, digest;
};
Chunk MakeChunk(uint64_t seed, size_t size = kSize) {
  Chunk c{TestBytes(size, seed), ""};
  c.digest = ChunkDigest(c.data);
  return c;
}

// A fetch function over a fixed set of chunks that counts its calls.
struct FakeOrigin {
  std::map<std::string, std::string> chunks;
  std::atomic<int> calls{0};
  void Add(const Chunk& c) { chunks[c.digest] = c.data; }
  ChunkCache::FetchFn Fn() {
    return [this](const std::string& d) -> Result<std::string> {
      calls++;
      auto it = chunks.find(d);
      if (it == chunks.end()) return MakeError(ErrorCode::kNotFound, "origin has no " + d);
      return it->second;
    };
  }
};

ChunkCachePtr OpenCache(const std::string& dir, uint64_t capacity, bool verify_on_open = false) {
  ChunkCache::Options o;
  o.capacity_bytes = capacity;
  o.verify_on_open = verify_on_open;
  auto c = ChunkCache::Open(dir, o);
  EXPECT_TRUE(c.ok()) << c.error().message;
  return c.ok() ? std::move(c).value() : nullptr;
}

std::string PathOf(const TestDir& dir, const std::string& digest) {
  return dir / ("chunks/" + digest.substr(0, 2) + "/" + digest);
}

TEST(ChunkCache, MissFetchesOnceThenHits) {
  TestDir dir;
  auto cache = OpenCache(dir.path(), 1 << 20);
  FakeOrigin origin;
  Chunk a = MakeChunk(1);
  origin.Add(a);
  auto r1 = cache->Get(a.digest, origin.Fn());
  ASSERT_TRUE(r1.ok()) << r1.error().message;
  EXPECT_EQ(*r1, a.data);
  auto r2 = cache->Get(a.digest, origin.Fn());
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(*r2, a.data);
  EXPECT_EQ(origin.calls, 1);
  auto s = cache->stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.fetches, 1u);
  EXPECT_EQ(s.bytes_fetched, kSize);
  EXPECT_EQ(s.chunks, 1u);
  EXPECT_EQ(s.bytes, kSize);
  EXPECT_TRUE(cache->Contains(a.digest));
  EXPECT_TRUE(FileExists(PathOf(dir, a.digest)));

  EXPECT_EQ(cache->Get("zero", origin.Fn()).error().code, ErrorCode::kInvalidArgument);
  auto absent = cache->Get(MakeChunk(2).digest, origin.Fn());
  ASSERT_FALSE(absent.ok());
  EXPECT_EQ(absent.error().code, ErrorCode::kNotFound);  // the fetch's error
  EXPECT_EQ(cache->stats().fetch_failures, 1u);
  EXPECT_EQ(cache->stats().chunks, 1u);
}

// Issue 9: cached chunks of private images must not be readable by other
// users of the host (a QEMU running as a VM's uid reads through NBD only).
TEST(ChunkCache, CacheDirectoryIsReadableOnlyByTheAgent) {
  TestDir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);  // as an older agent left it
  auto cache = OpenCache(dir.path(), 1 << 20);
  ASSERT_TRUE(cache);
  FakeOrigin origin;
  Chunk a = MakeChunk(1);
  origin.Add(a);
  ASSERT_TRUE(cache->Get(a.digest, origin.Fn()).ok());
  struct stat st {};
  ASSERT_EQ(::stat(dir.path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
}

TEST(ChunkCache, FetchedBytesAreVerified) {
  TestDir dir;
  auto cache = OpenCache(dir.path(), 1 << 20);
  Chunk a = MakeChunk(1);
  int calls = 0;
  // Wrong once, then right: one refetch repairs it.
  auto flaky = [&](const std::string&) -> Result<std::string> {
    return ++calls == 1 ? MakeChunk(9).data : a.data;
  };
  auto r = cache->Get(a.digest, flaky);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, a.data);
  EXPECT_EQ(cache->stats().verification_failures, 1u);
  EXPECT_EQ(cache->stats().fetches, 2u);

  // Always wrong: an error, and nothing is cached.
  Chunk b = MakeChunk(2);
  auto liar = [&](const std::string&) -> Result<std::string> { return a.data; };
  auto bad = cache->Get(b.digest, liar);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInternal);
  EXPECT_NE(bad.error().message.find("corrupt chunk"), std::string::npos);
  EXPECT_EQ(cache->stats().verification_failures, 3u);
  EXPECT_FALSE(cache->Contains(b.digest));

  EXPECT_EQ(cache->Insert(b.digest, a.data).error().code, ErrorCode::kInvalidArgument);
}

ChunkCachePtr OpenCacheSettle(const std::string& dir, std::chrono::nanoseconds settle) {
  ChunkCache::Options o;
  o.capacity_bytes = 1 << 20;
  o.settle = settle;
  auto c = ChunkCache::Open(dir, o);
  EXPECT_TRUE(c.ok()) << c.error().message;
  return c.ok() ? std::move(c).value() : nullptr;
}
// Trust any verified file at once (a negative settle time), so that tests
// reach the trusted path deterministically; or never (one hour).
constexpr auto kTrustAtOnce = -std::chrono::hours(1);
constexpr auto kNeverTrust = std::chrono::hours(1);

void AppendByte(const std::string& path) {
  std::ofstream f(path, std::ios::binary | std::ios::app);
  f << 'x';
}
// Replaces the file with a corrupt copy (a new inode), as a tool that
// rewrites files would.
void ReplaceWithCorruptCopy(const std::string& path) {
  std::string bytes = *ReadFile(path);
  bytes[7] ^= 1;
  WriteTestFile(path + ".new", bytes);
  ASSERT_EQ(std::rename((path + ".new").c_str(), path.c_str()), 0);
}

TEST(ChunkCache, AVerifiedFileIsHashedOnceThenServedFromTheFile) {
  TestDir dir;
  auto cache = OpenCacheSettle(dir.path(), kTrustAtOnce);
  FakeOrigin origin;
  Chunk a = MakeChunk(1, 8192);
  origin.Add(a);
  ASSERT_TRUE(cache->Insert(a.digest, a.data).ok());
  auto first = cache->OpenChunk(a.digest, origin.Fn());
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_TRUE((*first)->in_memory());  // the bytes that were hashed
  EXPECT_EQ(cache->stats().file_hashes, 1u);
  auto again = cache->OpenChunk(a.digest, origin.Fn());
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE((*again)->in_memory());  // trusted: the file, not hashed again
  EXPECT_EQ(cache->stats().file_hashes, 1u);
  std::string part(100, '\0');
  ASSERT_TRUE((*again)->Read(4000, 100, part.data()).ok());
  EXPECT_EQ(part, a.data.substr(4000, 100));
  EXPECT_EQ(*cache->Get(a.digest, origin.Fn()), a.data);
  EXPECT_EQ(cache->stats().file_hashes, 1u);
  EXPECT_EQ(cache->stats().hits, 3u);
  EXPECT_EQ(origin.calls, 0);
  EXPECT_EQ((*again)->Read(8000, 193, part.data()).error().code, ErrorCode::kInvalidArgument);
}

TEST(ChunkCache, AFileChangedSinceVerificationIsVerifiedAgain) {
  TestDir dir;
  auto cache = OpenCacheSettle(dir.path(), kTrustAtOnce);
  FakeOrigin origin;
  Chunk a = MakeChunk(1), b = MakeChunk(2);
  origin.Add(a);
  origin.Add(b);
  for (const Chunk& c : {a, b}) {
    ASSERT_TRUE(cache->Insert(c.digest, c.data).ok());
    ASSERT_TRUE(cache->OpenChunk(c.digest, origin.Fn()).ok());  // hashed, now trusted
  }
  auto held = cache->OpenChunk(a.digest, origin.Fn());
  ASSERT_TRUE(held.ok());
  ASSERT_FALSE((*held)->in_memory());
  EXPECT_EQ(cache->stats().file_hashes, 2u);

  // Changed in place under an open chunk: its next read notices.
  AppendByte(PathOf(dir, a.digest));
  std::string out(10, '\0');
  Status st = (*held)->Read(0, 10, out.data());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInternal);
  EXPECT_NE(st.error().message.find("changed since"), std::string::npos);
  // Opened again: hashed, found corrupt, refetched.
  auto r = cache->OpenChunk(a.digest, origin.Fn());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*(*r)->ReadAll(), a.data);
  EXPECT_EQ(origin.calls, 1);
  EXPECT_EQ(cache->stats().verification_failures, 1u);

  // Replaced by another file: never trusted on the old file's word.
  ReplaceWithCorruptCopy(PathOf(dir, b.digest));
  EXPECT_EQ(*cache->Get(b.digest, origin.Fn()), b.data);
  EXPECT_EQ(origin.calls, 2);
  EXPECT_EQ(cache->stats().verification_failures, 2u);
}

TEST(ChunkCache, AFileThatChangedJustBeforeItsHashIsNeverTrusted) {
  // A write in the same timestamp tick as the hash would leave the stamp
  // unchanged, so a recently changed file is hashed on every open.
  TestDir dir;
  auto cache = OpenCacheSettle(dir.path(), kNeverTrust);
  FakeOrigin origin;
  Chunk a = MakeChunk(1);
  origin.Add(a);
  ASSERT_TRUE(cache->Insert(a.digest, a.data).ok());
  ASSERT_TRUE(cache->OpenChunk(a.digest, origin.Fn()).ok());
  ASSERT_TRUE(cache->OpenChunk(a.digest, origin.Fn()).ok());
  EXPECT_EQ(cache->stats().file_hashes, 2u);
  FlipByte(PathOf(dir, a.digest), 100);  // same size, maybe the same ctime
  auto r = cache->OpenChunk(a.digest, origin.Fn());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*(*r)->ReadAll(), a.data);
  EXPECT_EQ(cache->stats().verification_failures, 1u);
  EXPECT_EQ(origin.calls, 1);
}

TEST(ChunkCache, OpenChunkOfACorruptFetchFails) {
  TestDir dir;
  auto cache = OpenCache(dir.path(), 1 << 20);
  Chunk a = MakeChunk(1);
  auto lying = [](const std::string&) -> Result<std::string> { return MakeChunk(2).data; };
  auto r = cache->OpenChunk(a.digest, lying);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInternal);
  EXPECT_FALSE(cache->Contains(a.digest));
  EXPECT_EQ(cache->OpenChunk("../x", lying).error().code, ErrorCode::kInvalidArgument);
}

TEST(ChunkCache, CorruptFileOnDiskIsDiscardedAndRefetched) {
  TestDir dir;
  auto cache = OpenCache(dir.path(), 1 << 20);
  FakeOrigin origin;
  Chunk a = MakeChunk(1);
  origin.Add(a);
  ASSERT_TRUE(cache->Insert(a.digest, a.data).ok());
  FlipByte(PathOf(dir, a.digest), 100);
  auto r = cache->Get(a.digest, origin.Fn());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, a.data);  // never the corrupt bytes
  EXPECT_EQ(origin.calls, 1);
  EXPECT_EQ(cache->stats().verification_failures, 1u);
  EXPECT_EQ(cache->stats().hits, 0u);
  // The refetched copy replaced the bad file.
  EXPECT_EQ(*ReadFile(PathOf(dir, a.digest)), a.data);
  EXPECT_TRUE(cache->Get(a.digest, origin.Fn()).ok());
  EXPECT_EQ(cache->stats().hits, 1u);
}

TEST(ChunkCache, EvictsLeastRecentlyUsed) {
  TestDir dir;
  auto cache = OpenCache(dir.path(), 3 * kSize);
  FakeOrigin origin;
  Chunk a = MakeChunk(1), b = MakeChunk(2), c = MakeChunk(3), d = MakeChunk(4);
  for (const auto& x : {a, b, c, d}) origin.Add(x);
  for (const auto& x : {a, b, c}) ASSERT_TRUE(cache->Get(x.digest, origin.Fn()).ok());
  ASSERT_TRUE(cache->Get(a.digest, origin.Fn()).ok());  // a is now the most recent
  ASSERT_TRUE(cache->Get(d.digest, origin.Fn()).ok());  // evicts b
  EXPECT_TRUE(cache->Contains(a.digest));
  EXPECT_FALSE(cache->Contains(b.digest));
  EXPECT_FALSE(FileExists(PathOf(dir, b.digest)));
  EXPECT_TRUE(cache->Contains(c.digest));
  EXPECT_TRUE(cache->Contains(d.digest));
  auto s = cache->stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.bytes, 3 * kSize);
  EXPECT_LE(s.bytes, s.capacity_bytes);
}

TEST(ChunkCache, PinnedChunksAreNeverEvicted) {
  TestDir dir;
  auto cache = OpenCache(dir.path(), 2 * kSize);
  FakeOrigin origin;
  Chunk a = MakeChunk(1), b = MakeChunk(2), c = MakeChunk(3);
  for (const auto& x : {a, b, c}) origin.Add(x);
  // Pinned before they are cached, as an agent does when a VM starts.
  ASSERT_TRUE(cache->Pin("manifest-1", {a.digest, "zero", b.digest, a.digest}).ok());
  ASSERT_TRUE(cache->Get(a.digest, origin.Fn()).ok());
  ASSERT_TRUE(cache->Get(b.digest, origin.Fn()).ok());
  // c is served, but cannot stay: the only evictable chunk is c itself.
  auto rc = cache->Get(c.digest, origin.Fn());
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(*rc, c.data);
  EXPECT_FALSE(cache->Contains(c.digest));
  EXPECT_TRUE(cache->Contains(a.digest));
  EXPECT_TRUE(cache->Contains(b.digest));
  auto s = cache->stats();
  EXPECT_EQ(s.pinned_chunks, 2u);
  EXPECT_EQ(s.pinned_bytes, 2 * kSize);
  EXPECT_EQ(s.pins, 1u);

  // Reference-counted per pin id; a different list under the same id is refused.
  ASSERT_TRUE(cache->Pin("manifest-1", {b.digest, a.digest}).ok());
  EXPECT_EQ(cache->Pin("manifest-1", {c.digest}).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(cache->Pin("bad", {"not-a-digest"}).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(cache->stats().pins, 1u);  // the failed pins changed nothing
  ASSERT_TRUE(cache->Unpin("manifest-1").ok());
  EXPECT_EQ(cache->stats().pinned_chunks, 2u);
  ASSERT_TRUE(cache->Unpin("manifest-1").ok());
  EXPECT_EQ(cache->stats().pinned_chunks, 0u);
  EXPECT_EQ(cache->Unpin("manifest-1").error().code, ErrorCode::kNotFound);

  // Unpinned, they are ordinary LRU entries again.
  ASSERT_TRUE(cache->Get(c.digest, origin.Fn()).ok());
  EXPECT_TRUE(cache->Contains(c.digest));
  EXPECT_EQ(cache->stats().chunks, 2u);
}

TEST(ChunkCache, PinnedBytesMayExceedCapacityAndShrinkOnUnpin) {
  TestDir dir;
  auto cache = OpenCache(dir.path(), kSize);
  FakeOrigin origin;
  Chunk a = MakeChunk(1), b = MakeChunk(2);
  origin.Add(a);
  origin.Add(b);
  ASSERT_TRUE(cache->Pin("m", {a.digest, b.digest}).ok());
  ASSERT_TRUE(cache->Get(a.digest, origin.Fn()).ok());
  ASSERT_TRUE(cache->Get(b.digest, origin.Fn()).ok());
  EXPECT_EQ(cache->stats().bytes, 2 * kSize);  // over capacity, visibly
  ASSERT_TRUE(cache->Unpin("m").ok());
  EXPECT_EQ(cache->stats().bytes, kSize);
  EXPECT_EQ(cache->stats().evictions, 1u);
}

TEST(ChunkCache, RestartRebuildsIndexAndDiscardsTornAndCorruptFiles) {
  TestDir dir;
  FakeOrigin origin;
  std::vector<Chunk> chunks;
  for (int i = 0; i < 5; ++i) {
    chunks.push_back(MakeChunk(10 + i));
    origin.Add(chunks.back());
  }
  {
    auto cache = OpenCache(dir.path(), 1 << 20);
    for (const auto& c : chunks) ASSERT_TRUE(cache->Get(c.digest, origin.Fn()).ok());
    // Only one process may own the directory.
    EXPECT_EQ(ChunkCache::Open(dir.path(), {}).error().code, ErrorCode::kFailedPrecondition);
  }
  // A crash mid-write leaves a temp file; junk in a shard; one chunk rotted.
  WriteTestFile(dir / "tmp/0123456789abcdef.999.1", "torn write");
  WriteTestFile(dir / ("chunks/" + chunks[0].digest.substr(0, 2) + "/" + chunks[0].digest + ".tmp"),
                "junk");
  FlipByte(PathOf(dir, chunks[1].digest), 0);
  origin.calls = 0;
  {
    auto cache = OpenCache(dir.path(), 1 << 20);
    auto s = cache->stats();
    EXPECT_EQ(s.chunks, 5u);  // the rotten one is found when it is read
    EXPECT_EQ(s.discarded_at_open, 2u);
    EXPECT_FALSE(FileExists(dir / "tmp/0123456789abcdef.999.1"));
    for (const auto& c : chunks) {
      auto r = cache->Get(c.digest, origin.Fn());
      ASSERT_TRUE(r.ok()) << r.error().message;
      EXPECT_EQ(*r, c.data);
    }
    EXPECT_EQ(origin.calls, 1);  // only the corrupt chunk was refetched
    EXPECT_EQ(cache->stats().hits, 4u);
    EXPECT_EQ(cache->stats().verification_failures, 1u);
  }
  // With verify_on_open the rot is found before anything is served.
  FlipByte(PathOf(dir, chunks[2].digest), 10);
  auto cache = OpenCache(dir.path(), 1 << 20, /*verify_on_open=*/true);
  auto s = cache->stats();
  EXPECT_EQ(s.chunks, 4u);
  EXPECT_EQ(s.verification_failures, 1u);
  EXPECT_EQ(s.discarded_at_open, 1u);
  EXPECT_FALSE(cache->Contains(chunks[2].digest));
}

TEST(ChunkCache, RestartAppliesASmallerCapacity) {
  TestDir dir;
  FakeOrigin origin;
  {
    auto cache = OpenCache(dir.path(), 1 << 20);
    for (int i = 0; i < 4; ++i) {
      Chunk c = MakeChunk(i);
      origin.Add(c);
      ASSERT_TRUE(cache->Get(c.digest, origin.Fn()).ok());
    }
  }
  auto cache = OpenCache(dir.path(), 2 * kSize);
  EXPECT_EQ(cache->stats().chunks, 2u);
  EXPECT_EQ(cache->stats().evictions, 2u);
}

TEST(ChunkCache, ConcurrentMissesAreCoalescedIntoOneFetch) {
  TestDir dir;
  auto cache = OpenCache(dir.path(), 1 << 20);
  Chunk a = MakeChunk(1);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> fetches{0};
  auto blocking = [&](const std::string&) -> Result<std::string> {
    fetches++;
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return release; });
    return a.data;
  };
  constexpr int kThreads = 8;
  std::vector<std::string> results(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] {
      auto r = cache->Get(a.digest, blocking);
      results[i] = r.ok() ? *r : "error: " + r.error().message;
    });
  // Every caller has registered its miss: one is fetching, the rest wait.
  while (cache->stats().misses < kThreads) std::this_thread::yield();
  {
    std::lock_guard<std::mutex> l(mu);
    release = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
  EXPECT_EQ(fetches, 1);
  for (const auto& r : results) EXPECT_EQ(r, a.data);
  EXPECT_EQ(cache->stats().coalesced, kThreads - 1u);
}

TEST(ChunkCache, CoalescedWaitersShareAFetchError) {
  TestDir dir;
  auto cache = OpenCache(dir.path(), 1 << 20);
  Chunk a = MakeChunk(1);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  auto failing = [&](const std::string&) -> Result<std::string> {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return release; });
    return MakeError(ErrorCode::kUnavailable, "image server down");
  };
  std::vector<std::thread> threads;
  std::atomic<int> unavailable{0};
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      auto r = cache->Get(a.digest, failing);
      if (!r.ok() && r.error().code == ErrorCode::kUnavailable) unavailable++;
    });
  while (cache->stats().misses < 4) std::this_thread::yield();
  {
    std::lock_guard<std::mutex> l(mu);
    release = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
  EXPECT_EQ(unavailable, 4);
  EXPECT_EQ(cache->stats().fetch_failures, 1u);
  EXPECT_FALSE(cache->Contains(a.digest));
}

TEST(ChunkCache, ConcurrentMixedUseStaysConsistent) {
  TestDir dir;
  auto cache = OpenCache(dir.path(), 6 * kSize);
  FakeOrigin origin;
  std::vector<Chunk> chunks;
  for (int i = 0; i < 16; ++i) {
    chunks.push_back(MakeChunk(100 + i));
    origin.Add(chunks.back());
  }
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const Chunk& c = chunks[(i * 7 + t * 3) % chunks.size()];
        auto r = cache->Get(c.digest, origin.Fn());
        if (!r.ok() || *r != c.data) errors++;
        if (i % 50 == 0) {
          std::string id = "pin" + std::to_string(t);
          if (!cache->Pin(id, {chunks[t].digest}).ok() || !cache->Unpin(id).ok()) errors++;
        }
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors, 0);
  auto s = cache->stats();
  EXPECT_LE(s.bytes, 6 * kSize);
  EXPECT_EQ(s.bytes, s.chunks * kSize);
  EXPECT_EQ(s.pinned_chunks, 0u);
  EXPECT_EQ(s.verification_failures, 0u);
}

}  // namespace
}  // namespace vmgrid
