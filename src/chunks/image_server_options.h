// Options of `vmgrid image-server` (content-addressed image and checkpoint chunks).
// Filled by the CLI (src/cli/cli.cc, which gathers every role's options in
// cli/options.h); the role validates semantics (e.g. that a directory is
// writable), the CLI only syntax.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/tls.h"

namespace vmgrid {

// `vmgrid image-server`: the content-addressed store of image and checkpoint
// versions that agents fetch chunks from (docs/chunk-store.md).
struct ImageServerOptions {
  std::string listen = "127.0.0.1:8471";
  std::string dir = "./state/image-server";  // chunks/, manifests/
  // Bearer token clients must send. "" = DIR/server.token, created (0600) at
  // the first start: the image server never serves without a token.
  std::string token_file;
  // Key of workspace grants (durable workspaces, chunks/workspace_grant.h),
  // shared with the controller only. "" = DIR/grant.key, created (0600) at
  // the first start.
  std::string grant_key_file{};
  // TLS; clients (controller, agents) must present certificates of the CA.
  ServerTlsOptions tls;
  // Prometheus metrics at http://HOST:PORT/metrics, plain HTTP without
  // authentication (common/metrics_server.h); empty: off.
  std::string metrics_listen;
};

// The role's entry point: runs until SIGTERM/SIGINT; returns the process
// exit code (0 success). Must not throw.
int RunImageServer(const ImageServerOptions& options);

}  // namespace vmgrid
