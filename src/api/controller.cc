#include "api/controller.h"

#include <fcntl.h>
#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <fstream>

#include "api/agent_client.h"
#include "api/openapi.h"
#include "api/placement.h"
#include "api/routes.h"
#include "api/routes/host_routes.h"
#include "api/routes/network_routes.h"
#include "api/routes/vm_routes.h"
#include "api/services/host_service.h"
#include "api/services/network_service.h"
#include "api/services/vm_service.h"
#include "chunks/chunk_client.h"
#include "client/api_client.h"
#include "common/http_json.h"
#include "common/http_server.h"
#include "common/signals.h"
#include "common/subprocess.h"
#include "common/tls.h"
#include "common/util.h"
#include "common/version.h"
#include "common/vm_state.h"
#include "images/image_file.h"
#include "images/qcow2_header.h"
#include "proto/checkpoint_ref.h"
#include "proto/future_id.h"
#include "proto/host_report.h"
#include "proto/vm_spec.h"
#include "store/sql_backend.h"

namespace vmgrid {

namespace fs = std::filesystem;
using nlohmann::json;
using Req = httplib::Request;
using Res = httplib::Response;

namespace {

constexpr int64_t kMaxUploadBytes = int64_t{64} << 30;
constexpr int64_t kHostDownAfterMs = 10'000;
constexpr int64_t kTokenCacheMs = 10'000;
// How often the capacity index is reloaded whole: it follows this
// controller's own writes exactly; the reload picks up other controllers'
// writes to a shared PostgreSQL database.
constexpr int64_t kIndexResyncMs = 10'000;

Error NotFound(const std::string& what) {
  return MakeError(ErrorCode::kNotFound, what + " not found");
}

// A refusal by admission control: 429 with Retry-After, so well-behaved
// clients back off instead of hammering.
void SendTooMany(Res& res, const Error& error, int retry_after_s) {
  res.set_header("Retry-After", std::to_string(retry_after_s));
  SendJson(res, 429, {{"error", {{"code", "too_many_requests"}, {"message", error.message}}}});
}

std::string FileNameFor(const std::string& kind, const std::string& format) {
  if (kind == "disk") return "disk." + format;
  if (kind == "kernel") return "vmlinuz";
  return "initrd.img";
}

// Sends a handler's answer: its JSON with `status`, or its error.
void SendReply(Res& res, int status, const Result<json>& answer) {
  if (!answer.ok()) return SendError(res, answer.error());
  SendJson(res, status, *answer);
}

}  // namespace

Controller::Controller(ControllerOptions options)
    : options_(std::move(options)),
      ops_(std::make_unique<OpQueue>()),
      long_ops_(std::make_unique<Admission>("long operations (image finalizes, checkpoint "
                                            "publishes, workspace deletions)",
                                            options_.max_long_ops_per_user, 0, 5)) {}

Controller::~Controller() {
  Shutdown();
  Wait(std::chrono::seconds(1));
  // Ops still running after Wait's grace are left behind (detached).
  ops_.reset();
}

// --- start-up -------------------------------------------------------------------

Status Controller::Start() {
  VMG_RETURN_IF_ERROR(MakeDirs(options_.state_dir, 0755));
  std::error_code ec;
  options_.state_dir = fs::absolute(options_.state_dir, ec).string();
  image_dir_ = options_.image_dir.empty() ? options_.state_dir + "/images"
                                          : fs::absolute(options_.image_dir, ec).string();
  // Image files must be readable by the unprivileged user QEMU runs as.
  VMG_RETURN_IF_ERROR(MakeDirs(image_dir_, 0755));
  const std::string database =
      options_.database.empty() ? options_.state_dir + "/vmgrid.db" : options_.database;
  VMG_ASSIGN_OR_RETURN(store_, Store::Open(database));
  VMG_ASSIGN_OR_RETURN(query_,
                       QueryService::Open(database, std::max(1, options_.max_queries_per_user)));
  index_ = std::make_unique<CapacityIndex>();
  VMG_RETURN_IF_ERROR(store_->SetObserver(index_.get()));
  if (!options_.image_server.empty()) {
    std::string token;
    if (!options_.image_server_token_file.empty()) {
      VMG_ASSIGN_OR_RETURN(token, ReadTokenFile(options_.image_server_token_file));
    }
    image_server_ = std::make_unique<ChunkClient>(options_.image_server, token);
  }

  // First start: an admin and the agents' join token, each written to a
  // file only its owner can read. Only their hashes are stored. Agents
  // exchange the join token for credentials of their own host
  // (host_credentials.h).
  std::string admin_file = options_.state_dir + "/admin.token";
  VMG_ASSIGN_OR_RETURN(bool has_admin, store_->HasUserWithRole("admin"));
  if (!has_admin) {
    VMG_ASSIGN_OR_RETURN(auto created, store_->CreateUser("admin", "admin"));
    VMG_RETURN_IF_ERROR(WriteFileAtomic(admin_file, created.second + "\n", 0600));
    spdlog::info("created the admin user; its token is in {}", admin_file);
  }
  std::string agent_file = options_.state_dir + "/agent.token";
  VMG_ASSIGN_OR_RETURN(bool has_agent, store_->HasUserWithRole("agent"));
  if (!has_agent) {
    VMG_ASSIGN_OR_RETURN(auto created, store_->CreateUser("agents", "agent"));
    VMG_RETURN_IF_ERROR(WriteFileAtomic(agent_file, created.second + "\n", 0600));
  }
  VMG_ASSIGN_OR_RETURN(host_creds_,
                       HostCredentials::Open(options_.state_dir + "/host-credential.key"));

  // Admission: user requests in handlers are bounded per user and in total,
  // below the thread count, so heartbeats and health always find a thread.
  const int user_requests =
      std::min(options_.max_user_requests, std::max(1, options_.http_threads - 8));
  requests_ =
      std::make_unique<Admission>("requests", options_.max_requests_per_user, user_requests, 1);
  execs_ = std::make_unique<Admission>("exec operations", options_.max_execs_per_user, 0, 5);
  creates_ =
      std::make_unique<Admission>("VM creates in flight", options_.max_creates_per_user, 0, 10);
  queries_ = std::make_unique<Admission>("queries", options_.max_queries_per_user, 0, 1);
  // TLS for users (token authentication, no client certificate), mutual TLS
  // for agents on their listener; our certificate is also our client
  // identity towards agents and the image server.
  VMG_ASSIGN_OR_RETURN(auto user_tls,
                       ServerTls("controller", options_.listen, options_.tls, false));
  tls_ = user_tls != nullptr;
  if (tls_) VMG_RETURN_IF_ERROR(SetClientTls(options_.tls.files));
  // The services behind the routes, with what they use passed in.
  agents_ = NewHttpAgentClient(*host_creds_);
  hosts_ = std::make_unique<HostService>(
      *store_, *index_, *host_creds_, SystemClock::Get(),
      [this](const std::string& vm_id) { return ops_->InFlight(vm_id); }, tls_);
  vms_ = std::make_unique<VmService>(*store_, *agents_, *ops_, SystemClock::Get());
  networks_ = std::make_unique<NetworkService>(*store_);
  HttpServerLimits limits;
  limits.header_timeout_ms = options_.header_timeout_ms;
  server_ = std::make_unique<GuardedServer>(limits, user_tls);
  // Each connection holds a thread while open (keep-alive clients too); slow
  // ones are cut off by GuardedServer's deadlines.
  const size_t threads = static_cast<size_t>(options_.http_threads);
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server_->set_tcp_nodelay(true);
  InstallRoutes();
  VMG_ASSIGN_OR_RETURN(url_, server_->Bind(options_.listen));
  // Agents' own listener: heartbeats (and health) on threads no user
  // connection can take.
  if (!options_.agent_listen.empty()) {
    VMG_ASSIGN_OR_RETURN(auto agent_tls,
                         ServerTls("controller (agents' listener)", options_.agent_listen,
                                   options_.tls, /*require_client_cert=*/true));
    agent_server_ = std::make_unique<GuardedServer>(limits, agent_tls);
    agent_server_->new_task_queue = [] { return new httplib::ThreadPool(kAgentListenerThreads); };
    agent_server_->set_tcp_nodelay(true);
    InstallAgentListenerRoutes();
    VMG_ASSIGN_OR_RETURN(agent_url_, agent_server_->Bind(options_.agent_listen));
    agent_server_thread_ = std::thread([this] { agent_server_->listen_after_bind(); });
    spdlog::info("controller: agents' listener at {}", agent_url_);
  }
  server_thread_ = std::thread([this] { server_->listen_after_bind(); });
  reconcile_thread_ = std::thread([this] { ReconcileLoop(); });
  spdlog::info("controller serving at {} (state {}, images {}, database {})", url_,
               options_.state_dir, image_dir_,
               options_.database.empty() ? "SQLite" : RedactTarget(options_.database));
  return Status::Ok();
}

void Controller::Shutdown() {
  stop_ = true;
  if (server_) server_->stop();
  if (agent_server_) agent_server_->stop();
}

void Controller::Wait(std::chrono::milliseconds grace) {
  if (server_thread_.joinable()) server_thread_.join();
  if (agent_server_thread_.joinable()) agent_server_thread_.join();
  if (reconcile_thread_.joinable()) reconcile_thread_.join();
  ops_->WaitIdle(grace);
}

// --- plumbing ---------------------------------------------------------------------

std::function<void(const Req&, Res&)> Controller::Authed(Handler h,
                                                         const std::set<std::string>& roles) {
  return [this, h = std::move(h), roles](const Req& req, Res& res) {
    std::string token = BearerToken(req);
    if (token.empty())
      return SendError(res, MakeError(ErrorCode::kUnauthenticated,
                                      "missing 'Authorization: Bearer TOKEN' header"));
    // Verified tokens are remembered for a few seconds: every request of a
    // busy grid (heartbeats, creates) would otherwise read the store first.
    std::optional<User> user;
    // A host's own credential (checked without the store).
    if (HostCredentials::LooksLikeHostToken(token)) {
      auto host = host_creds_->VerifyHostToken(token);
      if (!host) return SendError(res, MakeError(ErrorCode::kUnauthenticated, "unknown token"));
      user = User{};
      user->id = "host:" + *host;
      user->name = *host;
      user->role = "host";
    }
    const std::string digest = user ? "" : Sha256Hex(token);
    const int64_t now = NowMs();
    if (!user) {
      std::lock_guard<std::mutex> l(auth_mu_);
      if (auto it = auth_cache_.find(digest); it != auth_cache_.end() && it->second.second > now)
        user = it->second.first;
    }
    if (!user) {
      auto found = store_->AuthenticateToken(token);
      if (!found.ok())
        return SendError(res, MakeError(ErrorCode::kUnauthenticated, "unknown token"));
      user = *found;
      std::lock_guard<std::mutex> l(auth_mu_);
      if (auth_cache_.size() > 10'000) auth_cache_.clear();
      auth_cache_[digest] = {*user, now + kTokenCacheMs};
    }
    if (!roles.count(user->role)) {
      std::string why =
          user->role == "agent" ? "the join token may only register hosts (POST /v1/agent/register)"
          : user->role == "host" ? "host credentials may only call /v1/agent/heartbeat"
          : roles.count("agent") ? "this endpoint is for joining hosts only"
          : roles.count("host")  ? "this endpoint is for host agents only"
                                 : "this needs the admin role";
      return SendError(res, MakeError(ErrorCode::kPermissionDenied, why));
    }
    // Agents (registration, heartbeats) are never admitted against users' bounds.
    Admission::SlotPtr slot;
    if (user->role != "agent" && user->role != "host") {
      auto got = requests_->Acquire(user->id, 1, user->role == "admin");
      if (!got.ok()) return SendTooMany(res, got.error(), requests_->retry_after_s());
      slot = *got;
    }
    h(Caller{*user}, req, res);
  };
}

std::string Controller::UserName(const std::string& id) {
  {
    std::lock_guard<std::mutex> l(auth_mu_);
    if (auto it = user_names_.find(id); it != user_names_.end()) return it->second;
  }
  auto u = store_->GetUserById(id);
  if (!u.ok()) return id;
  std::lock_guard<std::mutex> l(auth_mu_);
  user_names_[id] = u->name;
  return u->name;
}

json Controller::ImageJson(const Image& i) {
  json ckpt = nullptr;
  if (!i.ckpt_state.empty())
    ckpt = {{"state", i.ckpt_state},
            {"memory_mb", i.ckpt_memory_mb},
            {"vcpus", i.ckpt_vcpus},
            {"size_bytes", i.ckpt_size_bytes},
            {"error", i.ckpt_error}};
  auto owner = store_->GetUserById(i.owner_id);
  // A finalize in progress or the last one's failure (kept in memory: the
  // store says `uploading` until a finalize has succeeded).
  std::string state = i.state;
  json finalize = nullptr;
  if (state == "uploading") {
    {
      std::lock_guard<std::mutex> l(image_io_mu_);
      if (auto it = image_io_.find(i.id); it != image_io_.end() && it->second.count("finalize"))
        state = "finalizing";
    }
    std::lock_guard<std::mutex> l(operations_mu_);
    if (auto it = finalize_failures_.find(i.id);
        it != finalize_failures_.end() && state != "finalizing")
      finalize = {
          {"state", "failed"}, {"operation", it->second.first}, {"error", it->second.second}};
  }
  return {{"id", i.id},
          {"name", i.name},
          {"owner", owner.ok() ? owner->name : i.owner_id},
          {"public", owner.ok() && owner->role == "admin"},
          {"state", state},
          {"finalize", finalize},
          {"format", i.format},
          {"size_bytes", i.size_bytes},
          {"virtual_size_bytes", i.virtual_size_bytes},
          {"expanded_size_bytes", i.expanded_size_bytes},
          {"max_clone_bytes", i.max_clone_bytes},
          {"has_kernel", i.has_kernel},
          {"has_initrd", i.has_initrd},
          {"append", i.append},
          {"min_memory_mb", i.min_memory_mb},
          {"checkpoint", ckpt},
          // Image server versions of its files (kind -> name, version, digest, size).
          {"versions",
           [&] {
             json b = json::parse(i.blobs, nullptr, false);
             return b.is_object() ? b : json::object();
           }()},
          {"created_at", FormatTimeMs(i.created_ms)}};
}

json Controller::VmJson(const Vm& v, const Image* known_image, const Host* known_host) {
  Result<Image> image = known_image && known_image->id == v.image_id
                            ? Result<Image>(*known_image)
                            : store_->GetImage(v.image_id, "");
  Result<Host> host = known_host && known_host->id == v.host_id ? Result<Host>(*known_host)
                                                                : store_->GetHost(v.host_id);
  std::string ws_name;
  if (!v.workspace_id.empty())
    if (auto ws = store_->GetWorkspace(v.workspace_id, ""); ws.ok()) ws_name = ws->name;
  return {{"id", v.id},
          {"name", v.name},
          {"owner", UserName(v.owner_id)},
          {"image", image.ok() ? image->name : v.image_id},
          {"image_id", v.image_id},
          {"host", host.ok() ? host->name : v.host_id},
          {"host_id", v.host_id},
          {"host_state", host.ok() ? host->state : "unknown"},
          {"state", v.state},
          {"vcpus", v.vcpus},
          {"memory_mb", v.memory_mb},
          {"disk", v.disk},
          {"disk_bytes", v.disk_bytes},
          {"start", v.start},
          {"workspace", ws_name},
          {"network", v.network},
          {"error", v.error},
          {"create_ms", v.create_ms},
          {"created_at", FormatTimeMs(v.created_ms)},
          {"updated_at", FormatTimeMs(v.updated_ms)}};
}

json Controller::WorkspaceJson(const Workspace& w) {
  auto image = store_->GetImage(w.image_id, "");
  auto host = store_->GetHost(w.host_id);
  return {{"id", w.id},
          {"name", w.name},
          {"owner", UserName(w.owner_id)},
          {"image", image.ok() ? image->name : w.image_id},
          {"image_id", w.image_id},
          {"host", host.ok() ? host->name : w.host_id},
          {"host_id", w.host_id},
          {"size_bytes", w.size_bytes},
          {"vm_id", w.vm_id},
          {"created_at", FormatTimeMs(w.created_ms)}};
}

Result<Image> Controller::VisibleImage(const Caller& c, const std::string& ref) {
  auto own = store_->GetImage(ref, c.owner());
  if (own.ok() || own.error().code != ErrorCode::kNotFound) return own;
  VMG_ASSIGN_OR_RETURN(auto pub, store_->ListPublicImages());
  for (const auto& i : pub)
    if (i.id == ref || i.name == ref) return i;
  return NotFound("image '" + ref + "'");
}

Result<Image> Controller::OwnImage(const Caller& c, const std::string& ref) {
  VMG_ASSIGN_OR_RETURN(Image image, VisibleImage(c, ref));
  if (!c.admin() && image.owner_id != c.user.id)
    return MakeError(ErrorCode::kPermissionDenied, "image '" + ref +
                                                       "' is a public image of the admin; "
                                                       "only the admin may change it");
  return image;
}

ImageFiles Controller::AgentImageFiles(const Image& i) {
  return {i.id,
          i.dir + "/" + FileNameFor("disk", i.format),
          i.format,
          i.has_kernel ? i.dir + "/vmlinuz" : "",
          i.has_initrd ? i.dir + "/initrd.img" : "",
          i.append};
}

Result<BlobSet> Controller::AgentBlobs(const Image& i, bool image_checkpoint) {
  json all = json::parse(i.blobs, nullptr, false);
  json out = json::object();
  if (!all.is_object()) return BlobSet{};
  for (const char* kind : {"disk", "kernel", "initrd"})
    if (all.contains(kind)) out[kind] = all[kind];
  if (image_checkpoint)
    for (const char* kind : {"ckpt_memory", "ckpt_disk"})
      if (all.contains(kind)) out[kind] = all[kind];
  // A clone of a VM's checkpoint (set by CreateVm on its copy of the image).
  for (const char* kind : {"vm_ckpt_memory", "vm_ckpt_disk"})
    if (all.contains(kind)) out[kind] = all[kind];
  auto blobs = BlobsFromJson(out);
  if (!blobs.ok()) return blobs.error().Wrap("image " + i.id + ": its recorded versions");
  return blobs;
}

Status Controller::PublishImage(Image& image,
                                const std::function<void(const std::string&, int)>& report) {
  json blobs = json::object();
  const std::string disk = image.dir + "/" + FileNameFor("disk", image.format);
  std::string raw = disk;
  if (image.format == "qcow2") {
    // Chunks are guest-visible bytes, so that NBD serves reads straight from them.
    // qemu-img reads the user's file unprivileged, through an fd.
    if (report) report("converting the disk", 0);
    raw = image.dir + "/disk.publish.raw";
    Status r = ConvertUntrustedQcow2ToRaw(disk, raw, std::chrono::minutes(30));
    if (!r.ok()) return r.error().Wrap("converting the disk to raw for the image server");
  }
  std::vector<std::pair<std::string, std::string>> files = {{"disk", raw}};
  if (image.has_kernel) files.emplace_back("kernel", image.dir + "/vmlinuz");
  if (image.has_initrd) files.emplace_back("initrd", image.dir + "/initrd.img");
  Status st;
  for (const auto& [kind, path] : files) {
    auto started = std::chrono::steady_clock::now();
    int last = -1;
    auto progress = [&, kind = kind](uint64_t done, uint64_t total) {
      int pct = total ? static_cast<int>(done * 100 / total) : 100;
      if (pct / 25 != last / 25)
        spdlog::info("image {}: publishing {}: {}%", image.name, kind, pct);
      if (report && pct != last) report("publishing the " + kind, pct);
      last = pct;
      return !stop_.load();
    };
    auto m =
        image_server_->UploadImageFile(path, image.id + "-" + kind, kDefaultChunkSize, progress);
    if (!m.ok()) {
      st = m.error().Wrap("publishing the " + kind + " of image " + image.name + " to " +
                          options_.image_server);
      break;
    }
    blobs[kind] = {
        {"name", m->name}, {"version", m->version}, {"digest", m->Digest()}, {"size", m->size}};
    spdlog::info("image {}: {} published as {} v{} ({} MiB, {} non-zero chunks) in {:.1f} s",
                 image.name, kind, m->name, m->version, m->size >> 20, m->NonZeroChunks(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  }
  if (raw != disk) unlink(raw.c_str());
  if (!st.ok()) return st;
  image.blobs = blobs.dump();
  return Status::Ok();
}

// --- routes -----------------------------------------------------------------------------

// Installs routes (api/routes/route.h) behind the controller's
// authentication, role check and admission, sending their answers.
class Controller::AuthedRoutes : public RouteInstaller {
 public:
  AuthedRoutes(Controller& c, RouteRecorder<GuardedServer>& s) : c_(c), s_(s) {}
  void Get(const std::string& pattern, Route route, std::set<std::string> roles) override {
    s_.Get(pattern, Wrap(std::move(route), std::move(roles)));
  }
  void Post(const std::string& pattern, Route route, std::set<std::string> roles) override {
    s_.Post(pattern, Wrap(std::move(route), std::move(roles)));
  }
  void Delete(const std::string& pattern, Route route, std::set<std::string> roles) override {
    s_.Delete(pattern, Wrap(std::move(route), std::move(roles)));
  }

 private:
  std::function<void(const Req&, Res&)> Wrap(Route route, std::set<std::string> roles) {
    return c_.Authed(
        [route = std::move(route)](const Caller& c, const Req& req, Res& res) {
          auto r = route(c, req);
          if (!r.ok()) return SendError(res, r.error());
          SendJson(res, r->status, r->body);
        },
        roles);
  }
  Controller& c_;
  RouteRecorder<GuardedServer>& s_;
};

void Controller::InstallRoutes() {
  auto& server = *server_;
  server.set_payload_max_length(static_cast<size_t>(kMaxUploadBytes));
  server.set_read_timeout(300, 0);
  server.set_write_timeout(300, 0);
  // Only image uploads may stream large bodies; everything else is refused
  // before its body is read.
  // Bodies come only with a Content-Length (no chunked, compressed or
  // length-less ones), refused before authentication and before a byte of
  // them is read; only image uploads may be large.
  server.set_pre_routing_handler([](const Req& req, Res& res) {
    bool upload = req.method == "PUT" && req.path.find("/files/") != std::string::npos;
    return RefuseUnframedBody(req, res, upload ? kMaxUploadBytes : kMaxJsonBody)
               ? httplib::Server::HandlerResponse::Handled
               : httplib::Server::HandlerResponse::Unhandled;
  });
  InstallJsonErrorHandlers(server);
  // Every route is noted (installed_routes) for openapi_test, which compares
  // them with api/routes.h, the OpenAPI document and docs/api.md.
  RouteRecorder s(server, &installed_routes_);
  AuthedRoutes routes(*this, s);

  s.Get("/v1/health", [](const Req&, Res& res) {
    SendJson(res, 200, {{"status", "ok"}, {"version", kVersion}});
  });
  s.Get("/v1/openapi.json", [](const Req&, Res& res) {
    res.set_content(std::string(kOpenApiJson), "application/json");
  });
  s.Get("/v1/whoami", Authed([](const Caller& c, const Req&, Res& res) {
          SendJson(res, 200,
                   {{"id", c.user.id},
                    {"name", c.user.name},
                    {"role", c.user.role},
                    {"created_at", FormatTimeMs(c.user.created_ms)}});
        }));

  // Users.
  s.Post("/v1/users",
         Authed([this](const Caller& c, const Req& q, Res& r) { CreateUser(c, q, r); }, {"admin"}));
  s.Get("/v1/users", Authed(
                         [this](const Caller&, const Req&, Res& res) {
                           auto users = store_->ListUsers();
                           if (!users.ok()) return SendError(res, users.error());
                           json out = json::array();
                           for (const auto& u : *users) {
                             auto user = UserJson(u);
                             if (!user.ok()) return SendError(res, user.error());
                             out.push_back(*user);
                           }
                           SendJson(res, 200, {{"users", out}});
                         },
                         {"admin"}));
  s.Put(R"(/v1/users/([^/]+)/quota)",
        Authed([this](const Caller&, const Req& q, Res& r) { SendReply(r, 200, SetUserQuota(q)); },
               {"admin"}));

  // Hosts.
  InstallHostRoutes(routes, *hosts_);
  InstallAgentRoutes(routes, *hosts_);

  // Images.
  s.Post("/v1/images",
         Authed([this](const Caller& c, const Req& q, Res& r) { CreateImage(c, q, r); }));
  s.Get("/v1/images", Authed([this](const Caller& c, const Req&, Res& res) {
          auto own = store_->ListImages(c.owner());
          if (!own.ok()) return SendError(res, own.error());
          std::vector<Image> all = *own;
          if (!c.admin()) {
            auto pub = store_->ListPublicImages();
            if (pub.ok()) all.insert(all.end(), pub->begin(), pub->end());
          }
          json out = json::array();
          for (const auto& i : all) out.push_back(ImageJson(i));
          SendJson(res, 200, {{"images", out}});
        }));
  s.Get(R"(/v1/images/([^/]+))", Authed([this](const Caller& c, const Req& req, Res& res) {
          auto i = VisibleImage(c, req.matches[1]);
          if (!i.ok()) return SendError(res, i.error());
          SendJson(res, 200, ImageJson(*i));
        }));
  s.Put(R"(/v1/images/([^/]+)/files/(disk|kernel|initrd))",
        [this](const Req& req, Res& res, const httplib::ContentReader& reader) {
          Authed([&](const Caller& c, const Req&, Res& r) { UploadImageFile(c, req, r, reader); })(
              req, res);
        });
  s.Post(R"(/v1/images/([^/]+)/finalize)",
         Authed([this](const Caller& c, const Req& q, Res& r) { FinalizeImage(c, q, r); }));
  s.Post(R"(/v1/images/([^/]+)/checkpoint)",
         Authed([this](const Caller& c, const Req& q, Res& r) { CheckpointImage(c, q, r); }));
  s.Delete(R"(/v1/images/([^/]+))",
           Authed([this](const Caller& c, const Req& q, Res& r) { DeleteImage(c, q, r); }));

  // VMs.
  s.Post("/v1/vms", Authed([this](const Caller& c, const Req& q, Res& r) { CreateVm(c, q, r); }));
  s.Get("/v1/vms", Authed([this](const Caller& c, const Req&, Res& res) {
          auto vms = store_->ListVms(c.owner());
          if (!vms.ok()) return SendError(res, vms.error());
          json out = json::array();
          for (const auto& v : *vms) out.push_back(VmJson(v));
          SendJson(res, 200, {{"vms", out}});
        }));
  s.Get(R"(/v1/vms/([^/]+))", Authed([this](const Caller& c, const Req& req, Res& res) {
          auto v = store_->GetVm(req.matches[1], c.owner());
          if (!v.ok()) return SendError(res, v.error());
          json vm = VmJson(*v);
          auto nics = networks_->VmNics(v->id);
          if (!nics.ok()) return SendError(res, nics.error());
          vm["nics"] = *nics;
          SendJson(res, 200, vm);
        }));
  InstallVmActionRoutes(routes, *vms_, [this](const Vm& v) { return VmJson(v); });
  s.Post(R"(/v1/vms/([^/]+)/exec)",
         Authed([this](const Caller& c, const Req& q, Res& r) { ExecVm(c, q, r); }));
  s.Get(R"(/v1/operations/([^/]+))",
        Authed([this](const Caller& c, const Req& q, Res& r) { GetOperation(c, q, r); }));

  // Information service.
  s.Post("/v1/query", Authed([this](const Caller& c, const Req& q, Res& r) { Query(c, q, r); }));

  // Workspaces.
  s.Get("/v1/workspaces", Authed([this](const Caller& c, const Req&, Res& res) {
          auto ws = store_->ListWorkspaces(c.owner());
          if (!ws.ok()) return SendError(res, ws.error());
          json out = json::array();
          for (const auto& w : *ws) out.push_back(WorkspaceJson(w));
          SendJson(res, 200, {{"workspaces", out}});
        }));
  s.Delete(R"(/v1/workspaces/([^/]+))",
           Authed([this](const Caller& c, const Req& q, Res& r) { DeleteWorkspace(c, q, r); }));

  // Virtual networks.
  InstallNetworkRoutes(routes, *networks_);
}

// Only what agents (and a load balancer's health check) need.
void Controller::InstallAgentListenerRoutes() {
  auto& s = *agent_server_;
  s.set_payload_max_length(kMaxJsonBody);
  s.set_pre_routing_handler([](const Req& req, Res& res) {
    return RefuseUnframedBody(req, res, kMaxJsonBody) ? httplib::Server::HandlerResponse::Handled
                                                      : httplib::Server::HandlerResponse::Unhandled;
  });
  InstallJsonErrorHandlers(s);
  s.Get("/v1/health", [](const Req&, Res& res) {
    SendJson(res, 200, {{"status", "ok"}, {"version", kVersion}});
  });
  std::vector<InstalledRoute> unrecorded;  // openapi_test checks the main listener only
  RouteRecorder<GuardedServer> recorder(s, &unrecorded);
  AuthedRoutes routes(*this, recorder);
  InstallAgentRoutes(routes, *hosts_);
}

// --- users and hosts -------------------------------------------------------------------

void Controller::CreateUser(const Caller&, const Req& req, Res& res) {
  auto body = ParseJsonObject(req.body, false);
  if (!body.ok()) return SendError(res, body.error());
  JsonFields f(*body, request_fields::kCreateUser);
  if (auto st = f.CheckUnknown(); !st.ok()) return SendError(res, st.error());
  auto name = f.String("name", true);
  if (!name.ok()) return SendError(res, name.error());
  if (auto st = ValidateName("user", *name); !st.ok()) return SendError(res, st.error());
  auto role = f.Enum("role", {"user", "admin"}, "user");
  if (!role.ok()) return SendError(res, role.error());
  auto created = store_->CreateUser(*name, *role);
  if (!created.ok()) return SendError(res, created.error());
  const User& u = created->first;
  SendJson(res, 201,
           {{"user",
             {{"id", u.id},
              {"name", u.name},
              {"role", u.role},
              {"created_at", FormatTimeMs(u.created_ms)}}},
            {"token", created->second}});
}

// A user with its quota (0: unlimited) and what it holds now, counted as
// the quota counts it.
Result<json> Controller::UserJson(const User& u) {
  VMG_ASSIGN_OR_RETURN(UserUsage use, store_->GetUserUsage(u.id));
  const UserQuota& q = u.quota;
  return json{{"id", u.id},
              {"name", u.name},
              {"role", u.role},
              {"created_at", FormatTimeMs(u.created_ms)},
              {"quota",
               {{"vms", q.vms},
                {"vcpus", q.vcpus},
                {"memory_mb", q.memory_mb},
                {"image_bytes", q.image_bytes},
                {"workspace_bytes", q.workspace_bytes}}},
              {"usage",
               {{"vms", use.vms},
                {"vcpus", use.vcpus},
                {"memory_mb", use.memory_mb},
                {"image_bytes", use.image_bytes},
                {"workspace_bytes", use.workspace_bytes}}}};
}

// PUT replaces the whole quota: a field left out is 0, unlimited.
Result<json> Controller::SetUserQuota(const Req& req) {
  const std::string name = req.matches[1];
  VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
  JsonFields f(body, request_fields::kUserQuota);
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  constexpr int64_t kMax = int64_t{1} << 53;  // exact in every JSON client
  UserQuota q;
  VMG_ASSIGN_OR_RETURN(q.vms, f.Int("vms", 0, 0, kMax));
  VMG_ASSIGN_OR_RETURN(q.vcpus, f.Int("vcpus", 0, 0, kMax));
  VMG_ASSIGN_OR_RETURN(q.memory_mb, f.Int("memory_mb", 0, 0, kMax));
  VMG_ASSIGN_OR_RETURN(q.image_bytes, f.Int("image_bytes", 0, 0, kMax));
  VMG_ASSIGN_OR_RETURN(q.workspace_bytes, f.Int("workspace_bytes", 0, 0, kMax));
  VMG_ASSIGN_OR_RETURN(User u, store_->SetUserQuota(name, q));
  spdlog::info(
      "quota of user {} set to {} VMs, {} vCPUs, {} MB, {} image bytes, {} workspace bytes", u.name,
      q.vms, q.vcpus, q.memory_mb, q.image_bytes, q.workspace_bytes);
  return UserJson(u);
}

void Controller::ReconcileLoop() {
  int64_t resynced = NowMs();
  while (!stop_) {
    // Writes the heartbeat times kept in memory first (Store::HeartbeatHost).
    auto down = store_->MarkStaleHostsDown(NowMs() - kHostDownAfterMs);
    if (down.ok())
      for (const auto& id : *down) spdlog::warn("host {} missed its heartbeats: marked down", id);
    else
      spdlog::warn("marking stale hosts down: {}", down.error().message);
    if (NowMs() - resynced >= kIndexResyncMs) {
      if (auto st = store_->Resync(); !st.ok())
        spdlog::warn("capacity index: {}", st.error().message);
      resynced = NowMs();
    }
    for (int i = 0; i < 20 && !stop_; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// --- images ----------------------------------------------------------------------------------

void Controller::CreateImage(const Caller& c, const Req& req, Res& res) {
  auto body = ParseJsonObject(req.body, false);
  if (!body.ok()) return SendError(res, body.error());
  JsonFields f(*body, request_fields::kCreateImage);
  if (auto st = f.CheckUnknown(); !st.ok()) return SendError(res, st.error());
  Image i;
  auto name = f.String("name", true);
  auto format = f.Enum("format", {"raw", "qcow2"}, "raw");
  auto has_kernel = f.Bool("has_kernel", false);
  auto has_initrd = f.Bool("has_initrd", false);
  auto append = f.String("append", false);
  auto min_mem = f.Int("min_memory_mb", 64, 16, 1 << 20);
  if (!name.ok()) return SendError(res, name.error());
  if (!format.ok()) return SendError(res, format.error());
  if (!has_kernel.ok()) return SendError(res, has_kernel.error());
  if (!has_initrd.ok()) return SendError(res, has_initrd.error());
  if (!append.ok()) return SendError(res, append.error());
  if (!min_mem.ok()) return SendError(res, min_mem.error());
  if (auto st = ValidateName("image", *name); !st.ok()) return SendError(res, st.error());
  if (*has_initrd && !*has_kernel)
    return SendError(res, MakeError(ErrorCode::kInvalidArgument, "an initrd needs a kernel"));
  if (append->size() > 4096)
    return SendError(
        res, MakeError(ErrorCode::kInvalidArgument, "append is longer than 4096 characters"));
  i.id = NewId("img");
  i.name = *name;
  i.owner_id = c.user.id;
  i.state = "uploading";
  i.format = *format;
  i.dir = image_dir_ + "/" + i.id;
  i.has_kernel = *has_kernel;
  i.has_initrd = *has_initrd;
  i.append = *append;
  i.min_memory_mb = *min_mem;
  i.created_ms = NowMs();
  if (auto st = MakeDirs(i.dir, 0755); !st.ok()) return SendError(res, st.error());
  if (auto st = store_->InsertImage(i); !st.ok()) {
    (void)RemoveTree(i.dir);
    return SendError(res, st.error());
  }
  SendJson(res, 201, ImageJson(i));
}

namespace {

// An upload's private temporary file: created O_EXCL under a fresh name in
// the image's directory, unlinked unless Commit() renamed it into place.
class UploadTempFile {
 public:
  UploadTempFile(const UploadTempFile&) = delete;
  UploadTempFile& operator=(const UploadTempFile&) = delete;
  ~UploadTempFile() {
    if (fd_ >= 0) close(fd_);
    if (!path_.empty()) unlink(path_.c_str());
  }
  static Result<std::unique_ptr<UploadTempFile>> Create(const std::string& dir,
                                                        const std::string& kind) {
    std::string path = dir + "/." + kind + "." + NewId("upload") + ".tmp";
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
      return MakeError(ErrorCode::kInternal, "cannot create a temporary file for the upload");
    auto t = std::unique_ptr<UploadTempFile>(new UploadTempFile(fd, path));
    // Readable by the unprivileged user that validates it (and by QEMU later).
    if (fchmod(fd, 0644) != 0) return MakeError(ErrorCode::kInternal, "cannot chmod the upload");
    return t;
  }
  int fd() const { return fd_; }
  bool Write(const char* data, size_t len) {
    while (len > 0) {
      ssize_t n = write(fd_, data, len);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data += n;
      len -= static_cast<size_t>(n);
    }
    return true;
  }
  // Renames the file validated through fd() to `final_path`, after checking
  // that its name still refers to that very file.
  Status Commit(const std::string& final_path) {
    struct stat by_fd, by_name;
    if (fsync(fd_) != 0 || fstat(fd_, &by_fd) != 0 || lstat(path_.c_str(), &by_name) != 0 ||
        by_fd.st_dev != by_name.st_dev || by_fd.st_ino != by_name.st_ino)
      return MakeError(ErrorCode::kInternal, "the uploaded file changed before it was stored");
    if (rename(path_.c_str(), final_path.c_str()) != 0)
      return MakeError(ErrorCode::kInternal, "cannot store the uploaded file");
    path_.clear();
    return Status::Ok();
  }

 private:
  UploadTempFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
};

}  // namespace

Status Controller::ClaimImageIo(const std::string& id, const std::string& kind) {
  std::lock_guard<std::mutex> l(image_io_mu_);
  auto& busy = image_io_[id];
  if (busy.count("finalize"))
    return MakeError(ErrorCode::kFailedPrecondition, "the image is being finalized");
  if (kind == "finalize" && !busy.empty())
    return MakeError(ErrorCode::kFailedPrecondition,
                     "an upload to this image is in progress; finalize it when done");
  if (!busy.insert(kind).second)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "another upload of the " + kind + " of this image is in progress");
  return Status::Ok();
}

void Controller::ReleaseImageIo(const std::string& id, const std::string& kind) {
  std::lock_guard<std::mutex> l(image_io_mu_);
  auto it = image_io_.find(id);
  if (it == image_io_.end()) return;
  it->second.erase(kind);
  if (it->second.empty()) image_io_.erase(it);
}

// Uploads: each request writes its own O_EXCL temporary file, validates that
// file through its fd (qemu-img reads the fd, unprivileged), and renames that
// same file into place, while it holds the image file's claim; a finalize
// cannot start meanwhile, and a ready image is never written again.
void Controller::UploadImageFile(const Caller& c, const Req& req, Res& r,
                                 const httplib::ContentReader& reader) {
  auto image = OwnImage(c, req.matches[1]);
  if (!image.ok()) return SendError(r, image.error());
  if (image->state != "uploading")
    return SendError(r, MakeError(ErrorCode::kFailedPrecondition,
                                  "image " + image->name + " is " + image->state +
                                      "; published images are immutable"));
  const std::string kind = req.matches[2];
  if (Status st = ClaimImageIo(image->id, kind); !st.ok()) return SendError(r, st.error());
  struct Release {
    Controller* self;
    std::string id, kind;
    ~Release() { self->ReleaseImageIo(id, kind); }
  } release{this, image->id, kind};
  // The owner's image_bytes quota bounds what a disk upload may write;
  // finalize checks it again, atomically with the image becoming ready.
  int64_t room = kMaxUploadBytes;
  std::optional<Error> over_quota;
  if (kind == "disk") {
    auto owner = store_->GetUserById(image->owner_id);
    if (!owner.ok()) return SendError(r, owner.error());
    if (owner->quota.image_bytes > 0) {
      auto use = store_->GetUserUsage(owner->id);
      if (!use.ok()) return SendError(r, use.error());
      room = std::min(room, owner->quota.image_bytes - use->image_bytes);
      over_quota = MakeError(ErrorCode::kPermissionDenied,
                             "quota: " + owner->name + " may keep " +
                                 std::to_string(owner->quota.image_bytes) + " bytes of images (" +
                                 std::to_string(use->image_bytes) +
                                 " in ready images); this disk is larger than the rest");
    }
  }
  auto tmp = UploadTempFile::Create(image->dir, kind);
  if (!tmp.ok()) return SendError(r, tmp.error());
  int64_t received = 0;
  bool wrote = true;
  bool ok = reader([&](const char* data, size_t len) {
    received += static_cast<int64_t>(len);
    // Over the quota: read the rest without writing it, so that the client
    // gets the 403 rather than a connection closed while it sends.
    if (received > room) return over_quota.has_value() && received <= kMaxUploadBytes;
    wrote = wrote && (*tmp)->Write(data, len);
    return wrote;
  });
  if (received > room && over_quota) return SendError(r, *over_quota);
  if (!ok || !wrote)
    return SendError(
        r, MakeError(ErrorCode::kInvalidArgument, "upload of " + kind + " was interrupted"));
  Status valid = Status::Ok();
  if (kind == "disk") {
    auto info = InspectDiskFd((*tmp)->fd(), image->format, !image->has_kernel);
    if (info.ok()) {
      image->size_bytes = received;
      image->virtual_size_bytes = info->virtual_size;
      image->expanded_size_bytes = info->expanded_size;
      image->max_clone_bytes = info->max_clone_size;
    } else {
      valid = info.error();
    }
  } else if (kind == "kernel") {
    valid = CheckKernelFd((*tmp)->fd());
  } else {
    valid = CheckInitrdFd((*tmp)->fd());
  }
  if (!valid.ok()) return SendError(r, valid.error().Wrap(kind + " rejected"));
  // Our claim excludes a finalize, but the image may have been deleted.
  auto fresh = store_->GetImage(image->id, "");
  if (!fresh.ok() || fresh->state != "uploading")
    return SendError(r, MakeError(ErrorCode::kFailedPrecondition,
                                  "image " + image->name + " is no longer uploading"));
  if (kind == "disk") {
    fresh->size_bytes = image->size_bytes;
    fresh->virtual_size_bytes = image->virtual_size_bytes;
    fresh->expanded_size_bytes = image->expanded_size_bytes;
    fresh->max_clone_bytes = image->max_clone_bytes;
  }
  if (Status st = (*tmp)->Commit(image->dir + "/" + FileNameFor(kind, image->format)); !st.ok())
    return SendError(r, st.error());
  if (Status st = store_->UpdateImage(*fresh); !st.ok()) return SendError(r, st.error());
  SendJson(r, 200, ImageJson(*fresh));
}

// Finalize answers 202 with an operation at once; the checks that need no
// more than a glance (no upload running, every file there, the qcow2
// header) still answer at once with their error. The conversion, the
// publishing and the quota check run on the operation pool while the
// image's "finalize" claim is held, so no upload can start until the
// operation has ended; the image is `ready` (usable) only once it
// succeeded. A failed finalize leaves the image `uploading` with
// `finalize: {state: failed, error}`: upload again, finalize again or delete.
void Controller::FinalizeImage(const Caller& c, const Req& req, Res& res) {
  auto image = OwnImage(c, req.matches[1]);
  if (!image.ok()) return SendError(res, image.error());
  Operation op;
  op.kind = "image_finalize";
  op.owner_id = c.user.id;
  op.image_id = image->id;
  if (image->state == "ready") {  // nothing to do: an operation that has succeeded
    json answer = ops_->Start(op);
    return SendJson(res, 202, ops_->Finish(op.id, ImageJson(*image)));
  }
  if (Status st = ClaimImageIo(image->id, "finalize"); !st.ok()) return SendError(res, st.error());
  // Released when the operation ends (or here, on an early refusal).
  auto claim = std::shared_ptr<void>(
      nullptr, [this, id = image->id](void*) { ReleaseImageIo(id, "finalize"); });
  image = store_->GetImage(image->id, "");  // as it is now that no upload runs
  if (!image.ok()) return SendError(res, image.error());
  if (image->state == "ready")
    return SendError(
        res, MakeError(ErrorCode::kFailedPrecondition, "image " + image->name + " is ready"));
  std::vector<std::string> missing;
  if (!FileExists(image->dir + "/" + FileNameFor("disk", image->format))) missing.push_back("disk");
  if (image->has_kernel && !FileExists(image->dir + "/vmlinuz")) missing.push_back("kernel");
  if (image->has_initrd && !FileExists(image->dir + "/initrd.img")) missing.push_back("initrd");
  if (!missing.empty()) {
    std::string list;
    for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
    return SendError(res, MakeError(ErrorCode::kFailedPrecondition,
                                    "image " + image->name + " is missing: " + list +
                                        " (upload with PUT /v1/images/ID/files/KIND)"));
  }
  if (image->format == "qcow2") {
    // Again before anything opens it to publish or boot it.
    auto h = CheckUntrustedQcow2File(image->dir + "/" + FileNameFor("disk", image->format),
                                     kMaxVirtualDiskBytes);
    if (!h.ok()) return SendError(res, h.error().Wrap("disk rejected"));
  }
  auto slot = long_ops_->Acquire(c.user.id, 1, c.admin());
  if (!slot.ok()) return SendTooMany(res, slot.error(), long_ops_->retry_after_s());
  json answer = ops_->Start(op);
  {
    std::lock_guard<std::mutex> l(operations_mu_);
    finalize_failures_.erase(image->id);
  }
  SendJson(res, 202, answer);
  ops_->Run("", [this, id = op.id, image_id = image->id, claim = std::move(claim),
                 slot = *slot]() mutable {
    auto outcome = RunFinalize(id, image_id);
    if (!outcome.ok()) {
      spdlog::warn("image {}: finalize failed: {}", image_id, outcome.error().message);
      std::lock_guard<std::mutex> l(operations_mu_);
      finalize_failures_[image_id] = {id, outcome.error().message};
    }
    // Whoever sees the operation ended may upload, delete or finalize again.
    claim.reset();
    slot.reset();
    ops_->Finish(id, outcome);
  });
}

Result<json> Controller::RunFinalize(const std::string& op_id, const std::string& image_id) {
  VMG_ASSIGN_OR_RETURN(Image image, store_->GetImage(image_id, ""));
  if (image_server_) {
    // Publishing stores the disk expanded: refuse an image over the quota
    // before that work (store_->FinalizeImage below is the atomic check).
    if (auto owner = store_->GetUserById(image.owner_id);
        owner.ok() && owner->quota.image_bytes > 0) {
      auto use = store_->GetUserUsage(owner->id);
      if (use.ok() && use->image_bytes + image.QuotaBytes() > owner->quota.image_bytes)
        return MakeError(ErrorCode::kPermissionDenied,
                         "quota: " + owner->name + " may keep " +
                             std::to_string(owner->quota.image_bytes) + " bytes of images (" +
                             std::to_string(use->image_bytes) + " in ready images, this one has " +
                             std::to_string(image.QuotaBytes()) +
                             " once expanded); ask the admin to raise it (`vmgrid user quota`)");
    }
    VMG_RETURN_IF_ERROR(PublishImage(image, [this, &op_id](const std::string& step, int pct) {
      ops_->SetProgress(op_id, step, pct);
    }));
    if (stop_) return MakeError(ErrorCode::kUnavailable, "the controller is shutting down");
  }
  image.state = "ready";
  // The owner's image_bytes quota is checked with the write.
  VMG_RETURN_IF_ERROR(store_->FinalizeImage(image));
  ops_->SetProgress(op_id, "ready", 100);
  return ImageJson(image);
}

void Controller::CheckpointImage(const Caller& c, const Req& req, Res& res) {
  auto image = OwnImage(c, req.matches[1]);
  if (!image.ok()) return SendError(res, image.error());
  auto body = ParseJsonObject(req.body);
  if (!body.ok()) return SendError(res, body.error());
  JsonFields f(*body, request_fields::kImageCheckpoint);
  if (auto st = f.CheckUnknown(); !st.ok()) return SendError(res, st.error());
  auto mem = f.Int("memory_mb", std::max<int64_t>(256, image->min_memory_mb), image->min_memory_mb,
                   1 << 20);
  auto vcpus = f.Int("vcpus", 1, 1, 64);
  if (!mem.ok()) return SendError(res, mem.error());
  if (!vcpus.ok()) return SendError(res, vcpus.error());
  if (image->state != "ready")
    return SendError(
        res, MakeError(ErrorCode::kFailedPrecondition, "image " + image->name + " is not ready"));
  if (image->ckpt_state == "creating")
    return SendError(
        res, MakeError(ErrorCode::kFailedPrecondition, "a checkpoint is already being made"));
  // The boot that makes the checkpoint holds its host's vCPUs, memory and
  // disk like any VM's: it is ranked by the same placement and reserved in
  // the same transaction (Store::PlaceAndInsertVm, which also checks the
  // caller's quota) as a VM record of its own — an image-checkpoint VM
  // (proto/checkpoint_ref.h), in flight while the agent works, deleted when
  // it is done. Concurrent creates therefore cannot take its room.
  Vm reservation;
  reservation.id = NewId(kImageCheckpointVmPrefix);
  reservation.name = reservation.id;
  reservation.owner_id = c.user.id;
  reservation.image_id = image->id;
  reservation.state = "creating";
  reservation.vcpus = static_cast<int>(*vcpus);
  reservation.memory_mb = *mem;
  reservation.disk = "clone";
  reservation.start = "boot";
  reservation.disk_bytes = image->CloneBoundBytes() + (*mem << 20);
  reservation.created_ms = reservation.updated_ms = NowMs();
  const Error no_room =
      MakeError(ErrorCode::kResourceExhausted, "no host is up with room to boot the image");
  auto candidates = index_->Rank({image->id, reservation.vcpus, reservation.memory_mb,
                                  reservation.disk_bytes, "spread", "", ""});
  if (candidates.empty()) return SendError(res, no_room);
  auto placed = store_->PlaceAndInsertVm(reservation, candidates);
  if (!placed.ok()) return SendError(res, placed.error());
  auto host = store_->GetHost(placed->host_id);
  image->ckpt_state = "creating";
  image->ckpt_error.clear();
  image->ckpt_memory_mb = *mem;
  image->ckpt_vcpus = static_cast<int>(*vcpus);
  Status recorded = host.ok() ? store_->UpdateImage(*image) : Status(host.error());
  if (!recorded.ok()) {
    // Nothing was started: give the room back.
    if (Status st = store_->DeleteVm(placed->id); !st.ok())
      CountFailedWrite(st, "releasing the reservation " + placed->id);
    return SendError(res, recorded.error());
  }
  SendJson(res, 202, ImageJson(*image));
  Host h = *host;
  Image img = *image;
  ops_->Run(placed->id, [this, h, img, reservation_id = placed->id]() mutable {
    std::string target = img.dir + "/checkpoint";
    ImageCheckpointRequest request;
    request.image = AgentImageFiles(img);
    request.vcpus = img.ckpt_vcpus;
    request.memory_mb = img.ckpt_memory_mb;
    Result<ImageCheckpointResult> r = ImageCheckpointResult{};
    if (image_server_) {
      // Made on the host, published to the image server (memory and disk
      // delta), fetched by any host that resumes it.
      auto blobs = AgentBlobs(img, false);
      if (blobs.ok())
        request.blobs = std::move(*blobs);
      else
        r = blobs.error();
      request.push_as = CheckpointBlobStem(img.id);
    } else {
      request.target_dir = target;
    }
    if (r.ok()) r = agents_->MakeImageCheckpoint(h, request);
    // The boot is over: its room is free again. A record left behind holds
    // it until reconciliation marks it failed (the host reports no such VM).
    if (Status st = store_->DeleteVm(reservation_id); !st.ok())
      CountFailedWrite(st, "releasing the reservation " + reservation_id);
    auto fresh = store_->GetImage(img.id, "");
    if (!fresh.ok()) return;  // deleted meanwhile
    json blobs = json::parse(fresh->blobs, nullptr, false);
    if (r.ok() && image_server_ && !blobs.is_object())
      r = MakeError(ErrorCode::kInternal, "image " + img.id + " has no published versions");
    if (r.ok()) {
      std::error_code ec;
      fresh->ckpt_state = "ready";
      if (image_server_) {
        blobs["ckpt_memory"] = ToJson(r->memory);
        blobs["ckpt_disk"] = ToJson(r->disk);
        fresh->blobs = blobs.dump();
        fresh->ckpt_size_bytes = static_cast<int64_t>(r->memory.size + r->disk.size);
      } else {
        fresh->ckpt_size_bytes = static_cast<int64_t>(fs::file_size(target + "/memory.state", ec)) +
                                 static_cast<int64_t>(fs::file_size(target + "/disk.qcow2", ec));
      }
      spdlog::info("image {}: post-boot checkpoint ready", img.name);
    } else {
      fresh->ckpt_state = "error";
      fresh->ckpt_error = r.error().message;
      spdlog::warn("image {}: checkpoint failed: {}", img.name, r.error().message);
    }
    // Left behind, the image shows its checkpoint as still being made (and
    // refuses another) until the controller restarts; say so in the log.
    if (Status st = store_->UpdateImage(*fresh); !st.ok())
      CountFailedWrite(st, "recording the checkpoint of image " + img.id);
  });
}

void Controller::DeleteImage(const Caller& c, const Req& req, Res& res) {
  auto image = OwnImage(c, req.matches[1]);
  if (!image.ok()) return SendError(res, image.error());
  if (image->ckpt_state == "creating")
    return SendError(
        res, MakeError(ErrorCode::kFailedPrecondition,
                       "a checkpoint of this image is being made; try again when it is done"));
  {
    // Its finalize operation reads the files: it ends first.
    std::lock_guard<std::mutex> l(image_io_mu_);
    if (auto it = image_io_.find(image->id); it != image_io_.end() && it->second.count("finalize"))
      return SendError(
          res, MakeError(ErrorCode::kFailedPrecondition,
                         "image " + image->name +
                             " is being finalized; try again when its operation has ended"));
  }
  if (auto st = store_->DeleteImage(image->id); !st.ok()) return SendError(res, st.error());
  // The record is gone; a directory left behind only costs disk.
  if (Status st = RemoveTree(image->dir); !st.ok())
    spdlog::warn("image {}: cannot remove {}: {}", image->id, image->dir, st.error().message);
  {
    std::lock_guard<std::mutex> l(operations_mu_);
    finalize_failures_.erase(image->id);
  }
  SendJson(res, 204, nullptr);
}

// --- VMs
// ------------------------------------------------------------------------------------------

void Controller::CreateVm(const Caller& c, const Req& req, Res& res) {
  int64_t started = NowMs();
  auto body = ParseJsonObject(req.body, false);
  if (!body.ok()) return SendError(res, body.error());
  JsonFields f(*body, request_fields::kCreateVm);
  if (auto st = f.CheckUnknown(); !st.ok()) return SendError(res, st.error());
  // A future from the information service ("fut-IMAGE-HOST-START") names the
  // image, the host and how to start; realizing it is a create pinned there.
  auto future = f.String("from_future", false);
  if (!future.ok()) return SendError(res, future.error());
  std::string future_host;
  if (!future->empty()) {
    if (body->contains("image") || body->contains("from_checkpoint") || body->contains("start"))
      return SendError(res, MakeError(ErrorCode::kInvalidArgument,
                                      "from_future already names the image and start; drop image, "
                                      "start and from_checkpoint"));
    auto fid = ParseFutureId(*future);
    if (!fid.ok()) return SendError(res, fid.error());
    (*body)["image"] = fid->image_id;
    (*body)["start"] = fid->start;
    future_host = fid->host_id;
  }
  auto from = f.String("from_checkpoint", false);
  auto image_ref = f.String("image", from.ok() && from->empty());
  auto name = f.String("name", false);
  auto disk = f.Enum("disk", {"clone", "persistent"}, "clone");
  auto start = f.Enum("start", {"boot", "resume"}, from.ok() && !from->empty() ? "resume" : "boot");
  auto ws_name = f.String("workspace", false);
  for (const auto* r : {&from, &image_ref, &name, &disk, &start, &ws_name})
    if (!r->ok()) return SendError(res, r->error());
  auto vcpus = f.Int("vcpus", 0, 1, 64);
  auto mem = f.Int("memory_mb", 0, 32, 1 << 20);
  if (!vcpus.ok()) return SendError(res, vcpus.error());
  if (!mem.ok()) return SendError(res, mem.error());
  if ((*body).contains("vcpus") && (*body)["vcpus"].is_null())
    return SendError(res,
                     MakeError(ErrorCode::kInvalidArgument, "field 'vcpus' must be an integer"));

  Vm vm;
  vm.id = NewId("vm");
  vm.name = name->empty() ? vm.id : *name;
  if (auto st = ValidateName("VM", vm.name); !st.ok()) return SendError(res, st.error());
  vm.owner_id = c.user.id;
  vm.disk = *disk;
  vm.start = *start;
  vm.state = "creating";
  vm.created_ms = vm.updated_ms = started;
  auto network = f.String("network", false, "default");
  if (!network.ok()) return SendError(res, network.error());
  if (auto st = ValidateName("network", *network); !st.ok()) return SendError(res, st.error());
  vm.network = *network;
  // Network cards: the caller's (or shared) virtual networks, one card each;
  // the Store gives each its address with the VM's insert.
  auto nets = f.StringList("nets", false, 8);
  if (!nets.ok()) return SendError(res, nets.error());
  auto net_ids = networks_->Resolve(c, *nets);
  if (!net_ids.ok()) return SendError(res, net_ids.error());
  vm.net_ids = *net_ids;

  // What to start from: an image (boot or its post-boot checkpoint), or a
  // checkpoint of one of the caller's VMs.
  Image image;
  std::vector<std::string> candidates;
  std::string checkpoint_dir;
  int ckpt_vcpus = 0;
  int64_t ckpt_mem = 0;
  // With an image server, the source host publishes the VM's checkpoint
  // (once; minutes for a large one) on the operation pool before the create.
  std::optional<Host> publish_from;
  std::string publish_vm;
  if (!from->empty()) {
    if (vm.start != "resume")
      return SendError(
          res, MakeError(ErrorCode::kInvalidArgument, "from_checkpoint implies start=resume"));
    auto src = store_->GetVm(*from, c.owner());
    if (!src.ok()) return SendError(res, src.error());
    auto host = store_->GetHost(src->host_id);
    if (!host.ok()) return SendError(res, host.error());
    auto img = store_->GetImage(src->image_id, "");
    if (!img.ok()) return SendError(res, img.error());
    image = *img;
    ckpt_vcpus = src->vcpus;
    ckpt_mem = src->memory_mb;
    // A quick question (is there a checkpoint, where); nothing is copied.
    auto dir = agents_->Checkpoint(*host, src->id, /*publish=*/false, 30);
    if (!dir.ok()) return SendError(res, dir.error().Wrap("checkpoint of VM " + src->name));
    checkpoint_dir = dir->dir;
    if (image_server_) {
      // Any host can resume it once published (below, on the operation pool).
      publish_from = *host;
      publish_vm = src->id;
    } else {
      candidates.push_back(src->host_id);  // without an image server it lives there only
    }
  } else {
    auto img = VisibleImage(c, *image_ref);
    if (!img.ok()) return SendError(res, img.error());
    image = *img;
    if (image.state != "ready")
      return SendError(res, MakeError(ErrorCode::kFailedPrecondition,
                                      "image " + image.name + " is still uploading"));
    if (vm.start == "resume") {
      if (image.ckpt_state != "ready")
        return SendError(res, MakeError(ErrorCode::kFailedPrecondition,
                                        "image " + image.name +
                                            " has no post-boot checkpoint; make one "
                                            "with `vmgrid image checkpoint " +
                                            image.name + "` or boot instead"));
      checkpoint_dir = image.dir + "/checkpoint";
      ckpt_vcpus = image.ckpt_vcpus;
      ckpt_mem = image.ckpt_memory_mb;
    }
  }
  vm.image_id = image.id;
  vm.vcpus = static_cast<int>(*vcpus ? *vcpus : (ckpt_vcpus ? ckpt_vcpus : 1));
  vm.memory_mb = *mem ? *mem : (ckpt_mem ? ckpt_mem : std::max<int64_t>(256, image.min_memory_mb));
  if (vm.start == "resume" && (vm.vcpus != ckpt_vcpus || vm.memory_mb != ckpt_mem))
    return SendError(
        res, MakeError(ErrorCode::kInvalidArgument,
                       "the checkpoint was taken with " + std::to_string(ckpt_vcpus) +
                           " vCPU(s) and " + std::to_string(ckpt_mem) +
                           " MB; a resumed VM must have the same (omit vcpus and memory_mb)"));
  if (vm.memory_mb < image.min_memory_mb)
    return SendError(res, MakeError(ErrorCode::kInvalidArgument,
                                    "image " + image.name + " needs at least " +
                                        std::to_string(image.min_memory_mb) + " MB of memory"));
  // The host disk it holds: its overlay or workspace can grow to a fully
  // allocated copy of the image's disk, and a checkpoint writes its memory.
  vm.disk_bytes = image.CloneBoundBytes() + (vm.memory_mb << 20);

  // Persistent disks are the user's workspace, pinned to the host holding it.
  std::optional<Workspace> workspace;
  bool new_workspace = false;
  if (vm.disk == "persistent") {
    std::string wsn = ws_name->empty() ? vm.name : *ws_name;
    if (auto st = ValidateName("workspace", wsn); !st.ok()) return SendError(res, st.error());
    auto found = store_->FindWorkspaceByName(c.user.id, wsn);
    if (!found.ok()) return SendError(res, found.error());
    if (found->has_value()) {
      workspace = **found;
      if (WorkspaceBeingDeleted(workspace->id))
        return SendError(res, MakeError(ErrorCode::kFailedPrecondition,
                                        "workspace " + wsn + " is being deleted"));
      if (!workspace->vm_id.empty())
        return SendError(res,
                         MakeError(ErrorCode::kFailedPrecondition,
                                   "workspace " + wsn + " is in use by VM " + workspace->vm_id));
      if (workspace->image_id != image.id)
        return SendError(res, MakeError(ErrorCode::kInvalidArgument,
                                        "workspace " + wsn + " holds a copy of another image"));
      if (vm.start == "resume")
        return SendError(res, MakeError(ErrorCode::kFailedPrecondition,
                                        "workspace " + wsn +
                                            " exists; resuming a checkpoint into it would "
                                            "overwrite it. Boot it, or pick a new workspace name"));
      candidates = {workspace->host_id};
    } else {
      new_workspace = true;
      // It holds a copy of the image's disk: what that copy can grow to (a
      // fully allocated qcow2 of its virtual size, `qemu-img measure`) is
      // what it takes of the workspace_bytes quota.
      workspace = Workspace{
          NewId("ws"), wsn, c.user.id, image.id, "", "", image.CloneBoundBytes(), vm.id, started};
    }
  } else if (!ws_name->empty()) {
    return SendError(res,
                     MakeError(ErrorCode::kInvalidArgument, "workspace needs disk=persistent"));
  }

  if (!future_host.empty()) {
    if (!candidates.empty() && candidates[0] != future_host)
      return SendError(res, MakeError(ErrorCode::kInvalidArgument,
                                      "the workspace lives on another host than the future"));
    if (!store_->GetHost(future_host).ok())
      return SendError(res,
                       MakeError(ErrorCode::kNotFound,
                                 "future " + *future + " is no longer valid: its host is gone"));
    candidates = {future_host};
  }
  // Placement ranks the hosts of the capacity index (api/placement.h); the
  // store re-checks and reserves.
  auto policy = f.Enum("policy", {"spread", "pack"}, "spread");
  auto site = f.String("site", false);
  auto host_network = f.String("host_network", false);
  for (const auto* r : {&policy, &site, &host_network})
    if (!r->ok()) return SendError(res, r->error());
  for (const auto* v : {&*site, &*host_network})
    if (!v->empty())
      if (auto st = ValidateName("site/network", *v); !st.ok()) return SendError(res, st.error());
  auto count = f.Int("count", 1, 1, 64);
  if (!count.ok()) return SendError(res, count.error());
  // Held until the agent has answered for every VM of this create.
  auto slot = creates_->Acquire(c.user.id, *count, c.admin());
  if (!slot.ok()) return SendTooMany(res, slot.error(), creates_->retry_after_s());
  // Publishing a checkpoint is a long operation of its own.
  Admission::SlotPtr publish_slot;
  if (publish_from) {
    auto got = long_ops_->Acquire(c.user.id, 1, c.admin());
    if (!got.ok()) return SendTooMany(res, got.error(), long_ops_->retry_after_s());
    publish_slot = *got;
  }
  if (*count > 1 || body->contains("same") || body->contains("total_memory_mb")) {
    if (workspace || !from->empty() || !future->empty())
      return SendError(res,
                       MakeError(ErrorCode::kInvalidArgument,
                                 "a gang (count) takes non-persistent VMs of an image; drop "
                                 "disk=persistent, workspace, from_checkpoint and from_future"));
    return CreateGang(c, *body, vm, image, checkpoint_dir, *count, *policy, res, started, *slot);
  }
  if (candidates.empty()) {
    candidates = index_->Rank(
        {image.id, vm.vcpus, vm.memory_mb, vm.disk_bytes, *policy, *site, *host_network});
    if (candidates.empty()) {
      auto hosts = store_->ListHosts();
      if (!hosts.ok()) return SendError(res, hosts.error());
      if (hosts->empty())
        return SendError(res, MakeError(ErrorCode::kResourceExhausted,
                                        "no host has registered; start an agent (`vmgrid agent`)"));
      std::vector<std::string> all;
      for (const auto& h : *hosts) all.push_back(h.id);
      return SendError(res, ExplainNoPlacement(vm, all, *site, *host_network));
    }
  }
  auto placed = store_->PlaceAndInsertVm(vm, candidates);
  if (!placed.ok()) {
    if (placed.error().code != ErrorCode::kResourceExhausted) return SendError(res, placed.error());
    Error why = ExplainNoPlacement(vm, candidates, "", "");
    if (!future_host.empty()) why = why.Wrap("future " + *future + " is no longer valid");
    return SendError(res, why);
  }
  vm = *placed;
  if (workspace) {
    vm.workspace_id = workspace->id;
    if (new_workspace) {
      workspace->host_id = vm.host_id;
      workspace->path = workspace->owner_id + "/" + workspace->id + ".qcow2";
      if (auto st = store_->InsertWorkspace(*workspace); !st.ok()) {
        // Left behind, the record stays `creating` until reconciliation
        // marks it failed (its host never heard of it); failed VMs hold no room.
        CountFailedWrite(store_->DeleteVm(vm.id),
                         "removing VM " + vm.id + " after " + st.error().message);
        return SendError(res, st.error());
      }
    } else {
      workspace->vm_id = vm.id;
    }
    // The workspace is claimed by the VM, and the VM names the workspace;
    // without both a later delete would not release it, so either write
    // failing undoes the create.
    Status linked = new_workspace ? Status::Ok() : store_->UpdateWorkspace(*workspace);
    if (linked.ok()) linked = store_->UpdateVm(vm);
    if (!linked.ok()) {
      ReleaseWorkspace(*workspace, new_workspace);
      CountFailedWrite(store_->DeleteVm(vm.id),
                       "removing VM " + vm.id + " after " + linked.error().message);
      return SendError(res, linked.error());
    }
  }
  auto host = store_->GetHost(vm.host_id);
  json answer = VmJson(vm, &image, host.ok() ? &*host : nullptr);
  if (!publish_from) {
    SendJson(res, 202, answer);
    return LaunchCreate(vm, image, checkpoint_dir, workspace, new_workspace, started,
                        host.ok() ? &*host : nullptr, *slot);
  }
  // The VM is `creating` while its source's checkpoint is published; the
  // publish is an operation of its own, named in the answer.
  Operation op;
  op.kind = "checkpoint_publish";
  op.owner_id = c.user.id;
  op.vm_id = publish_vm;
  answer["operation"] = ops_->Start(op);
  SendJson(res, 202, answer);
  ops_->Run(vm.id, [this, op_id = op.id, src_host = *publish_from, src_id = publish_vm, vm, image,
                    workspace, new_workspace, started, h = host.ok() ? *host : Host{}, slot = *slot,
                    publish_slot]() mutable {
    auto dir = agents_->Checkpoint(src_host, src_id, /*publish=*/true, 600);
    json blobs = json::parse(image.blobs, nullptr, false);
    if (dir.ok() && !blobs.is_object())
      dir = MakeError(ErrorCode::kInternal,
                      "host " + src_host.name + " did not publish the checkpoint of VM " + src_id);
    publish_slot.reset();
    if (!dir.ok()) {
      Error e = dir.error().Wrap("checkpoint of VM " + src_id);
      ops_->Finish(op_id, e);
      if (workspace) ReleaseWorkspace(*workspace, new_workspace);
      vms_->RecordOutcome(vm.id, e, "error", started, true);
      return;
    }
    json published = ToJson(*dir);
    published.erase("dir");  // the operation's result: the two versions
    ops_->Finish(op_id, published);
    blobs.update(published);  // this create's copy of the image only, not stored
    image.blobs = blobs.dump();
    RunCreate(vm, image, dir->dir, workspace, new_workspace, started, h);
  });
}

void Controller::LaunchCreate(const Vm& vm, const Image& image, const std::string& checkpoint_dir,
                              const std::optional<Workspace>& workspace, bool new_workspace,
                              int64_t started, const Host* known_host, Admission::SlotPtr slot) {
  auto host = known_host && known_host->id == vm.host_id ? Result<Host>(*known_host)
                                                         : store_->GetHost(vm.host_id);
  Host h = host.ok() ? *host : Host{};
  ops_->Run(vm.id, [this, h, vm, image, checkpoint_dir, workspace, new_workspace, started, slot] {
    RunCreate(vm, image, checkpoint_dir, workspace, new_workspace, started, h);
  });
}

void Controller::RunCreate(const Vm& vm, const Image& image, const std::string& checkpoint_dir,
                           const std::optional<Workspace>& ws, bool new_workspace, int64_t started,
                           const Host& h) {
  VmSpec spec;
  spec.id = vm.id;
  spec.name = vm.name;
  spec.owner_id = vm.owner_id;
  spec.vcpus = vm.vcpus;
  spec.memory_mb = vm.memory_mb;
  spec.disk_mode = vm.disk;
  spec.image = AgentImageFiles(image);
  spec.workspace_path = ws ? ws->path : "";
  spec.start = vm.start;
  spec.checkpoint_dir = checkpoint_dir;
  auto blobs =
      AgentBlobs(image, vm.start == "resume" && checkpoint_dir == image.dir + "/checkpoint");
  auto nics = networks_->VmNicSpecs(vm.id);
  Result<VmStatus> r = VmStatus{};
  if (!blobs.ok()) {
    r = blobs.error();
  } else if (!nics.ok()) {
    r = nics.error().Wrap("reading the VM's network cards");
  } else {
    spec.blobs = std::move(*blobs);
    spec.nics = std::move(*nics);
    r = agents_->CreateVm(h, spec);
  }
  if (!r.ok() && ws) ReleaseWorkspace(*ws, new_workspace);
  // Only placement's preference for hosts with a warm cache depends on it.
  if (r.ok() && !index_->IsCached(vm.image_id, vm.host_id))
    CountFailedWrite(store_->NoteImageCached(vm.image_id, vm.host_id),
                     "noting image " + vm.image_id + " cached on host " + vm.host_id);
  vms_->RecordOutcome(vm.id, r, "error", started, true);
}

// Gang co-allocation: `count` VMs like `proto`, all on hosts sharing `same`
// (site or network segment), with an optional bound on their total memory.
// All are placed and recorded in one transaction, or none is.
void Controller::CreateGang(const Caller& c, const json& body, const Vm& proto, const Image& image,
                            const std::string& checkpoint_dir, int64_t count,
                            const std::string& policy, Res& res, int64_t started,
                            Admission::SlotPtr slot) {
  (void)c;
  JsonFields f(body, {});
  auto same = f.String("same", false);
  if (!same.ok()) return SendError(res, same.error());
  int64_t memory = proto.memory_mb;
  if (body.contains("total_memory_mb")) {
    const json& t = body["total_memory_mb"];
    if (!t.is_object())
      return SendError(res, MakeError(ErrorCode::kInvalidArgument,
                                      "total_memory_mb must be an object {min, max}"));
    JsonFields tf(t, request_fields::kTotalMemory);
    if (auto st = tf.CheckUnknown(); !st.ok()) return SendError(res, st.error());
    auto mn = tf.Int("min", 0, 0, int64_t{1} << 30);
    auto mx = tf.Int("max", int64_t{1} << 30, 1, int64_t{1} << 30);
    if (!mn.ok()) return SendError(res, mn.error());
    if (!mx.ok()) return SendError(res, mx.error());
    // Without an explicit size, split the lower bound evenly.
    if (!body.contains("memory_mb") && proto.start != "resume")
      memory = std::max<int64_t>(image.min_memory_mb, (*mn + count - 1) / count);
    if (memory * count < *mn || memory * count > *mx)
      return SendError(res, MakeError(ErrorCode::kInvalidArgument,
                                      std::to_string(count) + " VMs of " + std::to_string(memory) +
                                          " MB total " + std::to_string(memory * count) +
                                          " MB, outside total_memory_mb [" + std::to_string(*mn) +
                                          ", " + std::to_string(*mx) + "]"));
  }
  std::vector<Vm> vms;
  for (int64_t i = 0; i < count; ++i) {
    Vm vm = proto;
    vm.id = NewId("vm");
    vm.name = (proto.name == proto.id ? vm.id : proto.name + "-" + std::to_string(i + 1));
    vm.memory_mb = memory;
    vm.disk_bytes = image.CloneBoundBytes() + (memory << 20);
    vms.push_back(vm);
  }
  auto groups = index_->Groups(*same, policy);
  if (!groups.ok()) return SendError(res, groups.error());
  auto placed = store_->PlaceAndInsertGang(vms, *groups);
  if (!placed.ok()) {
    if (placed.error().code != ErrorCode::kResourceExhausted) return SendError(res, placed.error());
    return SendError(
        res, MakeError(ErrorCode::kResourceExhausted,
                       "no " + (same->empty() ? std::string("set of hosts") : *same) +
                           " has room for all " + std::to_string(count) + " VMs (" +
                           std::to_string(count) + " x " + std::to_string(proto.vcpus) + " vCPU, " +
                           std::to_string(memory) + " MB, " +
                           std::to_string((vms[0].disk_bytes + (1 << 20) - 1) >> 20) +
                           " MiB of disk; " + std::to_string(groups->size()) +
                           " group(s) of up hosts checked); none was created"));
  }
  json out = json::array();
  for (const auto& vm : *placed) out.push_back(VmJson(vm, &image));
  SendJson(res, 202, {{"vms", out}});
  for (const auto& vm : *placed)
    LaunchCreate(vm, image, checkpoint_dir, std::nullopt, false, started, nullptr, slot);
}

// Why no host took the VM: for each requirement, how many of the candidate
// hosts failed it (compare condor_q -better-analyze, Kubernetes'
// FailedScheduling events).
Error Controller::ExplainNoPlacement(const Vm& vm, const std::vector<std::string>& candidates,
                                     const std::string& site, const std::string& network) {
  int down = 0, cpu = 0, mem = 0, disk = 0, checked = 0, wrong_site = 0, wrong_net = 0;
  for (const auto& id : candidates) {
    auto h = store_->GetHost(id);
    if (!h.ok()) continue;
    ++checked;
    if (h->state != "up") {
      ++down;
      continue;
    }
    if (!site.empty() && h->site != site) ++wrong_site;
    if (!network.empty() && h->network != network) ++wrong_net;
    if (h->vcpus - h->reserved_vcpus < vm.vcpus) ++cpu;
    if (h->memory_mb - h->reserved_memory_mb < vm.memory_mb) ++mem;
    if (h->disk_total_bytes > 0 && h->disk_free_bytes - h->reserved_disk_bytes < vm.disk_bytes)
      ++disk;
  }
  const std::string disk_mib = std::to_string((vm.disk_bytes + (1 << 20) - 1) >> 20);
  std::string msg = "no host can run " + std::to_string(vm.vcpus) + " vCPU(s) with " +
                    std::to_string(vm.memory_mb) + " MB and " + disk_mib + " MiB of disk: of " +
                    std::to_string(checked) + " host(s) checked, " + std::to_string(down) +
                    " are down, " + std::to_string(cpu) + " lack " + std::to_string(vm.vcpus) +
                    " free vCPU(s), " + std::to_string(mem) + " lack " +
                    std::to_string(vm.memory_mb) + " MB of free memory, " + std::to_string(disk) +
                    " lack " + disk_mib +
                    " MiB of free disk (what the VM's disk can grow to plus a memory checkpoint)";
  if (!site.empty()) msg += ", " + std::to_string(wrong_site) + " are not in site " + site;
  if (!network.empty()) msg += ", " + std::to_string(wrong_net) + " are not on network " + network;
  return MakeError(ErrorCode::kResourceExhausted, msg);
}

void Controller::ExecVm(const Caller& c, const Req& req, Res& res) {
  auto vm = store_->GetVm(req.matches[1], c.owner());
  if (!vm.ok()) return SendError(res, vm.error());
  auto body = ParseJsonObject(req.body, false);
  if (!body.ok()) return SendError(res, body.error());
  JsonFields f(*body, request_fields::kExec);
  if (auto st = f.CheckUnknown(); !st.ok()) return SendError(res, st.error());
  auto argv = f.StringList("argv", true, 256);
  auto input = f.String("input", false);
  auto timeout = f.Int("timeout_s", 60, 1, 3600);
  if (!argv.ok()) return SendError(res, argv.error());
  if (!input.ok()) return SendError(res, input.error());
  if (!timeout.ok()) return SendError(res, timeout.error());
  if (argv->empty() || (*argv)[0].empty())
    return SendError(res, MakeError(ErrorCode::kInvalidArgument, "argv must name a program"));
  if (auto s = ParseVmState(vm->state); !s.ok() || !Allows(*s, VmOp::kExec))
    return SendError(res,
                     MakeError(ErrorCode::kFailedPrecondition,
                               "VM " + vm->name + " is " + vm->state + "; exec needs it running"));
  auto host = store_->GetHost(vm->host_id);
  if (!host.ok()) return SendError(res, host.error());
  auto slot = execs_->Acquire(c.user.id, 1, c.admin());
  if (!slot.ok()) return SendTooMany(res, slot.error(), execs_->retry_after_s());
  Operation op;
  op.kind = "exec";
  op.owner_id = c.user.id;
  op.vm_id = vm->id;
  SendJson(res, 202, ops_->Start(op));
  Host h = *host;
  json request = {{"argv", *argv}, {"input", *input}, {"timeout_s", *timeout}};
  const int read_timeout = static_cast<int>(*timeout) + 30;
  ops_->Run("",
            [this, h, request, read_timeout, id = op.id, vm_id = vm->id, slot = *slot]() mutable {
              auto r = agents_->Exec(h, vm_id, request, read_timeout);
              slot.reset();  // whoever sees it ended may exec again
              ops_->Finish(id, r);
            });
}

void Controller::GetOperation(const Caller& c, const Req& req, Res& res) {
  SendReply(res, 200, ops_->Get(req.matches[1], c.user.id, c.admin()));
}

// Deleting a workspace's file is an agent call: it runs as an operation
// (202), and the workspace stays listed until the file is gone. Meanwhile
// no VM may take it (CreateVm checks WorkspaceBeingDeleted), nor may a
// second deletion start. On failure the workspace is kept: delete again.
void Controller::DeleteWorkspace(const Caller& c, const Req& req, Res& res) {
  auto ws = store_->GetWorkspace(req.matches[1], c.owner());
  if (!ws.ok()) return SendError(res, ws.error());
  if (!ws->vm_id.empty())
    return SendError(res, MakeError(ErrorCode::kFailedPrecondition,
                                    "workspace " + ws->name + " is in use by VM " + ws->vm_id +
                                        "; remove the VM first"));
  auto host = store_->GetHost(ws->host_id);
  if (!host.ok()) return SendError(res, host.error());
  auto slot = long_ops_->Acquire(c.user.id, 1, c.admin());
  if (!slot.ok()) return SendTooMany(res, slot.error(), long_ops_->retry_after_s());
  {
    std::lock_guard<std::mutex> l(operations_mu_);
    if (!deleting_workspaces_.insert(ws->id).second)
      return SendError(res, MakeError(ErrorCode::kFailedPrecondition,
                                      "workspace " + ws->name + " is being deleted"));
  }
  auto unmark = std::shared_ptr<void>(nullptr, [this, id = ws->id](void*) {
    std::lock_guard<std::mutex> l(operations_mu_);
    deleting_workspaces_.erase(id);
  });
  // A VM may have taken it between the read above and the mark.
  ws = store_->GetWorkspace(ws->id, "");
  if (!ws.ok()) return SendError(res, ws.error());
  if (!ws->vm_id.empty())
    return SendError(res, MakeError(ErrorCode::kFailedPrecondition,
                                    "workspace " + ws->name + " is in use by VM " + ws->vm_id +
                                        "; remove the VM first"));
  Operation op;
  op.kind = "workspace_delete";
  op.owner_id = c.user.id;
  op.workspace_id = ws->id;
  SendJson(res, 202, ops_->Start(op));
  ops_->Run("", [this, id = op.id, h = *host, w = *ws, unmark = std::move(unmark),
                 slot = *slot]() mutable {
    Result<json> outcome = json(nullptr);
    Status r = agents_->DeleteWorkspace(h, w.path);
    if (!r.ok())
      outcome = r.error().Wrap("deleting the workspace file");
    else if (Status st = store_->DeleteWorkspace(w.id); !st.ok())
      outcome = st.error();
    if (!outcome.ok()) spdlog::warn("workspace {}: {}", w.id, outcome.error().message);
    unmark.reset();
    slot.reset();
    ops_->Finish(id, outcome);
  });
}

bool Controller::WorkspaceBeingDeleted(const std::string& id) {
  std::lock_guard<std::mutex> l(operations_mu_);
  return deleting_workspaces_.count(id) > 0;
}

void Controller::Query(const Caller& c, const Req& req, Res& res) {
  auto body = ParseJsonObject(req.body, false);
  if (!body.ok()) return SendError(res, body.error());
  JsonFields f(*body, request_fields::kQuery);
  if (auto st = f.CheckUnknown(); !st.ok()) return SendError(res, st.error());
  auto sql = f.String("sql", false);
  auto max_rows = f.Int("max_rows", 10'000, 1, 10'000);
  auto timeout = f.Int("timeout_ms", 2'000, 1, 10'000);
  if (!sql.ok()) return SendError(res, sql.error());
  if (!max_rows.ok()) return SendError(res, max_rows.error());
  if (!timeout.ok()) return SendError(res, timeout.error());
  auto slot = queries_->Acquire(c.user.id, 1, c.admin());
  if (!slot.ok()) return SendTooMany(res, slot.error(), queries_->retry_after_s());
  QueryLimits limits;
  limits.max_rows = *max_rows;
  limits.timeout_ms = *timeout;
  QueryCaller caller{c.user.id, c.admin()};
  bool has_set = body->contains("set");
  if (sql->empty() == !has_set)
    return SendError(res,
                     MakeError(ErrorCode::kInvalidArgument, "give exactly one of 'sql' and 'set'"));
  if (!has_set) {
    auto r = query_->Sql(caller, *sql, limits);
    if (!r.ok()) return SendError(res, r.error());
    SendJson(res, 200,
             {{"columns", r->columns},
              {"rows", r->rows},
              {"elapsed_ms", static_cast<double>(r->elapsed_us) / 1000.0}});
    return;
  }
  const json& sj = (*body)["set"];
  if (!sj.is_object())
    return SendError(res, MakeError(ErrorCode::kInvalidArgument, "'set' must be an object"));
  JsonFields sf(sj, request_fields::kSetQuery);
  if (auto st = sf.CheckUnknown(); !st.ok()) return SendError(res, st.error());
  SetQuery q;
  auto from = sf.String("from", false, "vms");
  auto size = sf.Int("size", 2, 1, 64);
  auto same = sf.String("same", false);
  auto sum = sf.String("sum", false, "memory_mb");
  auto mn = sf.Int("min", 0, INT64_MIN / 4, INT64_MAX / 4);
  auto mx = sf.Int("max", INT64_MAX / 4, INT64_MIN / 4, INT64_MAX / 4);
  auto where = sf.String("where", false);
  auto max_sets = sf.Int("max_sets", 10, 1, 1000);
  for (const Status& st :
       {from.ok() ? Status() : Status(from.error()), size.ok() ? Status() : Status(size.error()),
        same.ok() ? Status() : Status(same.error()), sum.ok() ? Status() : Status(sum.error()),
        mn.ok() ? Status() : Status(mn.error()), mx.ok() ? Status() : Status(mx.error()),
        where.ok() ? Status() : Status(where.error()),
        max_sets.ok() ? Status() : Status(max_sets.error())})
    if (!st.ok()) return SendError(res, st.error());
  q.from = *from;
  q.size = static_cast<size_t>(*size);
  q.same = *same;
  q.sum = *sum;
  q.min = *mn;
  q.max = *mx;
  q.where = *where;
  q.max_sets = static_cast<size_t>(*max_sets);
  auto r = query_->Set(caller, q, limits);
  if (!r.ok()) return SendError(res, r.error());
  json sets = json::array();
  for (const auto& s : r->sets)
    sets.push_back({{"group", s.group}, {"ids", s.ids}, {"total", s.total}});
  SendJson(res, 200,
           {{"sets", sets},
            {"candidates", r->candidates},
            {"groups", r->groups},
            {"exact_search", r->used_exact_search},
            {"elapsed_ms", static_cast<double>(r->elapsed_us) / 1000.0}});
}

void Controller::ReleaseWorkspace(const Workspace& ws, bool created) {
  if (created) {
    // A workspace record left behind names a file that was never made;
    // deleting the workspace clears it.
    CountFailedWrite(store_->DeleteWorkspace(ws.id), "removing workspace " + ws.id);
    return;
  }
  // Left behind, the workspace stays claimed by the failed VM; deleting
  // that VM releases it.
  Workspace w = ws;
  w.vm_id.clear();
  CountFailedWrite(store_->UpdateWorkspace(w), "releasing workspace " + ws.id);
}

void Controller::CountFailedWrite(const Status& st, const std::string& what) {
  if (st.ok()) return;
  spdlog::warn("{}: {} (store write failed; continuing)", what, st.error().message);
  ++failed_writes_;
}

int RunController(const ControllerOptions& options) {
  InstallTerminationHandlers();
  Controller controller(options);
  Status st = controller.Start();
  if (!st.ok()) {
    spdlog::error("controller: {}", st.error().message);
    return 1;
  }
  WaitForTermination();
  spdlog::info("controller stopping; VMs keep running on their hosts");
  controller.Shutdown();
  controller.Wait(std::chrono::seconds(5));
  // Operations still waiting on agents are abandoned, not lost: their VMs'
  // records are reconciled with the agents' reports at the next start.
  std::fflush(nullptr);
  std::_Exit(0);
}

}  // namespace vmgrid
