// Metrics in the Prometheus text exposition format 0.0.4 (docs/operations.md):
// counters, gauges and fixed-bucket histograms with labels, kept in a
// Registry that renders them, plus collectors that compute families at scrape
// time (VMs per state from the store, a host's cache counters, ...).
//
// Thread safety: everything here may be used from any thread. Updating a
// metric (Counter::Inc, Gauge::Set, Histogram::Observe) is a few relaxed
// atomic operations; looking a labelled child up (Family::With) takes the
// family's mutex, so hot paths look their children up once and keep the
// reference (children live as long as the registry and never move).
// Names must match [a-zA-Z_:][a-zA-Z0-9_:]* and label names
// [a-zA-Z_][a-zA-Z0-9_]* (not starting with "__"); a bad name is a
// programming error and aborts at registration.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace vmgrid::metrics {

enum class Type { kCounter, kGauge, kHistogram };
const char* TypeName(Type type);

// Label values, in the order of the family's label names.
using LabelValues = std::vector<std::string>;
// (name, value) pairs of one sample.
using Labels = std::vector<std::pair<std::string, std::string>>;

bool ValidMetricName(std::string_view name);
bool ValidLabelName(std::string_view name);
// A label value with \, " and newline escaped as the text format requires.
std::string EscapeLabelValue(std::string_view value);
// A sample value: integers without exponent, +Inf, -Inf, NaN.
std::string FormatValue(double value);

// One sample line: the family's name plus `suffix` (histograms' _bucket,
// _sum, _count), its labels and value.
struct Sample {
  std::string suffix;
  Labels labels;
  double value = 0;
};

// A family as rendered: what Registry::Render writes and collectors return.
struct FamilySnapshot {
  std::string name;
  std::string help;
  Type type = Type::kGauge;
  std::vector<Sample> samples;

  FamilySnapshot& Add(Labels labels, double value) {
    samples.push_back({"", std::move(labels), value});
    return *this;
  }
};

// The exposition text of `families` (HELP, TYPE and sample lines).
std::string RenderText(const std::vector<FamilySnapshot>& families);

class Counter {
 public:
  void Inc(double by = 1) { value_.fetch_add(by, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double by) { value_.fetch_add(by, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Fixed upper bounds (increasing, finite; +Inf is implicit).
class Histogram {
 public:
  explicit Histogram(const std::vector<double>& bounds);
  void Observe(double v);
  // Cumulative counts per bound (the last one +Inf), the sum and the count,
  // read bucket by bucket: a concurrent Observe may show in the count but
  // not yet in its bucket; Snapshot() makes the result cumulative anyway.
  struct Snapshot {
    std::vector<uint64_t> cumulative;  // bounds().size() + 1 entries
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Read() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // per bound, plus +Inf
  std::atomic<double> sum_{0};
};

// Request latencies from 1 ms to 60 s.
std::vector<double> LatencyBuckets();

// A family of metrics of one type sharing a name and label names.
template <class M>
class Family {
 public:
  // The child for `values` (one per label name), created on first use.
  M& With(const LabelValues& values);
  M& With(std::initializer_list<std::string> values) { return With(LabelValues(values)); }

 private:
  friend class Registry;
  Family(std::vector<std::string> label_names, std::function<std::unique_ptr<M>()> make)
      : label_names_(std::move(label_names)), make_(std::move(make)) {}
  void Snapshot(FamilySnapshot& out) const;

  const std::vector<std::string> label_names_;
  const std::function<std::unique_ptr<M>()> make_;
  mutable std::mutex mu_;
  std::map<LabelValues, std::unique_ptr<M>> children_;  // guarded by mu_
};

class Registry {
 public:
  using Collector = std::function<std::vector<FamilySnapshot>()>;

  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names = {});
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          std::vector<std::string> label_names = {});
  Family<Histogram>& AddHistogram(const std::string& name, const std::string& help,
                                  std::vector<double> bounds,
                                  std::vector<std::string> label_names = {});
  // Called at every Render, from the scraping thread; its families follow
  // the registry's own. It must not return a name the registry holds.
  void AddCollector(Collector collector);

  std::vector<FamilySnapshot> Collect() const;
  std::string Render() const { return RenderText(Collect()); }

 private:
  struct Entry {
    std::string name, help;
    Type type;
    std::function<void(FamilySnapshot&)> snapshot;
    std::shared_ptr<void> family;
  };
  template <class M>
  Family<M>& Add(const std::string& name, const std::string& help, Type type,
                 std::vector<std::string> label_names, std::function<std::unique_ptr<M>()> make);

  mutable std::mutex mu_;
  std::vector<Entry> entries_;         // guarded by mu_
  std::vector<Collector> collectors_;  // guarded by mu_
};

// The content type of the text format.
inline constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace vmgrid::metrics
