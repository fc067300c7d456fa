#include "chunks/manifest.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "chunks/chunk_store.h"
#include "chunks/image_catalog.h"
#include "chunks/test_dir.h"

namespace vmgrid {
namespace {

using nlohmann::json;

const std::string kD1 = ChunkDigest(std::string("one"));
const std::string kD2 = ChunkDigest(std::string("two"));

Manifest Sample() {
  Manifest m;
  m.name = "tiny";
  m.version = 3;
  m.size = 2 * 65536 + 100;
  m.chunk_size = 65536;
  m.chunks = {kD1, "zero", kD2};
  return m;
}

ChunkStorePtr OpenStore(const std::string& dir) {
  ChunkStore::Options o;
  o.sync = false;
  return std::move(ChunkStore::Open(dir, o)).value();
}

TEST(Manifest, CanonicalJsonAndDigestAreStable) {
  Manifest m = Sample();
  EXPECT_EQ(m.CanonicalJson(),
            "{\"chunk_size\":65536,\"chunks\":[\"" + kD1 + "\",\"zero\",\"" + kD2 +
                "\"],\"format\":1,\"name\":\"tiny\",\"size\":131172,\"version\":3}");
  EXPECT_EQ(m.Digest(), ChunkDigest(m.CanonicalJson()));
  EXPECT_EQ(m.ChunkLength(0), 65536u);
  EXPECT_EQ(m.ChunkLength(2), 100u);
  EXPECT_EQ(m.NonZeroChunks(), 2u);
  EXPECT_EQ(m.NonZeroBytes(), 65636u);

  auto back = ParseManifestJson(m.ToJson().dump(2));  // whitespace does not matter
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->Digest(), m.Digest());
  EXPECT_EQ(back->chunks, m.chunks);
  Manifest other = m;
  other.version = 4;
  EXPECT_NE(other.Digest(), m.Digest());
}

// Each case edits a valid manifest into something hostile; all must be
// rejected with kInvalidArgument and never crash.
TEST(Manifest, RejectsHostileJson) {
  const json good = Sample().ToJson();
  auto with = [&](const char* key, json value) {
    json j = good;
    j[key] = std::move(value);
    return j.dump();
  };
  auto without = [&](const char* key) {
    json j = good;
    j.erase(key);
    return j.dump();
  };
  std::string dup = good.dump();
  dup.insert(dup.size() - 1, ",\"size\":1");
  std::vector<std::pair<std::string, std::string>> cases = {
      {"empty", ""},
      {"not json", "manifest"},
      {"array", "[]"},
      {"truncated", good.dump().substr(0, 100)},
      {"deep nesting", std::string(100000, '[') + std::string(100000, ']')},
      {"nested value", with("name", json::object({{"a", json::array({1})}}))},
      {"duplicate key", dup},
      {"unknown field", with("extra", 1)},
      {"missing chunks", without("chunks")},
      {"missing digest", without("digest")},
      {"missing format", without("format")},
      {"wrong digest", with("digest", kD1)},
      {"digest not hex", with("digest", std::string(64, 'g'))},
      {"format 2", with("format", 2)},
      {"size as string", with("size", "131172")},
      {"size fraction", with("size", 131172.5)},
      {"size negative", with("size", -1)},
      {"size zero", with("size", 0)},
      {"size huge", with("size", 1e30)},
      {"size too small for chunks", with("size", 65536)},
      {"size too large for chunks", with("size", 3 * 65536 + 1)},
      {"chunk_size not power of two", with("chunk_size", 65535)},
      {"chunk_size too small", with("chunk_size", 512)},
      {"chunk_size too large", with("chunk_size", 1 << 30)},
      {"chunk_size zero", with("chunk_size", 0)},
      {"chunks not array", with("chunks", "zero")},
      {"chunk not string", with("chunks", json::array({kD1, 0, kD2}))},
      {"chunk short digest", with("chunks", json::array({kD1, "abc", kD2}))},
      {"chunk uppercase", with("chunks", json::array({kD1, "ZERO", kD2}))},
      {"chunk path", with("chunks", json::array({kD1, "../../etc/passwd", kD2}))},
      {"version zero", with("version", 0)},
      {"version negative", with("version", -3)},
      {"version huge", with("version", uint64_t{1} << 60)},
      {"bad name", with("name", "../etc")},
      {"empty name", with("name", "")},
      {"long name", with("name", std::string(64, 'a'))},
  };
  for (const auto& [what, text] : cases) {
    auto r = ParseManifestJson(text);
    EXPECT_FALSE(r.ok()) << what;
    if (!r.ok()) {
      EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << what;
    }
  }
  // Oversized input is refused before parsing.
  EXPECT_FALSE(ParseManifestJson(std::string(kMaxManifestJsonBytes + 1, ' ')).ok());
  // Too many chunks: the count check happens before any entry is copied.
  json big = {{"size", uint64_t{kMaxManifestChunks + 1} * 4096},
              {"chunk_size", 4096},
              {"chunks", json::array()}};
  EXPECT_FALSE(ParseManifestDraftJson(big.dump()).ok());
}

TEST(Manifest, DraftParsing) {
  json draft = {{"size", 65537}, {"chunk_size", 65536}, {"chunks", {kD1, "zero"}}};
  auto m = ParseManifestDraftJson(draft.dump());
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->size, 65537u);
  EXPECT_EQ(m->name, "");
  draft["name"] = "x";  // the server assigns name and version
  EXPECT_FALSE(ParseManifestDraftJson(draft.dump()).ok());
}

TEST(Manifest, ValidateCatchesInconsistency) {
  Manifest m = Sample();
  EXPECT_TRUE(ValidateManifest(m, true).ok());
  m.chunks.pop_back();
  EXPECT_FALSE(ValidateManifest(m, true).ok());
  m = Sample();
  m.version = 0;
  EXPECT_TRUE(ValidateManifest(m, false).ok());
  EXPECT_FALSE(ValidateManifest(m, true).ok());
}

// An image with data, an all-zero region written as data, a hole, a repeated
// chunk and a short tail.
std::string MakeImage(const std::string& path, uint32_t cs) {
  std::string img;
  img += TestBytes(cs, 10);          // chunk 0
  img += std::string(cs, '\0');      // chunk 1: zeros written out
  img += TestBytes(cs, 10);          // chunk 2: same as chunk 0
  img += std::string(3 * cs, '\0');  // chunks 3-5: left as a hole below
  img += TestBytes(cs / 2 + 7, 11);  // chunk 6: short tail
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::pwrite(fd, img.data(), 3 * cs, 0), static_cast<ssize_t>(3 * cs));
  size_t tail = 6 * cs;
  EXPECT_EQ(::pwrite(fd, img.data() + tail, img.size() - tail, static_cast<off_t>(tail)),
            static_cast<ssize_t>(img.size() - tail));
  ::close(fd);
  return img;
}

TEST(ChunkImageFile, ChunksAndReassemblesBitExactly) {
  TestDir dir;
  auto store = OpenStore(dir / "store");
  const uint32_t cs = 64 << 10;
  std::string img = MakeImage(dir / "disk.raw", cs);
  uint64_t last_progress = 0;
  auto m = ChunkImageFile(dir / "disk.raw", cs, *store, [&](uint64_t done, uint64_t total) {
    EXPECT_EQ(total, img.size());
    EXPECT_GE(done, last_progress);
    last_progress = done;
    return true;
  });
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(last_progress, img.size());
  EXPECT_EQ(m->size, img.size());
  ASSERT_EQ(m->chunks.size(), 7u);
  EXPECT_EQ(m->chunks[1], "zero");
  EXPECT_EQ(m->chunks[3], "zero");
  EXPECT_EQ(m->chunks[5], "zero");
  EXPECT_EQ(m->chunks[0], m->chunks[2]);
  EXPECT_EQ(m->ChunkLength(6), cs / 2 + 7);
  EXPECT_EQ(store->stats().chunks, 2u);  // the repeat is stored once, zeros not at all

  ASSERT_TRUE(WriteImageFile(
                  *m, [&](const std::string& d) { return store->Get(d); }, dir / "out.raw")
                  .ok());
  auto out = ReadFile(dir / "out.raw", 1 << 30);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(*out == img) << "reassembled image differs";
  EXPECT_FALSE(FileExists(dir / "out.raw.partial"));

  // A source handing out wrong bytes fails the assembly and leaves nothing.
  Status bad = WriteImageFile(
      *m, [&](const std::string&) -> Result<std::string> { return TestBytes(cs, 99); },
      dir / "bad.raw");
  EXPECT_FALSE(bad.ok());
  EXPECT_FALSE(FileExists(dir / "bad.raw"));
  EXPECT_FALSE(FileExists(dir / "bad.raw.partial"));
}

// Chunks arriving in any order, from several threads, make the same file;
// a writer that did not get every chunk leaves nothing behind.
TEST(ImageFileWriter, ChunksInAnyOrderMakeTheImage) {
  TestDir dir;
  auto store = OpenStore(dir / "store");
  const uint32_t cs = 64 << 10;
  std::string img = MakeImage(dir / "disk.raw", cs);
  auto m = ChunkImageFile(dir / "disk.raw", cs, *store);
  ASSERT_TRUE(m.ok()) << m.error().message;
  {
    auto w = ImageFileWriter::Open(*m, dir / "out.raw");
    ASSERT_TRUE(w.ok()) << w.error().message;
    std::vector<std::string> missing = (*w)->Missing();
    ASSERT_EQ(missing.size(), 2u) << "distinct non-zero chunks, the repeat once";
    std::vector<std::thread> threads;
    for (auto it = missing.rbegin(); it != missing.rend(); ++it)
      threads.emplace_back([&, d = *it] { EXPECT_TRUE((*w)->Put(d, *store->Get(d)).ok()); });
    for (auto& t : threads) t.join();
    EXPECT_TRUE((*w)->Missing().empty());
    EXPECT_EQ((*w)->Put("sha256:" + std::string(64, '0'), "x").error().code,
              ErrorCode::kInvalidArgument);
    EXPECT_EQ((*w)->Put(missing[0], "short").error().code, ErrorCode::kInternal);
    ASSERT_TRUE((*w)->Commit().ok());
  }
  auto out = ReadFile(dir / "out.raw", 1 << 30);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(*out == img) << "the image written out of order differs";
  EXPECT_FALSE(FileExists(dir / "out.raw.partial"));

  {
    auto w = ImageFileWriter::Open(*m, dir / "half.raw");
    ASSERT_TRUE(w.ok());
    const std::string first = (*w)->Missing().front();
    ASSERT_TRUE((*w)->Put(first, *store->Get(first)).ok());
    Status st = (*w)->Commit();
    EXPECT_EQ(st.error().code, ErrorCode::kFailedPrecondition);
    EXPECT_TRUE(FileExists(dir / "half.raw.partial"));
  }
  EXPECT_FALSE(FileExists(dir / "half.raw"));
  EXPECT_FALSE(FileExists(dir / "half.raw.partial")) << "the destructor removes the partial file";
}

TEST(ChunkImageFile, RejectsBadInput) {
  TestDir dir;
  auto store = OpenStore(dir / "store");
  WriteTestFile(dir / "empty", "");
  EXPECT_EQ(ChunkImageFile(dir / "empty", 65536, *store).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(ChunkImageFile(dir / "absent", 65536, *store).error().code, ErrorCode::kNotFound);
  WriteTestFile(dir / "f", "data");
  EXPECT_EQ(ChunkImageFile(dir / "f", 1000, *store).error().code, ErrorCode::kInvalidArgument);
  auto canceled = ChunkImageFile(dir / "f", 4096, *store, [](uint64_t, uint64_t) { return false; });
  ASSERT_FALSE(canceled.ok());
  EXPECT_NE(canceled.error().message.find("canceled"), std::string::npos);
}

TEST(ImageCatalog, PublishesImmutableVersions) {
  TestDir dir;
  auto store = OpenStore(dir.path());
  auto cat = std::move(ImageCatalog::Open(dir.path())).value();
  const uint32_t cs = 64 << 10;
  MakeImage(dir / "disk.raw", cs);
  Manifest draft = *ChunkImageFile(dir / "disk.raw", cs, *store);

  auto v1 = cat->Publish("tiny", draft, *store);
  ASSERT_TRUE(v1.ok()) << v1.error().message;
  EXPECT_EQ(v1->version, 1u);
  EXPECT_EQ(v1->name, "tiny");
  auto v2 = cat->Publish("tiny", draft, *store);  // a new upload is a new version
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(v2->version, 2u);
  EXPECT_NE(v1->Digest(), v2->Digest());

  auto versions = cat->Versions("tiny");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->size(), 2u);
  EXPECT_EQ((*versions)[0].digest, v1->Digest());
  EXPECT_EQ(cat->Get("tiny", 1)->Digest(), v1->Digest());
  EXPECT_EQ(cat->Latest("tiny")->version, 2u);
  EXPECT_EQ(cat->Get("tiny", 3).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(cat->Versions("other").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(cat->Publish("../x", draft, *store).error().code, ErrorCode::kInvalidArgument);

  // Chunks must be on the server first.
  Manifest missing = draft;
  missing.chunks[0] = ChunkDigest(std::string("not uploaded"));
  auto refused = cat->Publish("tiny", missing, *store);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(cat->Versions("tiny")->size(), 2u);
  EXPECT_EQ(cat->Publish("fresh", missing, *store).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(cat->Names(), std::vector<std::string>{"tiny"});

  // Two versions of 3 non-zero chunk references each, over 2 stored chunks.
  auto stats = cat->ComputeStats(*store);
  EXPECT_EQ(stats.versions, 2u);
  EXPECT_EQ(stats.physical_bytes, cs + cs / 2 + 7);
  EXPECT_EQ(stats.referenced_bytes, 2 * (2u * cs + cs / 2 + 7));
  EXPECT_EQ(stats.logical_bytes, 2 * draft.size);
  EXPECT_GT(stats.dedup_ratio, 2.0);

  // Reopen: the index comes back from disk; a corrupt file is skipped.
  cat.reset();
  FlipByte(dir / "manifests/tiny/2.json", 30);
  WriteTestFile(dir / "manifests/tiny/7.json.tmp.1", "torn");
  cat = std::move(ImageCatalog::Open(dir.path())).value();
  EXPECT_EQ(cat->Versions("tiny")->size(), 1u);
  EXPECT_EQ(cat->ComputeStats(*store).corrupt_manifests, 1u);
  EXPECT_EQ(cat->Get("tiny", 1)->Digest(), v1->Digest());
}

}  // namespace
}  // namespace vmgrid
