// How benchmarks summarise the samples of one cell: median with the
// quartiles (linear interpolation) or the range, and printf-style cells for
// the markdown tables they print.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace vmgrid::bench {

using Clock = std::chrono::steady_clock;

inline double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline std::string Fmt(const char* f, double a) {
  char b[64];
  std::snprintf(b, sizeof b, f, a);
  return b;
}

struct Samples {
  std::vector<double> v;
  // p in [0, 1]; 0 without samples.
  double Quantile(double p) const {
    if (v.empty()) return 0;
    auto s = v;
    std::sort(s.begin(), s.end());
    double h = (static_cast<double>(s.size()) - 1) * p;
    size_t lo = static_cast<size_t>(std::floor(h));
    size_t hi = std::min(s.size() - 1, lo + 1);
    return s[lo] + (h - static_cast<double>(lo)) * (s[hi] - s[lo]);
  }
  double Median() const { return Quantile(0.5); }
  double Min() const { return v.empty() ? 0 : *std::min_element(v.begin(), v.end()); }
  double Max() const { return v.empty() ? 0 : *std::max_element(v.begin(), v.end()); }
  // "12.34 (12.01–12.80)": median (Q1–Q3) with printf format `f` ("%.2f").
  std::string MedianIqr(const char* f) const {
    if (v.empty()) return "–";
    return Fmt(f, Median()) + " (" + Fmt(f, Quantile(0.25)) + "–" + Fmt(f, Quantile(0.75)) + ")";
  }
};

}  // namespace vmgrid::bench
