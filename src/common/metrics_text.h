// A strict reader of the Prometheus text exposition format 0.0.4, for tests
// that scrape /metrics and for its fuzz target (fuzz/fuzz_metrics_text.cc).
// It refuses what Prometheus's own parser refuses and what its format rules
// forbid even where Prometheus is lenient:
//   - names ([a-zA-Z_:][a-zA-Z0-9_:]*), label names ([a-zA-Z_][a-zA-Z0-9_]*,
//     not "__..."), label values quoted with only \\ \" \n escapes,
//   - values that are not floats (NaN, +Inf, -Inf allowed), bad timestamps,
//   - a sample whose family has no TYPE line before it, a second TYPE or
//     HELP for a family, a family's lines not all together,
//   - a duplicate series (same name and label set),
//   - counters that are negative or whose name does not end in _total,
//   - histograms: a _bucket without le, buckets not increasing in le or not
//     cumulative, no +Inf bucket, _count not equal to the +Inf bucket, no
//     _sum.
// Errors name the line. Pure function; thread-safe.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/metrics.h"
#include "common/result.h"

namespace vmgrid::metrics {

struct ParsedSample {
  std::string name;  // as written, with any _bucket/_sum/_count suffix
  Labels labels;     // sorted by name
  double value = 0;
};

struct ParsedFamily {
  std::string type;  // counter, gauge, histogram, summary, untyped
  std::string help;
  std::vector<ParsedSample> samples;
};

struct ParsedExposition {
  std::map<std::string, ParsedFamily> families;

  // The value of the sample named `name` whose labels include all of
  // `labels`, summed over matching series; nullopt-like NaN when none.
  double Sum(const std::string& name, const Labels& labels = {}) const;
  bool Has(const std::string& name, const Labels& labels = {}) const;
};

Result<ParsedExposition> ParseExposition(std::string_view text);

}  // namespace vmgrid::metrics
