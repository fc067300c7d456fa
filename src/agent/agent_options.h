// Options of `vmgrid agent` (runs QEMU VMs on one host).
// Filled by the CLI (src/cli/cli.cc, which gathers every role's options in
// cli/options.h); the role validates semantics (e.g. that a directory is
// writable), the CLI only syntax.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/tls.h"

namespace vmgrid {

// `vmgrid agent`: runs QEMU VMs on one host on behalf of the controller.
struct AgentOptions {
  // Address the agent's own HTTP endpoint listens on, "HOST:PORT". Port 0
  // picks a free port; the agent reports the actual URL in its heartbeat.
  std::string listen = "127.0.0.1:0";
  // Base URL of the controller the agent registers with.
  std::string controller_url = "https://127.0.0.1:8470";
  // File holding the join token (the controller's STATE/agent.token), which
  // the agent exchanges once for credentials of its own host, kept in
  // STATE_DIR/host-credentials.json. Empty: STATE_DIR/agent.token.
  std::string token_file;
  // VM disks, sockets, logs and other per-host state.
  std::string state_dir = "./state/agent";
  // Host name reported to the controller. Empty: the machine's hostname.
  std::string name;
  // Unprivileged user to run QEMU processes as. Empty: the agent's own user.
  std::string runas;
  // As root, each VM's QEMU runs as uid/gid vm_uid_base + slot (slot <
  // vm_uid_count); the range must belong to the agent. 0: off (runas).
  int vm_uid_base = 2000000000;
  int vm_uid_count = 65536;
  // cgroup v2 hierarchy for per-VM cgroups (used when usable; "" = off).
  std::string cgroup_root = "/sys/fs/cgroup";
  // vCPUs offered to the grid. 0: all online CPUs of the machine.
  int vcpus = 0;
  // Memory offered to the grid, in MiB. 0: derived from the machine's memory.
  uint64_t memory_mb = 0;
  // Administrative domain and network segment the host belongs to; the
  // information service and placement query them.
  std::string site = "default";
  std::string network = "default";
  // Image server (`vmgrid image-server`) to fetch image and checkpoint
  // chunks from; empty: image files are read from the paths the controller
  // sends (single-machine setups).
  std::string image_server;
  std::string image_server_token_file;  // bearer token for it ("" = none)
  // Directories of image files the controller may name by path (on a single
  // machine: the controller's image directory). Paths the controller sends
  // are accepted only under these and the state directory.
  std::vector<std::string> image_dirs;
  uint64_t cache_mb = 10240;  // bound of the host chunk cache (STATE/chunks)
  bool prefetch = true;       // stream recorded first-read orders on cold starts
  // Ask the image server for chunks as zstd frames (docs/chunk-store.md).
  bool compressed_transfer = true;
  // `vm cp`: the largest guest file one copy may move through this host (MiB,
  // at most 1024, the protocol's bound).
  int max_copy_mib = 1024;
  // Virtual networks: "IP[:PORT]" the host's tunnel UDP socket binds, where
  // the other hosts' switches reach this host's (IPv4). Empty: the host of
  // `listen` (127.0.0.1 when that is a wildcard or a name) and the port of
  // the last run, else any free one.
  std::string tunnel_listen;
  // TLS: the agent serves its API only to clients with a certificate of the
  // CA (the controller), and presents its certificate to the controller and
  // the image server.
  ServerTlsOptions tls;
  // Prometheus metrics at http://HOST:PORT/metrics, plain HTTP without
  // authentication (common/metrics_server.h); empty: off.
  std::string metrics_listen;
};

// The role's entry point: runs until SIGTERM/SIGINT; returns the process
// exit code (0 success). Must not throw.
int RunAgent(const AgentOptions& options);

}  // namespace vmgrid
