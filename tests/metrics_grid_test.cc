// /metrics of every role of a real grid (docs/operations.md): after one VM
// boots, each endpoint parses under the text format's rules
// (common/metrics_text.h) and shows the series an operator needs, with sane
// values; no VM's name or id appears in any of them. Every metric the shipped
// Grafana dashboard queries is among them, and with `--log-format json` every
// role's log is one JSON object per line.
#include <gtest/gtest.h>
#include <httplib.h>

#include <regex>
#include <sstream>

#include "common/metrics.h"
#include "common/metrics_text.h"
#include "common/util.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

metrics::ParsedExposition Scrape(const std::string& url, const std::vector<std::string>& secret) {
  httplib::Client client(url);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  auto res = client.Get("/metrics");
  EXPECT_TRUE(res) << url;
  if (!res) return {};
  EXPECT_EQ(res->status, 200) << url;
  EXPECT_EQ(res->get_header_value("Content-Type"), metrics::kContentType);
  for (const auto& s : secret)
    EXPECT_EQ(res->body.find(s), std::string::npos) << s << " in " << url;
  auto parsed = metrics::ParseExposition(res->body);
  EXPECT_TRUE(parsed.ok()) << url << ": " << (parsed.ok() ? "" : parsed.error().message);
  return parsed.ok() ? *parsed : metrics::ParsedExposition{};
}

TEST(MetricsGridTest, EveryRoleServesParsableMetrics) {
  auto grid = StartGrid("metrics", 1, {}, /*tls=*/true, /*host_namespaces=*/false,
                        /*metrics=*/true, /*log_format=*/"json");
  ASSERT_TRUE(grid);
  ApiClient api = grid->Admin();
  ImportTiny(api, "tiny", false);
  json vm = CreateVm(api, {{"image", "tiny"}, {"name", "metrics-secret-vm"}});
  ASSERT_EQ(vm["state"], "running") << vm.dump();
  const std::vector<std::string> secret = {"metrics-secret-vm", vm["id"].get<std::string>()};

  auto c = Scrape(grid->controller_metrics_url(), secret);
  EXPECT_GE(c.Sum("vmgrid_vms", {{"state", "running"}}), 1);
  EXPECT_EQ(c.Sum("vmgrid_vms", {{"state", "error"}}), 0);
  EXPECT_GE(c.Sum("vmgrid_http_requests_total",
                  {{"route", "/v1/vms"}, {"method", "POST"}, {"code", "2xx"}}),
            1);
  EXPECT_GE(c.Sum("vmgrid_http_requests_total", {{"route", "/v1/agent/heartbeat"}}), 1);
  EXPECT_GE(c.Sum("vmgrid_http_request_duration_seconds_count", {{"route", "/v1/vms"}}), 1);
  EXPECT_GE(c.Sum("vmgrid_placements_total", {{"kind", "single"}, {"outcome", "placed"}}), 1);
  EXPECT_EQ(c.Sum("vmgrid_host_up", {{"host", "host-1"}}), 1);
  EXPECT_GE(c.Sum("vmgrid_host_reserved_vcpus", {{"host", "host-1"}}), 1);
  EXPECT_GT(c.Sum("vmgrid_host_memory_bytes", {{"host", "host-1"}}), 0);
  EXPECT_TRUE(c.Has("vmgrid_operations_queued"));
  EXPECT_EQ(c.Sum("vmgrid_store_failed_writes_total"), 0);

  auto a = Scrape(grid->agent_metrics_url(0), secret);
  EXPECT_GE(a.Sum("vmgrid_agent_vms", {{"state", "running"}}), 1);
  EXPECT_GT(a.Sum("vmgrid_chunk_cache_misses_total") + a.Sum("vmgrid_chunk_cache_hits_total"), 0);
  EXPECT_GT(a.Sum("vmgrid_chunk_cache_fetched_bytes_total"), 0);
  EXPECT_EQ(a.Sum("vmgrid_chunk_verification_failures_total"), 0);
  EXPECT_GT(a.Sum("vmgrid_nbd_read_bytes_total"), 0);

  auto s = Scrape(grid->image_server_metrics_url(), secret);
  EXPECT_GT(s.Sum("vmgrid_image_server_chunks_served_total"), 0);
  EXPECT_GT(s.Sum("vmgrid_image_server_served_bytes_total"), 0);
  EXPECT_GT(s.Sum("vmgrid_chunk_store_chunks"), 0);

  // The dashboard operators import (packaging/grafana) queries only series
  // that exist: a renamed metric would leave a panel silently empty.
  auto dashboard =
      ReadFile(std::string(VMGRID_SOURCE_DIR) + "/packaging/grafana/vmgrid-dashboard.json");
  ASSERT_TRUE(dashboard.ok());
  json dash = json::parse(*dashboard);
  int queried = 0;
  const std::regex metric_name("vmgrid_[a-z0-9_]+");
  for (const auto& panel : dash.at("panels")) {
    for (const auto& target : panel.value("targets", json::array())) {
      const std::string expr = target.at("expr");
      for (std::sregex_iterator m(expr.begin(), expr.end(), metric_name), end; m != end; ++m) {
        const std::string name = m->str();
        EXPECT_TRUE(c.Has(name) || a.Has(name) || s.Has(name))
            << "the dashboard's panel '" << panel.value("title", "") << "' queries " << name
            << ", which no role serves";
        ++queried;
      }
    }
  }
  EXPECT_GT(queried, 10);

  DeleteVm(api, vm["id"]);
  // `vmgrid dev --log-format json` reaches every role it starts.
  for (const char* file : {"controller.log", "image-server.log", "host-1.log"}) {
    auto text = ReadFile(grid->log_dir() + "/" + file);
    ASSERT_TRUE(text.ok()) << file;
    // The roles still run: a line being written has no newline yet.
    std::istringstream lines(text->substr(0, text->rfind('\n') + 1));
    int n = 0;
    for (std::string line; std::getline(lines, line);) {
      if (line.empty()) continue;
      json entry = json::parse(line, nullptr, /*allow_exceptions=*/false);
      EXPECT_TRUE(entry.is_object() && entry.contains("msg") && entry.contains("level"))
          << file << ": " << line;
      ++n;
    }
    EXPECT_GT(n, 0) << file;
  }
  StopGrid(grid);
}

}  // namespace
}  // namespace vmgrid
