#include "common/metrics_text.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <set>

namespace vmgrid::metrics {

namespace {

Error Bad(size_t line, const std::string& what) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "metrics text line " + std::to_string(line) + ": " + what);
}

bool ParseFloat(std::string_view s, double& out) {
  if (s == "NaN") return out = NAN, true;
  if (s == "+Inf" || s == "Inf") return out = INFINITY, true;
  if (s == "-Inf") return out = -INFINITY, true;
  // [+-]digits[.digits][(e|E)[+-]digits], or .digits: no hex, no spaces.
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  size_t digits = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
  }
  if (digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    size_t exp = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++exp;
    if (exp == 0) return false;
  }
  if (i != s.size()) return false;
  std::string copy(s);
  errno = 0;
  out = std::strtod(copy.c_str(), nullptr);
  return true;  // overflow gives +-Inf, as Go's ParseFloat does with an error; accept
}

bool ParseTimestamp(std::string_view s) {
  size_t i = (!s.empty() && s[0] == '-') ? 1 : 0;
  if (i == s.size() || s.size() - i > 19) return false;
  for (; i < s.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  return true;
}

size_t NameEnd(std::string_view s, size_t i, bool colon) {
  size_t j = i;
  while (j < s.size()) {
    char c = s[j];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
              (j > i && c >= '0' && c <= '9');
    if (!ok) break;
    ++j;
  }
  return j;
}

// The labels of a sample, from just after '{'; `i` ends just after '}'.
Result<Labels> ParseLabels(std::string_view s, size_t& i, size_t line) {
  Labels labels;
  std::set<std::string> seen;
  while (true) {
    if (i < s.size() && s[i] == '}') {
      ++i;
      break;
    }
    size_t end = NameEnd(s, i, false);
    std::string name(s.substr(i, end - i));
    if (!ValidLabelName(name)) return Bad(line, "invalid label name");
    if (!seen.insert(name).second) return Bad(line, "label " + name + " given twice");
    i = end;
    if (i >= s.size() || s[i] != '=') return Bad(line, "expected '=' after label " + name);
    ++i;
    if (i >= s.size() || s[i] != '"') return Bad(line, "label value of " + name + " not quoted");
    ++i;
    std::string value;
    while (true) {
      if (i >= s.size()) return Bad(line, "unterminated label value of " + name);
      char c = s[i++];
      if (c == '"') break;
      if (c == '\\') {
        if (i >= s.size()) return Bad(line, "unterminated escape in label " + name);
        char e = s[i++];
        if (e == '\\')
          value += '\\';
        else if (e == '"')
          value += '"';
        else if (e == 'n')
          value += '\n';
        else
          return Bad(line, "invalid escape in label value of " + name);
      } else {
        value += c;
      }
    }
    labels.emplace_back(std::move(name), std::move(value));
    if (i < s.size() && s[i] == ',') {
      ++i;
      continue;
    }
    if (i < s.size() && s[i] == '}') {
      ++i;
      break;
    }
    return Bad(line, "expected ',' or '}' after a label");
  }
  std::sort(labels.begin(), labels.end());
  return labels;
}

// The family a sample named `name` belongs to ("" when none is declared).
std::string FamilyOf(const std::map<std::string, ParsedFamily>& families, const std::string& name) {
  if (auto it = families.find(name); it != families.end() && it->second.type != "histogram")
    return name;
  for (std::string_view suffix : {"_bucket", "_sum", "_count"}) {
    if (!name.ends_with(suffix)) continue;
    std::string base = name.substr(0, name.size() - suffix.size());
    auto it = families.find(base);
    if (it == families.end()) continue;
    if (it->second.type == "histogram") return base;
    if (it->second.type == "summary" && suffix != "_bucket") return base;
  }
  return "";
}

Status CheckHistogram(const std::string& name, const ParsedFamily& f) {
  struct Series {
    std::vector<std::pair<double, double>> buckets;  // (le, count) in text order
    bool has_sum = false, has_count = false;
    double count = 0;
  };
  std::map<Labels, Series> series;
  for (const auto& s : f.samples) {
    Labels rest;
    std::string le;
    bool has_le = false;
    for (const auto& l : s.labels) {
      if (l.first == "le") {
        le = l.second;
        has_le = true;
      } else {
        rest.push_back(l);
      }
    }
    auto& ser = series[rest];
    if (s.name == name + "_bucket") {
      double bound;
      if (!has_le || !ParseFloat(le, bound) || std::isnan(bound))
        return MakeError(ErrorCode::kInvalidArgument,
                         "histogram " + name + ": a bucket without a valid le label");
      ser.buckets.emplace_back(bound, s.value);
    } else if (has_le) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "histogram " + name + ": le label on " + s.name);
    } else if (s.name == name + "_sum") {
      ser.has_sum = true;
    } else {
      ser.has_count = true;
      ser.count = s.value;
    }
  }
  for (const auto& [labels, s] : series) {
    auto fail = [&](const std::string& why) {
      return MakeError(ErrorCode::kInvalidArgument, "histogram " + name + ": " + why);
    };
    if (s.buckets.empty() || !std::isinf(s.buckets.back().first) || s.buckets.back().first < 0)
      return fail("buckets do not end with le=\"+Inf\"");
    for (size_t i = 0; i < s.buckets.size(); ++i) {
      if (s.buckets[i].second < 0 || std::isnan(s.buckets[i].second))
        return fail("negative bucket count");
      if (i > 0 && s.buckets[i].first <= s.buckets[i - 1].first)
        return fail("bucket bounds not increasing");
      if (i > 0 && s.buckets[i].second < s.buckets[i - 1].second)
        return fail("bucket counts not cumulative");
    }
    if (!s.has_sum || !s.has_count) return fail("a series without _sum or _count");
    if (s.count != s.buckets.back().second) return fail("_count differs from the +Inf bucket");
  }
  return Status::Ok();
}

}  // namespace

Result<ParsedExposition> ParseExposition(std::string_view text) {
  ParsedExposition out;
  auto& families = out.families;
  std::set<std::string> has_help, has_samples, closed;
  std::set<std::pair<std::string, Labels>> series;
  std::string current;
  auto enter = [&](const std::string& family, size_t line) -> Status {
    if (family == current) return Status::Ok();
    if (closed.count(family))
      return Bad(line, "lines of " + family + " are not together (it appeared before)");
    if (!current.empty()) closed.insert(current);
    current = family;
    return Status::Ok();
  };
  size_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos)
      return Bad(line_no + 1, "the last line does not end with a newline");
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line.empty()) continue;
    if (line[0] == '#') {
      // "# HELP name text" / "# TYPE name type"; other comments are ignored.
      if (!line.starts_with("# HELP ") && !line.starts_with("# TYPE ")) continue;
      const bool help = line[2] == 'H';
      std::string_view rest = line.substr(7);
      size_t end = NameEnd(rest, 0, true);
      std::string name(rest.substr(0, end));
      if (!ValidMetricName(name)) return Bad(line_no, "invalid metric name in HELP/TYPE");
      if (end < rest.size() && rest[end] != ' ')
        return Bad(line_no, "invalid metric name in HELP/TYPE");
      std::string_view arg = end < rest.size() ? rest.substr(end + 1) : std::string_view();
      VMG_RETURN_IF_ERROR(enter(name, line_no));
      if (help) {
        if (!has_help.insert(name).second) return Bad(line_no, "second HELP for " + name);
        std::string h;
        for (size_t i = 0; i < arg.size(); ++i) {
          if (arg[i] == '\\' && i + 1 < arg.size() && (arg[i + 1] == '\\' || arg[i + 1] == 'n')) {
            h += arg[i + 1] == 'n' ? '\n' : '\\';
            ++i;
          } else {
            h += arg[i];
          }
        }
        families[name].help = h;
      } else {
        if (arg != "counter" && arg != "gauge" && arg != "histogram" && arg != "summary" &&
            arg != "untyped")
          return Bad(line_no, "unknown type '" + std::string(arg) + "'");
        auto& f = families[name];
        if (!f.type.empty()) return Bad(line_no, "second TYPE for " + name);
        if (has_samples.count(name)) return Bad(line_no, "TYPE of " + name + " after its samples");
        f.type = std::string(arg);
        if (f.type == "counter" && !name.ends_with("_total"))
          return Bad(line_no, "counter " + name + " does not end in _total");
      }
      continue;
    }
    // A sample: name[{labels}] value [timestamp]
    size_t end = NameEnd(line, 0, true);
    ParsedSample sample;
    sample.name = std::string(line.substr(0, end));
    if (!ValidMetricName(sample.name)) return Bad(line_no, "invalid metric name");
    size_t i = end;
    if (i < line.size() && line[i] == '{') {
      ++i;
      VMG_ASSIGN_OR_RETURN(sample.labels, ParseLabels(line, i, line_no));
    }
    // Blanks (spaces, tabs) separate the value and the optional timestamp.
    auto blank = [](char c) { return c == ' ' || c == '\t'; };
    if (i >= line.size() || !blank(line[i]))
      return Bad(line_no, "expected a blank before the value");
    while (i < line.size() && blank(line[i])) ++i;
    std::string_view fields = line.substr(i);
    size_t sp = 0;
    while (sp < fields.size() && !blank(fields[sp])) ++sp;
    if (!ParseFloat(fields.substr(0, sp), sample.value)) return Bad(line_no, "invalid value");
    while (sp < fields.size() && blank(fields[sp])) ++sp;
    if (sp < fields.size() && !ParseTimestamp(fields.substr(sp)))
      return Bad(line_no, "invalid timestamp");
    const std::string family = FamilyOf(families, sample.name);
    if (family.empty() || families[family].type.empty())
      return Bad(line_no, "sample " + sample.name + " has no TYPE line before it");
    VMG_RETURN_IF_ERROR(enter(family, line_no));
    if (!series.insert({sample.name, sample.labels}).second)
      return Bad(line_no, "duplicate series of " + sample.name);
    auto& f = families[family];
    if (f.type == "counter" && !(sample.value >= 0))
      return Bad(line_no, "counter " + sample.name + " is negative or NaN");
    has_samples.insert(family);
    f.samples.push_back(std::move(sample));
  }
  for (const auto& [name, f] : families) {
    if (f.type.empty())
      return MakeError(ErrorCode::kInvalidArgument, "metric " + name + " has HELP but no TYPE");
    if (f.type == "histogram") VMG_RETURN_IF_ERROR(CheckHistogram(name, f));
  }
  return out;
}

namespace {

bool Matches(const ParsedSample& s, const std::string& name, const Labels& labels) {
  if (s.name != name) return false;
  for (const auto& l : labels)
    if (std::find(s.labels.begin(), s.labels.end(), l) == s.labels.end()) return false;
  return true;
}

}  // namespace

double ParsedExposition::Sum(const std::string& name, const Labels& labels) const {
  double sum = 0;
  bool found = false;
  for (const auto& [family, f] : families)
    for (const auto& s : f.samples)
      if (Matches(s, name, labels)) {
        sum += s.value;
        found = true;
      }
  return found ? sum : NAN;
}

bool ParsedExposition::Has(const std::string& name, const Labels& labels) const {
  return !std::isnan(Sum(name, labels));
}

}  // namespace vmgrid::metrics
