// The host agent (`vmgrid agent`): serves the agent API to the controller
// (authenticated with the agent token), runs VMs through VmRunner, and
// heartbeats the host's capacity and VMs to the controller.
// Thread-safe: HTTP handlers run on the server's thread pool.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "agent/agent_api.h"
#include "agent/agent_options.h"
#include "agent/allowed_paths.h"
#include "agent/lease_fence.h"
#include "agent/vm_runner.h"
#include "common/metrics.h"
#include "common/metrics_server.h"
#include "common/result.h"
#include "proto/host_report.h"

namespace httplib {
class Server;
}

namespace vmgrid {

class ApiClient;
class GuardedServer;

class Agent : public AgentHost {
 public:
  explicit Agent(AgentOptions options);
  ~Agent();

  // Recovers VMs, binds the listen address and starts the heartbeat thread.
  Status Start();
  // Serves until Shutdown(); VMs keep running after it returns.
  void Wait();
  void Shutdown();

  std::string url() const { return url_; }
  // The metrics listener ("" without --metrics-listen).
  std::string metrics_url() const { return metrics_server_ ? metrics_server_->url() : ""; }
  const metrics::Registry& metrics() const { return registry_; }

  // AgentHost (agent/agent_api.h): QEMU VMs, and only files under the state
  // and image directories.
  VmDriver& driver() override { return *runner_; }
  HostReport Report() override;
  Status PrepareSpec(VmSpec& spec) override;
  Result<std::string> WorkspaceFile(const std::string& rel) override;
  Result<ImageCheckpointResult> ImageCheckpoint(const VmSpec& spec,
                                                const ImageCheckpointRequest& req) override;

 private:
  void InstallRoutes();
  void HeartbeatLoop();
  // Applies a heartbeat answer to the heartbeat sent at `sent`: renews the
  // lease, destroys the VMs no longer ours, resumes fenced VMs, and applies
  // the network plan (HostNetworks).
  void ApplyHeartbeatReply(const nlohmann::json& reply, std::chrono::steady_clock::time_point sent);
  // The QEMUs the fence stops when the lease runs out: those of `vms`.
  void UpdateFencePids(const std::vector<VmStatus>& vms);
  HostCapacityReport Capacity() const;
  // Reads this host's credentials (STATE/host-credentials.json), or, at
  // first start, exchanges the join token for them (api/host_credentials.h).
  Status LoadOrRegisterCredentials();

  AgentOptions options_;
  metrics::Registry registry_;  // outlives everything its collector reads
  std::string token_;           // the controller's credential for this agent's API
  std::string host_token_;      // this agent's credential for the controller
  std::string url_;
  std::string workspace_dir_;
  std::unique_ptr<AllowedPaths> allowed_;             // state dir + image dirs
  std::unique_ptr<AllowedPaths> allowed_workspaces_;  // workspace dir
  std::unique_ptr<HostImages> images_;                // outlives runner_
  std::unique_ptr<HostNetworks> networks_;            // outlives runner_
  std::unique_ptr<VmRunner> runner_;
  std::unique_ptr<GuardedServer> server_;
  std::unique_ptr<MetricsServer> metrics_server_;  // with --metrics-listen; stopped first
  std::unique_ptr<ApiClient> controller_;
  // Host failure fencing (docs/host-failure.md): stops the QEMUs when the
  // lease the heartbeats renew runs out. Used by the heartbeat thread only.
  std::unique_ptr<LeaseFence> fence_;
  std::map<std::string, pid_t> fence_pids_;  // VM id -> QEMU pid last seen; heartbeat thread
  VmListAck vms_ack_;                        // heartbeat thread
  std::thread server_thread_, heartbeat_thread_;
  std::thread durable_thread_;  // interval pushes of durable workspaces
  std::atomic<bool> stop_{false};
};

}  // namespace vmgrid
