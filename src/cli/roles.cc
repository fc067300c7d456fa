// The server roles' flags: `vmgrid controller|image-server|agent|sim-hosts|dev`.
// Their entry points come from main.cc (RoleEntryPoints): this library does
// not link the roles.
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "cli/command.h"
#include "cli/exit_codes.h"
#include "cli/format.h"
#include "cli/options.h"
#include "client/api_client.h"
#include "common/log_format.h"
#include "common/result.h"
#include "common/util.h"
#include "common/vm_state.h"
#include "sim/sim_hosts.h"

namespace vmgrid::cli {
namespace {

// Runs a role through its registered entry point.
template <class Options>
int Launch(const Ctx& ctx, const std::function<int(const Options&)>& run, const Options& options,
           const char* role, const std::string& log_format = "text") {
  if (!run) {
    ctx.io.err << "error: this binary has no " << role << " role" << std::endl;
    return kExitFailure;
  }
  if (Status st = SetLogFormat(log_format); !st.ok()) {
    ctx.io.err << "error: " << st.error().message << std::endl;
    return kExitFailure;
  }
  return run(options);
}

}  // namespace

// The flags of these commands, kept for the parse.
struct AddRoleCommandsFlags {
  ControllerOptions controller;
  ImageServerOptions image_server;
  AgentOptions agent;
  bool no_prefetch = false;
  bool no_compressed_transfer = false;
  std::string agent_memory;
  DevOptions dev;
  SimHostsOptions sim;
  std::string sim_memory;
  std::string log_format = "text";  // --log-format of the role run
};

void AddRoleCommands(CommandTree& t, const RoleEntryPoints& roles) {
  auto& s = t.Keep<AddRoleCommandsFlags>();
  // TLS flags of a server role (common/tls.h).
  auto tls_flags = [](CLI::App* role, ServerTlsOptions& tls, const std::string& who) {
    role->add_option("--tls-cert", tls.files.cert,
                     "PEM certificate " + who + " serves with and presents as a client")
        ->check(CLI::ExistingFile);
    role->add_option("--tls-key", tls.files.key, "Its PEM private key")->check(CLI::ExistingFile);
    role->add_option("--ca", tls.files.ca,
                     "PEM CA certificate of the grid (peers' certificates must chain to it)")
        ->check(CLI::ExistingFile);
    role->add_flag("--plain-http", tls.plain_http,
                   "Serve plain HTTP instead of TLS (loopback addresses only)");
  };
  // How a server role writes its log lines (common/log_format.h).
  auto log_flag = [&s](CLI::App* role) {
    role->add_option("--log-format", s.log_format,
                     "Log lines as text, or as JSON objects one per line")
        ->check(CLI::IsMember({"text", "json"}))
        ->capture_default_str();
  };
  // The optional metrics endpoint of a server role (common/metrics_server.h).
  auto metrics_flag = [](CLI::App* role, std::string& listen) {
    role->add_option("--metrics-listen", listen,
                     "Serve Prometheus metrics at http://HOST:PORT/metrics, unauthenticated "
                     "(docs/operations.md; default: off)")
        ->check(ListenValidator());
  };

  // --- server roles
  {
    auto* c = t.Leaf(&t.app, "controller", "Run the controller (REST API server)", [&] {
      return Launch(t.ctx, roles.controller, s.controller, "controller", s.log_format);
    });
    c->group("Server roles");
    c->add_option("--listen", s.controller.listen, "Address to listen on")
        ->check(ListenValidator())
        ->capture_default_str();
    c->add_option("--state-dir", s.controller.state_dir, "State directory")->capture_default_str();
    tls_flags(c, s.controller.tls, "the controller");
    metrics_flag(c, s.controller.metrics_listen);
    log_flag(c);
    c->add_option("--database", s.controller.database,
                  "PostgreSQL URI, e.g. postgresql://vmgrid:PW@127.0.0.1/vmgrid "
                  "(default: SQLite STATE_DIR/vmgrid.db)");
    c->add_option("--image-dir", s.controller.image_dir, "Image store (default: STATE_DIR/images)");
    c->add_option(
        "--image-server", s.controller.image_server,
        "Image server URL to publish images and checkpoints to, e.g. http://127.0.0.1:8471 "
        "(default: none; agents read image files by path)");
    c->add_option("--image-server-token-file", s.controller.image_server_token_file,
                  "File with the image server's token");
    c->add_option("--image-server-grant-key-file", s.controller.image_server_grant_key_file,
                  "File with the image server's workspace grant key (its DIR/grant.key); "
                  "without it persistent workspaces are not made durable");
    c->add_option("--workspace-push-interval", s.controller.workspace_push_interval_s,
                  "Seconds between pushes of a running persistent VM's workspace to the image "
                  "server (0: only on stop and checkpoint); sent to agents")
        ->check(CLI::Range(0, 86400 * 7))
        ->capture_default_str();
    c->add_option("--agent-listen", s.controller.agent_listen,
                  "Separate address for agents' heartbeats (and health), with threads of its own; "
                  "give agents this URL as --controller (default: none, the main listener)")
        ->check(ListenValidator());
    c->add_option("--events-keep", s.controller.events_keep,
                  "Events the event stream keeps (the newest; older ones are deleted)")
        ->check(CLI::Range(int64_t{1000}, int64_t{1'000'000'000}))
        ->capture_default_str();
    // Admission limits (docs/api.md#limits); over a limit: 429 with Retry-After.
    for (auto [flag, dst, what] :
         {std::tuple{"--max-requests-per-user", &s.controller.max_requests_per_user,
                     "Requests of one user handled at once"},
          {"--max-user-requests", &s.controller.max_user_requests,
           "Requests of all users handled at once (the other HTTP threads stay free for agents and "
           "health)"},
          {"--max-execs-per-user", &s.controller.max_execs_per_user,
           "Exec operations of one user running at once"},
          {"--max-long-ops-per-user", &s.controller.max_long_ops_per_user,
           "Image finalizes, checkpoint publishes and workspace deletions of one user running at "
           "once"},
          {"--max-creates-per-user", &s.controller.max_creates_per_user,
           "VM creates of one user in flight"},
          {"--max-queries-per-user", &s.controller.max_queries_per_user,
           "Queries of one user running at once"},
          {"--max-followers-per-user", &s.controller.max_followers_per_user,
           "Event followers (GET /v1/events?follow=1) of one user waiting at once"},
          {"--max-followers", &s.controller.max_followers,
           "Event followers of all users waiting at once"},
          {"--http-threads", &s.controller.http_threads,
           "Connection threads of the REST API server"},
          {"--header-timeout-ms", &s.controller.header_timeout_ms,
           "Time a client has to send a request's line and headers"},
          // docs/host-failure.md: shorter recovers sooner, longer declares
          // fewer slow or briefly cut-off hosts failed (which loses their VMs' work).
          {"--host-suspect-after-ms", &s.controller.host_suspect_after_ms,
           "A host without heartbeats this long is suspect: no new VMs are placed there"},
          {"--host-failed-after-ms", &s.controller.host_failed_after_ms,
           "A host without heartbeats this long is failed: its VMs are recovered by their restart "
           "policy (at least --host-lease-ms + --host-lease-grace-ms)"},
          {"--host-lease-ms", &s.controller.host_lease_ms,
           "Lease each heartbeat grants an agent: an agent that cannot renew it in time pauses its "
           "VMs"},
          {"--host-lease-grace-ms", &s.controller.host_lease_grace_ms,
           "Margin after a lease ran out before the host's VMs may run elsewhere (covers the "
           "agent's fencing delay and clock-rate drift)"}})
      c->add_option(flag, *dst, what)->check(CLI::Range(1, 1'000'000))->capture_default_str();

    auto* is = t.Leaf(&t.app, "image-server",
                      "Run an image server (content-addressed image and checkpoint chunks)", [&] {
                        return Launch(t.ctx, roles.image_server, s.image_server, "image_server",
                                      s.log_format);
                      });
    is->group("Server roles");
    is->add_option("--listen", s.image_server.listen, "Address to listen on")
        ->check(ListenValidator())
        ->capture_default_str();
    is->add_option("--dir", s.image_server.dir, "Chunk store and manifests")->capture_default_str();
    tls_flags(is, s.image_server.tls, "the image server");
    metrics_flag(is, s.image_server.metrics_listen);
    log_flag(is);
    is->add_option(
        "--token-file", s.image_server.token_file,
        "File with the bearer token clients must send (default: DIR/server.token, created 0600)");
    is->add_option("--grant-key-file", s.image_server.grant_key_file,
                   "File with the key of workspace grants, shared with the controller only "
                   "(default: DIR/grant.key, created 0600)");

    auto* a = t.Leaf(&t.app, "agent", "Run a host agent", [&] {
      if (!s.agent_memory.empty()) s.agent.memory_mb = ParseMemoryMb(s.agent_memory).value();
      s.agent.prefetch = !s.no_prefetch;
      s.agent.compressed_transfer = !s.no_compressed_transfer;
      return Launch(t.ctx, roles.agent, s.agent, "agent", s.log_format);
    });
    a->group("Server roles");
    a->add_option("--listen", s.agent.listen, "Address to listen on (port 0: any)")
        ->check(ListenValidator())
        ->capture_default_str();
    a->add_option("--controller", s.agent.controller_url,
                  "Controller base URL, or several separated by commas (failover: docs/ha.md)")
        ->capture_default_str();
    a->add_option("--token-file", s.agent.token_file,
                  "File with the join token (controller STATE/agent.token); read only until this "
                  "host has credentials (STATE/host-credentials.json)");
    a->add_option("--state-dir", s.agent.state_dir, "State directory")->capture_default_str();
    tls_flags(a, s.agent.tls, "the agent");
    a->add_option("--name", s.agent.name, "Host name to report (default: hostname)");
    a->add_option("--runas", s.agent.runas, "Run QEMU as this user (when per-VM uids are off)");
    a->add_option(
         "--vm-uid-base", s.agent.vm_uid_base,
         "As root, run each VM's QEMU as uid/gid BASE+slot, a range the agent owns (0: off)")
        ->check(CLI::Range(0, 2100000000))
        ->capture_default_str();
    a->add_option("--vm-uid-count", s.agent.vm_uid_count, "Size of the per-VM uid range")
        ->check(CLI::Range(1, 1 << 24))
        ->capture_default_str();
    a->add_option("--cgroup-root", s.agent.cgroup_root,
                  "cgroup v2 hierarchy for per-VM cgroups, used when usable (\"\": off)")
        ->capture_default_str();
    a->add_option("--max-copy-mib", s.agent.max_copy_mib,
                  "Largest guest file one `vm cp` may move through this host, MiB")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    a->add_option("--site", s.agent.site, "Site (administrative domain) of this host")
        ->capture_default_str();
    a->add_option("--network", s.agent.network, "Network segment of this host")
        ->capture_default_str();
    a->add_option("--vcpus", s.agent.vcpus, "vCPUs to offer (0: all)")->check(CLI::Range(0, 4096));
    a->add_option("--memory-mb", s.agent_memory, "Memory to offer, MiB or 4G (default: auto)")
        ->check(MemoryValidator());
    a->add_option(
        "--image-server", s.agent.image_server,
        "Image server URL to fetch image chunks from (default: read image files by path)");
    a->add_option("--image-server-token-file", s.agent.image_server_token_file,
                  "File with the image server's token");
    a->add_option("--image-dir", s.agent.image_dirs,
                  "Directory of image files the controller may name by path (repeatable; "
                  "single-machine setups)");
    a->add_option("--cache-mb", s.agent.cache_mb, "Bound of the host chunk cache, MiB")
        ->check(CLI::Range(64, 1 << 24))
        ->capture_default_str();
    a->add_flag("--no-prefetch", s.no_prefetch,
                "Do not stream recorded first-read orders on cold starts");
    a->add_flag("--no-compressed-transfer", s.no_compressed_transfer,
                "Fetch chunks from the image server raw, not as zstd frames");
    metrics_flag(a, s.agent.metrics_listen);
    log_flag(a);
    a->add_option("--tunnel-listen", s.agent.tunnel_listen,
                  "IPv4[:PORT] for virtual-network tunnels, reachable by the other hosts "
                  "(default: the --listen address, the last run's port)");

    auto* sh =
        t.Leaf(&t.app, "sim-hosts", "Simulate N hosts for the controller (scale tests)", [&] {
          if (!s.sim_memory.empty())
            s.sim.memory_mb = static_cast<int64_t>(ParseMemoryMb(s.sim_memory).value());
          return Launch(t.ctx, roles.sim_hosts, s.sim, "sim_hosts", s.log_format);
        });
    log_flag(sh);
    sh->add_option("--count", s.sim.count, "Number of simulated hosts")
        ->check(CLI::Range(1, 1000000))
        ->capture_default_str();
    sh->add_option("--controller", s.sim.controller_url,
                   "Controller base URL, or several separated by commas (failover: docs/ha.md)")
        ->capture_default_str();
    sh->add_option("--token-file", s.sim.token_file,
                   "File with the join token (controller STATE/agent.token)")
        ->required();
    sh->add_option("--listen", s.sim.listen, "Address to serve the agent API on")
        ->check(ListenValidator())
        ->capture_default_str();
    sh->add_option("--name-prefix", s.sim.name_prefix, "Host name prefix")->capture_default_str();
    sh->add_option("--vcpus", s.sim.vcpus, "vCPUs per host")
        ->check(CLI::Range(1, 4096))
        ->capture_default_str();
    sh->add_option("--memory-mb", s.sim_memory, "Memory per host, MiB or 16G")
        ->check(MemoryValidator());
    sh->add_option("--sites", s.sim.sites, "Sites, assigned round-robin")
        ->check(CLI::Range(1, 100000));
    sh->add_option("--networks", s.sim.networks, "Network segments, round-robin")
        ->check(CLI::Range(1, 100000));
    sh->add_option("--heartbeat-interval", s.sim.heartbeat_interval_s, "Seconds between heartbeats")
        ->check(CLI::Range(0.1, 9.0));
    sh->add_option("--latency-ms", s.sim.op_latency_ms, "Fake latency of VM operations")
        ->check(CLI::Range(0, 600000));
    sh->add_flag(
        "--full-vm-lists", s.sim.full_vm_lists,
        "Send every VM list in full (never its digest): the older agents' way, a baseline");

    auto* d =
        t.Leaf(&t.app, "dev", "Run a controller and N agents on this machine (development)", [&] {
          if (s.dev.exit_after_demo) s.dev.demo = true;
          s.dev.log_format = s.log_format;
          return Launch(t.ctx, roles.dev, s.dev, "dev", s.log_format);
        });
    d->group("Server roles");
    d->add_option("--hosts", s.dev.hosts, "Number of simulated hosts")
        ->check(CLI::Range(1, 64))
        ->capture_default_str();
    d->add_option("--port", s.dev.port, "Controller port on 127.0.0.1")
        ->check(CLI::Range(0, 65535))
        ->capture_default_str();
    d->add_option("--state-dir", s.dev.state_dir, "State directory")->capture_default_str();
    d->add_flag("--demo", s.dev.demo, "Run the demo once up");
    d->add_flag("--exit-after-demo", s.dev.exit_after_demo,
                "Exit when the demo is done (implies --demo)");
    d->add_flag("--keep-vms", s.dev.keep_vms, "Keep the demo's VMs at exit");
    log_flag(d);  // also passed to every process the grid starts
    d->add_option("--controllers", s.dev.controllers,
                  "Controllers sharing the database (more than one needs --database; "
                  "docs/ha.md)")
        ->check(CLI::Range(1, 8))
        ->capture_default_str();
    d->add_option("--database", s.dev.database,
                  "The controllers' PostgreSQL database (postgresql://...); default SQLite in "
                  "the state directory");
  }
}

}  // namespace vmgrid::cli
