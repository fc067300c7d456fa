#include "chunks/image_server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <unordered_set>

#include "chunks/chunk_batch.h"
#include "chunks/chunk_codec.h"
#include "chunks/chunk_digest.h"
#include "chunks/chunk_store.h"
#include "chunks/image_catalog.h"
#include "chunks/manifest.h"
#include "chunks/workspace_grant.h"
#include "common/http_json.h"
#include "common/http_server.h"
#include "common/util.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;
using Res = httplib::Response;

namespace {

Error BadDigest(const std::string& s) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "'" + s.substr(0, 80) + "' is not a chunk digest (64 lowercase hex)");
}

// "latest" -> 0, "7" -> 7; anything else is an error.
Result<uint64_t> ParseVersion(const std::string& s) {
  if (s == "latest") return uint64_t{0};
  bool digits = !s.empty() && s.size() <= 16 && s[0] != '0';
  for (char c : s) digits = digits && c >= '0' && c <= '9';
  uint64_t v = digits ? std::strtoull(s.c_str(), nullptr, 10) : 0;
  if (!digits || v > kMaxManifestVersion)
    return MakeError(ErrorCode::kInvalidArgument,
                     "version '" + s.substr(0, 40) + "' must be a positive integer or 'latest'");
  return v;
}

// Largest request body each route accepts; checked from Content-Length
// before the body is read.
uint64_t BodyLimitFor(const Req& req) {
  if (req.method == "PUT" && req.path.rfind("/v1/chunks/", 0) == 0) return kMaxChunkBytes;
  if ((req.method == "POST" &&
       (req.path.rfind("/v1/manifests/", 0) == 0 || req.path == "/v1/chunks:missing")) ||
      (req.method == "PUT" && req.path.rfind("/v1/prefetch/", 0) == 0))
    return kMaxManifestJsonBytes;
  return kMaxJsonBody;
}

// The image name a manifest or prefetch route is about ("" for other routes).
std::string RouteImageName(const std::string& path) {
  for (const char* prefix : {"/v1/manifests/", "/v1/prefetch/"}) {
    std::string p = prefix;
    if (path.rfind(p, 0) != 0) continue;
    std::string rest = path.substr(p.size());
    return rest.substr(0, rest.find('/'));
  }
  return "";
}

Result<json> ParseLargeJsonObject(const std::string& body) {
  if (body.size() <= kMaxJsonBody) return ParseJsonObject(body, false);
  try {
    json j = json::parse(body);
    if (!j.is_object())
      return MakeError(ErrorCode::kInvalidArgument, "request body must be a JSON object");
    return j;
  } catch (const json::exception& e) {
    return MakeError(ErrorCode::kInvalidArgument, std::string("malformed JSON: ") + e.what());
  }
}

}  // namespace

ImageServer::ImageServer(ChunkStore& store, ImageCatalog& catalog, Options options)
    : store_(store),
      catalog_(catalog),
      options_(std::move(options)),
      server_(std::make_unique<GuardedServer>(HttpServerLimits{}, options_.tls)) {
  InstallRoutes();
}

ImageServer::~ImageServer() { Stop(); }

Result<int> ImageServer::Start(const std::string& host, int port) {
  if (options_.token.empty() && !options_.allow_anonymous)
    return MakeError(ErrorCode::kInvalidArgument, "the image server needs a token");
  std::string listen = host + ":" + std::to_string(port);
  if (host.find(':') != std::string::npos && host.front() != '[')
    listen = "[" + host + "]:" + std::to_string(port);
  VMG_ASSIGN_OR_RETURN(url_, server_->Bind(listen));
  const int bound = std::stoi(url_.substr(url_.rfind(':') + 1));
  listen_returned_ = false;
  thread_ = std::thread([this] {
    server_->listen_after_bind();
    listen_returned_ = true;
  });
  // Stop() only reaches a server that is running; wait for the accept loop.
  while (!server_->is_running() && !listen_returned_) std::this_thread::yield();
  return bound;
}

void ImageServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

ImageServer::Stats ImageServer::stats() const {
  Stats s;
  s.requests = requests_;
  s.chunks_served = chunks_served_;
  s.bytes_served = bytes_served_;
  s.raw_bytes_served = raw_bytes_served_;
  s.zstd_chunks_served = zstd_chunks_served_;
  s.batch_requests = batch_requests_;
  s.chunks_uploaded = chunks_uploaded_;
  s.bytes_uploaded = bytes_uploaded_;
  s.manifests_published = manifests_published_;
  s.auth_failures = auth_failures_;
  s.grant_refusals = grant_refusals_;
  return s;
}

std::vector<metrics::FamilySnapshot> ImageServer::MetricFamilies() const {
  using metrics::FamilySnapshot;
  const Stats s = stats();
  const ChunkStore::Stats st = store_.stats();
  const auto C = metrics::Type::kCounter, G = metrics::Type::kGauge;
  auto one = [](const char* name, const char* help, metrics::Type type, uint64_t v) {
    FamilySnapshot f{name, help, type, {}};
    f.Add({}, static_cast<double>(v));
    return f;
  };
  return {
      one("vmgrid_image_server_http_requests_total", "Requests received (all routes).", C,
          s.requests),
      one("vmgrid_image_server_batch_requests_total", "Batch chunk requests.", C, s.batch_requests),
      one("vmgrid_image_server_chunks_served_total", "Chunks sent to clients.", C, s.chunks_served),
      one("vmgrid_image_server_served_bytes_total",
          "Chunk bytes sent to clients (zstd frames counted as sent).", C, s.bytes_served),
      one("vmgrid_image_server_served_raw_bytes_total",
          "Bytes of the chunks sent to clients, before compression.", C, s.raw_bytes_served),
      one("vmgrid_image_server_zstd_chunks_served_total", "Chunks sent as zstd frames.", C,
          s.zstd_chunks_served),
      one("vmgrid_image_server_chunks_uploaded_total", "Uploads that stored a new chunk.", C,
          s.chunks_uploaded),
      one("vmgrid_image_server_uploaded_bytes_total", "Bytes of the chunks uploaded.", C,
          s.bytes_uploaded),
      one("vmgrid_image_server_manifests_published_total", "Image versions published.", C,
          s.manifests_published),
      one("vmgrid_image_server_auth_failures_total", "Requests refused for their token.", C,
          s.auth_failures),
      one("vmgrid_image_server_grant_refusals_total",
          "Workspace-namespace requests refused for their grant.", C, s.grant_refusals),
      one("vmgrid_chunk_store_chunks", "Distinct chunks stored.", G, st.chunks),
      one("vmgrid_chunk_store_bytes", "Bytes of the chunks stored.", G, st.bytes),
      one("vmgrid_chunk_store_dedup_hits_total", "Puts of a chunk already stored.", C,
          st.dedup_hits),
      one("vmgrid_chunk_store_corrupt_reads_total",
          "Reads that found a chunk whose hash did not match (verification failures).", C,
          st.corrupt_reads),
      one("vmgrid_chunk_store_frames_made_total",
          "zstd frames of chunks made for compressed transfer.", C, st.frames_made),
      one("vmgrid_chunk_store_bad_frames_total",
          "Kept zstd frames that did not decode to their chunk (removed).", C, st.bad_frames),
  };
}

json ImageServer::StatsJson() const {
  Stats s = stats();
  ChunkStore::Stats st = store_.stats();
  ImageCatalog::Stats cs = catalog_.ComputeStats(store_);
  return {{"server",
           {{"requests", s.requests},
            {"chunks_served", s.chunks_served},
            {"bytes_served", s.bytes_served},
            {"raw_bytes_served", s.raw_bytes_served},
            {"zstd_chunks_served", s.zstd_chunks_served},
            {"batch_requests", s.batch_requests},
            {"chunks_uploaded", s.chunks_uploaded},
            {"bytes_uploaded", s.bytes_uploaded},
            {"manifests_published", s.manifests_published},
            {"auth_failures", s.auth_failures},
            {"grant_refusals", s.grant_refusals}}},
          {"store",
           {{"chunks", st.chunks},
            {"bytes", st.bytes},
            {"puts", st.puts},
            {"dedup_hits", st.dedup_hits},
            {"gets", st.gets},
            {"corrupt_reads", st.corrupt_reads},
            {"frames_made", st.frames_made},
            {"bad_frames", st.bad_frames}}},
          {"catalog",
           {{"images", cs.images},
            {"versions", cs.versions},
            {"logical_bytes", cs.logical_bytes},
            {"referenced_bytes", cs.referenced_bytes},
            {"physical_bytes", cs.physical_bytes},
            {"dedup_ratio", cs.dedup_ratio},
            {"total_ratio", cs.total_ratio},
            {"corrupt_manifests", cs.corrupt_manifests}}}};
}

Status ImageServer::CheckWorkspaceGrant(const std::string& name, const std::string& token) {
  if (options_.grant_key.empty())
    return MakeError(ErrorCode::kPermissionDenied,
                     "workspace versions are disabled on this image server (no grant key)");
  VMG_RETURN_IF_ERROR(ValidateName("image", name));  // it names a file below
  VMG_ASSIGN_OR_RETURN(WorkspaceGrant g, VerifyWorkspaceGrant(options_.grant_key, token, name));
  std::lock_guard<std::mutex> l(grant_mu_);
  auto it = generations_.find(name);
  uint64_t seen = 0;
  std::string file = options_.grant_dir.empty() ? "" : options_.grant_dir + "/" + name;
  if (it != generations_.end()) {
    seen = it->second;
  } else if (!file.empty() && FileExists(file)) {
    auto text = ReadFile(file, 64);
    if (!text.ok()) return text.error();
    seen = std::strtoull(text->c_str(), nullptr, 10);
    generations_[name] = seen;
  }
  if (g.generation < seen)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "workspace " + name + " has moved to another host (grant generation " +
                         std::to_string(g.generation) + " < " + std::to_string(seen) + ")");
  if (g.generation > seen) {
    if (!file.empty()) {
      VMG_RETURN_IF_ERROR(MakeDirs(options_.grant_dir, 0700));
      VMG_RETURN_IF_ERROR(WriteFileAtomic(file, std::to_string(g.generation) + "\n", 0600));
    }
    generations_[name] = g.generation;
  }
  return Status::Ok();
}

void ImageServer::InstallRoutes() {
  auto& s = *server_;
  int threads = options_.threads > 0 ? options_.threads : 1;
  s.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  s.set_keep_alive_max_count(1000000);
  s.set_keep_alive_timeout(options_.keep_alive_timeout_s);
  s.set_read_timeout(options_.io_timeout_s, 0);
  s.set_write_timeout(options_.io_timeout_s, 0);
  s.set_tcp_nodelay(true);
  s.set_payload_max_length(kMaxManifestJsonBytes);

  s.set_pre_routing_handler([this](const Req& req, Res& res) {
    requests_++;
    if (!options_.token.empty() && !ConstantTimeEquals(BearerToken(req), options_.token)) {
      auth_failures_++;
      res.set_header("WWW-Authenticate", "Bearer");
      SendError(res, MakeError(ErrorCode::kUnauthenticated, "missing or wrong bearer token"));
      return httplib::Server::HandlerResponse::Handled;
    }
    if (std::string name = RouteImageName(req.path); IsWorkspaceBlobName(name)) {
      if (Status st = CheckWorkspaceGrant(name, req.get_header_value(kWorkspaceGrantHeader));
          !st.ok()) {
        grant_refusals_++;
        SendError(res, st.error());
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    uint64_t limit = BodyLimitFor(req);
    uint64_t len = std::strtoull(req.get_header_value("Content-Length").c_str(), nullptr, 10);
    bool chunked = req.get_header_value("Transfer-Encoding") == "chunked";
    if (len > limit || chunked) {
      SendJson(res, 413,
               {{"error",
                 {{"code", "payload_too_large"},
                  {"message", "request body over " + std::to_string(limit) +
                                  " bytes (or chunked) for " + req.method + " " + req.path}}}});
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  InstallJsonErrorHandlers(s);

  s.Get("/v1/stats", [this](const Req&, Res& res) { SendJson(res, 200, StatsJson()); });

  // --- manifests ---
  s.Get(R"(/v1/manifests/([^/]+))", [this](const Req& req, Res& res) {
    std::string name = req.matches[1];
    if (Status st = ValidateName("image", name); !st.ok()) return SendError(res, st.error());
    auto versions = catalog_.Versions(name);
    if (!versions.ok()) return SendError(res, versions.error());
    json list = json::array();
    for (const auto& v : *versions)
      list.push_back({{"version", v.version},
                      {"digest", v.digest},
                      {"size", v.size},
                      {"chunk_size", v.chunk_size},
                      {"chunks", v.chunks}});
    SendJson(res, 200, {{"name", name}, {"versions", list}});
  });
  s.Get(R"(/v1/manifests/([^/]+)/([^/]+))", [this](const Req& req, Res& res) {
    std::string name = req.matches[1];
    if (Status st = ValidateName("image", name); !st.ok()) return SendError(res, st.error());
    auto version = ParseVersion(req.matches[2]);
    if (!version.ok()) return SendError(res, version.error());
    auto m = *version == 0 ? catalog_.Latest(name) : catalog_.Get(name, *version);
    if (!m.ok()) return SendError(res, m.error());
    if (*version != 0) res.set_header("Cache-Control", "public, max-age=31536000, immutable");
    SendJson(res, 200, m->ToJson());
  });
  s.Post(R"(/v1/manifests/([^/]+))", [this](const Req& req, Res& res) {
    std::string name = req.matches[1];
    if (Status st = ValidateName("image", name); !st.ok()) return SendError(res, st.error());
    auto draft = ParseManifestDraftJson(req.body);
    if (!draft.ok()) return SendError(res, draft.error());
    auto m = catalog_.Publish(name, std::move(draft).value(), store_);
    if (!m.ok()) return SendError(res, m.error());
    manifests_published_++;
    spdlog::info("image server: published {} version {} ({} bytes, {} chunks, digest {})", m->name,
                 m->version, m->size, m->chunks.size(), m->Digest());
    SendJson(res, 201, m->ToJson());
  });

  // --- chunks ---
  s.Get(R"(/v1/chunks/([^/]+))", [this](const Req& req, Res& res) {
    std::string digest = req.matches[1];
    if (!IsChunkDigest(digest)) return SendError(res, BadDigest(digest));
    auto data = options_.verify_on_read ? store_.Get(digest) : store_.GetUnverified(digest);
    if (!data.ok()) return SendError(res, data.error());
    chunks_served_++;
    bytes_served_ += data->size();
    raw_bytes_served_ += data->size();
    res.set_header("Cache-Control", "public, max-age=31536000, immutable");
    res.set_content(std::move(data).value(), "application/octet-stream");
  });
  s.Put(R"(/v1/chunks/([^/]+))", [this](const Req& req, Res& res) {
    std::string digest = req.matches[1];
    if (!IsChunkDigest(digest)) return SendError(res, BadDigest(digest));
    bool existed = store_.Has(digest);
    if (Status st = store_.PutVerified(digest, req.body); !st.ok())
      return SendError(res, st.error());
    if (!existed) {
      chunks_uploaded_++;
      bytes_uploaded_ += req.body.size();
    }
    SendJson(res, existed ? 200 : 201,
             {{"digest", digest}, {"size", req.body.size()}, {"created", !existed}});
  });
  s.Post("/v1/chunks:batch", [this](const Req& req, Res& res) {
    batch_requests_++;
    auto body = ParseJsonObject(req.body, false);
    if (!body.ok()) return SendError(res, body.error());
    JsonFields f(*body, {"digests", "encodings"});
    if (Status st = f.CheckUnknown(); !st.ok()) return SendError(res, st.error());
    auto digests = f.StringList("digests", true, kMaxBatchChunks);
    if (!digests.ok()) return SendError(res, digests.error());
    if (digests->empty())
      return SendError(res, MakeError(ErrorCode::kInvalidArgument, "field 'digests' is empty"));
    for (const auto& d : *digests)
      if (!IsChunkDigest(d)) return SendError(res, BadDigest(d));
    // The encodings the client accepts besides raw bytes; like HTTP's
    // Accept-Encoding, names this server does not know are ignored.
    auto encodings = f.StringList("encodings", false, 16);
    if (!encodings.ok()) return SendError(res, encodings.error());
    const bool zstd_ok = options_.compress && std::find(encodings->begin(), encodings->end(),
                                                        kZstdEncoding) != encodings->end();
    std::vector<std::string> datas;
    uint64_t total = 0, raw_total = 0;
    std::vector<std::string> served;
    std::vector<uint64_t> lengths;
    std::vector<bool> zstd;
    for (const auto& d : *digests) {
      // Stop before reading a chunk that would not fit; the client asks again.
      // (Bounded by raw sizes: a frame is never longer than its chunk.)
      auto size = store_.Size(d);
      if (!size.ok()) return SendError(res, size.error());
      if (!datas.empty() && total + *size > options_.max_batch_bytes) break;
      std::string data;
      if (zstd_ok) {
        auto c = store_.GetForTransfer(d, options_.verify_on_read);
        if (!c.ok()) return SendError(res, c.error());
        raw_total += c->raw_size;
        zstd.push_back(c->zstd);
        data = std::move(c->data);
      } else {
        auto c = options_.verify_on_read ? store_.Get(d) : store_.GetUnverified(d);
        if (!c.ok()) return SendError(res, c.error());
        raw_total += c->size();
        data = std::move(c).value();
      }
      total += data.size();
      served.push_back(d);
      lengths.push_back(data.size());
      datas.push_back(std::move(data));
    }
    std::string out = EncodeBatchHeader(served, lengths, zstd_ok ? &zstd : nullptr);
    out.reserve(out.size() + total);
    for (const auto& d : datas) out += d;
    chunks_served_ += datas.size();
    bytes_served_ += total;
    raw_bytes_served_ += raw_total;
    zstd_chunks_served_ += static_cast<uint64_t>(std::count(zstd.begin(), zstd.end(), true));
    res.set_header("X-Vmgrid-Batch-Chunks", std::to_string(datas.size()));
    res.set_content(std::move(out), "application/octet-stream");
  });
  s.Post("/v1/chunks:missing", [this](const Req& req, Res& res) {
    auto body = ParseLargeJsonObject(req.body);
    if (!body.ok()) return SendError(res, body.error());
    JsonFields f(*body, {"digests"});
    if (Status st = f.CheckUnknown(); !st.ok()) return SendError(res, st.error());
    auto digests = f.StringList("digests", true, kMaxManifestChunks);
    if (!digests.ok()) return SendError(res, digests.error());
    std::unordered_set<std::string> seen;
    json missing = json::array();
    for (const auto& d : *digests) {
      if (!IsChunkDigest(d)) return SendError(res, BadDigest(d));
      if (seen.insert(d).second && !store_.Has(d)) missing.push_back(d);
    }
    SendJson(res, 200, {{"missing", missing}});
  });

  // --- prefetch hints (docs/chunk-store.md, "Prefetch") ---
  s.Get(R"(/v1/prefetch/([^/]+)/([^/]+)/([^/]+))", [this](const Req& req, Res& res) {
    std::string name = req.matches[1];
    if (Status st = ValidateName("image", name); !st.ok()) return SendError(res, st.error());
    auto version = ParseVersion(req.matches[2]);
    if (!version.ok()) return SendError(res, version.error());
    auto order = catalog_.GetPrefetch(name, *version, req.matches[3]);
    if (!order.ok()) return SendError(res, order.error());
    SendJson(res, 200, {{"order", *order}});
  });
  s.Put(R"(/v1/prefetch/([^/]+)/([^/]+)/([^/]+))", [this](const Req& req, Res& res) {
    std::string name = req.matches[1];
    if (Status st = ValidateName("image", name); !st.ok()) return SendError(res, st.error());
    auto version = ParseVersion(req.matches[2]);
    if (!version.ok()) return SendError(res, version.error());
    auto body = ParseLargeJsonObject(req.body);
    if (!body.ok()) return SendError(res, body.error());
    if (body->size() != 1 || !body->contains("order") || !(*body)["order"].is_array())
      return SendError(
          res, MakeError(ErrorCode::kInvalidArgument, "body must be {\"order\": [chunk indexes]}"));
    std::vector<uint64_t> order;
    for (const auto& v : (*body)["order"]) {
      if (!v.is_number_unsigned())
        return SendError(res, MakeError(ErrorCode::kInvalidArgument,
                                        "prefetch indexes must be unsigned integers"));
      order.push_back(v.get<uint64_t>());
    }
    if (Status st = catalog_.PutPrefetch(name, *version, req.matches[3], order); !st.ok())
      return SendError(res, st.error());
    SendJson(res, 201, {{"chunks", order.size()}});
  });
}

}  // namespace vmgrid
