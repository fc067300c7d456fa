#include "common/metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "spdlog/spdlog.h"

namespace vmgrid::metrics {

namespace {

bool NameChar(char c, bool first, bool colon) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
  if (colon && c == ':') return true;
  return !first && c >= '0' && c <= '9';
}

[[noreturn]] void Misuse(const std::string& what) {
  spdlog::critical("metrics: {}", what);
  std::abort();
}

}  // namespace

const char* TypeName(Type type) {
  switch (type) {
    case Type::kCounter:
      return "counter";
    case Type::kGauge:
      return "gauge";
    case Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

bool ValidMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (!NameChar(name[i], i == 0, true)) return false;
  return true;
}

bool ValidLabelName(std::string_view name) {
  if (name.empty() || name.starts_with("__")) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (!NameChar(name[i], i == 0, false)) return false;
  return true;
}

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(static_cast<int64_t>(v));
  // The shortest form that reads back as the same double.
  char buf[32];
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

namespace {

// HELP text escapes only backslash and newline.
std::string EscapeHelp(std::string_view help) {
  std::string out;
  for (char c : help) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

}  // namespace

std::string RenderText(const std::vector<FamilySnapshot>& families) {
  std::string out;
  for (const auto& f : families) {
    out += "# HELP " + f.name + " " + EscapeHelp(f.help) + "\n";
    out += "# TYPE " + f.name + " " + TypeName(f.type) + "\n";
    for (const auto& s : f.samples) {
      out += f.name + s.suffix;
      if (!s.labels.empty()) {
        out += '{';
        for (size_t i = 0; i < s.labels.size(); ++i) {
          if (i) out += ',';
          out += s.labels[i].first + "=\"" + EscapeLabelValue(s.labels[i].second) + '"';
        }
        out += '}';
      }
      out += ' ' + FormatValue(s.value) + '\n';
    }
  }
  return out;
}

// --- Histogram -----------------------------------------------------------------------

Histogram::Histogram(const std::vector<double>& bounds)
    : bounds_(bounds), buckets_(new std::atomic<uint64_t>[bounds.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i] = 0;
}

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    total += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(total);
  }
  s.count = total;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

// --- Family ---------------------------------------------------------------------------

template <class M>
M& Family<M>::With(const LabelValues& values) {
  if (values.size() != label_names_.size())
    Misuse("wrong number of label values (" + std::to_string(values.size()) + " for " +
           std::to_string(label_names_.size()) + " names)");
  std::lock_guard<std::mutex> l(mu_);
  auto& child = children_[values];
  if (!child) child = make_();
  return *child;
}

namespace {

Labels Zip(const std::vector<std::string>& names, const LabelValues& values) {
  Labels out;
  for (size_t i = 0; i < names.size(); ++i) out.emplace_back(names[i], values[i]);
  return out;
}

}  // namespace

template <>
void Family<Counter>::Snapshot(FamilySnapshot& out) const {
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [values, c] : children_) out.Add(Zip(label_names_, values), c->value());
}

template <>
void Family<Gauge>::Snapshot(FamilySnapshot& out) const {
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [values, g] : children_) out.Add(Zip(label_names_, values), g->value());
}

template <>
void Family<Histogram>::Snapshot(FamilySnapshot& out) const {
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [values, h] : children_) {
    const Labels labels = Zip(label_names_, values);
    const auto s = h->Read();
    for (size_t i = 0; i < s.cumulative.size(); ++i) {
      Labels with_le = labels;
      with_le.emplace_back(
          "le", i < h->bounds().size() ? FormatValue(h->bounds()[i]) : std::string("+Inf"));
      out.samples.push_back({"_bucket", std::move(with_le), static_cast<double>(s.cumulative[i])});
    }
    out.samples.push_back({"_sum", labels, s.sum});
    out.samples.push_back({"_count", labels, static_cast<double>(s.count)});
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

// --- Registry -------------------------------------------------------------------------

template <class M>
Family<M>& Registry::Add(const std::string& name, const std::string& help, Type type,
                         std::vector<std::string> label_names,
                         std::function<std::unique_ptr<M>()> make) {
  if (!ValidMetricName(name)) Misuse("invalid metric name '" + name + "'");
  std::set<std::string> seen;
  for (const auto& l : label_names)
    if (!ValidLabelName(l) || (type == Type::kHistogram && l == "le") || !seen.insert(l).second)
      Misuse("invalid label name '" + l + "' of " + name);
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& e : entries_)
    if (e.name == name) Misuse("metric " + name + " registered twice");
  std::shared_ptr<Family<M>> family(new Family<M>(std::move(label_names), std::move(make)));
  Family<M>* raw = family.get();
  entries_.push_back(
      {name, help, type, [raw](FamilySnapshot& out) { raw->Snapshot(out); }, std::move(family)});
  return *raw;
}

Family<Counter>& Registry::AddCounter(const std::string& name, const std::string& help,
                                      std::vector<std::string> label_names) {
  return Add<Counter>(name, help, Type::kCounter, std::move(label_names),
                      [] { return std::make_unique<Counter>(); });
}

Family<Gauge>& Registry::AddGauge(const std::string& name, const std::string& help,
                                  std::vector<std::string> label_names) {
  return Add<Gauge>(name, help, Type::kGauge, std::move(label_names),
                    [] { return std::make_unique<Gauge>(); });
}

Family<Histogram>& Registry::AddHistogram(const std::string& name, const std::string& help,
                                          std::vector<double> bounds,
                                          std::vector<std::string> label_names) {
  for (size_t i = 0; i < bounds.size(); ++i)
    if (!std::isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
      Misuse("histogram " + name + ": bounds must be finite and increasing");
  return Add<Histogram>(name, help, Type::kHistogram, std::move(label_names),
                        [bounds] { return std::make_unique<Histogram>(bounds); });
}

void Registry::AddCollector(Collector collector) {
  std::lock_guard<std::mutex> l(mu_);
  collectors_.push_back(std::move(collector));
}

std::vector<FamilySnapshot> Registry::Collect() const {
  std::vector<FamilySnapshot> out;
  std::vector<Collector> collectors;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& e : entries_) {
      FamilySnapshot f{e.name, e.help, e.type, {}};
      e.snapshot(f);
      out.push_back(std::move(f));
    }
    collectors = collectors_;
  }
  // Collectors may read stores and take their own locks: not under mu_.
  for (const auto& c : collectors)
    for (auto& f : c()) out.push_back(std::move(f));
  return out;
}

}  // namespace vmgrid::metrics
