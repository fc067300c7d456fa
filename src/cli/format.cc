#include "cli/format.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <utility>

namespace vmgrid {
namespace {

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string OneDecimal(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", v);
  return buf;
}

}  // namespace

Result<uint64_t> ParseMemoryMb(const std::string& input) {
  const std::string hint = " (examples: 256, 256M, 1G, 1.5G)";
  std::string text;
  for (char c : input) {
    if (!std::isspace(static_cast<unsigned char>(c))) text.push_back(c);
  }
  if (text.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "empty memory size" + hint);
  }
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  size_t int_end = i;
  size_t frac_begin = i, frac_end = i;
  if (i < text.size() && text[i] == '.') {
    frac_begin = ++i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
    frac_end = i;
    if (frac_end == frac_begin) {
      return MakeError(ErrorCode::kInvalidArgument, "bad memory size '" + input + "'" + hint);
    }
  }
  if (int_end == 0 && frac_end == frac_begin) {
    return MakeError(ErrorCode::kInvalidArgument, "bad memory size '" + input + "'" + hint);
  }
  std::string unit = Lower(text.substr(i));
  uint64_t unit_kib;  // size of the unit in KiB
  if (unit.empty() || unit == "m" || unit == "mb" || unit == "mi" || unit == "mib") {
    unit_kib = 1024;
  } else if (unit == "k" || unit == "kb" || unit == "ki" || unit == "kib") {
    unit_kib = 1;
  } else if (unit == "g" || unit == "gb" || unit == "gi" || unit == "gib") {
    unit_kib = 1024 * 1024;
  } else if (unit == "t" || unit == "tb" || unit == "ti" || unit == "tib") {
    unit_kib = uint64_t{1024} * 1024 * 1024;
  } else {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "bad memory size '" + input + "': unknown unit '" + text.substr(i) + "'" + hint);
  }
  const std::string int_part = text.substr(0, int_end);
  const std::string frac_part = text.substr(frac_begin, frac_end - frac_begin);
  if (int_part.size() > 12 || frac_part.size() > 9) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "memory size '" + input + "' is too large" + " or too precise" + hint);
  }
  // Exact arithmetic in KiB: value = int_part + frac_part / 10^len.
  uint64_t int_val = int_part.empty() ? 0 : std::stoull(int_part);
  uint64_t frac_val = frac_part.empty() ? 0 : std::stoull(frac_part);
  uint64_t frac_den = 1;
  for (size_t k = 0; k < frac_part.size(); ++k) frac_den *= 10;
  // Bound before multiplying: int_val < 10^12 and unit_kib <= 2^30 keep
  // int_val * unit_kib below 2^70, so check against the limit first.
  const uint64_t max_kib = kMaxMemoryMb * 1024;
  if (int_val > max_kib / unit_kib) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "memory size '" + input + "' is too large (at most 16T)");
  }
  uint64_t kib = int_val * unit_kib;
  // frac_val < 10^9, unit_kib <= 2^30: product < 2^60, no overflow.
  uint64_t frac_num = frac_val * unit_kib;
  if (frac_num % frac_den != 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "memory size '" + input + "' is not a whole number of MiB");
  }
  kib += frac_num / frac_den;
  if (kib % 1024 != 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "memory size '" + input + "' is not a whole number of MiB");
  }
  const uint64_t mb = kib / 1024;
  if (mb == 0) {
    return MakeError(ErrorCode::kInvalidArgument, "memory size must be greater than 0" + hint);
  }
  if (mb > kMaxMemoryMb) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "memory size '" + input + "' is too large (at most 16T)");
  }
  return mb;
}

std::string FormatMemoryMb(uint64_t mb) {
  if (mb == 0) return "0";
  if (mb >= 1024 * 1024 && mb % (1024 * 1024) == 0) return std::to_string(mb / 1024 / 1024) + "T";
  if (mb >= 1024 && mb % 1024 == 0) return std::to_string(mb / 1024) + "G";
  if (mb >= 1024) return OneDecimal(static_cast<double>(mb) / 1024.0) + "G";
  return std::to_string(mb) + "M";
}

std::string FormatBytes(uint64_t bytes) {
  static const char* kUnits[] = {"K", "M", "G", "T", "P", "E"};
  if (bytes < 1024) return std::to_string(bytes) + "B";
  double v = static_cast<double>(bytes);
  int u = -1;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  // "1023.9K" reads badly; switch unit once the rounded value hits 1024.
  if (v >= 1023.95 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  return OneDecimal(v) + kUnits[u];
}

std::optional<double> ParseTimestampNumber(double value) {
  if (!std::isfinite(value) || value <= 0) return std::nullopt;
  if (value > 1e11) return value / 1000.0;  // milliseconds
  return value;
}

std::optional<double> ParseTimestamp(const std::string& text) {
  if (text.empty()) return std::nullopt;
  // All digits (optionally with a fraction): epoch seconds or ms.
  if (text.find_first_not_of("0123456789.") == std::string::npos) {
    char* end = nullptr;
    double v = std::strtod(text.c_str(), &end);
    if (end == text.c_str() || *end != '\0') return std::nullopt;
    return ParseTimestampNumber(v);
  }
  int y, mo, d, h, mi, s;
  int consumed = 0;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2d%*1[Tt ]%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &s,
                  &consumed) != 6) {
    return std::nullopt;
  }
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) return std::nullopt;
  double frac = 0;
  size_t pos = static_cast<size_t>(consumed);
  if (pos < text.size() && text[pos] == '.') {
    size_t start = pos;
    ++pos;
    while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) ++pos;
    frac = std::strtod(("0" + text.substr(start, pos - start)).c_str(), nullptr);
  }
  long offset_s = 0;
  if (pos < text.size()) {
    const std::string zone = text.substr(pos);
    if (zone == "Z" || zone == "z") {
      offset_s = 0;
    } else if ((zone[0] == '+' || zone[0] == '-') && zone.size() == 6 && zone[3] == ':') {
      int oh = 0, om = 0;
      if (std::sscanf(zone.c_str() + 1, "%2d:%2d", &oh, &om) != 2) return std::nullopt;
      offset_s = (oh * 3600L + om * 60L) * (zone[0] == '-' ? -1 : 1);
    } else {
      return std::nullopt;
    }
  }
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  time_t t = timegm(&tm);
  return static_cast<double>(t - offset_s) + frac;
}

std::string FormatAge(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) seconds = 0;
  auto s = static_cast<uint64_t>(seconds);
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return std::to_string(s / 60) + "m";
  if (s < 86400) return std::to_string(s / 3600) + "h";
  return std::to_string(s / 86400) + "d";
}

std::string FormatElapsed(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) seconds = 0;
  if (seconds < 60) return OneDecimal(seconds) + "s";
  auto s = static_cast<uint64_t>(seconds);
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%llum%02llus", static_cast<unsigned long long>(s / 60),
                static_cast<unsigned long long>(s % 60));
  return buf;
}

size_t DisplayWidth(const std::string& text) {
  size_t n = 0;
  for (unsigned char c : text) {
    if ((c & 0xC0) != 0x80) ++n;  // count all but UTF-8 continuation bytes
  }
  return n;
}

Table::Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}

void Table::AddRow(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  rows_.push_back(std::move(cells));
}

void Table::Print(std::ostream& out) const {
  const size_t ncol = headers_.size();
  if (ncol == 0) return;
  std::vector<size_t> width(ncol, 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t c = 0; c < ncol; ++c) width[c] = std::max(width[c], DisplayWidth(row[c]));
  };
  measure(headers_);
  for (const auto& row : rows_) measure(row);
  auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < ncol; ++c) {
      line += row[c];
      if (c + 1 < ncol) line.append(width[c] - DisplayWidth(row[c]) + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << '\n';
  };
  print_row(headers_);
  for (const auto& row : rows_) print_row(row);
}

void PrintKeyValues(std::ostream& out,
                    const std::vector<std::pair<std::string, std::string>>& pairs) {
  size_t w = 0;
  for (const auto& [k, v] : pairs) w = std::max(w, DisplayWidth(k));
  for (const auto& [k, v] : pairs) {
    std::string line = k + ":";
    line.append(w - DisplayWidth(k) + 1, ' ');
    line += v;
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << '\n';
  }
}

}  // namespace vmgrid
