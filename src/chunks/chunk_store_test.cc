#include "chunks/chunk_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <zstd.h>

#include "chunks/chunk_codec.h"
#include "chunks/chunk_digest.h"
#include "chunks/test_dir.h"

namespace vmgrid {
namespace {

ChunkStorePtr OpenStore(const std::string& dir) {
  ChunkStore::Options o;
  o.sync = false;
  auto s = ChunkStore::Open(dir, o);
  EXPECT_TRUE(s.ok()) << s.error().message;
  return s.ok() ? std::move(s).value() : nullptr;
}

TEST(ChunkDigest, KnownVectorsAndFormat) {
  EXPECT_EQ(ChunkDigest(std::string("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_TRUE(IsChunkDigest(ChunkDigest(std::string("x"))));
  EXPECT_FALSE(IsChunkDigest("zero"));
  EXPECT_FALSE(IsChunkDigest(std::string(64, 'A')));  // uppercase is not canonical
  EXPECT_FALSE(IsChunkDigest(std::string(63, 'a')));
  EXPECT_FALSE(IsChunkDigest("../../../../etc/passwd" + std::string(42, 'a')));
  EXPECT_TRUE(IsAllZero(std::string(4096, '\0').data(), 4096));
  std::string z(4096, '\0');
  z[4095] = 1;
  EXPECT_FALSE(IsAllZero(z.data(), z.size()));
  EXPECT_TRUE(IsValidChunkSize(1 << 20));
  EXPECT_FALSE(IsValidChunkSize(3 << 20));
  EXPECT_FALSE(IsValidChunkSize(2048));
  EXPECT_FALSE(IsValidChunkSize(32u << 20));
}

// Bytes zstd compresses well (each pseudo-random byte repeated 8 times).
std::string Compressible(size_t n, uint64_t seed) {
  std::string r = TestBytes(n / 8 + 1, seed), out;
  for (char c : r) out.append(8, c);
  out.resize(n);
  return out;
}

TEST(ChunkCodec, RoundTripsAndLeavesIncompressibleDataRaw) {
  std::string raw = Compressible(512 << 10, 1);
  auto frame = CompressChunk(raw);
  ASSERT_TRUE(frame.has_value());
  EXPECT_LT(frame->size(), raw.size() / 4);
  auto back = DecompressChunk(*frame);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, raw);
  EXPECT_EQ(*DeclaredChunkSize(*frame), raw.size());
  EXPECT_FALSE(CompressChunk(TestBytes(512 << 10, 2)).has_value());  // would not save 1/16
  EXPECT_FALSE(CompressChunk("").has_value());
  EXPECT_FALSE(CompressChunk(std::string(kMaxChunkBytes + 1, 'a')).has_value());
}

// Frames from a server are untrusted: every malformed one is refused, and a
// small frame declaring more than a chunk is refused before anything of
// that size is allocated.
TEST(ChunkCodec, RefusesMalformedFrames) {
  std::string raw = Compressible(64 << 10, 3);
  std::string frame = *CompressChunk(raw);
  auto refused = [](std::string_view f, const std::string& why) {
    auto r = DecompressChunk(f);
    EXPECT_FALSE(r.ok()) << why;
    if (!r.ok()) {
      EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << why;
      EXPECT_NE(r.error().message.find("zstd chunk"), std::string::npos) << r.error().message;
    }
  };
  refused("", "empty");
  refused("not zstd at all", "garbage");
  refused(std::string_view(frame).substr(0, frame.size() - 3), "truncated");
  refused(frame + "x", "trailing byte");
  refused(frame + frame, "two frames");
  std::string flipped = frame;
  flipped[flipped.size() / 2] ^= 0x40;
  auto f = DecompressChunk(flipped);  // either refused or decodes to other bytes
  if (f.ok()) {
    EXPECT_NE(*f, raw);
  }

  // No declared size.
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ASSERT_EQ(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0), 0u);
  std::string unsized(ZSTD_compressBound(raw.size()), '\0');
  size_t n = ZSTD_compress2(c, unsized.data(), unsized.size(), raw.data(), raw.size());
  ZSTD_freeCCtx(c);
  ASSERT_FALSE(ZSTD_isError(n));
  unsized.resize(n);
  refused(unsized, "no declared size");

  // A frame of a few KiB declaring more than the largest chunk.
  std::string big(kMaxChunkBytes + 1, '\0');
  std::string bomb(ZSTD_compressBound(big.size()), '\0');
  n = ZSTD_compress(bomb.data(), bomb.size(), big.data(), big.size(), 1);
  ASSERT_FALSE(ZSTD_isError(n));
  bomb.resize(n);
  ASSERT_LT(bomb.size(), 4096u);
  refused(bomb, "declares more than a chunk");
  EXPECT_FALSE(DeclaredChunkSize(bomb).ok());
}

TEST(ChunkStore, KeepsFramesAndServesThemForTransfer) {
  TestDir dir;
  auto store = OpenStore(dir.path());
  std::string text = Compressible(256 << 10, 4), noise = TestBytes(256 << 10, 5);
  std::string dt = *store->Put(text), dn = *store->Put(noise);
  EXPECT_EQ(store->stats().frames_made, 2u);  // made when stored; the noise's is a "raw" mark
  struct stat st;
  ASSERT_EQ(::stat((dir / ("zstd/" + dt.substr(0, 2) + "/" + dt)).c_str(), &st), 0);
  EXPECT_GT(st.st_size, 0);
  ASSERT_EQ(::stat((dir / ("zstd/" + dn.substr(0, 2) + "/" + dn)).c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0);
  for (bool verify : {true, false}) {
    auto t = store->GetForTransfer(dt, verify);
    ASSERT_TRUE(t.ok()) << t.error().message;
    EXPECT_TRUE(t->zstd);
    EXPECT_EQ(t->raw_size, text.size());
    EXPECT_EQ(*DecompressChunk(t->data), text);
    auto n = store->GetForTransfer(dn, verify);
    ASSERT_TRUE(n.ok());
    EXPECT_FALSE(n->zstd);
    EXPECT_EQ(n->data, noise);
  }
  EXPECT_EQ(store->stats().frames_made, 2u);  // nothing made again
  EXPECT_EQ(store->GetForTransfer(ChunkDigest(std::string("absent")), true).error().code,
            ErrorCode::kNotFound);
  // The chunk tree holds chunks only: a reopened store counts the same.
  store.reset();
  store = OpenStore(dir.path());
  EXPECT_EQ(store->stats().chunks, 2u);
  EXPECT_EQ(store->stats().bytes, text.size() + noise.size());
}

TEST(ChunkStore, ABadKeptFrameIsRemovedAndMadeAgain) {
  TestDir dir;
  auto store = OpenStore(dir.path());
  std::string text = Compressible(128 << 10, 6);
  std::string d = *store->Put(text);
  // A well-formed frame of other bytes (as a torn or rotten file could be).
  WriteTestFile(dir / ("zstd/" + d.substr(0, 2) + "/" + d),
                *CompressChunk(Compressible(128 << 10, 7)));
  auto t = store->GetForTransfer(d, true);
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(*DecompressChunk(t->data), text);  // made again from the verified chunk
  EXPECT_EQ(store->stats().bad_frames, 1u);
  EXPECT_EQ(store->stats().frames_made, 2u);
  // Garbage instead of a frame, too.
  WriteTestFile(dir / ("zstd/" + d.substr(0, 2) + "/" + d), "garbage");
  for (bool verify : {true, false}) {
    t = store->GetForTransfer(d, verify);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(*DecompressChunk(t->data), text);
  }
  EXPECT_EQ(store->stats().bad_frames, 2u);
}

TEST(ChunkStore, FramesOfChunksStoredWithoutThemAreMadeOnFirstTransfer) {
  TestDir dir;
  ChunkStore::Options o;
  o.sync = false;
  o.frames_on_put = false;  // as a store from before compressed transfer
  auto store = std::move(ChunkStore::Open(dir.path(), o)).value();
  std::string text = Compressible(128 << 10, 8);
  std::string d = *store->Put(text);
  EXPECT_EQ(store->stats().frames_made, 0u);
  auto t = store->GetForTransfer(d, true);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->zstd);
  EXPECT_EQ(store->stats().frames_made, 1u);
  t = store->GetForTransfer(d, true);
  EXPECT_EQ(store->stats().frames_made, 1u);
}

TEST(ChunkStore, PutGetAndDedup) {
  TestDir dir;
  auto store = OpenStore(dir.path());
  std::string a = TestBytes(100000, 1), b = TestBytes(5000, 2);
  auto da = store->Put(a);
  ASSERT_TRUE(da.ok()) << da.error().message;
  EXPECT_EQ(*da, ChunkDigest(a));
  EXPECT_TRUE(FileExists(dir / ("chunks/" + da->substr(0, 2) + "/" + *da)));
  // The same chunk, e.g. shared by a second image, is stored once.
  auto again = store->Put(a);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *da);
  ASSERT_TRUE(store->Put(b).ok());

  auto st = store->stats();
  EXPECT_EQ(st.chunks, 2u);
  EXPECT_EQ(st.bytes, a.size() + b.size());
  EXPECT_EQ(st.puts, 3u);
  EXPECT_EQ(st.dedup_hits, 1u);
  EXPECT_EQ(st.put_bytes, 2 * a.size() + b.size());

  auto got = store->Get(*da);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(*got, a);
  EXPECT_TRUE(store->Has(*da));
  EXPECT_EQ(*store->Size(*da), a.size());

  std::string absent = ChunkDigest(std::string("absent"));
  EXPECT_FALSE(store->Has(absent));
  EXPECT_EQ(store->Get(absent).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store->Size(absent).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store->Get("../x").error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(store->Put("").error().code, ErrorCode::kInvalidArgument);
}

TEST(ChunkStore, PutVerifiedRejectsWrongDigest) {
  TestDir dir;
  auto store = OpenStore(dir.path());
  std::string data = TestBytes(4096, 3);
  Status bad = store->PutVerified(ChunkDigest(std::string("other")), data);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(store->stats().chunks, 0u);
  EXPECT_TRUE(store->PutVerified(ChunkDigest(data), data).ok());
  EXPECT_EQ(store->stats().chunks, 1u);
}

TEST(ChunkStore, CorruptChunkIsDetectedCountedAndNeverReturned) {
  TestDir dir;
  auto store = OpenStore(dir.path());
  std::string data = TestBytes(65536, 4);
  std::string d = *store->Put(data);
  FlipByte(dir / ("chunks/" + d.substr(0, 2) + "/" + d), 1000);

  auto got = store->Get(d);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code, ErrorCode::kInternal);
  EXPECT_NE(got.error().message.find("corrupt chunk"), std::string::npos) << got.error().message;
  EXPECT_EQ(store->stats().corrupt_reads, 1u);
  // Quarantined: no longer present, so the next read is a clean "not found"
  // and a re-upload of the right bytes repairs the store.
  EXPECT_FALSE(store->Has(d));
  EXPECT_EQ(store->Get(d).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store->stats().chunks, 0u);
  ASSERT_TRUE(store->Put(data).ok());
  EXPECT_EQ(*store->Get(d), data);
  EXPECT_EQ(store->stats().corrupt_reads, 1u);
}

TEST(ChunkStore, TruncatedChunkIsReplacedByPut) {
  TestDir dir;
  auto store = OpenStore(dir.path());
  std::string data = TestBytes(8192, 5);
  std::string d = *store->Put(data);
  ASSERT_EQ(::truncate((dir / ("chunks/" + d.substr(0, 2) + "/" + d)).c_str(), 100), 0);
  ASSERT_TRUE(store->Put(data).ok());  // wrong length: rewritten
  EXPECT_EQ(*store->Get(d), data);
}

TEST(ChunkStore, ReopenCountsChunksAndDropsTornWrites) {
  TestDir dir;
  {
    auto store = OpenStore(dir.path());
    ASSERT_TRUE(store->Put(TestBytes(1000, 6)).ok());
    ASSERT_TRUE(store->Put(TestBytes(2000, 7)).ok());
    // Only one process may own a store directory.
    auto second = ChunkStore::Open(dir.path());
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.error().code, ErrorCode::kFailedPrecondition);
  }
  WriteTestFile(dir / "tmp/abc.123.0", "half a chunk");
  auto store = OpenStore(dir.path());
  EXPECT_EQ(store->stats().chunks, 2u);
  EXPECT_EQ(store->stats().bytes, 3000u);
  EXPECT_FALSE(FileExists(dir / "tmp/abc.123.0"));
}

TEST(ChunkStore, ConcurrentPutsOfOneChunkStoreItOnce) {
  TestDir dir;
  auto store = OpenStore(dir.path());
  std::string data = TestBytes(300000, 8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) threads.emplace_back([&] { ASSERT_TRUE(store->Put(data).ok()); });
  for (auto& t : threads) t.join();
  auto st = store->stats();
  EXPECT_EQ(st.chunks, 1u);
  EXPECT_EQ(st.bytes, data.size());
  EXPECT_EQ(st.dedup_hits, 7u);
}

}  // namespace
}  // namespace vmgrid
