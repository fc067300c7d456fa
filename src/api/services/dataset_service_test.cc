// DatasetService on a fresh store (both databases) with a real image server
// over loopback: versions are deduplicated against the latest one, a
// publish may name only chunks its push sent or the latest version has,
// pulls read only chunks of the version, and another user's dataset is not
// found for any operation.
#include "api/services/dataset_service.h"

#include "api/services/data_attachments.h"
#include "api/services/service_test_fixture.h"
#include "chunks/chunk_client.h"
#include "chunks/chunk_store.h"
#include "chunks/image_catalog.h"
#include "chunks/image_server.h"
#include "chunks/test_dir.h"
#include "common/base64.h"

namespace vmgrid {
namespace {

class DatasetServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ChunkStore::Options so;
    so.sync = false;  // a throwaway store
    chunks_ = std::move(ChunkStore::Open(dir_.path(), so)).value();
    catalog_ = std::move(ImageCatalog::Open(dir_.path())).value();
    ImageServer::Options o;
    o.token = "secret";
    o.keep_alive_timeout_s = 1;  // Stop() waits for idle connections this long
    server_ = std::make_unique<ImageServer>(*chunks_, *catalog_, o);
    auto port = server_->Start("127.0.0.1", 0);
    ASSERT_TRUE(port.ok());
    client_ = std::make_unique<ChunkClient>(server_->url(), "secret");
    service_ = std::make_unique<DatasetService>(*store_, client_.get());
    auto bob = store_->CreateUser("bob", "user");
    ASSERT_TRUE(bob.ok());
    bob_ = Caller{bob->first};
    alice_c_ = Caller{alice_};
  }
  void TearDown() override {
    if (server_) server_->Stop();
  }

  // A blob of `n` chunks, chunk i filled with byte seeds[i] (0: a zero chunk).
  static std::vector<std::string> Pieces(const std::vector<int>& seeds) {
    std::vector<std::string> out;
    for (int s : seeds) out.push_back(std::string(kDefaultChunkSize, static_cast<char>(s)));
    return out;
  }
  // Sends the pieces not in `skip` and returns the draft.
  Manifest Push(const Caller& c, const std::string& name, const std::vector<std::string>& pieces,
                const std::set<std::string>& skip = {}) {
    Manifest m;
    m.size = pieces.size() * kDefaultChunkSize;
    m.chunk_size = kDefaultChunkSize;
    for (const auto& p : pieces) {
      if (p.find_first_not_of('\0') == std::string::npos) {
        m.chunks.push_back(std::string(kZeroChunk));
        continue;
      }
      std::string d = ChunkDigest(p);
      m.chunks.push_back(d);
      if (skip.count(d)) continue;
      auto r = service_->PutChunk(c, name, p);
      EXPECT_TRUE(r.ok()) << r.error().message;
      if (r.ok()) {
        EXPECT_EQ((*r)["digest"], d);
      }
    }
    return m;
  }

  TestDir dir_;
  std::unique_ptr<ChunkStore> chunks_;
  ImageCatalogPtr catalog_;
  std::unique_ptr<ImageServer> server_;
  std::unique_ptr<ChunkClient> client_;
  std::unique_ptr<DatasetService> service_;
  Caller alice_c_, bob_;
};

TEST_P(DatasetServiceTest, SecondVersionSendsOnlyChangedChunks) {
  auto v1 = Push(alice_c_, "genome", Pieces({1, 2, 0, 3, 4}));
  auto p1 = service_->Publish(alice_c_, "genome", "dir", v1);
  ASSERT_TRUE(p1.ok()) << p1.error().message;
  EXPECT_EQ((*p1)["latest"]["version"], 1);
  EXPECT_EQ((*p1)["latest"]["chunks"], 4);
  EXPECT_EQ((*p1)["latest"]["sent_chunks"], 4);

  // Version 2 changes one chunk: only it is sent, the others are reused.
  std::set<std::string> have(v1.chunks.begin(), v1.chunks.end());
  auto v2 = Push(alice_c_, "genome", Pieces({1, 2, 0, 9, 4}), have);
  auto p2 = service_->Publish(alice_c_, "genome", "dir", v2);
  ASSERT_TRUE(p2.ok()) << p2.error().message;
  EXPECT_EQ((*p2)["latest"]["version"], 2);
  EXPECT_EQ((*p2)["latest"]["sent_chunks"], 1);
  EXPECT_EQ((*p2)["latest"]["sent_bytes"], kDefaultChunkSize);
  EXPECT_EQ((*p2)["latest"]["reused_chunks"], 3);
  EXPECT_EQ((*p2)["versions"].size(), 2u);

  // Pull: the manifest and each chunk of the version; not another chunk.
  auto m = service_->GetManifest(alice_c_, "genome", 1);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)["kind"], "dir");
  auto c = service_->GetChunk(alice_c_, "genome", 1, v1.chunks[3]);
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(*Base64Decode((*c)["data"].get<std::string>()), std::string(kDefaultChunkSize, 3));
  EXPECT_EQ(service_->GetChunk(alice_c_, "genome", 1, v2.chunks[3]).error().code,
            ErrorCode::kNotFound);
}

TEST_P(DatasetServiceTest, APublishMayNameOnlyChunksItSentOrTheLatestHas) {
  // Bob stores a chunk; alice knows its digest but never sent it.
  auto bobs = Push(bob_, "secret", Pieces({7}));
  ASSERT_TRUE(service_->Publish(bob_, "secret", "file", bobs).ok());
  Manifest steal = bobs;
  auto r = service_->Publish(alice_c_, "loot", "file", steal);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  // Nothing half-written: no dataset "loot".
  EXPECT_EQ(service_->Get(alice_c_, "loot").error().code, ErrorCode::kNotFound);
  EXPECT_TRUE((*service_->List(alice_c_, {}))["datasets"].empty());
}

TEST_P(DatasetServiceTest, AnotherUsersDatasetIsNotFound) {
  auto v1 = Push(alice_c_, "genome", Pieces({1}));
  auto p = service_->Publish(alice_c_, "genome", "file", v1);
  ASSERT_TRUE(p.ok());
  std::string id = (*p)["id"];
  for (const std::string& ref : {id, std::string("genome")}) {
    EXPECT_EQ(service_->Get(bob_, ref).error().code, ErrorCode::kNotFound);
    EXPECT_EQ(service_->GetManifest(bob_, ref, 0).error().code, ErrorCode::kNotFound);
    EXPECT_EQ(service_->GetChunk(bob_, ref, 1, v1.chunks[0]).error().code, ErrorCode::kNotFound);
    EXPECT_EQ(service_->Delete(bob_, ref, std::nullopt).error().code, ErrorCode::kNotFound);
  }
  EXPECT_TRUE((*service_->List(bob_, {}))["datasets"].empty());
  // The admin sees it but does not read its bytes.
  auto admin = store_->CreateUser("root", "admin");
  ASSERT_TRUE(admin.ok());
  Caller root{admin->first};
  EXPECT_TRUE(service_->Get(root, id).ok());
  EXPECT_EQ(service_->GetManifest(root, id, 0).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(service_->GetChunk(root, id, 1, v1.chunks[0]).error().code, ErrorCode::kNotFound);
  // Bob's push of the same name makes his own dataset; alice's is untouched.
  auto b = service_->Publish(bob_, "genome", "file", Push(bob_, "genome", Pieces({2})));
  ASSERT_TRUE(b.ok());
  EXPECT_NE((*b)["id"], id);
  EXPECT_EQ((*service_->Get(alice_c_, "genome"))["versions"].size(), 1u);
}

TEST_P(DatasetServiceTest, BadInputIsRefused) {
  EXPECT_EQ(service_->PutChunk(alice_c_, "../x", "a").error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(service_->PutChunk(alice_c_, std::string("a\0b", 3), "a").error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(service_->PutChunk(alice_c_, "ok", "").error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(
      service_->PutChunk(alice_c_, "ok", std::string(kDefaultChunkSize + 1, 'x')).error().code,
      ErrorCode::kInvalidArgument);
  auto m = Push(alice_c_, "ok", Pieces({1}));
  EXPECT_EQ(service_->Publish(alice_c_, "ok", "tar", m).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(service_->Publish(alice_c_, "a/b", "file", m).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(service_->GetChunk(alice_c_, "ok", 1, "../../etc").error().code,
            ErrorCode::kInvalidArgument);
}

TEST_P(DatasetServiceTest, DeleteAVersionOrAll) {
  auto v1 = Push(alice_c_, "d", Pieces({1}));
  ASSERT_TRUE(service_->Publish(alice_c_, "d", "file", v1).ok());
  auto v2 = Push(alice_c_, "d", Pieces({2}));
  ASSERT_TRUE(service_->Publish(alice_c_, "d", "file", v2).ok());
  ASSERT_TRUE(service_->Delete(alice_c_, "d", 2).ok());
  EXPECT_EQ(service_->Delete(alice_c_, "d", 2).error().code, ErrorCode::kNotFound);
  auto m = service_->GetManifest(alice_c_, "d", 0);  // the latest is 1 again
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)["version"], 1);
  ASSERT_TRUE(service_->Delete(alice_c_, "d", std::nullopt).ok());
  EXPECT_EQ(service_->Get(alice_c_, "d").error().code, ErrorCode::kNotFound);
}

TEST_P(DatasetServiceTest, UnfinishedPushesAreBoundedPerUser) {
  for (int i = 0; i < 16; ++i)
    ASSERT_TRUE(service_->PutChunk(alice_c_, "d" + std::to_string(i), "x").ok());
  EXPECT_EQ(service_->PutChunk(alice_c_, "d16", "x").error().code, ErrorCode::kResourceExhausted);
  EXPECT_TRUE(service_->PutChunk(alice_c_, "d3", "y").ok());  // a push already open goes on
  EXPECT_TRUE(service_->PutChunk(bob_, "d16", "x").ok());     // another user is not held up
  // Publishing one frees its place.
  Manifest m;
  m.size = 1;
  m.chunk_size = kDefaultChunkSize;
  m.chunks = {ChunkDigest("x")};
  ASSERT_TRUE(service_->Publish(alice_c_, "d0", "file", m).ok());
  EXPECT_TRUE(service_->PutChunk(alice_c_, "d16", "x").ok());
}

TEST_P(DatasetServiceTest, WithoutAnImageServerDatasetsAreRefused) {
  DatasetService none(*store_, nullptr);
  EXPECT_EQ(none.PutChunk(alice_c_, "d", "x").error().code, ErrorCode::kFailedPrecondition);
}

// Attaching to VMs (api/services/data_attachments.h): what a create asks
// for is parsed strictly and resolved against the owner's datasets only.
TEST_P(DatasetServiceTest, AttachmentsResolveToTheOwnersDirVersionsOnly) {
  ASSERT_TRUE(service_->Publish(alice_c_, "tree", "dir", Push(alice_c_, "tree", Pieces({1}))).ok());
  ASSERT_TRUE(service_->Publish(alice_c_, "tree", "dir", Push(alice_c_, "tree", Pieces({2}))).ok());
  ASSERT_TRUE(
      service_->Publish(alice_c_, "blob", "file", Push(alice_c_, "blob", Pieces({3}))).ok());
  auto parse = [](const nlohmann::json& j) { return ParseDataRequests(j); };
  auto reqs = parse(nlohmann::json::array({{{"dataset", "tree"}},
                                           {{"dataset", "tree-v1"}, {"version", 1}},
                                           {{"dataset", "out"}, {"new", true}}}));
  ASSERT_TRUE(reqs.ok()) << reqs.error().message;
  EXPECT_EQ((*reqs)[0].mount, "/data/tree");
  EXPECT_FALSE((*reqs)[0].rw);
  EXPECT_TRUE((*reqs)[2].rw);
  EXPECT_EQ((*reqs)[2].size_mb, 1024);
  (*reqs)[1].dataset = "tree";  // the same dataset, an older version
  (*reqs)[1].mount = "/old";
  auto data = ResolveDataRequests(*store_, alice_.id, *reqs);
  ASSERT_TRUE(data.ok()) << data.error().message;
  EXPECT_EQ((*data)[0].version, 2);
  EXPECT_EQ((*data)[1].version, 1);
  EXPECT_EQ((*data)[0].dataset_id.rfind("ds-", 0), 0u);
  EXPECT_EQ((*data)[2].blank_mb, 1024);
  auto back = VmDataFromJson(VmDataJson(*data));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, *data);
  auto specs = DataDiskSpecs(*data);
  EXPECT_EQ(specs[0].blob.name, (*data)[0].dataset_id);
  EXPECT_EQ(specs[0].blob.version, 2u);
  EXPECT_TRUE(specs[2].blob.empty());

  // A new dataset exists (empty) once created, and goes again if unused.
  ASSERT_TRUE(CreateNewDatasets(*store_, alice_.id, *data).ok());
  ASSERT_FALSE((*data)[2].dataset_id.empty());
  EXPECT_TRUE(service_->Get(alice_c_, "out").ok());
  auto taken = ResolveDataRequests(*store_, alice_.id, {(*reqs)[2]});
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.error().code, ErrorCode::kAlreadyExists);
  DropNewDatasets(*store_, *data);
  EXPECT_EQ(service_->Get(alice_c_, "out").error().code, ErrorCode::kNotFound);

  // Another user's dataset is not found; a file version is not a file system.
  auto bobs = ResolveDataRequests(*store_, bob_.user.id, {(*reqs)[0]});
  ASSERT_FALSE(bobs.ok());
  EXPECT_EQ(bobs.error().code, ErrorCode::kNotFound);
  DataRequest file;
  file.dataset = "blob";
  file.mount = "/b";
  auto f = ResolveDataRequests(*store_, alice_.id, {file});
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code, ErrorCode::kInvalidArgument);
  DataRequest missing = (*reqs)[0];
  missing.version = 9;
  EXPECT_EQ(ResolveDataRequests(*store_, alice_.id, {missing}).error().code, ErrorCode::kNotFound);

  for (const nlohmann::json& bad : std::vector<nlohmann::json>{
           nlohmann::json::object(), nlohmann::json::array({1}),
           nlohmann::json::array({{{"dataset", "a"}, {"extra", 1}}}),
           nlohmann::json::array({{{"dataset", "a"}, {"mount", "/proc/x"}}}),
           nlohmann::json::array({{{"dataset", "a"}, {"mode", "rx"}}}),
           nlohmann::json::array({{{"dataset", "a"}, {"new", true}, {"mode", "ro"}}}),
           nlohmann::json::array({{{"dataset", "a"}, {"new", true}, {"version", 2}}}),
           nlohmann::json::array({{{"dataset", "a"}, {"size_mb", 64}}}),
           nlohmann::json::array({{{"dataset", "a"}, {"new", true}, {"size_mb", 8}}}),
           nlohmann::json::array({{{"dataset", "a"}}, {{"dataset", "a"}, {"mount", "/x"}}}),
           nlohmann::json::array(
               {{{"dataset", "a"}, {"mount", "/x"}}, {{"dataset", "b"}, {"mount", "/x/y"}}})}) {
    EXPECT_FALSE(parse(bad).ok()) << bad.dump();
  }
}

// Sharing (docs/datasets.md, "Sharing"): alice shares "genome" with bob
// read-only; carol, not shared with, still finds nothing.
TEST_P(DatasetServiceTest, ASharedDatasetIsReadOnlyForItsUsersAndHiddenFromOthers) {
  auto carol_u = store_->CreateUser("carol", "user");
  ASSERT_TRUE(carol_u.ok());
  Caller carol{carol_u->first};
  auto v1 = Push(alice_c_, "genome", Pieces({1, 2}));
  auto p = service_->Publish(alice_c_, "genome", "dir", v1);
  ASSERT_TRUE(p.ok()) << p.error().message;
  const std::string id = (*p)["id"];
  ASSERT_TRUE(
      service_->Publish(alice_c_, "other", "dir", Push(alice_c_, "other", Pieces({3}))).ok());
  // Bob's own dataset of the same name does not collide: alice's is alice/genome.
  ASSERT_TRUE(service_->Publish(bob_, "genome", "file", Push(bob_, "genome", Pieces({4}))).ok());

  // Before the share bob finds nothing of alice's, under any name.
  for (const std::string& ref : {id, std::string("alice/genome")}) {
    EXPECT_EQ(service_->Get(bob_, ref).error().code, ErrorCode::kNotFound) << ref;
    EXPECT_EQ(service_->GetManifest(bob_, ref, 0).error().code, ErrorCode::kNotFound) << ref;
  }
  auto shared = service_->Share(alice_c_, "genome", "bob", true);
  ASSERT_TRUE(shared.ok()) << shared.error().message;
  EXPECT_EQ((*shared)["shared_with"], nlohmann::json::array({"bob"}));
  EXPECT_EQ((*shared)["shared"], false);
  EXPECT_EQ((*shared)["owner"], "alice");

  // Bob lists it beside his own, marked as shared, and reads it as alice/genome or by id.
  auto list = service_->List(bob_, {});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ((*list)["datasets"].size(), 2u);
  const auto& theirs = (*list)["datasets"][1];
  EXPECT_EQ(theirs["ref"], "alice/genome");
  EXPECT_EQ(theirs["shared"], true);
  EXPECT_EQ(theirs["owner"], "alice");
  EXPECT_EQ((*list)["datasets"][0]["ref"], "genome");
  EXPECT_EQ((*list)["datasets"][0]["shared"], false);
  for (const std::string& ref : {id, std::string("alice/genome")}) {
    auto g = service_->Get(bob_, ref);
    ASSERT_TRUE(g.ok()) << ref << ": " << g.error().message;
    EXPECT_EQ((*g)["id"], id);
    EXPECT_FALSE(g->contains("shared_with"));  // whom else it is shared with is not bob's
    auto m = service_->GetManifest(bob_, ref, 1);
    ASSERT_TRUE(m.ok()) << m.error().message;
    auto c = service_->GetChunk(bob_, ref, 1, v1.chunks[1]);
    ASSERT_TRUE(c.ok()) << c.error().message;
    EXPECT_EQ(*Base64Decode((*c)["data"].get<std::string>()), std::string(kDefaultChunkSize, 2));
  }
  // "genome" alone is still bob's own.
  EXPECT_NE((*service_->Get(bob_, "genome"))["id"], id);
  // Read-only: bob may neither remove, share nor unshare it.
  EXPECT_EQ(service_->Delete(bob_, "alice/genome", std::nullopt).error().code,
            ErrorCode::kPermissionDenied);
  EXPECT_EQ(service_->Delete(bob_, "alice/genome", 1).error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(service_->Share(bob_, "alice/genome", "carol", true).error().code,
            ErrorCode::kPermissionDenied);
  EXPECT_EQ(service_->Share(bob_, "alice/genome", "bob", false).error().code,
            ErrorCode::kPermissionDenied);
  // Nor write: a read-write attachment is refused with a reason, read-only works.
  DataRequest rw;
  rw.dataset = "alice/genome";
  rw.mount = "/data/genome";
  rw.rw = true;
  auto refused = ResolveDataRequests(*store_, bob_.user.id, {rw});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(refused.error().message.find("read-only"), std::string::npos);
  rw.rw = false;
  auto ro = ResolveDataRequests(*store_, bob_.user.id, {rw});
  ASSERT_TRUE(ro.ok()) << ro.error().message;
  EXPECT_EQ((*ro)[0].dataset_id, id);
  EXPECT_EQ((*ro)[0].dataset, "alice/genome");
  EXPECT_EQ(DataDiskSpecs(*ro)[0].dataset, "genome");  // the agent sees the name alone
  auto parsed = ParseDataRequests(nlohmann::json::array({{{"dataset", "alice/genome"}}}));
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ((*parsed)[0].mount, "/data/genome");
  EXPECT_FALSE(
      ParseDataRequests(nlohmann::json::array({{{"dataset", "alice/genome"}, {"new", true}}}))
          .ok());

  // Carol, not shared with, and anyone naming another of alice's datasets: 404 everywhere.
  for (const std::string& ref : {id, std::string("alice/genome"), std::string("genome")}) {
    EXPECT_EQ(service_->Get(carol, ref).error().code, ErrorCode::kNotFound) << ref;
    EXPECT_EQ(service_->GetManifest(carol, ref, 0).error().code, ErrorCode::kNotFound) << ref;
    EXPECT_EQ(service_->GetChunk(carol, ref, 1, v1.chunks[0]).error().code, ErrorCode::kNotFound);
    EXPECT_EQ(service_->Delete(carol, ref, std::nullopt).error().code, ErrorCode::kNotFound);
    EXPECT_EQ(service_->Share(carol, ref, "carol", true).error().code, ErrorCode::kNotFound);
  }
  EXPECT_TRUE((*service_->List(carol, {}))["datasets"].empty());
  DataRequest theirs_req = rw;
  EXPECT_EQ(ResolveDataRequests(*store_, carol.user.id, {theirs_req}).error().code,
            ErrorCode::kNotFound);
  EXPECT_EQ(service_->Get(bob_, "alice/other").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(service_->Get(bob_, "alice/nope").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(service_->Get(bob_, "nobody/genome").error().code, ErrorCode::kNotFound);

  // Sharing with no one known, or oneself, is refused; the admin sees, shares nothing.
  EXPECT_EQ(service_->Share(alice_c_, "genome", "dave", true).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(service_->Share(alice_c_, "genome", "alice", true).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(service_->Share(alice_c_, "genome", "../x", true).error().code,
            ErrorCode::kInvalidArgument);
  auto admin = store_->CreateUser("root", "admin");
  ASSERT_TRUE(admin.ok());
  Caller root{admin->first};
  auto seen = service_->Get(root, "alice/genome");
  ASSERT_TRUE(seen.ok()) << seen.error().message;
  EXPECT_EQ((*seen)["ref"], "alice/genome");
  EXPECT_EQ((*seen)["shared_with"], nlohmann::json::array({"bob"}));
  EXPECT_EQ(service_->GetManifest(root, "alice/genome", 0).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(service_->Share(root, id, "root", true).error().code, ErrorCode::kPermissionDenied);

  // Unsharing stops new reads and attachments; twice is not found.
  ASSERT_TRUE(service_->Share(alice_c_, "genome", "bob", false).ok());
  EXPECT_EQ(service_->Share(alice_c_, "genome", "bob", false).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(service_->Get(bob_, "alice/genome").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(service_->GetManifest(bob_, id, 1).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(service_->GetChunk(bob_, id, 1, v1.chunks[1]).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(ResolveDataRequests(*store_, bob_.user.id, {rw}).error().code, ErrorCode::kNotFound);
  EXPECT_EQ((*service_->List(bob_, {}))["datasets"].size(), 1u);

  // Shared again, the owner may still remove it: the share goes with it.
  ASSERT_TRUE(service_->Share(alice_c_, id, "bob", true).ok());
  ASSERT_TRUE(service_->Delete(alice_c_, "genome", std::nullopt).ok());
  EXPECT_EQ((*service_->List(bob_, {}))["datasets"].size(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Backends, DatasetServiceTest, testing_db::Backends(),
                         testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
