#include "chunks/chunk_client.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <unordered_set>

#include "chunks/chunk_batch.h"
#include "chunks/chunk_codec.h"
#include "chunks/workspace_grant.h"
#include "client/api_client.h"
#include "common/http_json.h"
#include "common/tls.h"

namespace vmgrid {

using nlohmann::json;

namespace {

Error BadDigest(const std::string& s) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "'" + s.substr(0, 80) + "' is not a chunk digest (64 lowercase hex)");
}

Error Protocol(const std::string& url, const std::string& what) {
  return MakeError(ErrorCode::kInternal, "bad answer from image server " + url + ": " + what);
}

}  // namespace

// A connection borrowed from the pool for one exchange; returned on
// destruction unless Discard()ed after a transport failure.
class ChunkClient::Lease {
 public:
  explicit Lease(ChunkClient& c) : c_(c) {
    std::unique_lock<std::mutex> l(c_.pool_mu_);
    int max = std::max(1, c_.options_.connections);
    c_.pool_cv_.wait(l, [&] { return !c_.idle_.empty() || c_.open_ < max; });
    if (!c_.idle_.empty()) {
      conn_ = std::move(c_.idle_.back());
      c_.idle_.pop_back();
    } else {
      c_.open_++;
      l.unlock();
      conn_ = c_.NewConnection();
    }
  }
  ~Lease() {
    std::lock_guard<std::mutex> l(c_.pool_mu_);
    if (conn_)
      c_.idle_.push_back(std::move(conn_));
    else
      c_.open_--;
    c_.pool_cv_.notify_one();
  }
  httplib::Client* operator->() { return conn_.get(); }
  void Discard() { conn_.reset(); }

 private:
  ChunkClient& c_;
  std::unique_ptr<httplib::Client> conn_;
};

ChunkClient::ChunkClient(std::string base_url, std::string token, Options options)
    : base_url_(base_url.size() > 1 && base_url.back() == '/'
                    ? base_url.substr(0, base_url.size() - 1)
                    : base_url),
      token_(std::move(token)),
      options_(options) {}

ChunkClient::~ChunkClient() = default;

std::unique_ptr<httplib::Client> ChunkClient::NewConnection() {
  auto c = NewHttpClient(base_url_);  // https: verified, with our client certificate
  c->set_keep_alive(true);
  c->set_tcp_nodelay(true);
  c->set_connection_timeout(options_.connect_timeout_s, 0);
  c->set_read_timeout(options_.io_timeout_s, 0);
  c->set_write_timeout(options_.io_timeout_s, 0);
  connections_opened_++;
  return c;
}

Result<ChunkClient::Answer> ChunkClient::Call(const std::string& method, const std::string& path,
                                              std::string body, const std::string& content_type,
                                              uint64_t max_answer_bytes, const std::string& grant) {
  // Only a request that was certainly not sent is tried again (so even a
  // publish is never done twice): the server did not accept the connection
  // or finish the TLS handshake in time, as when many hosts fetch at once.
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::seconds(options_.retry_unsent_s);
  auto pause = std::chrono::milliseconds(100);
  for (;;) {
    bool unsent = false;
    Result<Answer> a = CallOnce(method, path, body, content_type, max_answer_bytes, grant, &unsent);
    if (a.ok() || !unsent || std::chrono::steady_clock::now() + pause >= give_up) return a;
    unsent_retries_++;
    spdlog::warn("{}; trying again in {} ms", a.error().message, pause.count());
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(2000));
  }
}

Result<ChunkClient::Answer> ChunkClient::CallOnce(const std::string& method,
                                                  const std::string& path, const std::string& body,
                                                  const std::string& content_type,
                                                  uint64_t max_answer_bytes,
                                                  const std::string& grant, bool* unsent) {
  Lease conn(*this);
  httplib::Request req;
  req.method = method;
  req.path = path;
  req.body = body;
  if (!content_type.empty()) req.set_header("Content-Type", content_type);
  if (!token_.empty()) req.set_header("Authorization", "Bearer " + token_);
  if (!grant.empty()) req.set_header(kWorkspaceGrantHeader, grant);
  std::string received;
  bool too_big = false;
  req.response_handler = [&](const httplib::Response& r) {
    std::string len = r.get_header_value("Content-Length");
    if (!len.empty() && std::strtoull(len.c_str(), nullptr, 10) > max_answer_bytes) {
      too_big = true;
      return false;
    }
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (received.size() + n > max_answer_bytes) {
      too_big = true;
      return false;
    }
    received.append(data, n);
    return true;
  };
  requests_++;
  auto res = conn->send(req);
  if (!res) {
    conn.Discard();
    *unsent = res.error() == httplib::Error::Connection ||
              res.error() == httplib::Error::ConnectionTimeout ||
              res.error() == httplib::Error::SSLConnection;
    if (too_big)
      return Protocol(base_url_, "answer to " + method + " " + path + " is larger than " +
                                     std::to_string(max_answer_bytes) + " bytes");
    return MakeError(ErrorCode::kUnavailable, "cannot reach the image server at " + base_url_ +
                                                  " (" + method + " " + path.substr(0, 100) +
                                                  "): " + httplib::to_string(res.error()));
  }
  Answer a;
  a.status = res->status;
  a.body = received.empty() ? std::move(res->body) : std::move(received);
  if (a.status >= 200 && a.status < 300) return a;
  // The project's error body, else the status.
  try {
    json j = json::parse(a.body);
    if (j.is_object() && j.contains("error") && j["error"].is_object()) {
      const json& e = j["error"];
      std::string code =
          e.contains("code") && e["code"].is_string() ? e["code"].get<std::string>() : "";
      std::string msg =
          e.contains("message") && e["message"].is_string() ? e["message"].get<std::string>() : "";
      return MakeError(
          code.empty() ? ErrorCodeFromHttpStatus(a.status) : ErrorCodeFromApiString(code), msg);
    }
  } catch (const json::exception&) {
  }
  return MakeError(ErrorCodeFromHttpStatus(a.status),
                   "image server " + base_url_ + " answered HTTP " + std::to_string(a.status) +
                       " to " + method + " " + path.substr(0, 100));
}

Result<std::vector<ChunkClient::VersionInfo>> ChunkClient::ListVersions(const std::string& name,
                                                                        const std::string& grant) {
  VMG_RETURN_IF_ERROR(ValidateName("image", name));
  VMG_ASSIGN_OR_RETURN(Answer a, Call("GET", "/v1/manifests/" + name, "", "", 64 << 20, grant));
  std::vector<VersionInfo> out;
  try {
    json j = json::parse(a.body);
    for (const auto& v : j.at("versions")) {
      VersionInfo info;
      info.version = v.at("version").get<uint64_t>();
      info.digest = v.at("digest").get<std::string>();
      info.size = v.at("size").get<uint64_t>();
      info.chunk_size = v.at("chunk_size").get<uint32_t>();
      if (!IsChunkDigest(info.digest)) return Protocol(base_url_, "version list has a bad digest");
      out.push_back(std::move(info));
    }
  } catch (const json::exception& e) {
    return Protocol(base_url_, std::string("version list: ") + e.what());
  }
  return out;
}

Result<Manifest> ChunkClient::GetManifest(const std::string& name, uint64_t version,
                                          const std::string& expected_digest,
                                          const std::string& grant) {
  VMG_RETURN_IF_ERROR(ValidateName("image", name));
  std::string path =
      "/v1/manifests/" + name + "/" + (version == 0 ? "latest" : std::to_string(version));
  VMG_ASSIGN_OR_RETURN(Answer a, Call("GET", path, "", "", kMaxManifestJsonBytes, grant));
  auto m = ParseManifestJson(a.body);
  if (!m.ok()) return Protocol(base_url_, "manifest " + name + ": " + m.error().message);
  if (m->name != name || (version != 0 && m->version != version))
    return Protocol(base_url_, "asked for manifest " + name + "/" + std::to_string(version) +
                                   ", got " + m->name + "/" + std::to_string(m->version));
  if (!expected_digest.empty() && m->Digest() != expected_digest)
    return MakeError(ErrorCode::kInternal, "manifest " + name + "/" + std::to_string(m->version) +
                                               " has digest " + m->Digest() + ", expected " +
                                               expected_digest);
  return m;
}

Result<std::vector<uint64_t>> ChunkClient::GetPrefetch(const std::string& name, uint64_t version,
                                                       const std::string& mode) {
  VMG_RETURN_IF_ERROR(ValidateName("image", name));
  VMG_ASSIGN_OR_RETURN(
      Answer a, Call("GET", "/v1/prefetch/" + name + "/" + std::to_string(version) + "/" + mode, "",
                     "", kMaxManifestJsonBytes));
  auto j = nlohmann::json::parse(a.body, nullptr, false);
  std::vector<uint64_t> order;
  if (!j.is_object() || !j.contains("order") || !j["order"].is_array())
    return Protocol(base_url_, "prefetch answer has no order list");
  for (const auto& v : j["order"]) {
    if (!v.is_number_unsigned())
      return Protocol(base_url_, "prefetch answer has a non-integer index");
    order.push_back(v.get<uint64_t>());
  }
  return order;
}

Status ChunkClient::PutPrefetch(const std::string& name, uint64_t version, const std::string& mode,
                                const std::vector<uint64_t>& order) {
  VMG_RETURN_IF_ERROR(ValidateName("image", name));
  nlohmann::json body = {{"order", order}};
  auto a = Call("PUT", "/v1/prefetch/" + name + "/" + std::to_string(version) + "/" + mode,
                body.dump(), "application/json", 1 << 20);
  if (!a.ok()) return a.error();
  return Status::Ok();
}

Result<std::string> ChunkClient::FetchSingle(const std::string& digest, int attempts,
                                             bool refetch) {
  std::string last_hash;
  for (int i = 0; i < attempts; ++i) {
    if (i > 0 || refetch) refetches_++;
    VMG_ASSIGN_OR_RETURN(Answer a, Call("GET", "/v1/chunks/" + digest, "", "", kMaxChunkBytes));
    bytes_fetched_ += a.body.size();
    last_hash = ChunkDigest(a.body);
    if (last_hash == digest) {
      chunks_fetched_++;
      raw_bytes_fetched_ += a.body.size();
      return std::move(a.body);
    }
    verification_failures_++;
  }
  return MakeError(ErrorCode::kInternal,
                   "corrupt chunk " + digest + " from image server " + base_url_ +
                       ": the refetched copy is wrong too (hashes to " + last_hash + ")");
}

Result<std::string> ChunkClient::FetchChunk(const std::string& digest) {
  if (!IsChunkDigest(digest)) return BadDigest(digest);
  return FetchSingle(digest, 2, false);
}

Status ChunkClient::FetchBatch(std::vector<std::string> digests, const ChunkSink& sink) {
  size_t pos = 0;
  while (pos < digests.size()) {
    std::vector<std::string> ask(digests.begin() + static_cast<ptrdiff_t>(pos), digests.end());
    uint64_t max_prefix = 96 + 100 * ask.size();
    uint64_t max_answer = max_prefix + ask.size() * kMaxChunkBytes;
    const bool zstd = options_.accept_zstd && !server_refuses_zstd_;
    json request = {{"digests", ask}};
    if (zstd) request["encodings"] = {std::string(kZstdEncoding)};
    Result<Answer> a =
        Call("POST", "/v1/chunks:batch", request.dump(), "application/json", max_answer);
    if (!a.ok() && zstd && a.error().code == ErrorCode::kInvalidArgument &&
        a.error().message.find("unknown field 'encodings'") != std::string::npos) {
      // A server from before compressed transfer refuses the field: ask
      // that server for raw chunks from now on.
      if (!server_refuses_zstd_.exchange(true))
        spdlog::info("image server {} does not send compressed chunks; fetching them raw",
                     base_url_);
      continue;
    }
    if (!a.ok()) return a.error();
    auto entries = DecodeBatchAnswer(a->body, ask, zstd);  // untrusted: checked completely first
    if (!entries.ok()) return Protocol(base_url_, entries.error().message);
    for (const auto& e : *entries) {
      std::string_view wire(a->body.data() + e.offset, e.length);
      bytes_fetched_ += wire.size();
      // A frame that does not decode counts as a chunk that failed
      // verification: the raw chunk is fetched again on its own.
      Result<std::string> data =
          e.zstd ? DecompressChunk(wire) : Result<std::string>(std::string(wire));
      if (e.zstd && data.ok()) zstd_chunks_++;
      if (data.ok() && ChunkDigest(*data) == e.digest) {
        chunks_fetched_++;
        raw_bytes_fetched_ += data->size();
      } else {
        verification_failures_++;
        VMG_ASSIGN_OR_RETURN(data, FetchSingle(e.digest, 1, true));
      }
      VMG_RETURN_IF_ERROR(sink(e.digest, std::move(data).value()));
    }
    pos += entries->size();
  }
  return Status::Ok();
}

Status ChunkClient::FetchChunks(const std::vector<std::string>& digests, const ChunkSink& sink) {
  std::vector<std::string> unique;
  std::unordered_set<std::string> seen;
  for (const auto& d : digests) {
    if (!IsChunkDigest(d)) return BadDigest(d);
    if (seen.insert(d).second) unique.push_back(d);
  }
  size_t per_batch = std::clamp<size_t>(options_.batch_chunks, 1, kMaxBatchChunks);
  std::vector<std::vector<std::string>> batches;
  for (size_t i = 0; i < unique.size(); i += per_batch)
    batches.emplace_back(
        unique.begin() + static_cast<ptrdiff_t>(i),
        unique.begin() + static_cast<ptrdiff_t>(std::min(unique.size(), i + per_batch)));
  size_t workers =
      std::min<size_t>(batches.size(), static_cast<size_t>(std::max(1, options_.connections)));
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  Status first_error;
  auto work = [&] {
    for (size_t b; !failed && (b = next++) < batches.size();) {
      Status st = FetchBatch(std::move(batches[b]), sink);
      if (!st.ok()) {
        std::lock_guard<std::mutex> l(err_mu);
        if (!failed.exchange(true)) first_error = st;
      }
    }
  };
  if (workers <= 1) {
    work();
  } else {
    std::vector<std::thread> threads;
    for (size_t i = 0; i < workers; ++i) threads.emplace_back(work);
    for (auto& t : threads) t.join();
  }
  return first_error;
}

Result<std::vector<std::string>> ChunkClient::MissingChunks(
    const std::vector<std::string>& digests) {
  std::vector<std::string> out;
  const size_t kPerRequest = 65536;  // ~4.4 MB of JSON per request
  for (size_t i = 0; i < digests.size(); i += kPerRequest) {
    std::vector<std::string> part(
        digests.begin() + static_cast<ptrdiff_t>(i),
        digests.begin() + static_cast<ptrdiff_t>(std::min(digests.size(), i + kPerRequest)));
    for (const auto& d : part)
      if (!IsChunkDigest(d)) return BadDigest(d);
    VMG_ASSIGN_OR_RETURN(Answer a,
                         Call("POST", "/v1/chunks:missing", json{{"digests", part}}.dump(),
                              "application/json", 100 * part.size() + 4096));
    try {
      json answer = json::parse(a.body);  // named: at() returns a reference into it
      for (const auto& d : answer.at("missing")) {
        std::string s = d.get<std::string>();
        if (!IsChunkDigest(s)) return Protocol(base_url_, "missing list has a bad digest");
        out.push_back(std::move(s));
      }
    } catch (const json::exception& e) {
      return Protocol(base_url_, std::string("missing list: ") + e.what());
    }
  }
  return out;
}

Status ChunkClient::PutChunk(const std::string& digest, std::string_view data) {
  if (!IsChunkDigest(digest)) return BadDigest(digest);
  auto a =
      Call("PUT", "/v1/chunks/" + digest, std::string(data), "application/octet-stream", 64 << 10);
  if (!a.ok()) return a.error();
  return Status::Ok();
}

Result<Manifest> ChunkClient::Publish(const std::string& name, const Manifest& draft,
                                      const std::string& grant) {
  VMG_RETURN_IF_ERROR(ValidateName("image", name));
  VMG_RETURN_IF_ERROR(ValidateManifest(draft, false));
  json body = {{"format", Manifest::kFormat},
               {"size", draft.size},
               {"chunk_size", draft.chunk_size},
               {"chunks", draft.chunks}};
  VMG_ASSIGN_OR_RETURN(Answer a, Call("POST", "/v1/manifests/" + name, body.dump(),
                                      "application/json", kMaxManifestJsonBytes, grant));
  auto m = ParseManifestJson(a.body);
  if (!m.ok()) return Protocol(base_url_, "published manifest: " + m.error().message);
  if (m->name != name || m->size != draft.size || m->chunk_size != draft.chunk_size ||
      m->chunks != draft.chunks)
    return Protocol(base_url_, "published manifest differs from the one sent");
  return m;
}

Result<Manifest> ChunkClient::UploadImageFile(const std::string& path, const std::string& name,
                                              uint32_t chunk_size, const ChunkProgressFn& progress,
                                              const std::string& grant, UploadCounts* counts) {
  VMG_RETURN_IF_ERROR(ValidateName("image", name));
  Manifest draft;
  draft.chunk_size = chunk_size;
  VMG_RETURN_IF_ERROR(ForEachFileChunk(
      path, chunk_size,
      [&](size_t, std::string_view data, bool zero) -> Status {
        draft.size += data.size();
        draft.chunks.push_back(zero ? std::string(kZeroChunk) : ChunkDigest(data));
        return Status::Ok();
      },
      progress));
  VMG_RETURN_IF_ERROR(ValidateManifest(draft, false));
  std::vector<std::string> nonzero;
  for (const auto& c : draft.chunks)
    if (c != kZeroChunk) nonzero.push_back(c);
  VMG_ASSIGN_OR_RETURN(auto missing_list, MissingChunks(nonzero));
  std::unordered_set<std::string> missing(missing_list.begin(), missing_list.end());
  UploadCounts sent;
  sent.chunks = nonzero.size();
  if (!missing.empty()) {
    VMG_RETURN_IF_ERROR(ForEachFileChunk(
        path, chunk_size,
        [&](size_t i, std::string_view data, bool zero) -> Status {
          const std::string& d = draft.chunks.at(i);
          bool changed = zero != (d == kZeroChunk);
          if (!changed && (zero || !missing.count(d))) return Status::Ok();
          if (changed || ChunkDigest(data) != d)
            return MakeError(ErrorCode::kFailedPrecondition,
                             path + " changed while it was uploaded");
          VMG_RETURN_IF_ERROR(PutChunk(d, data));
          missing.erase(d);
          sent.chunks_sent++;
          sent.bytes_sent += data.size();
          return Status::Ok();
        },
        progress));
  }
  if (counts) *counts = sent;
  return Publish(name, draft, grant);
}

ChunkClient::Stats ChunkClient::stats() const {
  Stats s;
  s.requests = requests_;
  s.chunks_fetched = chunks_fetched_;
  s.bytes_fetched = bytes_fetched_;
  s.raw_bytes_fetched = raw_bytes_fetched_;
  s.zstd_chunks = zstd_chunks_;
  s.verification_failures = verification_failures_;
  s.refetches = refetches_;
  s.connections_opened = connections_opened_;
  s.unsent_retries = unsent_retries_;
  return s;
}

}  // namespace vmgrid
