// `vmgrid image-server`: serves a chunk store and its catalog of image
// versions over HTTP (docs/chunk-store.md) until SIGTERM/SIGINT.
#include <spdlog/spdlog.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>

#include "chunks/chunk_store.h"
#include "chunks/image_catalog.h"
#include "chunks/image_server.h"
#include "chunks/image_server_options.h"
#include "common/host_port.h"
#include "common/metrics_server.h"
#include "common/signals.h"
#include "common/tls.h"
#include "common/util.h"

namespace vmgrid {

int RunImageServer(const ImageServerOptions& options) {
  InstallTerminationHandlers();
  auto fail = [](const std::string& what) {
    spdlog::error("image server: {}", what);
    return 1;
  };
  ImageServer::Options so;
  if (Status st = MakeDirs(options.dir, 0700); !st.ok()) return fail(st.error().message);
  // Never without a token: it would serve every image and checkpoint memory
  // file to anyone who can connect. Without --token-file, DIR/server.token
  // is created (0600) at the first start, like the controller's tokens.
  std::string token_file = options.token_file;
  if (token_file.empty()) {
    token_file = options.dir + "/server.token";
    if (!FileExists(token_file)) {
      if (Status st = WriteFileAtomic(token_file, NewToken() + "\n", 0600); !st.ok())
        return fail("cannot create the token file: " + st.error().message);
      spdlog::info("image server: created the token file {} (give it to the controller and agents)",
                   token_file);
    }
  }
  auto token = ReadTokenFile(token_file);
  if (!token.ok()) return fail("cannot read the token: " + token.error().message);
  so.token = *token;
  if (so.token.empty()) return fail("the token file " + token_file + " is empty");
  // The key of workspace grants (chunks/workspace_grant.h): the controller's
  // --image-server-grant-key-file must name the same bytes; agents never
  // get it. Created (0600) at the first start like the token.
  std::string grant_file =
      options.grant_key_file.empty() ? options.dir + "/grant.key" : options.grant_key_file;
  if (options.grant_key_file.empty() && !FileExists(grant_file)) {
    if (Status st = WriteFileAtomic(grant_file, NewToken() + "\n", 0600); !st.ok())
      return fail("cannot create the grant key file: " + st.error().message);
    spdlog::info(
        "image server: created the workspace grant key {} (give it to the controller only)",
        grant_file);
  }
  auto grant_key = ReadTokenFile(grant_file);
  if (!grant_key.ok()) return fail("cannot read the grant key: " + grant_key.error().message);
  so.grant_key = *grant_key;
  so.grant_dir = options.dir + "/grants";
  // Its clients are grid roles (the controller and agents): mutual TLS.
  auto tls = ServerTls("image server", options.listen, options.tls, /*require_client_cert=*/true);
  if (!tls.ok()) return fail(tls.error().message);
  so.tls = *tls;
  auto store = ChunkStore::Open(options.dir);
  if (!store.ok()) return fail(store.error().message);
  auto catalog = ImageCatalog::Open(options.dir);
  if (!catalog.ok()) return fail(catalog.error().message);
  ImageServer server(**store, **catalog, so);
  auto where = ParseHostPort(options.listen, "--listen");
  if (!where.ok()) return fail(where.error().message);
  auto bound = server.Start(where->host, where->port);
  if (!bound.ok()) return fail(bound.error().message);
  auto stats = (*catalog)->ComputeStats(**store);
  spdlog::info(
      "image server on {} (store {}: {} images, {} versions, {} MiB stored, dedup {:.2f}x)",
      server.url(), options.dir, stats.images, stats.versions, stats.physical_bytes >> 20,
      stats.dedup_ratio);
  metrics::Registry registry;
  registry.AddCollector([&server] { return server.MetricFamilies(); });
  std::unique_ptr<MetricsServer> metrics_server;
  if (!options.metrics_listen.empty()) {
    auto started = MetricsServer::Start(options.metrics_listen, registry);
    if (!started.ok()) return fail(started.error().message);
    metrics_server = std::move(*started);
  }
  WaitForTermination();
  metrics_server.reset();
  spdlog::info("image server stopping");
  server.Stop();
  return 0;
}

}  // namespace vmgrid
