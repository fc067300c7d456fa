// Options of the three server roles of the single `vmgrid` binary, filled by
// the CLI (src/cli/cli.cc) and consumed by the role implementations:
//   vmgrid controller -> RunController (src/api)
//   vmgrid agent      -> RunAgent      (src/agent)
//   vmgrid dev        -> RunDev        (src/dev)
// The CLI validates syntax (e.g. "host:port" shape, positive numbers); the
// roles validate semantics (e.g. that a directory is writable).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/tls.h"

namespace vmgrid {

// `vmgrid controller`: the REST API server and scheduler.
struct ControllerOptions {
  // Address to serve the REST API on, "HOST:PORT". Port 0 picks a free port.
  std::string listen = "127.0.0.1:8470";
  // Database, tokens (STATE/admin.token) and other controller state.
  std::string state_dir = "./state/controller";
  // Where uploaded images are stored. Empty: STATE_DIR/images.
  std::string image_dir;
  // Controller database: a PostgreSQL URI. Empty: SQLite STATE_DIR/vmgrid.db.
  std::string database;
  // Image server (`vmgrid image-server`) that images and their checkpoints
  // are published to (docs/chunk-store.md); empty: agents read image files
  // from image_dir by path (one machine only).
  std::string image_server;
  std::string image_server_token_file;
  // Admission (docs/api.md#limits): one user's share of the controller. Over
  // a limit the request is answered 429 with Retry-After.
  int max_requests_per_user = 16;  // requests of one user being handled at once
  int max_user_requests = 96;      // all users' requests at once (the rest of
                                   // http_threads stays free for agents and health)
  int max_execs_per_user = 8;      // exec operations running at once
  int max_long_ops_per_user = 4;   // image finalizes, checkpoint publishes and
                                   // workspace deletions running at once
  int max_creates_per_user = 16;   // VM creates in flight (gang members count)
  int max_queries_per_user = 2;    // information-service queries at once
  int http_threads = 128;          // connection threads of the REST API server
  int header_timeout_ms = 10'000;  // a request's line and headers, in total
  // A second listener, "HOST:PORT", serving only agents' heartbeats and
  // health on threads of its own; point agents' --controller at it. Empty:
  // agents use the main listener.
  std::string agent_listen;
  // TLS (common/tls.h): the certificate the controller serves with and
  // presents to agents and the image server, and the CA all of them chain
  // to; the agents' listener requires agents' client certificates.
  ServerTlsOptions tls;
};

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
  uint64_t cache_mb = 10240;            // bound of the host chunk cache (STATE/chunks)
  bool prefetch = true;                 // stream recorded first-read orders on cold starts
  // TLS: the agent serves its API only to clients with a certificate of the
  // CA (the controller), and presents its certificate to the controller and
  // the image server.
  ServerTlsOptions tls;
};

// `vmgrid dev`: a controller plus N agents as child processes, for development
// and demos; state under one directory (admin token at
// STATE_DIR/controller/admin.token).
struct DevOptions {
  // Number of agents (each its own process, state dir and port), >= 1.
  int hosts = 1;
  // Controller port on 127.0.0.1.
  int port = 8470;
  std::string state_dir = "./state/dev";
  // Run the built-in demo (import an image, start VMs, exec) once up.
  bool demo = false;
  // Exit after the demo finishes (the CLI sets `demo` too when this is set).
  bool exit_after_demo = false;
  // Leave the demo's VMs running/existing at exit instead of deleting them.
  bool keep_vms = false;
};

// Role entry points, defined by the respective modules (not by src/cli).
// Each returns the process exit code (0 success). Must not throw.
// `vmgrid image-server`: the content-addressed store of image and checkpoint
// versions that agents fetch chunks from (docs/chunk-store.md).
struct ImageServerOptions {
  std::string listen = "127.0.0.1:8471";
  std::string dir = "./state/image-server";  // chunks/, manifests/
  // Bearer token clients must send. "" = DIR/server.token, created (0600) at
  // the first start: the image server never serves without a token.
  std::string token_file;
  // TLS; clients (controller, agents) must present certificates of the CA.
  ServerTlsOptions tls;
};

int RunController(const ControllerOptions& options);
int RunImageServer(const ImageServerOptions& options);
int RunAgent(const AgentOptions& options);
int RunDev(const DevOptions& options);

}  // namespace vmgrid
