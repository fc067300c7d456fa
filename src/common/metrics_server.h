// The optional `--metrics-listen HOST:PORT` endpoint of every role: plain
// HTTP serving only GET /metrics (the registry's text exposition) on a few
// threads of its own, so a scraper never competes with users or agents for
// the API's threads. It needs no credential: what it exposes is aggregate
// (states, routes, hosts, counters; never VM or user names or ids), and it
// is off unless asked for, meant for loopback or a monitoring network
// (docs/operations.md).
// Thread-safe; the destructor stops the server and joins its thread.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "common/metrics.h"
#include "common/result.h"

namespace vmgrid {

class GuardedServer;

class MetricsServer {
 public:
  // Binds `listen` ("HOST:PORT", port 0: any free one) and serves
  // `registry`, which must outlive the server.
  static Result<std::unique_ptr<MetricsServer>> Start(const std::string& listen,
                                                      const metrics::Registry& registry);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // "http://HOST:PORT".
  const std::string& url() const { return url_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<GuardedServer> server_;
  std::string url_;
  std::thread thread_;
};

}  // namespace vmgrid
