#include "api/controller.h"

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>

#include "api/agent_client.h"
#include "api/openapi.h"
#include "api/placement.h"
#include "api/routes.h"
#include "api/routes/dataset_routes.h"
#include "api/routes/event_routes.h"
#include "api/routes/host_routes.h"
#include "api/routes/image_routes.h"
#include "api/routes/job_routes.h"
#include "api/routes/migration_routes.h"
#include "api/routes/network_routes.h"
#include "api/routes/query_routes.h"
#include "api/routes/user_routes.h"
#include "api/routes/vm_routes.h"
#include "api/routes/workspace_routes.h"
#include "api/services/api_views.h"
#include "api/services/dataset_service.h"
#include "api/services/drain_service.h"
#include "api/services/grid_task_runner.h"
#include "api/services/host_service.h"
#include "api/services/image_service.h"
#include "api/services/job_service.h"
#include "api/services/migration_service.h"
#include "api/services/network_service.h"
#include "api/services/user_service.h"
#include "api/services/vm_create_service.h"
#include "api/services/vm_service.h"
#include "api/services/workspace_service.h"
#include "api/ui_routes.h"
#include "chunks/chunk_client.h"
#include "client/api_client.h"
#include "common/http_json.h"
#include "common/http_server.h"
#include "common/metrics_server.h"
#include "common/signals.h"
#include "common/subprocess.h"
#include "common/tls.h"
#include "common/util.h"
#include "common/version.h"
#include "proto/host_report.h"
#include "store/sql_backend.h"

namespace vmgrid {

namespace fs = std::filesystem;
using nlohmann::json;
using Req = httplib::Request;
using Res = httplib::Response;

namespace {

constexpr int64_t kTokenCacheMs = 10'000;
// How often the capacity index is reloaded whole: it follows this
// controller's own writes exactly, and on a shared PostgreSQL database the
// other controllers' through LISTEN/NOTIFY (Store::SetObserver, docs/ha.md);
// the reload is only a safety net there.
constexpr int64_t kIndexResyncMs = 10'000;
constexpr int64_t kSharedIndexResyncMs = 30'000;
// How often the leader lease (docs/ha.md) is taken or renewed.
constexpr int64_t kLeaseAttemptMs = 500;
// A migration row with no operation this long was left by a migrate whose
// operation never started (a crash between the two); the operation itself
// is seen by OpQueue::InFlight however long it runs.
constexpr int64_t kMigrationStaleMs = 60'000;
// How long a new leader waits before it resumes the drains its predecessor
// left: the agents have heartbeated to it by then (every 2 s), so placement
// sees the hosts as they are.
constexpr int64_t kDrainResumeDelayMs = 5'000;
// How often the event stream is cut to --events-keep.
constexpr int64_t kEventPruneMs = 60'000;

}  // namespace

Controller::Controller(ControllerOptions options)
    : options_(std::move(options)),
      registry_(std::make_unique<metrics::Registry>()),
      metrics_(std::make_unique<ControllerMetrics>(*registry_)),
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
  // Before anything is written: a second controller on one SQLite file is
  // refused here; on PostgreSQL every controller serves, one leads.
  VMG_ASSIGN_OR_RETURN(
      lease_, LeaderLease::Open(database, NewId("ctl"), options_.listen, SteadyClock::Get()));
  if (IsPostgresTarget(database)) {
    // Heartbeats may reach any controller: one after a silence is written in
    // full, so that a host another controller declared suspect or failed
    // meanwhile is seen as such (docs/ha.md). Well below suspect_after.
    store_->set_heartbeat_refresh_ms(std::max(1000, options_.host_suspect_after_ms * 2 / 3));
  }
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
  // A follower holds a thread while it waits: few per user, and all of them
  // well below the thread count (the requests' bound above holds as well).
  followers_ = std::make_unique<Admission>(
      "event followers", options_.max_followers_per_user,
      std::min(options_.max_followers, std::max(1, options_.http_threads / 4)), 5);
  // TLS for users (token authentication, no client certificate), mutual TLS
  // for agents on their listener; our certificate is also our client
  // identity towards agents and the image server.
  VMG_ASSIGN_OR_RETURN(auto user_tls,
                       ServerTls("controller", options_.listen, options_.tls, false));
  tls_ = user_tls != nullptr;
  if (tls_) VMG_RETURN_IF_ERROR(SetClientTls(options_.tls.files));
  // The services behind the routes, with what they use passed in.
  agents_ = NewHttpAgentClient(*host_creds_);
  events_ = std::make_unique<EventService>(*store_, *followers_, &stop_);
  hosts_ = std::make_unique<HostService>(
      *store_, *index_, *host_creds_, SystemClock::Get(),
      [this](const std::string& vm_id) { return ops_->InFlight(vm_id); }, tls_);
  vms_ = std::make_unique<VmService>(*store_, *agents_, *ops_, SystemClock::Get(), *execs_);
  networks_ = std::make_unique<NetworkService>(*store_);
  users_ = std::make_unique<UserService>(*store_);
  datasets_ = std::make_unique<DatasetService>(*store_, image_server_.get());
  datasets_->EnableCommits(*agents_, *ops_, *long_ops_);
  images_ = std::make_unique<ImageService>(
      *store_, *index_, *agents_, *ops_, SystemClock::Get(), *long_ops_,
      ImageStorage{image_dir_, image_server_.get(), options_.image_server}, stop_);
  workspaces_ = std::make_unique<WorkspaceService>(*store_, *agents_, *ops_, *long_ops_);
  views_ = std::make_unique<ApiViews>(*store_);
  vm_creates_ = std::make_unique<VmCreateService>(
      *store_, *index_, *agents_, *ops_, SystemClock::Get(), *creates_, *long_ops_, *vms_, *images_,
      *networks_, *workspaces_, *views_, image_server_ != nullptr);
  migrations_ = std::make_unique<MigrationService>(*store_, *index_, *agents_, *networks_, *ops_,
                                                   SystemClock::Get(), *long_ops_);
  drains_ = std::make_unique<DrainService>(*store_, *migrations_, *ops_);
  hosts_->SetDrainStatus([this](const std::string& host_id) { return drains_->Running(host_id); });
  HostFailureOptions fo{options_.host_suspect_after_ms, options_.host_failed_after_ms,
                        options_.host_lease_ms, options_.host_lease_grace_ms};
  VMG_RETURN_IF_ERROR(CheckHostFailureOptions(fo));
  failures_ = std::make_unique<HostFailureService>(
      *store_, SteadyClock::Get(), fo,
      [this](const std::string& vm_id) { return ops_->InFlight(vm_id); },
      [this](const Vm& vm, const std::string& note, bool keep_stopped) {
        return vm_creates_->Recover(vm, note, keep_stopped);
      });
  hosts_->SetFailureDetector(failures_.get());
  hosts_->SetRelaunch([this](const Vm& vm) { return vm_creates_->Relaunch(vm); });
  vms_->SetStartFromDurable(
      [this](const Vm& vm, int64_t started) { return vm_creates_->StartFromDurable(vm, started); });
  vm_creates_->set_metrics(metrics_.get());
  task_runner_ =
      std::make_unique<GridTaskRunner>(*store_, *vm_creates_, *vms_, *agents_, *datasets_);
  jobs_ = std::make_unique<JobService>(
      *store_, *task_runner_, SystemClock::Get(),
      [this](const Caller& c, const std::string& ref) { return images_->VisibleImage(c, ref); });
  if (!options_.image_server_grant_key_file.empty()) {
    // Durable workspaces (docs/vm-lifecycle.md): the key of the image
    // server's workspace grants; without an image server it means nothing.
    if (!image_server_)
      return MakeError(ErrorCode::kInvalidArgument,
                       "--image-server-grant-key-file needs --image-server");
    VMG_ASSIGN_OR_RETURN(std::string grant_key,
                         ReadTokenFile(options_.image_server_grant_key_file));
    if (grant_key.empty())
      return MakeError(ErrorCode::kInvalidArgument,
                       "the grant key file " + options_.image_server_grant_key_file + " is empty");
    vm_creates_->set_durable(DurableOptions{grant_key, options_.workspace_push_interval_s});
    migrations_->set_durable(DurableOptions{grant_key, options_.workspace_push_interval_s});
    spdlog::info(
        "durable workspaces on: persistent workspaces are pushed to the image server on "
        "stop, checkpoint and every {} s",
        options_.workspace_push_interval_s);
  }
  vm_creates_->set_resync_when_empty(IsPostgresTarget(database));
  migrations_->set_metrics(metrics_.get());
  AddMetricsCollectors();
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
  if (!options_.metrics_listen.empty()) {
    VMG_ASSIGN_OR_RETURN(metrics_server_,
                         MetricsServer::Start(options_.metrics_listen, *registry_));
  }
  server_thread_ = std::thread([this] { server_->listen_after_bind(); });
  (void)lease_->Renew();  // the first attempt before anything runs
  if (lease_->Held())
    spdlog::info("controller: leading (term {}): running the background loops", lease_->term());
  else
    spdlog::info("controller: serving; another controller leads (docs/ha.md)");
  lease_thread_ = std::thread([this] { LeaseLoop(); });
  reconcile_thread_ = std::thread([this] { ReconcileLoop(); });
  job_thread_ = std::thread([this] { JobLoop(); });
  spdlog::info("controller serving at {} (state {}, images {}, database {})", url_,
               options_.state_dir, image_dir_,
               options_.database.empty() ? "SQLite" : RedactTarget(options_.database));
  return Status::Ok();
}

void Controller::Shutdown() {
  stop_ = true;
  metrics_server_.reset();
  if (server_) server_->stop();
  if (agent_server_) agent_server_->stop();
}

void Controller::Wait(std::chrono::milliseconds grace) {
  if (server_thread_.joinable()) server_thread_.join();
  if (agent_server_thread_.joinable()) agent_server_thread_.join();
  if (reconcile_thread_.joinable()) reconcile_thread_.join();
  if (job_thread_.joinable()) job_thread_.join();
  if (lease_thread_.joinable()) {
    lease_thread_.join();
    // Another controller takes over at its next attempt, not after the expiry.
    if (lease_ && lease_->Held()) spdlog::info("controller: giving up the leadership");
    if (lease_) lease_->Release();
  }
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
      // A refusal is 429 with Retry-After, so well-behaved clients back off.
      if (!got.ok()) return SendError(res, got.error());
      slot = *got;
    }
    h(Caller{*user}, req, res);
  };
}

// The request series of one route (Controller::SeriesFor).
struct Controller::RouteSeries {
  metrics::Family<metrics::Counter>* requests = nullptr;
  std::string route, method;
  // By status class 1xx..5xx, then anything else; each made at its first
  // request (With() is idempotent, so a race makes it twice harmlessly).
  std::array<std::atomic<metrics::Counter*>, 6> by_class{};
  metrics::Histogram* seconds = nullptr;

  void Record(int status, std::chrono::steady_clock::time_point started) {
    static constexpr const char* kClasses[] = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"};
    const size_t c = status >= 100 && status <= 599 ? static_cast<size_t>(status / 100 - 1) : 5;
    metrics::Counter* counter = by_class[c].load(std::memory_order_acquire);
    if (!counter) {
      counter = &requests->With({route, method, kClasses[c]});
      by_class[c].store(counter, std::memory_order_release);
    }
    counter->Inc();
    seconds->Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  }
};

// --- routes -----------------------------------------------------------------------------

// Installs routes (api/routes/route.h) behind the controller's
// authentication, role check and admission, sending their answers.
class Controller::AuthedRoutes : public RouteInstaller {
 public:
  AuthedRoutes(Controller& c, RouteRecorder<GuardedServer>& s) : c_(c), s_(s) {}
  void Get(const std::string& pattern, Route route, std::set<std::string> roles) override {
    s_.Get(pattern, c_.Timed("GET", pattern, Wrap(std::move(route), std::move(roles))));
  }
  void Post(const std::string& pattern, Route route, std::set<std::string> roles) override {
    s_.Post(pattern, c_.Timed("POST", pattern, Wrap(std::move(route), std::move(roles))));
  }
  void Put(const std::string& pattern, Route route, std::set<std::string> roles) override {
    s_.Put(pattern, c_.Timed("PUT", pattern, Wrap(std::move(route), std::move(roles))));
  }
  void Delete(const std::string& pattern, Route route, std::set<std::string> roles) override {
    s_.Delete(pattern, c_.Timed("DELETE", pattern, Wrap(std::move(route), std::move(roles))));
  }
  // The route runs before the body is read (httplib's content reader), so
  // its refusals are answered without reading it; GuardedServer then
  // decides what becomes of the connection.
  void PutStream(const std::string& pattern, StreamRoute route,
                 std::set<std::string> roles) override {
    // Captures the controller, not this installer (which ends with InstallRoutes).
    s_.Put(pattern, [controller = &c_, route = std::move(route), roles = std::move(roles),
                     series = c_.SeriesFor("PUT", pattern)](const Req& req, Res& res,
                                                            const httplib::ContentReader& reader) {
      const auto started = std::chrono::steady_clock::now();
      controller->Authed(
          [&](const Caller& c, const Req&, Res& r) {
            BodyReader body = [&reader](const std::function<bool(const char*, size_t)>& receive) {
              return reader(receive);
            };
            Send(r, route(c, req, body));
          },
          roles)(req, res);
      series->Record(res.status, started);
    });
  }

 private:
  static void Send(Res& res, Result<Reply> r) {
    if (!r.ok()) return SendError(res, r.error());
    if (r->text) return SendJsonText(res, r->status, std::move(*r->text));
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

  s.Get("/v1/health", Timed("GET", "/v1/health", [this](const Req&, Res& res) {
          SendJson(res, 200, {{"status", "ok"}, {"version", kVersion}, {"leader", leader()}});
        }));
  s.Get("/v1/openapi.json", Timed("GET", "/v1/openapi.json", [](const Req&, Res& res) {
          res.set_content(std::string(kOpenApiJson), "application/json");
        }));
  // The web portal (docs/portal.md): static files, no token; not part of
  // the REST API's table (installed on the server, not the recorder).
  InstallUiRoutes(server, [this](const std::string& pattern, httplib::Server::Handler h) {
    return Timed("GET", pattern, std::move(h));
  });
  // Users.
  InstallUserRoutes(routes, *users_);

  // Hosts.
  InstallHostRoutes(routes, *hosts_);
  InstallAgentRoutes(routes, *hosts_);

  // Images.
  InstallImageRoutes(routes, *images_);
  InstallDatasetRoutes(routes, *datasets_);

  // VMs.
  InstallVmCreateRoutes(
      routes, *vm_creates_, *vms_, *networks_, *events_,
      [this](const Vm& v) { return views_->VmJson(v); },
      [this](const std::vector<Vm>& vms) { return views_->VmListText(vms); });
  InstallVmActionRoutes(routes, *vms_, *datasets_,
                        [this](const Vm& v) { return views_->VmJson(v); });
  InstallExecRoutes(routes, *vms_);
  InstallOperationRoutes(routes, *ops_);
  InstallMigrationRoutes(routes, *migrations_);
  InstallDrainRoutes(routes, *drains_, *hosts_);

  // Information service.
  InstallQueryRoutes(routes, *query_, *queries_);

  // Workspaces.
  InstallWorkspaceRoutes(routes, *workspaces_,
                         [this](const Workspace& w) { return views_->WorkspaceJson(w); });

  // Virtual networks.
  InstallNetworkRoutes(routes, *networks_);

  // The event stream.
  InstallEventRoutes(routes, *events_);

  // Grid jobs (docs/jobs.md).
  InstallJobRoutes(routes, *jobs_);
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
  s.Get("/v1/health", [this](const Req&, Res& res) {
    SendJson(res, 200, {{"status", "ok"}, {"version", kVersion}, {"leader", leader()}});
  });
  std::vector<InstalledRoute> unrecorded;  // openapi_test checks the main listener only
  RouteRecorder<GuardedServer> recorder(s, &unrecorded);
  AuthedRoutes routes(*this, recorder);
  InstallAgentRoutes(routes, *hosts_);
}

// --- metrics -----------------------------------------------------------------------------

std::shared_ptr<Controller::RouteSeries> Controller::SeriesFor(const std::string& method,
                                                               const std::string& pattern) {
  // The documented template ({ref}) rather than the regular expression.
  std::string route = pattern;
  for (const auto& spec : ControllerRoutes())
    if (spec.method == method && spec.pattern == pattern) route = std::string(spec.doc_path);
  auto series = std::make_shared<RouteSeries>();
  series->requests = &metrics_->requests;
  series->route = route;
  series->method = method;
  series->seconds = &metrics_->request_seconds.With({route, method});
  return series;
}

std::function<void(const Req&, Res&)> Controller::Timed(const std::string& method,
                                                        const std::string& pattern,
                                                        std::function<void(const Req&, Res&)> h) {
  return [h = std::move(h), series = SeriesFor(method, pattern)](const Req& req, Res& res) {
    const auto started = std::chrono::steady_clock::now();
    h(req, res);
    series->Record(res.status, started);
  };
}

std::string Controller::metrics_url() const {
  return metrics_server_ ? metrics_server_->url() : "";
}

void Controller::AddMetricsCollectors() {
  using metrics::FamilySnapshot;
  using metrics::Type;
  registry_->AddCollector([this] {
    std::vector<FamilySnapshot> out;
    FamilySnapshot vms{"vmgrid_vms", "VMs by state (all users).", Type::kGauge, {}};
    if (auto counts = store_->CountVmsByState(); counts.ok()) {
      for (VmState s : AllVmStates()) {
        auto it = counts->find(ToString(s));
        vms.Add({{"state", ToString(s)}},
                it == counts->end() ? 0 : static_cast<double>(it->second));
      }
    }
    out.push_back(std::move(vms));
    const auto load = ops_->load();
    out.push_back(FamilySnapshot{
        "vmgrid_operations_queued",
        "Background operations waiting for a worker.",
        Type::kGauge,
        {}}.Add({}, static_cast<double>(load.queued)));
    out.push_back(FamilySnapshot{
        "vmgrid_operations_running",
        "Background operations running (creates, stops, migrations...).",
        Type::kGauge,
        {}}.Add({}, static_cast<double>(load.running)));
    // Hosts are the grid's (the admin's), not a tenant's: named in labels.
    FamilySnapshot up{
        "vmgrid_host_up", "1 while the host's agent heartbeats, else 0.", Type::kGauge, {}};
    FamilySnapshot vcpus{"vmgrid_host_vcpus", "vCPUs the host offers.", Type::kGauge, {}};
    FamilySnapshot used_vcpus{
        "vmgrid_host_reserved_vcpus", "vCPUs of the VMs placed on the host.", Type::kGauge, {}};
    FamilySnapshot mem{
        "vmgrid_host_memory_bytes", "Memory the host offers to VMs.", Type::kGauge, {}};
    FamilySnapshot used_mem{"vmgrid_host_reserved_memory_bytes",
                            "Memory of the VMs placed on the host.",
                            Type::kGauge,
                            {}};
    FamilySnapshot disk_total{"vmgrid_host_disk_total_bytes",
                              "Size of the file system of the host's state directory.",
                              Type::kGauge,
                              {}};
    FamilySnapshot disk_free{"vmgrid_host_disk_free_bytes",
                             "Free space of the host's state directory, as last reported.",
                             Type::kGauge,
                             {}};
    FamilySnapshot used_disk{"vmgrid_host_reserved_disk_bytes",
                             "Disk reserved by the VMs placed on the host.",
                             Type::kGauge,
                             {}};
    if (auto hosts = store_->ListHosts(); hosts.ok()) {
      constexpr double kMiB = 1024.0 * 1024.0;
      for (const auto& h : *hosts) {
        const metrics::Labels l = {{"host", h.name}};
        up.Add(l, h.state == "up" ? 1 : 0);
        vcpus.Add(l, h.vcpus);
        used_vcpus.Add(l, h.reserved_vcpus);
        mem.Add(l, static_cast<double>(h.memory_mb) * kMiB);
        used_mem.Add(l, static_cast<double>(h.reserved_memory_mb) * kMiB);
        disk_total.Add(l, static_cast<double>(h.disk_total_bytes));
        disk_free.Add(l, static_cast<double>(h.disk_free_bytes));
        used_disk.Add(l, static_cast<double>(h.reserved_disk_bytes));
      }
    }
    for (auto* f : {&up, &vcpus, &used_vcpus, &mem, &used_mem, &disk_total, &disk_free, &used_disk})
      out.push_back(std::move(*f));
    // Store writes the services could not make after an agent had acted
    // (each logged): nonzero means records may need reconciling.
    FamilySnapshot failed{"vmgrid_store_failed_writes_total",
                          "Store writes that failed after an agent had acted, by service.",
                          Type::kCounter,
                          {}};
    failed.Add({{"service", "hosts"}}, static_cast<double>(hosts_->failed_writes()))
        .Add({{"service", "vms"}}, static_cast<double>(vms_->failed_writes()))
        .Add({{"service", "vm_create"}}, static_cast<double>(vm_creates_->failed_writes()))
        .Add({{"service", "images"}}, static_cast<double>(images_->failed_writes()))
        .Add({{"service", "migrations"}}, static_cast<double>(migrations_->failed_writes()));
    out.push_back(std::move(failed));
    const auto beats = hosts_->heartbeat_counts();
    FamilySnapshot heartbeats{
        "vmgrid_heartbeats_total",
        "Hosts' heartbeats by how they gave their VM list: full, same_as (the digest of the list "
        "last acknowledged), unknown_digest (refused; the host then sends it in full).",
        Type::kCounter,
        {}};
    heartbeats.Add({{"vms", "full"}}, static_cast<double>(beats.full))
        .Add({{"vms", "same_as"}}, static_cast<double>(beats.same_as))
        .Add({{"vms", "unknown_digest"}}, static_cast<double>(beats.unknown_digest));
    out.push_back(std::move(heartbeats));
    // Events the stream lost (each logged); the operations they record went on.
    FamilySnapshot lost{"vmgrid_event_write_failures_total",
                        "Events of the event stream that could not be written (logged).",
                        Type::kCounter,
                        {}};
    lost.Add({}, static_cast<double>(store_->event_write_failures()));
    out.push_back(std::move(lost));
    out.push_back(FamilySnapshot{
        "vmgrid_controller_leader",
        "1 while this controller holds the leader lease and runs the background loops "
        "(docs/ha.md), else 0.",
        Type::kGauge,
        {}}.Add({}, leader() ? 1 : 0));
    out.push_back(FamilySnapshot{
        "vmgrid_controller_leader_term",
        "The leadership term this controller last held (0: never).",
        Type::kGauge,
        {}}.Add({}, static_cast<double>(lease_->term())));
    return out;
  });
}

void Controller::LeaseLoop() {
  bool held = lease_->Held();
  bool failing = false;
  while (!stop_) {
    auto r = lease_->Renew();
    if (!r.ok() && !failing) spdlog::warn("leader lease: {}", r.error().message);
    failing = !r.ok();
    const bool now_held = lease_->Held();
    if (now_held != held) {
      if (now_held) {
        spdlog::info("controller: leading (term {}): running the background loops", lease_->term());
      } else {
        auto cur = lease_->Current();
        spdlog::warn("controller: no longer leading{}",
                     cur.ok() && !cur->id.empty() ? " (the leader is " + cur->url + ")" : "");
      }
      held = now_held;
    }
    for (int64_t waited = 0; waited < kLeaseAttemptMs && !stop_; waited += 50)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void Controller::ReconcileLoop() {
  const bool shared = IsPostgresTarget(options_.database);
  const int64_t resync_ms = shared ? kSharedIndexResyncMs : kIndexResyncMs;
  int64_t resynced = NowMs();
  int64_t pruned = 0;    // at once, then every kEventPruneMs
  bool leading = false;  // as of the previous pass
  bool resume_drains = false;
  int64_t leading_since = 0;
  auto still_leader = [this] { return lease_->Held() && !stop_; };
  while (!stop_) {
    // Every controller: the heartbeat times it received reach the database
    // (the leader's failure detector reads them there), and its capacity
    // index picks up the other controllers' writes.
    if (Status st = store_->FlushHeartbeats(); !st.ok())
      spdlog::warn("writing heartbeat times: {}", st.error().message);
    if (NowMs() - resynced >= resync_ms) {
      if (auto st = store_->Resync(); !st.ok())
        spdlog::warn("capacity index: {}", st.error().message);
      resynced = NowMs();
    }
    const bool lead = lease_->Held();
    if (lead && !leading) {
      // Taken over (or started): count every host from now, and settle what
      // the previous leader left (docs/ha.md).
      leading_since = NowMs();
      failures_->CountFromNow();
      resume_drains = true;
    }
    leading = lead;
    if (lead) {
      // Migrations a previous controller left half-done (its operations died
      // with it), and any whose operation never started.
      migrations_->RecoverInterrupted(leading_since, kMigrationStaleMs);
      // Drains whose operation died with the previous leader, once per
      // leadership, kDrainResumeDelayMs after taking over (a VM whose
      // migration the step above has not settled yet is not running: a later
      // drain moves it).
      if (resume_drains && NowMs() - leading_since >= kDrainResumeDelayMs) {
        (void)drains_->ResumeInterrupted();
        resume_drains = false;
      }
      // Suspect and failed hosts, and the recovery of failed hosts' VMs
      // (docs/host-failure.md).
      failures_->Check(still_leader);
      if (still_leader() && NowMs() - pruned >= kEventPruneMs) {
        // The event stream's retention (docs/operations.md, "Events").
        auto gone = store_->PruneEvents(options_.events_keep);
        if (!gone.ok())
          spdlog::warn("event retention: {}", gone.error().message);
        else if (*gone > 0)
          spdlog::info("event retention: deleted the {} oldest events", *gone);
        pruned = NowMs();
      }
    }
    for (int i = 0; i < 20 && !stop_; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void Controller::JobLoop() {
  while (!stop_) {
    // Only the leader schedules (docs/ha.md); the queue is the store's, so a
    // new leader continues where the previous one was.
    if (leader()) jobs_->Tick();
    for (int i = 0; i < 5 && !stop_; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
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
