// ImageServer + ChunkClient over loopback (127.0.0.1, port 0).
#include "chunks/image_server.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <map>
#include <thread>

#include "chunks/chunk_batch.h"
#include "chunks/chunk_client.h"
#include "chunks/chunk_codec.h"
#include "chunks/chunk_store.h"
#include "chunks/image_catalog.h"
#include "chunks/test_dir.h"
#include "chunks/workspace_grant.h"
#include "common/http_json.h"
#include "common/metrics_text.h"

namespace vmgrid {
namespace {

using nlohmann::json;

constexpr uint32_t kChunk = 64 << 10;

// An image of `chunks` pieces: mostly random, with zero pieces and a short tail.
std::string MakeImage(const std::string& path, size_t chunks, uint64_t seed) {
  std::string img;
  for (size_t i = 0; i < chunks; ++i)
    img += (i % 5 == 3) ? std::string(kChunk, '\0') : TestBytes(kChunk, seed * 1000 + i);
  img += TestBytes(1234, seed);
  WriteTestFile(path, img);
  return img;
}

// Bytes zstd compresses well (each pseudo-random byte repeated 8 times).
std::string Compressible(size_t n, uint64_t seed) {
  std::string r = TestBytes(n / 8 + 1, seed), out;
  for (char c : r) out.append(8, c);
  out.resize(n);
  return out;
}

// Serves `server` (routes set up by the test) on a loopback port until
// destroyed. Clients must close their keep-alive connections first.
class RunningFake {
 public:
  explicit RunningFake(httplib::Server& server)
      : server_(server),
        port_(server.bind_to_any_port("127.0.0.1")),
        thread_([this] { server_.listen_after_bind(); }) {
    while (!server_.is_running()) std::this_thread::yield();
  }
  ~RunningFake() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  httplib::Server& server_;
  int port_;
  std::thread thread_;
};

class ImageServerTest : public ::testing::Test {
 protected:
  void StartServer(ImageServer::Options options = {}) {
    ChunkStore::Options so;
    so.sync = false;
    store_ = std::move(ChunkStore::Open(dir_.path(), so)).value();
    catalog_ = std::move(ImageCatalog::Open(dir_.path())).value();
    if (options.token.empty()) options.allow_anonymous = true;
    server_ = std::make_unique<ImageServer>(*store_, *catalog_, options);
    auto port = server_->Start("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.error().message;
    port_ = *port;
  }
  std::unique_ptr<ChunkClient> Client(const std::string& token = "", ChunkClient::Options o = {}) {
    return std::make_unique<ChunkClient>(server_->url(), token, o);
  }
  std::string ChunkFile(const std::string& digest) {
    return dir_ / ("chunks/" + digest.substr(0, 2) + "/" + digest);
  }
  // Fetches every chunk of `m` and reassembles the image in memory.
  std::string Assemble(ChunkClient& client, const Manifest& m) {
    std::mutex mu;
    std::map<std::string, std::string> got;
    std::vector<std::string> want;
    for (const auto& c : m.chunks)
      if (c != kZeroChunk) want.push_back(c);
    Status st = client.FetchChunks(want, [&](const std::string& d, std::string data) {
      std::lock_guard<std::mutex> l(mu);
      EXPECT_TRUE(got.emplace(d, std::move(data)).second) << "chunk delivered twice";
      return Status::Ok();
    });
    EXPECT_TRUE(st.ok()) << st.error().message;
    std::string out;
    for (size_t i = 0; i < m.chunks.size(); ++i)
      out += m.IsZero(i) ? std::string(m.ChunkLength(i), '\0') : got[m.chunks[i]];
    return out;
  }

  TestDir dir_;
  ChunkStorePtr store_;
  ImageCatalogPtr catalog_;
  std::unique_ptr<ImageServer> server_;
  int port_ = 0;
};

TEST_F(ImageServerTest, RefusesToStartWithoutAToken) {
  auto store = std::move(ChunkStore::Open(dir_.path())).value();
  auto catalog = std::move(ImageCatalog::Open(dir_.path())).value();
  ImageServer server(*store, *catalog, {});
  auto port = server.Start("127.0.0.1", 0);
  ASSERT_FALSE(port.ok());
  EXPECT_NE(port.error().message.find("token"), std::string::npos);
}

TEST_F(ImageServerTest, UploadListGetAndBatchFetchRoundTrip) {
  StartServer();
  TestDir local;
  std::string img = MakeImage(local / "disk.raw", 40, 1);
  ChunkClient::Options co;
  co.connections = 4;
  co.batch_chunks = 4;
  auto client = Client("", co);

  auto v1 = client->UploadImageFile(local / "disk.raw", "tiny", kChunk);
  ASSERT_TRUE(v1.ok()) << v1.error().message;
  EXPECT_EQ(v1->version, 1u);
  EXPECT_EQ(v1->size, img.size());
  EXPECT_EQ(server_->stats().chunks_uploaded, 33u);  // 40 - 8 zero pieces + tail

  auto v2 = client->UploadImageFile(local / "disk.raw", "tiny", kChunk);  // nothing new to send
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(v2->version, 2u);
  EXPECT_EQ(server_->stats().chunks_uploaded, 33u);

  auto versions = client->ListVersions("tiny");
  ASSERT_TRUE(versions.ok()) << versions.error().message;
  ASSERT_EQ(versions->size(), 2u);
  EXPECT_EQ((*versions)[1].digest, v2->Digest());

  auto latest = client->GetManifest("tiny", 0);
  ASSERT_TRUE(latest.ok()) << latest.error().message;
  EXPECT_EQ(latest->version, 2u);
  auto m1 = client->GetManifest("tiny", 1, v1->Digest());
  ASSERT_TRUE(m1.ok()) << m1.error().message;
  auto wrong = client->GetManifest("tiny", 1, v2->Digest());
  EXPECT_FALSE(wrong.ok());
  EXPECT_EQ(client->GetManifest("tiny", 3).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(client->GetManifest("nope", 0).error().code, ErrorCode::kNotFound);

  uint64_t before = client->stats().requests;
  EXPECT_TRUE(Assemble(*client, *m1) == img);
  auto cs = client->stats();
  EXPECT_EQ(cs.chunks_fetched, 33u);
  EXPECT_EQ(cs.requests - before, 9u);  // ceil(33 / 4) batches, not 33 round trips
  EXPECT_EQ(cs.verification_failures, 0u);
  EXPECT_LE(cs.connections_opened, 4u);

  auto one = client->FetchChunk(m1->chunks[0]);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(*one, img.substr(0, kChunk));

  auto stats = server_->StatsJson();
  EXPECT_EQ(stats["catalog"]["versions"], 2);
  EXPECT_GT(stats["catalog"]["dedup_ratio"].get<double>(), 1.9);

  // The same counters as metrics, in the text format.
  auto metrics = metrics::ParseExposition(metrics::RenderText(server_->MetricFamilies()));
  ASSERT_TRUE(metrics.ok()) << metrics.error().message;
  EXPECT_EQ(metrics->Sum("vmgrid_image_server_chunks_served_total"), 34);
  EXPECT_EQ(metrics->Sum("vmgrid_image_server_chunks_uploaded_total"), 33);
  EXPECT_EQ(metrics->Sum("vmgrid_chunk_store_chunks"), 33);
  EXPECT_GT(metrics->Sum("vmgrid_image_server_served_bytes_total"), 0);
}

TEST_F(ImageServerTest, PrefetchHintsAreValidatedAndWrittenOnce) {
  ImageServer::Options o;
  o.keep_alive_timeout_s = 1;  // the restart below waits for idle connections
  StartServer(o);
  TestDir local;
  MakeImage(local / "disk.raw", 10, 3);  // 11 chunks with the tail
  auto client = Client();
  auto v1 = client->UploadImageFile(local / "disk.raw", "hinted", kChunk);
  ASSERT_TRUE(v1.ok()) << v1.error().message;

  EXPECT_EQ(client->GetPrefetch("hinted", 1, "boot").error().code, ErrorCode::kNotFound);
  // Bad hints: unknown version, bad mode, out of range, repeated, empty.
  EXPECT_EQ(client->PutPrefetch("hinted", 2, "boot", {0}).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(client->PutPrefetch("nosuch", 1, "boot", {0}).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(client->PutPrefetch("hinted", 1, "reboot", {0}).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(client->PutPrefetch("hinted", 1, "boot", {11}).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(client->PutPrefetch("hinted", 1, "boot", {3, 1, 3}).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(client->PutPrefetch("hinted", 1, "boot", {}).error().code, ErrorCode::kInvalidArgument);

  ASSERT_TRUE(client->PutPrefetch("hinted", 1, "boot", {5, 0, 10}).ok());
  // The first recording stays.
  EXPECT_EQ(client->PutPrefetch("hinted", 1, "boot", {1}).error().code, ErrorCode::kAlreadyExists);
  ASSERT_TRUE(client->PutPrefetch("hinted", 1, "resume", {1}).ok());
  auto boot = client->GetPrefetch("hinted", 1, "boot");
  ASSERT_TRUE(boot.ok()) << boot.error().message;
  EXPECT_EQ(*boot, (std::vector<uint64_t>{5, 0, 10}));
  EXPECT_EQ(*client->GetPrefetch("hinted", 1, "resume"), (std::vector<uint64_t>{1}));

  // Raw bodies the client would never send.
  httplib::Client raw("127.0.0.1", port_);
  for (const char* body :
       {"[1,2]", "{\"order\":[1],\"x\":1}", "{\"order\":[-1]}", "{\"order\":[\"1\"]}"}) {
    auto r = raw.Put("/v1/prefetch/hinted/1/boot", body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << body;
  }
  // Hints survive a restart of the server (they live beside the manifests,
  // which the catalog's scan ignores).
  server_.reset();
  catalog_ = std::move(ImageCatalog::Open(dir_.path())).value();
  EXPECT_EQ(catalog_->ComputeStats(*store_).corrupt_manifests, 0u);
  EXPECT_EQ(*catalog_->GetPrefetch("hinted", 1, "boot"), (std::vector<uint64_t>{5, 0, 10}));
}

TEST_F(ImageServerTest, KeepAliveReusesOneConnection) {
  StartServer();
  std::vector<std::string> digests;
  for (int i = 0; i < 20; ++i) digests.push_back(*store_->Put(TestBytes(1000, i)));
  ChunkClient::Options co;
  co.connections = 1;
  auto client = Client("", co);
  for (const auto& d : digests) ASSERT_TRUE(client->FetchChunk(d).ok());
  EXPECT_EQ(client->stats().requests, 20u);
  EXPECT_EQ(client->stats().connections_opened, 1u);
}

TEST_F(ImageServerTest, LargeBatchIsAnsweredInParts) {
  ImageServer::Options so;
  so.max_batch_bytes = 150 << 10;  // two 64 KiB chunks per answer
  StartServer(so);
  std::vector<std::string> digests;
  std::map<std::string, std::string> want;
  for (int i = 0; i < 9; ++i) {
    std::string data = TestBytes(kChunk, 100 + i);
    digests.push_back(*store_->Put(data));
    want[digests.back()] = data;
  }
  ChunkClient::Options co;
  co.connections = 1;
  co.batch_chunks = 64;
  auto client = Client("", co);
  std::map<std::string, std::string> got;
  ASSERT_TRUE(client
                  ->FetchChunks(digests,
                                [&](const std::string& d, std::string data) {
                                  got[d] = std::move(data);
                                  return Status::Ok();
                                })
                  .ok());
  EXPECT_EQ(got, want);
  EXPECT_EQ(client->stats().requests, 5u);  // 2+2+2+2+1
}

TEST_F(ImageServerTest, BearerTokenIsRequiredWhenSet) {
  ImageServer::Options so;
  so.token = "s3cret";
  StartServer(so);
  std::string d = *store_->Put(TestBytes(100, 1));
  auto anon = Client()->FetchChunk(d);
  ASSERT_FALSE(anon.ok());
  EXPECT_EQ(anon.error().code, ErrorCode::kUnauthenticated);
  EXPECT_EQ(Client("wrong")->FetchChunk(d).error().code, ErrorCode::kUnauthenticated);
  EXPECT_TRUE(Client("s3cret")->FetchChunk(d).ok());
  EXPECT_EQ(server_->stats().auth_failures, 2u);
}

// Durable workspaces (chunks/workspace_grant.h): the image server's token is
// shared by every host, so a workspace's versions need a grant of the
// controller's for that workspace and host. Attack tests first.
TEST(WorkspaceGrant, MintVerifyAndForgeries) {
  const std::string key = "k3y";
  WorkspaceGrant g{"ws-0123456789", "host-1", 3};
  std::string token = MintWorkspaceGrant(key, g);
  auto ok = VerifyWorkspaceGrant(key, token, "ws-0123456789");
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(*ok, g);
  // Another workspace's name, another key, a changed host or generation, a
  // truncated MAC, an empty key: all refused.
  EXPECT_EQ(VerifyWorkspaceGrant(key, token, "ws-other").error().code,
            ErrorCode::kPermissionDenied);
  EXPECT_FALSE(VerifyWorkspaceGrant("other", token, "ws-0123456789").ok());
  EXPECT_FALSE(VerifyWorkspaceGrant("", token, "ws-0123456789").ok());
  std::string mac = token.substr(token.rfind(':') + 1);
  EXPECT_FALSE(
      VerifyWorkspaceGrant(key, "vmgw1:ws-0123456789:host-2:3:" + mac, "ws-0123456789").ok());
  EXPECT_FALSE(
      VerifyWorkspaceGrant(key, "vmgw1:ws-0123456789:host-1:4:" + mac, "ws-0123456789").ok());
  EXPECT_FALSE(VerifyWorkspaceGrant(key, token.substr(0, token.size() - 1), "ws-0123456789").ok());
  EXPECT_FALSE(VerifyWorkspaceGrant(key, "", "ws-0123456789").ok());
  EXPECT_FALSE(VerifyWorkspaceGrant(key, token + ":x", "ws-0123456789").ok());
  EXPECT_TRUE(IsWorkspaceBlobName("ws-0123456789"));
  EXPECT_FALSE(IsWorkspaceBlobName("img-1-disk"));
}

TEST_F(ImageServerTest, WorkspaceVersionsNeedAGrantOfTheirOwn) {
  const std::string key = "grant-key";
  ImageServer::Options so;
  so.token = "shared";
  so.keep_alive_timeout_s = 1;
  so.grant_key = key;
  TestDir grants;
  so.grant_dir = grants.path();
  StartServer(so);
  TestDir local;
  std::string img = MakeImage(local / "ws.raw", 12, 7);
  const std::string mine = "ws-aaaaaaaaaa", theirs = "ws-bbbbbbbbbb";
  std::string a1 = MintWorkspaceGrant(key, {mine, "host-a", 1});
  std::string b1 = MintWorkspaceGrant(key, {theirs, "host-b", 1});
  auto client = Client("shared");

  // The holder (host A) publishes a version of its workspace.
  ChunkClient::UploadCounts counts;
  auto v1 = client->UploadImageFile(local / "ws.raw", mine, kChunk, nullptr, a1, &counts);
  ASSERT_TRUE(v1.ok()) << v1.error().message;
  EXPECT_EQ(counts.chunks_sent, counts.chunks);
  ASSERT_TRUE(client->GetManifest(mine, 0, "", a1).ok());

  // The shared token alone (a stolen host credential) neither reads nor
  // lists nor writes a workspace's versions.
  EXPECT_EQ(client->GetManifest(mine, 0).error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(client->GetManifest(mine, 1).error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(client->ListVersions(mine).error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(client->Publish(mine, *v1).error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(client->GetPrefetch(mine, 1, "boot").error().code, ErrorCode::kPermissionDenied);
  // Host B's grant (for B's own workspace) opens nothing of A's.
  EXPECT_EQ(client->GetManifest(mine, 0, "", b1).error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(client->Publish(mine, *v1, b1).error().code, ErrorCode::kPermissionDenied);
  // A grant forged without the key, or A's grant replayed for B's name.
  std::string forged = "vmgw1:" + mine + ":host-b:1:" + std::string(64, 'a');
  EXPECT_EQ(client->GetManifest(mine, 0, "", forged).error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(client->GetManifest(theirs, 0, "", a1).error().code, ErrorCode::kPermissionDenied);
  EXPECT_GE(server_->stats().grant_refusals, 9u);

  // The workspace moves to host C (generation 2): once C has used its grant,
  // A's older one can neither publish nor read any more.
  std::string c2 = MintWorkspaceGrant(key, {mine, "host-c", 2});
  auto at_c = client->GetManifest(mine, 0, v1->Digest(), c2);
  ASSERT_TRUE(at_c.ok()) << at_c.error().message;
  EXPECT_EQ(client->Publish(mine, *v1, a1).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(client->GetManifest(mine, 0, "", a1).error().code, ErrorCode::kFailedPrecondition);
  // C publishes a changed version: only the changed chunk travels.
  img[5 * kChunk + 17] ^= 0x5a;
  WriteTestFile(local / "ws.raw", img);
  auto v2 = client->UploadImageFile(local / "ws.raw", mine, kChunk, nullptr, c2, &counts);
  ASSERT_TRUE(v2.ok()) << v2.error().message;
  EXPECT_EQ(v2->version, 2u);
  EXPECT_EQ(counts.chunks_sent, 1u);
  EXPECT_EQ(counts.bytes_sent, kChunk);

  // The generation survives a restart of the server (kept in grant_dir).
  server_.reset();
  ImageServer::Options again = so;
  again.keep_alive_timeout_s = 1;
  server_ = std::make_unique<ImageServer>(*store_, *catalog_, again);
  ASSERT_TRUE(server_->Start("127.0.0.1", 0).ok());
  auto fresh = Client("shared");
  EXPECT_EQ(fresh->GetManifest(mine, 0, "", a1).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(fresh->GetManifest(mine, 0, "", c2).ok());

  // Without a grant key the namespace is closed; other names are unchanged.
  server_.reset();
  ImageServer::Options closed = so;
  closed.grant_key = "";
  server_ = std::make_unique<ImageServer>(*store_, *catalog_, closed);
  ASSERT_TRUE(server_->Start("127.0.0.1", 0).ok());
  auto other = Client("shared");
  EXPECT_EQ(other->GetManifest(mine, 0, "", c2).error().code, ErrorCode::kPermissionDenied);
  EXPECT_TRUE(other->UploadImageFile(local / "ws.raw", "img-plain", kChunk).ok());
}

TEST_F(ImageServerTest, ValidatesEveryInput) {
  StartServer();
  std::string present = *store_->Put(TestBytes(5000, 1));
  ASSERT_TRUE(catalog_->Publish("tiny", Manifest{"", 0, 5000, kChunk, {present}}, *store_).ok());
  std::string absent = ChunkDigest(std::string("absent"));
  httplib::Client http("127.0.0.1", port_);
  struct Case {
    std::string what, method, path, body;
    int status;
    std::string code;
  };
  std::string too_many = "{\"digests\":[";
  for (int i = 0; i <= 1024; ++i) too_many += (i ? ",\"" : "\"") + absent + "\"";
  too_many += "]}";
  std::vector<Case> cases = {
      {"bad digest", "GET", "/v1/chunks/xyz", "", 400, "invalid_argument"},
      {"uppercase digest", "GET", "/v1/chunks/" + std::string(64, 'A'), "", 400,
       "invalid_argument"},
      {"absent chunk", "GET", "/v1/chunks/" + absent, "", 404, "not_found"},
      {"unknown image", "GET", "/v1/manifests/nope", "", 404, "not_found"},
      {"bad image name", "GET", "/v1/manifests/-x", "", 400, "invalid_argument"},
      {"unknown version", "GET", "/v1/manifests/tiny/99", "", 404, "not_found"},
      {"bad version", "GET", "/v1/manifests/tiny/1x", "", 400, "invalid_argument"},
      {"version zero", "GET", "/v1/manifests/tiny/0", "", 400, "invalid_argument"},
      {"unknown route", "GET", "/v1/nothing", "", 404, "not_found"},
      {"digest mismatch", "PUT", "/v1/chunks/" + absent, "not the content", 400,
       "invalid_argument"},
      {"empty chunk", "PUT", "/v1/chunks/" + ChunkDigest(std::string()), "", 400,
       "invalid_argument"},
      {"batch malformed", "POST", "/v1/chunks:batch", "{", 400, "invalid_argument"},
      {"batch empty", "POST", "/v1/chunks:batch", "{\"digests\":[]}", 400, "invalid_argument"},
      {"batch bad digest", "POST", "/v1/chunks:batch", "{\"digests\":[\"zero\"]}", 400,
       "invalid_argument"},
      {"batch unknown field", "POST", "/v1/chunks:batch", "{\"digests\":[],\"x\":1}", 400,
       "invalid_argument"},
      {"batch absent", "POST", "/v1/chunks:batch", "{\"digests\":[\"" + absent + "\"]}", 404,
       "not_found"},
      {"batch too many", "POST", "/v1/chunks:batch", too_many, 400, "invalid_argument"},
      {"missing bad", "POST", "/v1/chunks:missing", "{\"digests\":[1]}", 400, "invalid_argument"},
      {"publish missing chunk", "POST", "/v1/manifests/tiny",
       json{{"size", 10}, {"chunk_size", kChunk}, {"chunks", {absent}}}.dump(), 409,
       "failed_precondition"},
      {"publish inconsistent", "POST", "/v1/manifests/tiny",
       json{{"size", kChunk + 1}, {"chunk_size", kChunk}, {"chunks", {present}}}.dump(), 400,
       "invalid_argument"},
      {"publish with version", "POST", "/v1/manifests/tiny",
       json{{"size", 10}, {"chunk_size", kChunk}, {"chunks", {present}}, {"version", 5}}.dump(),
       400, "invalid_argument"},
      {"publish bad name", "POST", "/v1/manifests/-b",
       json{{"size", 10}, {"chunk_size", kChunk}, {"chunks", {present}}}.dump(), 400,
       "invalid_argument"},
  };
  for (const auto& c : cases) {
    httplib::Result r = c.method == "GET" ? http.Get(c.path.c_str())
                        : c.method == "PUT"
                            ? http.Put(c.path.c_str(), c.body, "application/octet-stream")
                            : http.Post(c.path.c_str(), c.body, "application/json");
    ASSERT_TRUE(r) << c.what << ": " << httplib::to_string(r.error());
    EXPECT_EQ(r->status, c.status) << c.what << ": " << r->body;
    json body = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(body.is_object()) << c.what << ": " << r->body;
    EXPECT_EQ(body["error"]["code"], c.code) << c.what << ": " << r->body;
    EXPECT_TRUE(body["error"]["message"].is_string()) << c.what;
  }
  // An oversized body is refused from its Content-Length, before it is read;
  // the client may see the 413 or, having the connection closed while it
  // still writes, a write error.
  auto big = http.Post("/v1/chunks:batch", std::string(2 << 20, ' '), "application/json");
  if (big) {
    EXPECT_EQ(big->status, 413);
    EXPECT_EQ(json::parse(big->body)["error"]["code"], "payload_too_large");
  }
  EXPECT_EQ(catalog_->Versions("tiny")->size(), 1u);  // nothing was published by the bad requests
  EXPECT_EQ(store_->stats().chunks, 1u);
}

TEST_F(ImageServerTest, ClientDetectsCorruptChunkRefetchesOnceThenFails) {
  ImageServer::Options so;
  so.verify_on_read = false;  // let the rot reach the client
  StartServer(so);
  std::string good = *store_->Put(TestBytes(kChunk, 1));
  std::string bad = *store_->Put(TestBytes(kChunk, 2));
  FlipByte(ChunkFile(bad), 12345);
  auto client = Client();

  std::vector<std::string> delivered;
  Status st = client->FetchChunks({good, bad}, [&](const std::string& d, std::string) {
    delivered.push_back(d);
    return Status::Ok();
  });
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInternal);
  EXPECT_NE(st.error().message.find("corrupt chunk " + bad), std::string::npos)
      << st.error().message;
  EXPECT_EQ(delivered, std::vector<std::string>{good});  // the corrupt one never reaches the sink
  EXPECT_EQ(client->stats().verification_failures, 2u);  // batch copy + the refetch
  EXPECT_EQ(client->stats().refetches, 1u);

  auto single = client->FetchChunk(bad);
  ASSERT_FALSE(single.ok());
  EXPECT_EQ(client->stats().verification_failures, 4u);
  EXPECT_EQ(client->stats().refetches, 2u);
}

TEST_F(ImageServerTest, ServerVerifiesAndQuarantinesCorruptChunk) {
  StartServer();  // verify_on_read defaults to true
  std::string bad = *store_->Put(TestBytes(kChunk, 2));
  FlipByte(ChunkFile(bad), 7);
  auto client = Client();
  auto r = client->FetchChunk(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInternal);
  EXPECT_NE(r.error().message.find("corrupt chunk"), std::string::npos) << r.error().message;
  EXPECT_EQ(store_->stats().corrupt_reads, 1u);
  EXPECT_EQ(client->stats().verification_failures, 0u);
  // Quarantined, so a re-upload repairs it.
  ASSERT_TRUE(client->PutChunk(bad, TestBytes(kChunk, 2)).ok());
  EXPECT_TRUE(client->FetchChunk(bad).ok());
}

TEST_F(ImageServerTest, CompressibleChunksTravelAsZstdFramesAndArriveExact) {
  StartServer();
  std::string text = Compressible(kChunk, 1), noise = TestBytes(kChunk, 2);
  std::string dt = *store_->Put(text), dn = *store_->Put(noise);
  auto fetch = [&](ChunkClient& client) {
    std::map<std::string, std::string> got;
    std::mutex mu;
    Status st = client.FetchChunks({dt, dn}, [&](const std::string& d, std::string data) {
      std::lock_guard<std::mutex> l(mu);
      got[d] = std::move(data);
      return Status::Ok();
    });
    EXPECT_TRUE(st.ok()) << st.error().message;
    EXPECT_EQ(got[dt], text);
    EXPECT_EQ(got[dn], noise);
  };
  auto zclient = Client();
  fetch(*zclient);
  ChunkClient::Stats zs = zclient->stats();
  EXPECT_EQ(zs.zstd_chunks, 1u);  // the noise travels raw
  EXPECT_EQ(zs.raw_bytes_fetched, 2 * uint64_t{kChunk});
  EXPECT_LT(zs.bytes_fetched, kChunk + kChunk / 4);
  EXPECT_EQ(zs.verification_failures, 0u);
  ImageServer::Stats ss = server_->stats();
  EXPECT_EQ(ss.zstd_chunks_served, 1u);
  EXPECT_EQ(ss.bytes_served, zs.bytes_fetched);
  EXPECT_EQ(ss.raw_bytes_served, 2 * uint64_t{kChunk});

  ChunkClient::Options raw_only;
  raw_only.accept_zstd = false;
  auto rclient = Client("", raw_only);
  fetch(*rclient);
  EXPECT_EQ(rclient->stats().zstd_chunks, 0u);
  EXPECT_EQ(rclient->stats().bytes_fetched, 2 * uint64_t{kChunk});
  EXPECT_EQ(server_->stats().zstd_chunks_served, 1u);

  // Asked raw by hand: the answer has no "encodings" (old clients parse it).
  httplib::Client http(server_->url());
  auto r = http.Post("/v1/chunks:batch", json{{"digests", {dt}}}.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->body.substr(0, r->body.find('\n')).find("encodings"), std::string::npos);
  // Encodings it does not know are ignored, as in Accept-Encoding.
  r = http.Post("/v1/chunks:batch", json{{"digests", {dt}}, {"encodings", {"br", "zstd"}}}.dump(),
                "application/json");
  ASSERT_TRUE(r);
  auto entries = DecodeBatchAnswer(r->body, {dt}, true);
  ASSERT_TRUE(entries.ok()) << entries.error().message;
  EXPECT_TRUE((*entries)[0].zstd);
  r = http.Post("/v1/chunks:batch", json{{"digests", {dt}}, {"encodings", "zstd"}}.dump(),
                "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
}

// verify_on_read off: a kept frame that does not decode to its chunk reaches
// the client, which refuses it and fetches the raw chunk instead.
TEST_F(ImageServerTest, ClientRefusesABadFrameAndFetchesTheChunkRaw) {
  ImageServer::Options so;
  so.verify_on_read = false;
  StartServer(so);
  std::string text = Compressible(kChunk, 3);
  std::string d = *store_->Put(text);
  WriteTestFile(dir_ / ("zstd/" + d.substr(0, 2) + "/" + d),
                *CompressChunk(Compressible(kChunk, 4)));
  auto client = Client();
  auto got = std::string();
  Status st = client->FetchChunks({d}, [&](const std::string&, std::string data) {
    got = std::move(data);
    return Status::Ok();
  });
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(got, text);
  EXPECT_EQ(client->stats().verification_failures, 1u);
  EXPECT_EQ(client->stats().refetches, 1u);
}

// A server from before compressed transfer refuses the "encodings" field
// (strict parsing); the client then asks it for raw chunks, once.
TEST(ChunkClient, FallsBackToRawChunksWithAServerThatRefusesEncodings) {
  std::string data = TestBytes(5000, 9);
  std::string digest = ChunkDigest(data);
  int refused = 0, served = 0;
  httplib::Server old;
  old.Post("/v1/chunks:batch", [&](const httplib::Request& req, httplib::Response& res) {
    if (json::parse(req.body).contains("encodings")) {
      refused++;
      return SendError(res, MakeError(ErrorCode::kInvalidArgument,
                                      "unknown field 'encodings' (allowed: digests)"));
    }
    served++;
    res.set_content(json{{"digests", {digest}}, {"lengths", {data.size()}}}.dump() + "\n" + data,
                    "application/octet-stream");
  });
  RunningFake running(old);
  {
    ChunkClient client(running.url(), "");
    for (int i = 0; i < 2; ++i) {
      std::string got;
      Status st = client.FetchChunks({digest}, [&](const std::string&, std::string d) {
        got = std::move(d);
        return Status::Ok();
      });
      ASSERT_TRUE(st.ok()) << st.error().message;
      EXPECT_EQ(got, data);
    }
    EXPECT_EQ(refused, 1);
    EXPECT_EQ(served, 2);
  }
}

// A server that corrupts the first copy of each chunk it sends in a batch.
TEST(ChunkClient, TransientCorruptionIsRepairedByOneRefetch) {
  std::string data = TestBytes(5000, 9);
  std::string digest = ChunkDigest(data);
  httplib::Server fake;
  fake.Post("/v1/chunks:batch", [&](const httplib::Request&, httplib::Response& res) {
    std::string flipped = data;
    flipped[10] ^= 1;
    res.set_content(json{{"digests", {digest}}, {"lengths", {data.size()}}}.dump() + "\n" + flipped,
                    "application/octet-stream");
  });
  fake.Get(R"(/v1/chunks/(.+))", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(data, "application/octet-stream");
  });
  RunningFake running(fake);
  {
    ChunkClient client(running.url(), "");
    std::string got;
    Status st = client.FetchChunks({digest}, [&](const std::string&, std::string d) {
      got = std::move(d);
      return Status::Ok();
    });
    ASSERT_TRUE(st.ok()) << st.error().message;
    EXPECT_EQ(got, data);
    EXPECT_EQ(client.stats().verification_failures, 1u);
    EXPECT_EQ(client.stats().refetches, 1u);
  }  // closes the keep-alive connection, so stop() need not wait it out
}

TEST(ChunkBatch, EncodeDecodeRoundTrip) {
  std::vector<std::string> asked = {ChunkDigest(std::string("a")), ChunkDigest(std::string("bb")),
                                    ChunkDigest(std::string("ccc"))};
  std::string body = EncodeBatchHeader({asked[0], asked[1]}, {1, 2}) + "abb";
  auto entries = DecodeBatchAnswer(body, asked);
  ASSERT_TRUE(entries.ok()) << entries.error().message;
  ASSERT_EQ(entries->size(), 2u);  // a prefix: the client asks again for the rest
  EXPECT_EQ(body.substr((*entries)[1].offset, (*entries)[1].length), "bb");
  EXPECT_FALSE(DecodeBatchAnswer(body, {asked[1], asked[0]}).ok());  // out of order
  EXPECT_FALSE(DecodeBatchAnswer(body, {asked[0]}).ok());            // more than asked
  EXPECT_FALSE(DecodeBatchAnswer(body.substr(0, body.size() - 1), asked).ok());

  // With encodings: only when asked for, one known name per entry.
  std::vector<bool> zstd = {true, false};
  std::string zbody = EncodeBatchHeader({asked[0], asked[1]}, {1, 2}, &zstd) + "abb";
  auto z = DecodeBatchAnswer(zbody, asked, true);
  ASSERT_TRUE(z.ok()) << z.error().message;
  EXPECT_TRUE((*z)[0].zstd);
  EXPECT_FALSE((*z)[1].zstd);
  EXPECT_FALSE(DecodeBatchAnswer(zbody, asked).ok());  // not asked for
  auto plain = DecodeBatchAnswer(body, asked, true);   // asked for, left out: all raw
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  EXPECT_FALSE((*plain)[0].zstd);
  for (const json& enc : {json{"zstd"}, json{"zstd", "gzip"}, json{"zstd", 1}, json("zstd")}) {
    json h = {{"digests", {asked[0], asked[1]}}, {"lengths", {1, 2}}, {"encodings", enc}};
    EXPECT_FALSE(DecodeBatchAnswer(h.dump() + "\nabb", asked, true).ok()) << enc.dump();
  }
}

// Hostile batch framing from a server is rejected, never trusted.
TEST(ChunkClient, RejectsMalformedBatchAnswers) {
  std::string data = TestBytes(100, 1);
  std::string digest = ChunkDigest(data);
  std::vector<std::string> answers = {
      "no newline at all",
      "{\"digests\":[],\"lengths\":[]}\n",
      json{{"digests", {digest}}, {"lengths", {100}}}.dump() + "\n" + data.substr(0, 50),
      json{{"digests", {digest}}, {"lengths", {100}}}.dump() + "\n" + data + "extra",
      json{{"digests", {digest, digest}}, {"lengths", {100, 0}}}.dump() + "\n" + data,
      json{{"digests", {ChunkDigest(std::string("x"))}}, {"lengths", {100}}}.dump() + "\n" + data,
      json{{"digests", {digest}}, {"lengths", {-100}}}.dump() + "\n" + data,
      json{{"digests", digest}, {"lengths", 100}}.dump() + "\n" + data,
  };
  size_t next = 0;
  httplib::Server fake;
  fake.Post("/v1/chunks:batch", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(answers[next], "application/octet-stream");
  });
  RunningFake running(fake);
  {
    ChunkClient client(running.url(), "");
    for (next = 0; next < answers.size(); ++next) {
      int calls = 0;
      Status st = client.FetchChunks({digest}, [&](const std::string&, std::string) {
        calls++;
        return Status::Ok();
      });
      EXPECT_FALSE(st.ok()) << "answer " << next;
      EXPECT_EQ(calls, 0) << "answer " << next;
    }
  }
}

TEST(ChunkClient, UnreachableServerIsUnavailable) {
  TestDir dir;
  ChunkStore::Options so;
  so.sync = false;
  auto store = std::move(ChunkStore::Open(dir.path(), so)).value();
  auto catalog = std::move(ImageCatalog::Open(dir.path())).value();
  std::string url;
  {
    ImageServer server(*store, *catalog, [] {
      ImageServer::Options o;
      o.allow_anonymous = true;
      return o;
    }());
    ASSERT_TRUE(server.Start("127.0.0.1", 0).ok());
    url = server.url();
  }  // stopped: the port now refuses connections
  ChunkClient::Options co;
  co.retry_unsent_s = 0;
  ChunkClient client(url, "", co);
  auto r = client.FetchChunk(ChunkDigest(std::string("x")));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
}

// A request that could not be sent (the server is not listening yet, as
// when it restarts or is too busy to accept) is tried again until it is.
TEST(ChunkClient, RetriesARequestThatCouldNotBeSent) {
  TestDir dir;
  ChunkStore::Options so;
  so.sync = false;
  auto store = std::move(ChunkStore::Open(dir.path(), so)).value();
  auto catalog = std::move(ImageCatalog::Open(dir.path())).value();
  ImageServer::Options o;
  o.allow_anonymous = true;
  o.keep_alive_timeout_s = 1;  // Stop() waits for the client's idle connection
  auto digest = store->Put("payload");
  ASSERT_TRUE(digest.ok());
  int port = 0;
  {
    ImageServer probe(*store, *catalog, o);
    ASSERT_TRUE(probe.Start("127.0.0.1", 0).ok());
    port = std::stoi(probe.url().substr(probe.url().rfind(':') + 1));
  }  // its port is free again
  ChunkClient client("http://127.0.0.1:" + std::to_string(port), "");
  ImageServer late(*store, *catalog, o);
  std::thread starter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_TRUE(late.Start("127.0.0.1", port).ok());
  });
  auto r = client.FetchChunk(*digest);
  starter.join();
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, "payload");
  EXPECT_GT(client.stats().unsent_retries, 0u);
}

}  // namespace
}  // namespace vmgrid
