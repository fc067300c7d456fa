// Options of `vmgrid controller` (the REST API server and scheduler).
// Filled by the CLI (src/cli/cli.cc, which gathers every role's options in
// cli/options.h); the role validates semantics (e.g. that a directory is
// writable), the CLI only syntax.
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
  // Durable workspaces (docs/vm-lifecycle.md): the image server's grant key
  // (its DIR/grant.key). Empty: workspaces stay on their host only.
  std::string image_server_grant_key_file{};
  // Seconds between pushes of a running persistent VM's workspace (sent to
  // agents in the VM spec); 0: only on stop and checkpoint.
  int64_t workspace_push_interval_s = 600;
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
  int max_followers_per_user = 4;  // GET /v1/events?follow=1 waiting at once
  int max_followers = 32;          // all users' followers waiting at once
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
  // Prometheus metrics at http://HOST:PORT/metrics, plain HTTP without
  // authentication (common/metrics_server.h); empty: off.
  std::string metrics_listen;
  // The event stream (docs/operations.md, "Events") keeps the newest this
  // many events; older ones are deleted once a minute.
  int64_t events_keep = 100'000;
  // Host failure (docs/host-failure.md): suspect after this long without a
  // heartbeat (no new placements), failed after the longer interval (VMs
  // recovered by their restart policy). Each heartbeat grants the agent a
  // lease; a VM is recovered only after lease + grace without a heartbeat.
  // Shorter: faster recovery; longer: fewer false failures of slow or
  // briefly partitioned hosts (each one costs the work of its VMs).
  int host_suspect_after_ms = 10'000;
  int host_failed_after_ms = 30'000;
  int host_lease_ms = 10'000;
  int host_lease_grace_ms = 5'000;
};

// The role's entry point: runs until SIGTERM/SIGINT; returns the process
// exit code (0 success). Must not throw.
int RunController(const ControllerOptions& options);

}  // namespace vmgrid
