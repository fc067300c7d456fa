// fuzz_metrics_text: ParseExposition, the strict reader of the Prometheus
// text format that the tests scrape /metrics with (common/metrics_text.h).
// Oracles: no crash; an accepted exposition of counters, gauges and
// histograms renders back (RenderText) to text that is accepted again with
// the same families and the same samples.
#include <cmath>
#include <cstdint>
#include <string>

#include "common/metrics.h"
#include "common/metrics_text.h"
#include "fuzz_common.h"

using vmgrid::metrics::FamilySnapshot;
using vmgrid::metrics::ParseExposition;
using vmgrid::metrics::Type;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = (vmgrid::fuzz::QuietLogging(), true);
  (void)quiet;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto parsed = ParseExposition(text);
  vmgrid::fuzz::Trace("parse", parsed.ok(), parsed.ok() ? "" : parsed.error().message);
  if (!parsed.ok()) {
    FUZZ_CHECK(!parsed.error().message.empty(), "a refusal without a message");
    return 0;
  }
  std::vector<FamilySnapshot> families;
  size_t samples = 0;
  for (const auto& [name, f] : parsed->families) {
    FUZZ_CHECK(vmgrid::metrics::ValidMetricName(name), name);
    Type type;
    if (f.type == "counter")
      type = Type::kCounter;
    else if (f.type == "gauge")
      type = Type::kGauge;
    else if (f.type == "histogram")
      type = Type::kHistogram;
    else
      continue;
    FamilySnapshot out{name, f.help, type, {}};
    for (const auto& s : f.samples) {
      FUZZ_CHECK(s.name.starts_with(name), s.name);
      out.samples.push_back({s.name.substr(name.size()), s.labels, s.value});
      ++samples;
    }
    families.push_back(std::move(out));
  }
  const std::string again = vmgrid::metrics::RenderText(families);
  auto reparsed = ParseExposition(again);
  FUZZ_CHECK(reparsed.ok(), (reparsed.ok() ? "" : reparsed.error().message) + "\n" + again);
  size_t samples_again = 0;
  for (const auto& [name, f] : reparsed->families) {
    const auto& before = parsed->families.at(name);
    FUZZ_CHECK(f.type == before.type && f.help == before.help, name);
    FUZZ_CHECK(f.samples.size() == before.samples.size(), name);
    for (size_t i = 0; i < f.samples.size(); ++i) {
      const auto& a = f.samples[i];
      const auto& b = before.samples[i];
      FUZZ_CHECK(a.name == b.name && a.labels == b.labels, a.name);
      FUZZ_CHECK(a.value == b.value || (std::isnan(a.value) && std::isnan(b.value)), a.name);
    }
    samples_again += f.samples.size();
  }
  FUZZ_CHECK(samples_again == samples, "sample count changed");
  return 0;
}
