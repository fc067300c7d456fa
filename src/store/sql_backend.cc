#include "store/sql_backend.h"

#include <charconv>
#include <cstdio>
#include <cstdlib>

#include "store/pg.h"
#include "store/sqlite.h"

namespace vmgrid {

int64_t SqlRow::Int(size_t col) const {
  const SqlValue& v = values_.at(col);
  if (auto* i = std::get_if<int64_t>(&v)) return *i;
  if (auto* d = std::get_if<double>(&v)) return static_cast<int64_t>(*d);
  if (auto* s = std::get_if<std::string>(&v)) return std::strtoll(s->c_str(), nullptr, 10);
  return 0;
}

double SqlRow::Double(size_t col) const {
  const SqlValue& v = values_.at(col);
  if (auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  if (auto* d = std::get_if<double>(&v)) return *d;
  if (auto* s = std::get_if<std::string>(&v)) return std::strtod(s->c_str(), nullptr);
  return 0;
}

std::string SqlRow::Text(size_t col) const {
  const SqlValue& v = values_.at(col);
  if (auto* s = std::get_if<std::string>(&v)) return *s;
  if (auto* i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (auto* d = std::get_if<double>(&v)) {
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, *d);
    return ec == std::errc() ? std::string(buf, end) : std::string();
  }
  return "";
}

bool IsPostgresTarget(const std::string& target) {
  return target.rfind("postgresql://", 0) == 0 || target.rfind("postgres://", 0) == 0;
}

Result<SqlBackendPtr> OpenSqlBackend(const std::string& target) {
  if (IsPostgresTarget(target)) return PgBackend::Open(target);
  return SqliteBackend::Open(target);
}

std::string RedactTarget(const std::string& target) {
  if (!IsPostgresTarget(target)) return target;
  std::string out = target;
  // userinfo: scheme://user:password@host...
  size_t start = out.find("://") + 3;
  size_t end = out.find_first_of("/?", start);
  size_t at = out.rfind('@', end == std::string::npos ? out.size() : end);
  if (at != std::string::npos && at >= start) {
    size_t colon = out.find(':', start);
    if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
  }
  // ...?password=secret&...
  for (size_t p = out.find("password="); p != std::string::npos; p = out.find("password=", p + 1)) {
    if (p == 0 || (out[p - 1] != '?' && out[p - 1] != '&')) continue;
    size_t v = p + 9;
    size_t e = out.find('&', v);
    out.replace(v, (e == std::string::npos ? out.size() : e) - v, "***");
  }
  return out;
}

}  // namespace vmgrid
