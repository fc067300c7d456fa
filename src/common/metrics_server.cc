#include "common/metrics_server.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "common/http_server.h"

namespace vmgrid {

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen,
                                                            const metrics::Registry& registry) {
  std::unique_ptr<MetricsServer> s(new MetricsServer);
  s->server_ = std::make_unique<GuardedServer>(HttpServerLimits{});
  s->server_->new_task_queue = [] { return new httplib::ThreadPool(2); };
  s->server_->set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    return RefuseUnframedBody(req, res, 0) ? httplib::Server::HandlerResponse::Handled
                                           : httplib::Server::HandlerResponse::Unhandled;
  });
  s->server_->Get("/metrics", [&registry](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry.Render(), metrics::kContentType);
  });
  auto url = s->server_->Bind(listen);
  if (!url.ok()) return url.error().Wrap("metrics listener " + listen);
  s->url_ = *url;
  s->thread_ = std::thread([server = s->server_.get()] { server->listen_after_bind(); });
  spdlog::info("metrics at {}/metrics", s->url_);
  return s;
}

MetricsServer::~MetricsServer() {
  // stop() is a no-op until the loop runs: wait (briefly) for it to start.
  for (int i = 0; i < 200 && server_ && !server_->is_running(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace vmgrid
