#include "chunks/chunk_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

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
