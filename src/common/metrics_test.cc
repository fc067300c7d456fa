#include "common/metrics.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <cmath>
#include <thread>

#include "common/metrics_server.h"
#include "common/metrics_text.h"

namespace vmgrid::metrics {
namespace {

TEST(MetricsTest, NamesFollowPrometheusRules) {
  EXPECT_TRUE(ValidMetricName("vmgrid_http_requests_total"));
  EXPECT_TRUE(ValidMetricName("a:b_c9"));
  EXPECT_TRUE(ValidMetricName("_x"));
  EXPECT_FALSE(ValidMetricName(""));
  EXPECT_FALSE(ValidMetricName("9a"));
  EXPECT_FALSE(ValidMetricName("a-b"));
  EXPECT_FALSE(ValidMetricName("a b"));
  EXPECT_TRUE(ValidLabelName("state"));
  EXPECT_FALSE(ValidLabelName("a:b"));
  EXPECT_FALSE(ValidLabelName("__name__"));
  EXPECT_FALSE(ValidLabelName("1x"));
}

TEST(MetricsTest, EscapesLabelValues) {
  EXPECT_EQ(EscapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
  EXPECT_EQ(FormatValue(3), "3");
  EXPECT_EQ(FormatValue(0.25), "0.25");
  EXPECT_EQ(FormatValue(INFINITY), "+Inf");
  EXPECT_EQ(FormatValue(-INFINITY), "-Inf");
  EXPECT_EQ(FormatValue(NAN), "NaN");
}

TEST(MetricsTest, RendersCountersGaugesAndHistograms) {
  Registry r;
  auto& requests = r.AddCounter("t_requests_total", "Requests.", {"route", "code"});
  requests.With({"/v1/vms", "2xx"}).Inc();
  requests.With({"/v1/vms", "2xx"}).Inc(2);
  requests.With({"/v1/x\"y\\z\n", "4xx"}).Inc();
  r.AddGauge("t_queue_depth", "Depth.").With({}).Set(7);
  auto& lat = r.AddHistogram("t_duration_seconds", "Latency.", {0.1, 1}, {"route"});
  lat.With({"a"}).Observe(0.05);
  lat.With({"a"}).Observe(0.5);
  lat.With({"a"}).Observe(5);
  r.AddCollector([] {
    FamilySnapshot f{"t_vms", "VMs per state.", Type::kGauge, {}};
    f.Add({{"state", "running"}}, 2).Add({{"state", "stopped"}}, 1);
    return std::vector<FamilySnapshot>{f};
  });
  const std::string text = r.Render();
  EXPECT_NE(text.find("# TYPE t_requests_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("t_requests_total{route=\"/v1/vms\",code=\"2xx\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("route=\"/v1/x\\\"y\\\\z\\n\""), std::string::npos) << text;
  EXPECT_NE(text.find("t_duration_seconds_bucket{route=\"a\",le=\"0.1\"} 1\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("t_duration_seconds_bucket{route=\"a\",le=\"1\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("t_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("t_duration_seconds_sum{route=\"a\"} 5.55"), std::string::npos);
  EXPECT_NE(text.find("t_duration_seconds_count{route=\"a\"} 3\n"), std::string::npos);

  auto parsed = ParseExposition(text);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message << "\n" << text;
  EXPECT_EQ(parsed->Sum("t_requests_total"), 4);
  EXPECT_EQ(parsed->Sum("t_requests_total", {{"route", "/v1/x\"y\\z\n"}}), 1);
  EXPECT_EQ(parsed->Sum("t_vms", {{"state", "running"}}), 2);
  EXPECT_EQ(parsed->families.at("t_duration_seconds").type, "histogram");
  EXPECT_EQ(parsed->families.at("t_queue_depth").help, "Depth.");
}

TEST(MetricsTest, ConcurrentUpdatesAreAllCounted) {
  Registry r;
  auto& c = r.AddCounter("t_total", "", {"k"}).With({"v"});
  auto& h = r.AddHistogram("t_seconds", "", LatencyBuckets()).With({});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.Inc();
        h.Observe(0.003);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.value(), 40000);
  auto s = h.Read();
  EXPECT_EQ(s.count, 40000u);
  EXPECT_EQ(s.cumulative[1], 0u);
  EXPECT_EQ(s.cumulative[2], 40000u);
  EXPECT_TRUE(ParseExposition(r.Render()).ok());
}

TEST(MetricsTest, EmptyFamiliesStillParse) {
  Registry r;
  r.AddCounter("t_total", "x", {"a"});
  r.AddHistogram("t_seconds", "x", {1}, {"a"});
  auto parsed = ParseExposition(r.Render());
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_FALSE(parsed->Has("t_total"));
}

TEST(MetricsTextTest, AcceptsTheFormatsOwnExample) {
  const char* text =
      "# HELP http_requests_total The total number of HTTP requests.\n"
      "# TYPE http_requests_total counter\n"
      "http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n"
      "http_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n"
      "\n"
      "# A normal comment.\n"
      "# TYPE metric_without_timestamp_and_labels gauge\n"
      "metric_without_timestamp_and_labels 12.47\n"
      "# TYPE a_gauge gauge\n"
      "a_gauge{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} "
      "1.458255915e9\n"
      "a_gauge{x=\"1\"} -Inf\n"
      "a_gauge{x=\"2\"} NaN\n"
      "# HELP http_request_duration_seconds A histogram of the request duration.\n"
      "# TYPE http_request_duration_seconds histogram\n"
      "http_request_duration_seconds_bucket{le=\"0.05\"} 24054\n"
      "http_request_duration_seconds_bucket{le=\"0.1\"} 33444\n"
      "http_request_duration_seconds_bucket{le=\"+Inf\"} 144320\n"
      "http_request_duration_seconds_sum 53423\n"
      "http_request_duration_seconds_count 144320\n"
      "# TYPE rpc_duration_seconds summary\n"
      "rpc_duration_seconds{quantile=\"0.5\"} 4773\n"
      "rpc_duration_seconds_sum 1.7560473e+07\n"
      "rpc_duration_seconds_count 2693\n";
  auto parsed = ParseExposition(text);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ(parsed->Sum("http_requests_total"), 1030);
  EXPECT_EQ(parsed->Sum("a_gauge", {{"path", "C:\\DIR\\FILE.TXT"}}), 1.458255915e9);
  EXPECT_EQ(parsed->families.size(), 5u);
}

TEST(MetricsTextTest, RefusesWhatTheRulesForbid) {
  const std::pair<const char*, const char*> bad[] = {
      {"no TYPE", "x 1\n"},
      {"no newline at the end", "# TYPE x gauge\nx 1"},
      {"bad name", "# TYPE x-y gauge\nx-y 1\n"},
      {"name starts with a digit", "# TYPE 1x gauge\n1x 1\n"},
      {"bad label name", "# TYPE x gauge\nx{1a=\"b\"} 1\n"},
      {"reserved label name", "# TYPE x gauge\nx{__a=\"b\"} 1\n"},
      {"unquoted label value", "# TYPE x gauge\nx{a=b} 1\n"},
      {"bad escape", "# TYPE x gauge\nx{a=\"\\t\"} 1\n"},
      {"unterminated value", "# TYPE x gauge\nx{a=\"b} 1\n"},
      {"label twice", "# TYPE x gauge\nx{a=\"1\",a=\"2\"} 1\n"},
      {"missing comma", "# TYPE x gauge\nx{a=\"1\" b=\"2\"} 1\n"},
      {"bad value", "# TYPE x gauge\nx 1x\n"},
      {"hex value", "# TYPE x gauge\nx 0x10\n"},
      {"no value", "# TYPE x gauge\nx\n"},
      {"bad timestamp", "# TYPE x gauge\nx 1 2.5\n"},
      {"two values", "# TYPE x gauge\nx 1 2 3\n"},
      {"unknown type", "# TYPE x meter\nx 1\n"},
      {"TYPE twice", "# TYPE x gauge\n# TYPE x gauge\nx 1\n"},
      {"HELP twice", "# HELP x a\n# HELP x b\n# TYPE x gauge\nx 1\n"},
      {"HELP without TYPE", "# HELP x a\n"},
      {"TYPE after samples", "# TYPE x gauge\nx 1\n# TYPE y gauge\ny 1\n# TYPE x gauge\n"},
      {"family split", "# TYPE x gauge\n# TYPE y gauge\nx 1\ny 1\nx{a=\"1\"} 2\n"},
      {"duplicate series", "# TYPE x gauge\nx{a=\"1\",b=\"2\"} 1\nx{b=\"2\",a=\"1\"} 2\n"},
      {"counter without _total", "# TYPE x counter\nx 1\n"},
      {"negative counter", "# TYPE x_total counter\nx_total -1\n"},
      {"bucket without le", "# TYPE h histogram\nh_bucket 1\nh_sum 1\nh_count 1\n"},
      {"no +Inf bucket", "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n"},
      {"not cumulative",
       "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"},
      {"bounds not increasing",
       "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} "
       "1\nh_sum 1\nh_count 1\n"},
      {"count differs", "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n"},
      {"no sum", "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n"},
      {"le on sum", "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum{le=\"1\"} 1\nh_count 2\n"},
  };
  for (const auto& [why, text] : bad) {
    auto parsed = ParseExposition(text);
    EXPECT_FALSE(parsed.ok()) << why << ":\n" << text;
  }
}

TEST(MetricsServerTest, ServesTheRegistry) {
  Registry r;
  r.AddCounter("t_scrapes_total", "x").With({}).Inc(5);
  auto server = MetricsServer::Start("127.0.0.1:0", r);
  ASSERT_TRUE(server.ok()) << server.error().message;
  httplib::Client client((*server)->url());
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), kContentType);
  auto parsed = ParseExposition(res->body);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ(parsed->Sum("t_scrapes_total"), 5);
  EXPECT_EQ(client.Get("/v1/vms")->status, 404);
}

}  // namespace
}  // namespace vmgrid::metrics
