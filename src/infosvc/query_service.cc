#include "infosvc/query_service.h"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <set>

#include "infosvc/set_search.h"

namespace vmgrid {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// Visibility predicate for objects owned by a user.
#define VISIBLE(owner) "(vmgrid_admin() OR " owner " = vmgrid_caller())"

// The published views. Temp views on each query connection shadow nothing in
// main (they are the only names the authorizer lets a query read).
const char* kViews = R"sql(
CREATE TEMP VIEW hosts AS
  SELECT h.id, h.name, h.site, h.network, h.arch,
         CASE WHEN h.kvm THEN 'kvm' ELSE 'tcg' END AS hypervisor,
         h.vcpus, h.memory_mb, h.disk_mb,
         h.vcpus - COALESCE(u.vcpus, 0) AS free_vcpus,
         h.memory_mb - COALESCE(u.memory_mb, 0) AS free_memory_mb,
         h.state
  FROM main.hosts h
  LEFT JOIN (SELECT host_id, SUM(vcpus) AS vcpus, SUM(memory_mb) AS memory_mb
             FROM main.vms WHERE state != 'error' GROUP BY host_id) u ON u.host_id = h.id;

CREATE TEMP VIEW vms AS
  SELECT v.id, v.name, u.name AS owner, i.name AS image, v.vcpus, v.memory_mb, v.network,
         v.state, v.disk, v.start
  FROM main.vms v JOIN main.users u ON u.id = v.owner_id JOIN main.images i ON i.id = v.image_id
  WHERE )sql" VISIBLE("v.owner_id") R"sql(;

CREATE TEMP VIEW images AS
  SELECT i.id, i.name, u.name AS owner, i.format, i.size_bytes, i.virtual_size_bytes,
         i.min_memory_mb, i.ckpt_state = 'ready' AS has_checkpoint,
         i.ckpt_memory_mb AS checkpoint_memory_mb, i.ckpt_vcpus AS checkpoint_vcpus
  FROM main.images i JOIN main.users u ON u.id = i.owner_id
  WHERE i.state = 'ready' AND ()sql" VISIBLE("i.owner_id") R"sql( OR u.role = 'admin');

CREATE TEMP VIEW image_cache AS
  SELECT c.image_id, c.host_id FROM main.image_cache c
  WHERE c.image_id IN (SELECT id FROM temp.images);

CREATE TEMP VIEW vdisks AS
  SELECT 'disk-' || v.id AS id, v.id AS vm_id, v.image_id, v.disk AS mode, v.host_id,
         NULLIF(v.workspace_id, '') AS workspace_id
  FROM main.vms v WHERE )sql" VISIBLE("v.owner_id") R"sql(;

CREATE TEMP VIEW virtualization AS
  SELECT v.id AS virtual_id, 'vm' AS virtual_kind, v.host_id AS physical_id,
         'host' AS physical_kind
  FROM main.vms v WHERE )sql" VISIBLE("v.owner_id") R"sql(
  UNION ALL
  SELECT 'disk-' || v.id, 'vdisk', v.image_id, 'image'
  FROM main.vms v WHERE )sql" VISIBLE("v.owner_id") R"sql(
  UNION ALL
  SELECT 'disk-' || v.id, 'vdisk', v.host_id, 'host_cache'
  FROM main.vms v WHERE )sql" VISIBLE("v.owner_id") R"sql(;

CREATE TEMP VIEW futures AS
  SELECT 'fut-' || n.id || '-' || h.id || '-' || n.start AS id,
         n.id AS image_id, n.name AS image, h.id AS host_id, h.name AS host, n.start,
         n.vcpus, n.memory_mb, h.free_vcpus AS max_vcpus, h.free_memory_mb AS max_memory_mb,
         h.site, h.network,
         (c.host_id IS NOT NULL) AS cached,
         n.start_ms + CASE WHEN c.host_id IS NULL THEN n.size_bytes / 100000 ELSE 0 END
           AS expected_ms
  FROM (SELECT i.id, i.name, i.size_bytes, s.start,
               CASE s.start WHEN 'resume' THEN i.checkpoint_vcpus ELSE 1 END AS vcpus,
               CASE s.start WHEN 'resume' THEN i.checkpoint_memory_mb
                            ELSE MAX(256, i.min_memory_mb) END AS memory_mb,
               COALESCE((SELECT CAST(AVG(v.create_ms) AS INTEGER) FROM main.vms v
                         WHERE v.image_id = i.id AND v.start = s.start AND v.create_ms > 0),
                        CASE s.start WHEN 'resume' THEN 500 ELSE 10000 END) AS start_ms
        FROM temp.images i
        CROSS JOIN (SELECT 'boot' AS start UNION ALL SELECT 'resume') s
        WHERE s.start = 'boot' OR i.has_checkpoint) n
  CROSS JOIN temp.hosts h
  LEFT JOIN main.image_cache c ON c.image_id = n.id AND c.host_id = h.id
  WHERE h.state = 'up' AND h.free_memory_mb >= n.memory_mb AND h.free_vcpus >= n.vcpus;

CREATE TEMP VIEW machines AS
  SELECT id, vcpus, memory_mb, network, site, arch FROM temp.hosts WHERE state = 'up'
  UNION ALL
  SELECT v.id, v.vcpus, v.memory_mb, v.network, h.site, h.arch
  FROM main.vms v JOIN main.hosts h ON h.id = v.host_id
  WHERE v.state = 'running' AND )sql" VISIBLE("v.owner_id") R"sql(;

CREATE TEMP VIEW machines_ext AS
  SELECT id, vcpus, memory_mb, network, site, arch, 'physical' AS nature
  FROM temp.hosts WHERE state = 'up'
  UNION ALL
  SELECT v.id, v.vcpus, v.memory_mb, v.network, h.site, h.arch, 'virtual'
  FROM main.vms v JOIN main.hosts h ON h.id = v.host_id
  WHERE v.state = 'running' AND )sql" VISIBLE("v.owner_id") R"sql(
  UNION ALL
  SELECT id, vcpus, memory_mb, network, site, 'x86_64', 'future' FROM temp.futures;
)sql";

const std::set<std::string> kFunctions = {
    "count", "sum", "total", "avg", "min", "max", "group_concat", "abs", "coalesce", "ifnull",
    "nullif", "iif", "length", "lower", "upper", "round", "substr", "substring", "instr",
    "like", "glob", "trim", "ltrim", "rtrim", "replace", "printf", "format", "typeof",
    "vmgrid_caller", "vmgrid_admin"};

}  // namespace

const std::vector<std::string>& QueryService::Views() {
  static const std::vector<std::string> kNames = {"hosts",  "vms",           "images",
                                                  "image_cache", "vdisks",  "virtualization",
                                                  "futures", "machines",     "machines_ext"};
  return kNames;
}

QueryService::Conn::~Conn() { sqlite3_close_v2(db); }

static void CallerFn(sqlite3_context* ctx, int, sqlite3_value**) {
  auto* c = static_cast<QueryService::Conn*>(sqlite3_user_data(ctx));
  sqlite3_result_text(ctx, c->caller.user_id.c_str(), -1, SQLITE_TRANSIENT);
}
static void AdminFn(sqlite3_context* ctx, int, sqlite3_value**) {
  auto* c = static_cast<QueryService::Conn*>(sqlite3_user_data(ctx));
  sqlite3_result_int(ctx, c->caller.admin ? 1 : 0);
}

static int Authorize(void* arg, int action, const char* a1, const char* a2, const char* db,
                     const char* view) {
  auto* c = static_cast<QueryService::Conn*>(arg);
  static const std::set<std::string> views(QueryService::Views().begin(), QueryService::Views().end());
  switch (action) {
    case SQLITE_SELECT:
    case SQLITE_RECURSIVE:
      return SQLITE_OK;
    case SQLITE_READ:
      // Through a published view, or a published view itself.
      if (view && views.count(view)) return SQLITE_OK;
      if (db && std::strcmp(db, "temp") == 0 && a1 && views.count(a1)) return SQLITE_OK;
      // A CTE's own rows belong to no database.
      if (!db || !*db) return SQLITE_OK;
      c->denied = std::string("reading ") + (a1 ? a1 : "?");
      return SQLITE_DENY;
    case SQLITE_FUNCTION:
      if (a2 && kFunctions.count(a2)) return SQLITE_OK;
      c->denied = std::string("function ") + (a2 ? a2 : "?");
      return SQLITE_DENY;
    default:
      c->denied = "statement type " + std::to_string(action) + " (only SELECT is allowed)";
      return SQLITE_DENY;
  }
}

static int Progress(void* arg) {
  auto* c = static_cast<QueryService::Conn*>(arg);
  return Clock::now() > c->deadline ? 1 : 0;
}

Result<std::unique_ptr<QueryService>> QueryService::Open(const std::string& db_path) {
  std::unique_ptr<QueryService> svc(new QueryService(db_path));
  VMG_ASSIGN_OR_RETURN(auto conn, svc->Acquire());  // fail early on a bad path
  svc->Release(std::move(conn));
  return svc;
}

QueryService::~QueryService() = default;

Result<std::unique_ptr<QueryService::Conn>> QueryService::Acquire() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return c;
    }
  }
  auto c = std::make_unique<Conn>();
  if (sqlite3_open_v2(db_path_.c_str(), &c->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK)
    return MakeError(ErrorCode::kInternal, "open " + db_path_ + " read-only: " +
                                               (c->db ? sqlite3_errmsg(c->db) : "out of memory"));
  sqlite3_busy_timeout(c->db, 2000);
  sqlite3_create_function(c->db, "vmgrid_caller", 0, SQLITE_UTF8, c.get(), CallerFn, nullptr, nullptr);
  sqlite3_create_function(c->db, "vmgrid_admin", 0, SQLITE_UTF8, c.get(), AdminFn, nullptr, nullptr);
  char* err = nullptr;
  if (sqlite3_exec(c->db, kViews, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "?";
    sqlite3_free(err);
    return MakeError(ErrorCode::kInternal, "creating the published views: " + msg);
  }
  sqlite3_set_authorizer(c->db, Authorize, c.get());
  sqlite3_progress_handler(c->db, 1000, Progress, c.get());
  // Keep memory of one query bounded too.
  sqlite3_limit(c->db, SQLITE_LIMIT_LENGTH, 1 << 20);
  return c;
}

void QueryService::Release(std::unique_ptr<Conn> conn) {
  std::lock_guard<std::mutex> l(mu_);
  if (idle_.size() < 8) idle_.push_back(std::move(conn));
}

namespace {

json ColumnValue(sqlite3_stmt* st, int i) {
  switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER: return sqlite3_column_int64(st, i);
    case SQLITE_FLOAT: return sqlite3_column_double(st, i);
    case SQLITE_NULL: return nullptr;
    default: {
      const unsigned char* p = sqlite3_column_text(st, i);
      return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(st, i)));
    }
  }
}

// The authorizer learns only the name of the innermost view (or CTE) behind
// a read, so a CTE named like a published view could read base tables under
// its name. Refuse CTE definitions that reuse a view name: a view name
// followed by "(" (column list) or by AS [NOT] [MATERIALIZED] "(".
Status CheckNoShadowingCte(const std::string& sql) {
  std::vector<std::string> tokens;  // lower-cased identifiers/keywords and punctuation
  for (size_t i = 0; i < sql.size();) {
    char c = sql[i];
    if (isspace(static_cast<unsigned char>(c))) { ++i; continue; }
    if (c == '-' && i + 1 < sql.size() && sql[i + 1] == '-') {
      while (i < sql.size() && sql[i] != '\n') ++i;
      continue;
    }
    if (c == '/' && i + 1 < sql.size() && sql[i + 1] == '*') {
      size_t e = sql.find("*/", i + 2);
      i = e == std::string::npos ? sql.size() : e + 2;
      continue;
    }
    if (c == '\'') {  // string literal: skip ('' escapes)
      ++i;
      while (i < sql.size()) {
        if (sql[i] == '\'' && i + 1 < sql.size() && sql[i + 1] == '\'') i += 2;
        else if (sql[i++] == '\'') break;
      }
      tokens.push_back("'");
      continue;
    }
    if (c == '"' || c == '`' || c == '[') {  // quoted identifier
      char close = c == '[' ? ']' : c;
      std::string id;
      ++i;
      while (i < sql.size() && sql[i] != close) id += static_cast<char>(tolower(static_cast<unsigned char>(sql[i++])));
      ++i;
      tokens.push_back(id);
      continue;
    }
    if (isalnum(static_cast<unsigned char>(c)) || c == '_') {
      std::string id;
      while (i < sql.size() && (isalnum(static_cast<unsigned char>(sql[i])) || sql[i] == '_'))
        id += static_cast<char>(tolower(static_cast<unsigned char>(sql[i++])));
      tokens.push_back(id);
      continue;
    }
    tokens.push_back(std::string(1, c));
    ++i;
  }
  const auto& views = QueryService::Views();
  for (size_t t = 0; t + 1 < tokens.size(); ++t) {
    if (std::find(views.begin(), views.end(), tokens[t]) == views.end()) continue;
    size_t n = t + 1;
    bool cte = tokens[n] == "(";
    if (tokens[n] == "as") {
      ++n;
      if (n < tokens.size() && tokens[n] == "not") ++n;
      if (n < tokens.size() && tokens[n] == "materialized") ++n;
      cte = n < tokens.size() && tokens[n] == "(";
    }
    if (cte)
      return MakeError(ErrorCode::kPermissionDenied,
                       "a WITH clause may not define '" + tokens[t] + "': that name is a published view");
  }
  return Status::Ok();
}

bool IsIdentifier(const std::string& s) {
  if (s.empty() || s.size() > 64 || !(isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_')) return false;
  for (char c : s)
    if (!isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return true;
}

}  // namespace

Result<QueryResult> QueryService::Sql(const QueryCaller& caller, const std::string& sql,
                                      const QueryLimits& limits) {
  auto start = Clock::now();
  if (sql.find_first_not_of(" \t\r\n") == std::string::npos)
    return MakeError(ErrorCode::kInvalidArgument, "the query is empty");
  if (sql.size() > limits.max_sql_bytes)
    return MakeError(ErrorCode::kInvalidArgument,
                     "the query is longer than " + std::to_string(limits.max_sql_bytes) + " bytes");
  VMG_RETURN_IF_ERROR(CheckNoShadowingCte(sql));
  VMG_ASSIGN_OR_RETURN(auto conn, Acquire());
  conn->caller = caller;
  conn->denied.clear();
  conn->deadline = Clock::now() + std::chrono::milliseconds(limits.timeout_ms);
  struct Releaser {
    QueryService* svc;
    std::unique_ptr<Conn>* c;
    ~Releaser() { svc->Release(std::move(*c)); }
  } releaser{this, &conn};

  sqlite3_stmt* st = nullptr;
  const char* tail = nullptr;
  int rc = sqlite3_prepare_v2(conn->db, sql.c_str(), static_cast<int>(sql.size()), &st, &tail);
  if (rc != SQLITE_OK) {
    std::string msg = sqlite3_errmsg(conn->db);
    if (rc == SQLITE_AUTH)
      return MakeError(ErrorCode::kPermissionDenied,
                       "not allowed: " + conn->denied +
                           ". Queries may only SELECT from the published views: hosts, vms, images, "
                           "image_cache, vdisks, virtualization, futures, machines, machines_ext");
    return MakeError(ErrorCode::kInvalidArgument, "SQL error: " + msg);
  }
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> guard(st, sqlite3_finalize);
  if (!st) return MakeError(ErrorCode::kInvalidArgument, "the query has no statement");
  if (tail && std::string(tail).find_first_not_of(" \t\r\n;") != std::string::npos)
    return MakeError(ErrorCode::kInvalidArgument, "give one statement per query");
  if (!sqlite3_stmt_readonly(st))
    return MakeError(ErrorCode::kPermissionDenied, "only read-only SELECT queries are allowed");

  QueryResult out;
  int ncol = sqlite3_column_count(st);
  for (int i = 0; i < ncol; ++i) out.columns.push_back(sqlite3_column_name(st, i));
  while (true) {
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) break;
    if (rc == SQLITE_ROW) {
      if (static_cast<int64_t>(out.rows.size()) >= limits.max_rows)
        return MakeError(ErrorCode::kInvalidArgument,
                         "the result has more than " + std::to_string(limits.max_rows) +
                             " rows; add LIMIT or a narrower WHERE");
      std::vector<json> row;
      for (int i = 0; i < ncol; ++i) row.push_back(ColumnValue(st, i));
      out.rows.push_back(std::move(row));
      continue;
    }
    if (rc == SQLITE_INTERRUPT)
      return MakeError(ErrorCode::kInvalidArgument,
                       "the query ran longer than " + std::to_string(limits.timeout_ms) +
                           " ms and was stopped; narrow it");
    return MakeError(ErrorCode::kInvalidArgument, std::string("SQL error: ") + sqlite3_errmsg(conn->db));
  }
  out.elapsed_us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
  return out;
}

Result<SetResult> QueryService::Set(const QueryCaller& caller, const SetQuery& q,
                                    const QueryLimits& limits) {
  auto start = Clock::now();
  const auto& views = Views();
  if (std::find(views.begin(), views.end(), q.from) == views.end())
    return MakeError(ErrorCode::kInvalidArgument, "set: 'from' must be one of the published views");
  if (!q.same.empty() && !IsIdentifier(q.same))
    return MakeError(ErrorCode::kInvalidArgument, "set: 'same' must be a column name");
  if (!IsIdentifier(q.sum)) return MakeError(ErrorCode::kInvalidArgument, "set: 'sum' must be a column name");
  if (q.size < 1 || q.size > 64) return MakeError(ErrorCode::kInvalidArgument, "set: 'size' must be 1..64");
  if (q.min > q.max) return MakeError(ErrorCode::kInvalidArgument, "set: 'min' is larger than 'max'");
  std::string sql = "SELECT id, " + (q.same.empty() ? std::string("NULL") : q.same) + ", " + q.sum +
                    " FROM " + q.from + (q.where.empty() ? "" : " WHERE (" + q.where + ")");
  QueryLimits inner = limits;
  inner.max_rows = std::max<int64_t>(limits.max_rows, 1'000'000);
  VMG_ASSIGN_OR_RETURN(QueryResult rows, Sql(caller, sql, inner));
  // Group candidates by the shared value, in a stable order.
  std::map<std::string, std::pair<json, std::vector<size_t>>> groups;
  for (size_t i = 0; i < rows.rows.size(); ++i) {
    const auto& r = rows.rows[i];
    if (!r[2].is_number_integer())
      return MakeError(ErrorCode::kInvalidArgument, "set: column '" + q.sum + "' is not an integer");
    auto& g = groups[r[1].dump()];
    g.first = r[1];
    g.second.push_back(i);
  }
  SetResult out;
  out.candidates = static_cast<int64_t>(rows.rows.size());
  out.groups = static_cast<int64_t>(groups.size());
  for (auto& [key, g] : groups) {
    if (out.sets.size() >= q.max_sets) break;
    std::vector<int64_t> w;
    for (size_t i : g.second) w.push_back(rows.rows[i][2].get<int64_t>());
    SetSearchStats stats;
    auto found = FindKSubsetInRange(w, q.size, q.min, q.max, &stats);
    out.used_exact_search = out.used_exact_search || stats.used_dp;
    if (!found) continue;
    FoundSet fs;
    fs.group = g.first;
    for (size_t idx : *found) {
      const auto& r = rows.rows[g.second[idx]];
      fs.ids.push_back(r[0].is_string() ? r[0].get<std::string>() : r[0].dump());
      fs.total += r[2].get<int64_t>();
    }
    out.sets.push_back(std::move(fs));
  }
  out.elapsed_us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
  return out;
}

}  // namespace vmgrid
