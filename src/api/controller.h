// The controller (`vmgrid controller`): REST API under /v1 with bearer-token
// authentication, the SQLite store, placement, and reconciliation of its
// records with what host agents report. Long operations (create, stop,
// checkpoint, resume, delete) answer 202 and run on background threads; the
// store records every state change before and after the agent call, so a
// controller restart loses nothing (see docs/vm-lifecycle.md). Exec, image
// finalize, checkpoint publishing and workspace deletion are operation
// objects (POST/DELETE answers 202, GET /v1/operations/ID polls), kept in
// memory only. No request holds a server thread for long; what one user may
// hold at once is bounded (api/admission.h, 429 beyond), and heartbeats and
// health never wait for a user's slot.
// Thread-safe: handlers run on the HTTP server's thread pool.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "api/admission.h"
#include "api/agent_client.h"
#include "api/controller_metrics.h"
#include "api/controller_options.h"
#include "api/host_credentials.h"
#include "api/op_queue.h"
#include "api/routes.h"
#include "api/routes/route.h"
#include "api/services/api_views.h"
#include "api/services/drain_service.h"
#include "api/services/event_service.h"
#include "api/services/host_failure_service.h"
#include "api/services/host_service.h"
#include "api/services/image_service.h"
#include "api/services/migration_service.h"
#include "api/services/network_service.h"
#include "api/services/user_service.h"
#include "api/services/vm_create_service.h"
#include "api/services/vm_service.h"
#include "api/services/workspace_service.h"
#include "common/metrics.h"
#include "common/metrics_server.h"
#include "common/result.h"
#include "infosvc/query_service.h"
#include "store/leader_lease.h"
#include "store/store.h"

namespace httplib {
class ContentReader;
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace vmgrid {

class ApiClient;
class CapacityIndex;
class DatasetService;
class ChunkClient;
class GridTaskRunner;
class JobService;
class GuardedServer;

class Controller {
 public:
  explicit Controller(ControllerOptions options);
  ~Controller();

  // Opens the store, creates the admin and agent tokens at first start,
  // binds the listen address and starts serving and reconciling.
  Status Start();
  void Shutdown();
  // Waits for the server to stop and for in-flight operations to finish
  // (at most `grace`).
  void Wait(std::chrono::milliseconds grace);

  std::string url() const { return url_; }
  // The agents' listener ("" without --agent-listen).
  std::string agent_url() const { return agent_url_; }
  // The metrics listener ("" without --metrics-listen).
  std::string metrics_url() const;
  // Every metric of the controller (docs/operations.md); set by Start.
  const metrics::Registry& metrics() const { return *registry_; }
  Store& store() { return *store_; }
  // Whether this controller runs the background loops now (docs/ha.md):
  // always with SQLite, the lease holder's with PostgreSQL.
  bool leader() const { return lease_ && lease_->Held(); }
  // (method, pattern) of every route of the main listener, in registration
  // order; set by Start() before serving, read-only after (openapi_test).
  const std::vector<InstalledRoute>& installed_routes() const { return installed_routes_; }

 private:
  class AuthedRoutes;
  using Handler = std::function<void(const Caller&, const httplib::Request&, httplib::Response&)>;

  void InstallRoutes();
  void InstallAgentListenerRoutes();
  // Wraps a handler with authentication and a role check.
  std::function<void(const httplib::Request&, httplib::Response&)> Authed(
      Handler h, const std::set<std::string>& roles = {"admin", "user"});

  void ReconcileLoop();
  // The job scheduler (docs/jobs.md): JobService::Tick every 500 ms while
  // this controller leads.
  void JobLoop();
  // Takes and renews the leader lease (docs/ha.md) every kLeaseAttemptMs.
  void LeaseLoop();
  // Adds the families computed at scrape time (VMs per state, hosts, queue).
  void AddMetricsCollectors();
  // Counts and times `h`'s requests under the route's documented template.
  std::function<void(const httplib::Request&, httplib::Response&)> Timed(
      const std::string& method, const std::string& pattern,
      std::function<void(const httplib::Request&, httplib::Response&)> h);
  // The series of one route (looked up once, at installation).
  struct RouteSeries;
  std::shared_ptr<RouteSeries> SeriesFor(const std::string& method, const std::string& pattern);

  ControllerOptions options_;
  // Metrics outlive everything that counts into them (declared first).
  std::unique_ptr<metrics::Registry> registry_;
  std::unique_ptr<ControllerMetrics> metrics_;
  std::string image_dir_;
  std::optional<HostCredentials> host_creds_;  // set by Start, then read-only
  std::string url_;
  std::unique_ptr<CapacityIndex> index_;  // placement's copy of host capacity; outlives store_
  std::unique_ptr<Store> store_;
  // Which controller on the database runs the background loops; set by Start.
  std::unique_ptr<LeaderLease> lease_;
  std::unique_ptr<QueryService> query_;
  std::unique_ptr<ChunkClient> image_server_;  // null without --image-server
  std::unique_ptr<GuardedServer> server_;
  std::vector<InstalledRoute> installed_routes_;
  std::unique_ptr<GuardedServer> agent_server_;  // with --agent-listen
  bool tls_ = false;                             // serving TLS (and so talking TLS to agents)
  std::string agent_url_;
  static constexpr size_t kAgentListenerThreads = 16;
  std::thread server_thread_, reconcile_thread_, agent_server_thread_, lease_thread_;
  std::thread job_thread_;
  std::atomic<bool> stop_{false};

  // Verified tokens: SHA-256 -> (user, expiry ms). Tokens are never revoked
  // today; the expiry bounds how long a removed one would still work.
  std::mutex auth_mu_;
  std::map<std::string, std::pair<User, int64_t>> auth_cache_;  // guarded by auth_mu_
  // Background work and polled operations (api/op_queue.h). Reset first
  // in the destructor, so that idle workers are joined while the rest of
  // the controller still exists.
  std::unique_ptr<OpQueue> ops_;
  // The services behind the routes (api/services/), set by Start.
  AgentClientPtr agents_;
  std::unique_ptr<EventService> events_;  // before the services that record events
  std::unique_ptr<HostService> hosts_;
  std::unique_ptr<VmService> vms_;
  std::unique_ptr<NetworkService> networks_;
  std::unique_ptr<UserService> users_;
  std::unique_ptr<ImageService> images_;
  std::unique_ptr<DatasetService> datasets_;
  std::unique_ptr<WorkspaceService> workspaces_;
  std::unique_ptr<ApiViews> views_;
  std::unique_ptr<VmCreateService> vm_creates_;
  std::unique_ptr<MigrationService> migrations_;
  std::unique_ptr<DrainService> drains_;          // after migrations_, which it uses
  std::unique_ptr<HostFailureService> failures_;  // after vm_creates_, which it uses
  // Grid jobs (docs/jobs.md), after the services their runner uses.
  std::unique_ptr<GridTaskRunner> task_runner_;
  std::unique_ptr<JobService> jobs_;
  // With --metrics-listen; stopped first by Shutdown (its collectors read
  // the store, the index and the queue).
  std::unique_ptr<MetricsServer> metrics_server_;

  // Admission (api/admission.h): user requests being handled, and per user
  // exec operations, creates in flight and queries. Set by Start.
  std::unique_ptr<Admission> requests_, execs_, creates_, queries_;
  // Event followers waiting at once (GET /v1/events?follow=1). Set by Start.
  std::unique_ptr<Admission> followers_;
  // Image finalizes, checkpoint publishes and workspace deletions of one
  // user running at once (set by the constructor).
  std::unique_ptr<Admission> long_ops_;
};

}  // namespace vmgrid
