#include "chunks/manifest_block_source.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>

#include "chunks/chunk_client.h"
#include "chunks/chunk_store.h"
#include "chunks/image_catalog.h"
#include "chunks/image_server.h"
#include "chunks/test_dir.h"

namespace vmgrid {
namespace {

constexpr uint32_t kChunk = 16 << 10;

void AppendByte(const std::string& path) {
  std::ofstream f(path, std::ios::binary | std::ios::app);
  f << 'y';
}

class ManifestBlockSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ChunkStore::Options so;
    so.sync = false;
    store_ = std::move(ChunkStore::Open(dir_ / "server", so)).value();
    // 12 chunks: data, a zero run, a repeated chunk, a short tail.
    for (int i = 0; i < 12; ++i)
      image_ += (i == 4 || i == 5) ? std::string(kChunk, '\0') : TestBytes(kChunk, i == 9 ? 1 : i);
    image_ += TestBytes(777, 50);
    WriteTestFile(dir_ / "disk.raw", image_);
    auto m = ChunkImageFile(dir_ / "disk.raw", kChunk, *store_);
    ASSERT_TRUE(m.ok()) << m.error().message;
    manifest_ = *m;
    manifest_.name = "tiny";
    manifest_.version = 1;
    ChunkCache::Options co;
    co.capacity_bytes = 1 << 20;
    cache_ = std::move(ChunkCache::Open(dir_ / "cache", co)).value();
  }
  ChunkCache::FetchFn Fetch() {
    return [this](const std::string& d) {
      fetches_++;
      return store_->Get(d);
    };
  }

  TestDir dir_;
  ChunkStorePtr store_;
  ChunkCachePtr cache_;
  Manifest manifest_;
  std::string image_;
  std::atomic<int> fetches_{0};
};

TEST_F(ManifestBlockSourceTest, ServesTheImageBitExactly) {
  auto src = ManifestBlockSource::Create(manifest_, *cache_, Fetch());
  ASSERT_TRUE(src.ok()) << src.error().message;
  std::shared_ptr<nbd::BlockSource> block = *src;  // usable wherever NBD wants a source
  ASSERT_EQ(block->size(), image_.size());

  // Reads of every alignment, crossing chunk boundaries and the tail.
  std::vector<std::pair<uint64_t, size_t>> reads = {{0, 512},
                                                    {kChunk - 100, 300},
                                                    {3 * kChunk + 5, 2 * kChunk + 17},
                                                    {4 * kChunk, 2 * kChunk},
                                                    {image_.size() - 777, 777},
                                                    {image_.size() - 1, 1},
                                                    {0, image_.size()}};
  for (auto [off, len] : reads) {
    std::string out(len, 'x');
    Status st = block->Read(off, len, out.data());
    ASSERT_TRUE(st.ok()) << st.error().message;
    EXPECT_TRUE(out == image_.substr(off, len)) << "read " << off << "+" << len;
  }
  // 10 distinct stored chunks (12 minus 2 zero, minus 1 repeat, plus the tail).
  EXPECT_EQ(fetches_, 10);
  EXPECT_EQ(cache_->stats().pinned_chunks, 10u);

  std::string out(10, '\0');
  EXPECT_EQ(block->Read(image_.size() - 5, 10, out.data()).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(block->Read(image_.size() + 1, 1, out.data()).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(block->Read(UINT64_MAX, 2, out.data()).error().code, ErrorCode::kInvalidArgument);

  block.reset();
  src = ManifestBlockSource::Create(manifest_, *cache_, Fetch());  // the old one is gone
  EXPECT_EQ(cache_->stats().pins, 1u);
  src = Error{};
  EXPECT_EQ(cache_->stats().pins, 0u);  // unpinned with the last reference
}

TEST_F(ManifestBlockSourceTest, RecordsTheOrderOfFirstReads) {
  auto src = ManifestBlockSource::Create(manifest_, *cache_, Fetch());
  ASSERT_TRUE(src.ok());
  std::string out(kChunk, 'x');
  // Chunks 7, 2, 7 again, zero chunk 4 (not recorded: it needs no fetch), 0.
  for (uint64_t c : {7, 2, 7, 4, 0})
    ASSERT_TRUE((*src)->Read(c * kChunk + 10, 100, out.data()).ok());
  EXPECT_EQ((*src)->FirstReads(), (std::vector<uint64_t>{7, 2, 0}));
}

TEST_F(ManifestBlockSourceTest, ZeroChunksNeedNoFetch) {
  auto src = ManifestBlockSource::Create(manifest_, *cache_, Fetch());
  ASSERT_TRUE(src.ok());
  std::string out(2 * kChunk, 'x');
  ASSERT_TRUE((*src)->Read(4 * kChunk, 2 * kChunk, out.data()).ok());
  EXPECT_EQ(out, std::string(2 * kChunk, '\0'));
  EXPECT_EQ(fetches_, 0);
}

TEST_F(ManifestBlockSourceTest, NeverServesUnverifiedBytes) {
  std::string bad_digest = manifest_.chunks[0];
  auto lying = [&](const std::string& d) -> Result<std::string> {
    if (d == bad_digest) return TestBytes(kChunk, 999);
    return store_->Get(d);
  };
  auto src = ManifestBlockSource::Create(manifest_, *cache_, lying);
  ASSERT_TRUE(src.ok());
  std::string out(100, 'x');
  Status st = (*src)->Read(0, 100, out.data());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInternal);
  EXPECT_EQ(out, std::string(100, 'x'));
  EXPECT_TRUE((*src)->Read(kChunk, 100, out.data()).ok());  // other chunks are fine

  auto offline = [](const std::string&) -> Result<std::string> {
    return MakeError(ErrorCode::kUnavailable, "image server down");
  };
  Manifest other = manifest_;
  other.version = 2;
  auto src2 = ManifestBlockSource::Create(other, *cache_, offline);
  ASSERT_TRUE(src2.ok());
  EXPECT_EQ((*src2)->Read(2 * kChunk, 10, out.data()).error().code, ErrorCode::kUnavailable);
}

TEST_F(ManifestBlockSourceTest, ACachedChunkFileCorruptedWhileServedIsNeverServed) {
  // Trusted at once (negative settle), so reads go straight to the file.
  ChunkCache::Options co;
  co.capacity_bytes = 1 << 20;
  co.settle = -std::chrono::hours(1);
  cache_.reset();
  cache_ = std::move(ChunkCache::Open(dir_ / "cache", co)).value();
  auto warm = ManifestBlockSource::Create(manifest_, *cache_, Fetch());
  ASSERT_TRUE(warm.ok());
  std::string out(image_.size(), '\0');
  ASSERT_TRUE((*warm)->Read(0, image_.size(), out.data()).ok());  // fetched and hashed
  auto src = ManifestBlockSource::Create(manifest_, *cache_, Fetch());
  ASSERT_TRUE(src.ok());
  ASSERT_TRUE((*src)->Read(0, image_.size(), out.data()).ok());  // from the trusted files
  ASSERT_TRUE(out == image_);
  const uint64_t hashes = cache_->stats().file_hashes;
  ASSERT_TRUE((*src)->Read(0, image_.size(), out.data()).ok());
  EXPECT_EQ(cache_->stats().file_hashes, hashes) << "a trusted chunk is not hashed again";
  const int fetches = fetches_;

  // Chunk 1's file grows a byte while src holds it open.
  const std::string path =
      dir_ / ("cache/chunks/" + manifest_.chunks[1].substr(0, 2) + "/" + manifest_.chunks[1]);
  {
    std::ofstream f(path, std::ios::binary | std::ios::app);
    f << 'x';
  }
  std::string part(300, '\0');
  Status st = (*src)->Read(kChunk + 100, 300, part.data());
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_TRUE(part == image_.substr(kChunk + 100, 300));
  EXPECT_EQ(cache_->stats().verification_failures, 1u);
  EXPECT_EQ(fetches_, fetches + 1);  // refetched from the image server

  // The image server lies as well: the read fails, nothing unverified is served.
  FlipByte(path, 5);
  AppendByte(path);
  auto lying = [&](const std::string&) -> Result<std::string> { return TestBytes(kChunk, 999); };
  auto bad = ManifestBlockSource::Create(manifest_, *cache_, lying);
  ASSERT_TRUE(bad.ok());
  std::string x(100, 'x');
  st = (*bad)->Read(kChunk, 100, x.data());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInternal);
}

TEST_F(ManifestBlockSourceTest, ZeroChunksAreHoles) {
  auto src = ManifestBlockSource::Create(manifest_, *cache_, Fetch());
  ASSERT_TRUE(src.ok());
  std::vector<nbd::Extent> e;
  (*src)->MapExtents(0, image_.size(), &e);
  ASSERT_EQ(e.size(), 3u);  // chunks 0-3 data, 4-5 zero, 6-12 data
  EXPECT_EQ(e[0].length, 4 * kChunk);
  EXPECT_FALSE(e[0].zero);
  EXPECT_EQ(e[1].length, 2 * kChunk);
  EXPECT_TRUE(e[1].zero);
  EXPECT_EQ(e[2].length, image_.size() - 6 * kChunk);
  EXPECT_FALSE(e[2].zero);
  (*src)->MapExtents(4 * kChunk + 10, 20, &e);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].length, 20u);
  EXPECT_TRUE(e[0].zero);
  (*src)->MapExtents(6 * kChunk - 1, 2, &e);
  ASSERT_EQ(e.size(), 2u);
  EXPECT_TRUE(e[0].zero);
  EXPECT_FALSE(e[1].zero);
  EXPECT_EQ(fetches_, 0);  // no I/O
}

TEST_F(ManifestBlockSourceTest, ConcurrentReadersSeeTheImage) {
  auto src =
      ManifestBlockSource::Create(manifest_, *cache_, Fetch(), {.open_chunks = 2, .pin = true});
  ASSERT_TRUE(src.ok());
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::string out(4096, '\0');
      for (int i = 0; i < 300; ++i) {
        uint64_t off = (static_cast<uint64_t>(i) * 7919 + t * 104729) % (image_.size() - 4096);
        if (!(*src)->Read(off, 4096, out.data()).ok() || out != image_.substr(off, 4096)) bad++;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad, 0);
  EXPECT_LE(fetches_, 10 * 4);  // at most one fetch per chunk per racing reader, usually one
}

TEST_F(ManifestBlockSourceTest, PrefetchOverHttpThenServeOffline) {
  auto catalog = std::move(ImageCatalog::Open(dir_ / "server")).value();
  ImageServer server(*store_, *catalog, [] {
    ImageServer::Options o;
    o.allow_anonymous = true;
    return o;
  }());
  ASSERT_TRUE(server.Start("127.0.0.1", 0).ok());
  auto published = catalog->Publish("tiny", manifest_, *store_);
  ASSERT_TRUE(published.ok());
  ChunkClient::Options co;
  co.batch_chunks = 3;
  co.connections = 2;
  {
    ChunkClient client(server.url(), "", co);
    auto m = client.GetManifest("tiny", 1, published->Digest());
    ASSERT_TRUE(m.ok()) << m.error().message;
    Status st = PrefetchManifest(*m, *cache_, client);
    ASSERT_TRUE(st.ok()) << st.error().message;
    EXPECT_EQ(client.stats().requests, 1u + 4u);  // the manifest, then ceil(10 / 3) batches
    EXPECT_TRUE(cache_->Missing(m->chunks).empty());
  }
  server.Stop();
  auto offline = [](const std::string&) -> Result<std::string> {
    return MakeError(ErrorCode::kUnavailable, "image server down");
  };
  auto src = ManifestBlockSource::Create(*published, *cache_, offline);
  ASSERT_TRUE(src.ok());
  std::string out(image_.size(), '\0');
  ASSERT_TRUE((*src)->Read(0, out.size(), out.data()).ok());
  EXPECT_TRUE(out == image_);
}

}  // namespace
}  // namespace vmgrid
