// SimHosts (`vmgrid sim-hosts`): one process that plays N host agents, so one
// machine can register thousands of hosts with a real controller and exercise
// its heartbeat handling, information service and placement. VMs are
// pretended (SimVmTable): operations succeed at once, after an optional fake
// latency, and heartbeats report them.
//
// All hosts share one listening port; host i has the URL
// http://HOST:PORT/sim/NAME and serves the agent API under it
// (/sim/NAME/agent/v1/...): the real agent API code (agent/agent_api.h) with
// a SimVmTable as each host's VmDriver, behind a per-host agent-token check.
// The controller appends agent paths to a host's URL (ApiClient keeps a base
// URL's path prefix), so it needs no change. Each connection serves one
// request (the server's threads are shared by all hosts, so none is held by
// a kept-alive connection of one host).
//
// Heartbeats: at Start() every host registers at once (as fast as the
// controller answers); after that each host heartbeats every
// `heartbeat_interval_s`, spread evenly over the interval and over the
// heartbeat threads. Capacity is the same for every host; host i is
// in site-(i % sites + 1) and on network segment net-(i % networks + 1).
//
// Control API (for benchmarks that run `vmgrid sim-hosts` as a child
// process), on the same port, for the holder of the join token:
//   GET  /control/v1/stats[?since_ms=T]  Stats as JSON (the field names of
//        Stats), plus "hosts_heartbeated_since": hosts whose last heartbeat
//        the controller answered at or after T (ms since the epoch).
//   POST /control/v1/adopt {"vms": [{"host": NAME, "status": VmStatus}]}
//        Adopt()s each VM on host NAME, in order; stops at the first refusal
//        (the error names it; those before it stay adopted). {"adopted": N}.
//
// Thread-safe: HTTP handlers and heartbeats run on their own threads; the
// public methods may be called from any thread after Start().
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "proto/host_report.h"
#include "sim/sim_vm_table.h"

namespace httplib {
class Server;
}

namespace vmgrid {

class ApiClient;
class GuardedServer;
class SimAgentHost;

struct SimHostsOptions {
  // Controller to register with.
  std::string controller_url = "http://127.0.0.1:8470";
  // File holding the join token (the controller writes STATE/agent.token);
  // each host exchanges it for credentials of its own before its first
  // heartbeat, as a real agent does (api/host_credentials.h).
  std::string token_file;
  // The join token itself; when set, token_file is not read (in-process use).
  std::string token;
  // Address to serve all simulated hosts on, "HOST:PORT"; port 0 picks one.
  std::string listen = "127.0.0.1:0";
  int count = 100;
  // Hosts are named PREFIX1 .. PREFIXcount.
  std::string name_prefix = "sim-";
  // Capacity of every host.
  int vcpus = 8;
  int64_t memory_mb = 16384;
  int64_t disk_mb = 102400;  // reported as the state directory's total and free disk
  // Round-robin attributes: site-1..site-S, net-1..net-M.
  int sites = 10;
  int networks = 50;
  // Seconds between two heartbeats of one host. The controller marks a host
  // down after 10 s without one.
  double heartbeat_interval_s = 5;
  // Threads sending heartbeats, each one request at a time. 0: one per 25
  // heartbeats/s of schedule (2..256), so that a controller round trip of up
  // to ~40 ms does not by itself make the schedule slip (real agents each
  // heartbeat on their own).
  int heartbeat_threads = 0;
  // Fake duration of every VM operation (create, stop, checkpoint, resume,
  // delete, exec, image checkpoint).
  int op_latency_ms = 0;
  // Threads answering agent API requests.
  int server_threads = 16;
  // Every heartbeat carries its VM list in full, as agents did before
  // HostReport::vms_same_as: a baseline for bench/infosvc.
  bool full_vm_lists = false;
};

class SimHosts {
 public:
  explicit SimHosts(SimHostsOptions options);
  ~SimHosts();
  SimHosts(const SimHosts&) = delete;
  SimHosts& operator=(const SimHosts&) = delete;

  // Reads the token, binds the listen address, starts serving and
  // heartbeating. Fails without side effects (nothing listens).
  Status Start();
  // Stops heartbeats and the server; returns at once. Wait() joins.
  void Shutdown();
  void Wait();

  int count() const { return options_.count; }
  // http://HOST:PORT (valid after Start).
  const std::string& url() const { return url_; }
  std::string HostName(int index) const;
  std::string HostUrl(int index) const;
  // Index of a host by name, or -1.
  int IndexOf(const std::string& name) const;
  SimVmTable& host(int index) { return *hosts_[static_cast<size_t>(index)]; }
  // The id the controller gave host `index` in its last heartbeat answer
  // ("" before the first successful heartbeat).
  std::string HostId(int index) const;

  // The heartbeat body of host `index` (also GET .../agent/v1/status).
  HostReport Report(int index) const;

  struct Stats {
    // Heartbeats the schedule called for so far (registration round
    // included), whether sent yet or not: with heartbeats_ok, how much of
    // the schedule the controller kept up with.
    int64_t heartbeats_due = 0;
    int64_t heartbeats_ok = 0;
    int64_t heartbeats_failed = 0;
    int64_t heartbeat_us_total = 0;  // summed round trips of successful heartbeats
    int registered = 0;              // hosts with at least one successful heartbeat
    int64_t vm_operations = 0;       // agent API calls that changed a VM
    // Heartbeats sent with the digest of the acknowledged VM list instead of
    // the list, and those of them refused (each then sent again in full).
    int64_t heartbeats_same_as = 0;
    int64_t heartbeats_same_as_refused = 0;
  };
  Stats stats() const;
  // Hosts whose last heartbeat the controller answered at or after `wall_ms`
  // (ms since the epoch, NowMs()).
  int HostsHeartbeatedSince(int64_t wall_ms) const;

 private:
  void InstallRoutes();
  void InstallControlRoutes();
  void HeartbeatLoop(int thread_index);
  int64_t HeartbeatsDue() const;
  void SendHeartbeat(const ApiClient& controller, int index);
  HostCapacityReport Capacity(int index) const;

  SimHostsOptions options_;
  std::string token_;
  std::string url_;
  std::vector<std::unique_ptr<SimVmTable>> hosts_;
  std::vector<std::unique_ptr<SimAgentHost>> agent_hosts_;  // the agent API's view of hosts_
  std::unordered_map<std::string, int> index_of_;
  std::unique_ptr<GuardedServer> server_;
  std::thread server_thread_;
  std::vector<std::thread> heartbeat_threads_;
  int heartbeat_thread_count_ = 0;
  std::chrono::steady_clock::time_point heartbeat_start_;  // round 0; set before the threads start

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;  // guarded by stop_mu_

  mutable std::mutex ids_mu_;
  std::vector<std::string> host_ids_;     // guarded by ids_mu_
  std::vector<std::string> host_tokens_;  // host -> controller; guarded by ids_mu_
  std::vector<std::string>
      api_tokens_;  // controller -> host ("" before registering); guarded by ids_mu_
  std::vector<int64_t> last_ok_ms_;  // NowMs() of the last answered heartbeat; guarded by ids_mu_
  // Per host: its acknowledged VM list; touched by its heartbeat thread only.
  std::vector<VmListAck> vms_acks_;

  std::atomic<int64_t> heartbeats_ok_{0}, heartbeats_failed_{0}, heartbeat_us_{0}, vm_ops_{0},
      same_as_{0}, same_as_refused_{0};
  std::atomic<int> registered_{0};
  std::atomic<bool> failing_{false};
};

// Runs SimHosts until SIGINT/SIGTERM; returns the process exit code.
int RunSimHosts(const SimHostsOptions& options);

}  // namespace vmgrid
