#include "api/controller.h"

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "api/agent_client.h"
#include "api/openapi.h"
#include "api/placement.h"
#include "api/routes.h"
#include "api/routes/host_routes.h"
#include "api/routes/image_routes.h"
#include "api/routes/migration_routes.h"
#include "api/routes/network_routes.h"
#include "api/routes/query_routes.h"
#include "api/routes/user_routes.h"
#include "api/routes/vm_routes.h"
#include "api/routes/workspace_routes.h"
#include "api/services/host_service.h"
#include "api/services/image_service.h"
#include "api/services/migration_service.h"
#include "api/services/network_service.h"
#include "api/services/user_service.h"
#include "api/services/vm_service.h"
#include "api/services/workspace_service.h"
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

constexpr int64_t kHostDownAfterMs = 10'000;
constexpr int64_t kTokenCacheMs = 10'000;
// How often the capacity index is reloaded whole: it follows this
// controller's own writes exactly; the reload picks up other controllers'
// writes to a shared PostgreSQL database.
constexpr int64_t kIndexResyncMs = 10'000;

// A refusal by admission control: 429 with Retry-After, so well-behaved
// clients back off instead of hammering.
void SendTooMany(Res& res, const Error& error, int retry_after_s) {
  res.set_header("Retry-After", std::to_string(retry_after_s));
  SendJson(res, 429, {{"error", {{"code", "too_many_requests"}, {"message", error.message}}}});
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
  vms_ = std::make_unique<VmService>(*store_, *agents_, *ops_, SystemClock::Get(), *execs_);
  networks_ = std::make_unique<NetworkService>(*store_);
  users_ = std::make_unique<UserService>(*store_);
  images_ = std::make_unique<ImageService>(
      *store_, *index_, *agents_, *ops_, SystemClock::Get(), *long_ops_,
      ImageStorage{image_dir_, image_server_.get(), options_.image_server}, stop_);
  workspaces_ = std::make_unique<WorkspaceService>(*store_, *agents_, *ops_, *long_ops_);
  migrations_ = std::make_unique<MigrationService>(*store_, *index_, *agents_, *networks_, *ops_,
                                                   SystemClock::Get(), *long_ops_);
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
  return images_->VisibleImage(c, ref);
}

ImageFiles Controller::AgentImageFiles(const Image& i) { return ImageService::AgentImageFiles(i); }

Result<BlobSet> Controller::AgentBlobs(const Image& i, bool image_checkpoint) {
  return ImageService::AgentBlobs(i, image_checkpoint);
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
  void Put(const std::string& pattern, Route route, std::set<std::string> roles) override {
    s_.Put(pattern, Wrap(std::move(route), std::move(roles)));
  }
  void Delete(const std::string& pattern, Route route, std::set<std::string> roles) override {
    s_.Delete(pattern, Wrap(std::move(route), std::move(roles)));
  }
  // The route runs before the body is read (httplib's content reader), so
  // its refusals are answered without reading it; GuardedServer then
  // decides what becomes of the connection.
  void PutStream(const std::string& pattern, StreamRoute route,
                 std::set<std::string> roles) override {
    // Captures the controller, not this installer (which ends with InstallRoutes).
    s_.Put(pattern, [controller = &c_, route = std::move(route), roles = std::move(roles)](
                        const Req& req, Res& res, const httplib::ContentReader& reader) {
      controller->Authed(
          [&](const Caller& c, const Req&, Res& r) {
            BodyReader body = [&reader](const std::function<bool(const char*, size_t)>& receive) {
              return reader(receive);
            };
            Send(r, route(c, req, body));
          },
          roles)(req, res);
    });
  }

 private:
  static void Send(Res& res, const Result<Reply>& r) {
    if (!r.ok()) return SendError(res, r.error());
    SendJson(res, r->status, r->body);
  }
  std::function<void(const Req&, Res&)> Wrap(Route route, std::set<std::string> roles) {
    return c_.Authed([route = std::move(route)](const Caller& c, const Req& req,
                                                Res& res) { Send(res, route(c, req)); },
                     roles);
  }
  Controller& c_;
  RouteRecorder<GuardedServer>& s_;
};

void Controller::InstallRoutes() {
  auto& server = *server_;
  server.set_payload_max_length(static_cast<size_t>(kMaxImageUploadBytes));
  server.set_read_timeout(300, 0);
  server.set_write_timeout(300, 0);
  // Only image uploads may stream large bodies; everything else is refused
  // before its body is read.
  // Bodies come only with a Content-Length (no chunked, compressed or
  // length-less ones), refused before authentication and before a byte of
  // them is read; only image uploads may be large.
  server.set_pre_routing_handler([](const Req& req, Res& res) {
    bool upload = req.method == "PUT" && req.path.find("/files/") != std::string::npos;
    return RefuseUnframedBody(req, res, upload ? kMaxImageUploadBytes : kMaxJsonBody)
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
  // Users.
  InstallUserRoutes(routes, *users_);

  // Hosts.
  InstallHostRoutes(routes, *hosts_);
  InstallAgentRoutes(routes, *hosts_);

  // Images.
  InstallImageRoutes(routes, *images_);

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
  InstallExecRoutes(routes, *vms_);
  InstallOperationRoutes(routes, *ops_);
  InstallMigrationRoutes(routes, *migrations_);

  // Information service.
  InstallQueryRoutes(routes, *query_, *queries_);

  // Workspaces.
  InstallWorkspaceRoutes(routes, *workspaces_,
                         [this](const Workspace& w) { return WorkspaceJson(w); });

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

bool Controller::WorkspaceBeingDeleted(const std::string& id) {
  return workspaces_->BeingDeleted(id);
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
