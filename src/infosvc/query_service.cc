#include "infosvc/query_service.h"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "common/util.h"
#include "infosvc/set_search.h"
#include "proto/future_id.h"
#include "store/pg.h"
#include "store/sql_backend.h"

namespace vmgrid {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// The published views, written once for both backends. Placeholders:
//   {create}  how a view is created: a TEMP view on each SQLite query
//             connection, a view in schema `published` on PostgreSQL;
//   {pub}     the schema of the published views ("temp." / "published.");
//   {base}    the schema of the Store's tables ("main." / the default);
//   {admin}, {caller}  whether the caller is the admin, and their user id;
//   {future_id}  the id of a future (proto/future_id.h builds it and
//             the controller parses it);
//   {mean_create_ms}  the mean create time of image i.id started as s.start,
//             over every VM (not only the caller's).
// Portable SQL only: booleans are CAST to INTEGER, MAX(a, b) is a CASE,
// sums are CAST to BIGINT (PostgreSQL's SUM of a BIGINT is NUMERIC).
// Every view is a plain SELECT over indexed base tables that the engines can
// merge into a query (no aggregates, no UNION over large tables in the views
// a join reaches): host usage and the virtualization relation are maintained
// by the Store (migration 3), not computed here.
#define VISIBLE(owner) "({admin} OR " owner " = {caller})"
const char* kViews = R"sql(
{create}hosts{sfx} AS
  SELECT h.id, h.name, h.site, h.network, h.arch,
         CASE WHEN h.kvm <> 0 THEN 'kvm' ELSE 'tcg' END AS hypervisor,
         h.vcpus, h.memory_mb, h.disk_mb,
         h.vcpus - h.used_vcpus AS free_vcpus,
         h.memory_mb - h.used_memory_mb AS free_memory_mb,
         h.state,
         h.disk_total_bytes, h.disk_free_bytes, h.used_disk_bytes AS disk_reserved_bytes,
         CAST(h.draining <> 0 AS INTEGER) AS draining
  FROM {base}hosts h;

{create}vms{sfx} AS
  SELECT v.id, v.name, u.name AS owner, i.name AS image, v.vcpus, v.memory_mb, v.network,
         v.state, v.disk, v.start
  FROM {base}vms v JOIN {base}users u ON u.id = v.owner_id JOIN {base}images i ON i.id = v.image_id
  WHERE )sql" VISIBLE("v.owner_id") R"sql(;

{create}images{sfx} AS
  SELECT i.id, i.name, u.name AS owner, i.format, i.size_bytes, i.virtual_size_bytes,
         i.min_memory_mb, CAST(i.ckpt_state = 'ready' AS INTEGER) AS has_checkpoint,
         i.ckpt_memory_mb AS checkpoint_memory_mb, i.ckpt_vcpus AS checkpoint_vcpus,
         i.expanded_size_bytes, i.max_clone_bytes
  FROM {base}images i JOIN {base}users u ON u.id = i.owner_id
  WHERE i.state = 'ready' AND ()sql" VISIBLE("i.owner_id") R"sql( OR u.role = 'admin');

{create}image_cache{sfx} AS
  SELECT c.image_id, c.host_id FROM {base}image_cache c
  WHERE c.image_id IN (SELECT id FROM {pub}images{sfx});

{create}datasets{sfx} AS
  SELECT d.id, d.name,
         CASE WHEN )sql" VISIBLE("d.owner_id") R"sql( THEN u.name END AS owner,
         CAST(d.owner_id <> {caller} AS INTEGER) AS shared, d.created_ms
  FROM {base}datasets d LEFT JOIN {base}users u ON u.id = d.owner_id
  WHERE )sql" VISIBLE("d.owner_id") R"sql(
     OR d.id IN (SELECT s.dataset_id FROM {base}dataset_shares s WHERE s.user_id = {caller});

{create}dataset_versions{sfx} AS
  SELECT v.dataset_id, v.version, v.kind, v.size_bytes, v.chunks, v.created_ms
  FROM {base}dataset_versions v
  WHERE v.dataset_id IN (SELECT id FROM {pub}datasets{sfx});

{create}dataset_cache{sfx} AS
  SELECT c.dataset_id, c.version, c.host_id FROM {base}dataset_cache c
  WHERE c.dataset_id IN (SELECT id FROM {pub}datasets{sfx});

{create}vdisks{sfx} AS
  SELECT 'disk-' || v.id AS id, v.id AS vm_id, v.image_id, v.disk AS mode, v.host_id,
         NULLIF(v.workspace_id, '') AS workspace_id
  FROM {base}vms v WHERE )sql" VISIBLE("v.owner_id") R"sql(;

{create}virtualization{sfx} AS
  SELECT x.virtual_id, x.virtual_kind, x.physical_id, x.physical_kind
  FROM {base}virtualization x WHERE )sql" VISIBLE("x.owner_id") R"sql(;

{create}futures{sfx} AS
  SELECT {future_id} AS id,
         n.id AS image_id, n.name AS image, h.id AS host_id, h.name AS host, n.start,
         n.vcpus, n.memory_mb, h.free_vcpus AS max_vcpus, h.free_memory_mb AS max_memory_mb,
         h.site, h.network,
         CAST(c.host_id IS NOT NULL AS INTEGER) AS cached,
         n.start_ms + CASE WHEN c.host_id IS NULL THEN n.size_bytes / 100000 ELSE 0 END
           AS expected_ms
  FROM (SELECT i.id, i.name, i.size_bytes, i.max_clone_bytes, s.start,
               CASE s.start WHEN 'resume' THEN i.checkpoint_vcpus ELSE 1 END AS vcpus,
               CASE s.start WHEN 'resume' THEN i.checkpoint_memory_mb
                            ELSE CASE WHEN i.min_memory_mb > 256 THEN i.min_memory_mb ELSE 256 END
                            END AS memory_mb,
               COALESCE({mean_create_ms}, CASE s.start WHEN 'resume' THEN 500 ELSE 10000 END)
                 AS start_ms
        FROM {pub}images{sfx} i
        CROSS JOIN (SELECT 'boot' AS start UNION ALL SELECT 'resume') s
        WHERE s.start = 'boot' OR i.has_checkpoint <> 0) n
  CROSS JOIN {pub}hosts{sfx} h
  LEFT JOIN {base}image_cache c ON c.image_id = n.id AND c.host_id = h.id
  WHERE h.state = 'up' AND h.draining = 0 AND h.free_memory_mb >= n.memory_mb AND h.free_vcpus >= n.vcpus
    AND (h.disk_total_bytes = 0 OR
         h.disk_free_bytes - h.disk_reserved_bytes >= n.max_clone_bytes + n.memory_mb * 1048576);

{create}networks{sfx} AS
  SELECT n.id, n.name,
         CASE WHEN )sql" VISIBLE("n.owner_id") R"sql( OR u.role = 'admin' THEN u.name END AS owner,
         n.subnet, CAST(n.egress <> 0 AS INTEGER) AS egress
  FROM {base}networks n LEFT JOIN {base}users u ON u.id = n.owner_id
  WHERE )sql" VISIBLE("n.owner_id") R"sql(
     OR n.id IN (SELECT s.network_id FROM {base}network_shares s WHERE s.user_id = {caller});

{create}nics{sfx} AS
  SELECT c.vm_id AS id, c.vm_id, v.name AS vm, c.idx AS nic, c.network_id, w.name AS network, c.mac, c.ip,
         v.host_id, v.state, v.vcpus, v.memory_mb
  FROM {base}nics c JOIN {base}networks w ON w.id = c.network_id
       JOIN {base}vms v ON v.id = c.vm_id
  WHERE )sql" VISIBLE("c.owner_id") R"sql(;

{create}machines{sfx} AS
  SELECT id, vcpus, memory_mb, network, site, arch FROM {pub}hosts{sfx} WHERE state = 'up'
  UNION ALL
  SELECT v.id, v.vcpus, v.memory_mb, v.network, h.site, h.arch
  FROM {base}vms v JOIN {base}hosts h ON h.id = v.host_id
  WHERE v.state = 'running' AND )sql" VISIBLE("v.owner_id") R"sql(;

{create}machines_ext{sfx} AS
  SELECT id, vcpus, memory_mb, network, site, arch, 'physical' AS nature
  FROM {pub}hosts{sfx} WHERE state = 'up'
  UNION ALL
  SELECT v.id, v.vcpus, v.memory_mb, v.network, h.site, h.arch, 'virtual'
  FROM {base}vms v JOIN {base}hosts h ON h.id = v.host_id
  WHERE v.state = 'running' AND )sql" VISIBLE("v.owner_id") R"sql(
  UNION ALL
  SELECT id, vcpus, memory_mb, network, site, 'x86_64', 'future' FROM {pub}futures{sfx};
)sql";
#undef VISIBLE

std::string Expand(std::string text,
                   const std::vector<std::pair<std::string, std::string>>& subst) {
  for (const auto& [from, to] : subst)
    for (size_t p = text.find(from); p != std::string::npos; p = text.find(from, p + to.size()))
      text.replace(p, from.size(), to);
  return text;
}

std::string ViewList() {
  std::string out;
  for (const auto& v : QueryService::Views()) out += (out.empty() ? "" : ", ") + v;
  return out;
}

Error NotAllowed(const std::string& what) {
  return MakeError(
      ErrorCode::kPermissionDenied,
      "not allowed: " + what + ". Queries may only SELECT from the published views: " + ViewList());
}

Error TooLong(const QueryLimits& limits) {
  return MakeError(ErrorCode::kInvalidArgument, "the query ran longer than " +
                                                    std::to_string(limits.timeout_ms) +
                                                    " ms and was stopped; narrow it");
}

Error TooLarge(const QueryLimits& limits) {
  return MakeError(ErrorCode::kInvalidArgument, "the result is larger than " +
                                                    std::to_string(limits.max_result_bytes) +
                                                    " bytes; select fewer columns or rows");
}

Error TooManyRows(const QueryLimits& limits) {
  return MakeError(ErrorCode::kInvalidArgument, "the result has more than " +
                                                    std::to_string(limits.max_rows) +
                                                    " rows; add LIMIT or a narrower WHERE");
}

// ---------------------------------------------------------------------------
// SQLite: TEMP views on read-only connections, an authorizer, a watchdog.
//
// Why the views come in two layers. SQLite's authorizer is told, for each
// column a statement reads, only the name of the innermost view *or CTE*
// the read happens in; a query can name a CTE anything, including the name
// of a published view (`WITH 'vms' AS (SELECT * FROM main.tokens) ...`).
// So no name a query can write may grant access to base tables: the views
// that read them are named NAME_<secret>, where the secret is random per
// process and never shown, and the published view NAME is only
// `SELECT * FROM temp.NAME_<secret>`. The authorizer lets a base table be
// read only inside a view of the secret set. CheckNoShadowingCte stays as
// defence in depth.
//
// Why a watchdog as well as the progress handler: the handler runs between
// VM instructions, and one function call (instr() over long strings) is one
// instruction. The watchdog calls sqlite3_interrupt() at the deadline, and
// SQLITE_LIMIT_LENGTH keeps any single value (hence any single call) small.

const std::set<std::string> kSqliteFunctions = {
    "count",        "sum",    "total",    "avg",    "min",           "max",
    "group_concat", "abs",    "coalesce", "ifnull", "nullif",        "iif",
    "length",       "lower",  "upper",    "round",  "substr",        "substring",
    "instr",        "like",   "glob",     "trim",   "ltrim",         "rtrim",
    "replace",      "printf", "format",   "typeof", "vmgrid_caller", "vmgrid_admin"};

// Limits of a query connection (sqlite3_limit). A value of a query is at
// most 64 KiB: instr() or replace() over such values costs well under the
// time limit per call (over 1 MiB values one call ran 31 s).
constexpr std::pair<int, int> kSqliteLimits[] = {
    {SQLITE_LIMIT_LENGTH, 64 * 1024},
    {SQLITE_LIMIT_SQL_LENGTH, 64 * 1024},  // the service checks max_sql_bytes first
    {SQLITE_LIMIT_COLUMN, 200},
    {SQLITE_LIMIT_EXPR_DEPTH, 200},
    {SQLITE_LIMIT_COMPOUND_SELECT, 64},
    {SQLITE_LIMIT_VDBE_OP, 100'000},
    {SQLITE_LIMIT_FUNCTION_ARG, 16},
    {SQLITE_LIMIT_ATTACHED, 0},
    {SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 256},
    {SQLITE_LIMIT_VARIABLE_NUMBER, 0},
    {SQLITE_LIMIT_TRIGGER_DEPTH, 0},
};

// The names of the internal views of one process ("vms_<secret>", ...).
struct InternalViews {
  std::string suffix;           // "_<secret>"
  std::set<std::string> names;  // every view name with the suffix
};

// A pooled read-only connection with the published views, the authorizer
// and the per-query context the SQL functions and handlers read.
struct SqliteConn {
  sqlite3* db = nullptr;
  const InternalViews* internal = nullptr;
  QueryCaller caller;
  Clock::time_point deadline;
  std::string denied;  // what the authorizer refused, for the error message
  ~SqliteConn() { sqlite3_close_v2(db); }
};

void CallerFn(sqlite3_context* ctx, int, sqlite3_value**) {
  auto* c = static_cast<SqliteConn*>(sqlite3_user_data(ctx));
  sqlite3_result_text(ctx, c->caller.user_id.c_str(), -1, SQLITE_TRANSIENT);
}
void AdminFn(sqlite3_context* ctx, int, sqlite3_value**) {
  auto* c = static_cast<SqliteConn*>(sqlite3_user_data(ctx));
  sqlite3_result_int(ctx, c->caller.admin ? 1 : 0);
}

int Authorize(void* arg, int action, const char* a1, const char* a2, const char* db,
              const char* view) {
  auto* c = static_cast<SqliteConn*>(arg);
  static const std::set<std::string> views(QueryService::Views().begin(),
                                           QueryService::Views().end());
  switch (action) {
    case SQLITE_SELECT:
    case SQLITE_RECURSIVE:
      return SQLITE_OK;
    case SQLITE_READ:
      // Inside one of the internal views: only a name the query cannot write.
      if (view && c->internal->names.count(view)) return SQLITE_OK;
      // The columns of a view itself (published or internal) hold only
      // filtered rows.
      if (db && std::strcmp(db, "temp") == 0 && a1 &&
          (views.count(a1) || c->internal->names.count(a1)))
        return SQLITE_OK;
      // A CTE's or subquery's own rows belong to no database.
      if (!db || !*db) return SQLITE_OK;
      // When SQLite merges the `hosts` view into a query that uses none of
      // its columns (COUNT(*) over a join), it checks a read of no column of
      // main.hosts without naming the view. That reveals only how many hosts
      // there are, which the view shows everyone anyway.
      if (std::strcmp(db, "main") == 0 && a1 && std::strcmp(a1, "hosts") == 0 && a2 && !*a2)
        return SQLITE_OK;
      c->denied = std::string("reading ") + (a1 ? a1 : "?");
      return SQLITE_DENY;
    case SQLITE_FUNCTION:
      if (a2 && kSqliteFunctions.count(a2)) return SQLITE_OK;
      c->denied = std::string("function ") + (a2 ? a2 : "?");
      return SQLITE_DENY;
    default:
      c->denied = "statement type " + std::to_string(action) + " (only SELECT is allowed)";
      return SQLITE_DENY;
  }
}

int Progress(void* arg) {
  auto* c = static_cast<SqliteConn*>(arg);
  return Clock::now() > c->deadline ? 1 : 0;
}

// Bytes a value adds to a response (its JSON text, roughly).
size_t ValueBytes(const json& v) {
  return v.is_string() ? v.get_ref<const std::string&>().size() + 3 : 12;
}

json SqliteColumn(sqlite3_stmt* st, int i) {
  switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
      return sqlite3_column_int64(st, i);
    case SQLITE_FLOAT:
      return sqlite3_column_double(st, i);
    case SQLITE_NULL:
      return nullptr;
    default: {
      const unsigned char* p = sqlite3_column_text(st, i);
      return std::string(reinterpret_cast<const char*>(p),
                         static_cast<size_t>(sqlite3_column_bytes(st, i)));
    }
  }
}

// Interrupts connections whose query has passed its deadline, from a thread
// of its own (see above). A connection is registered only while its query
// runs, so sqlite3_interrupt() never meets a closed connection.
class SqliteWatchdog {
 public:
  SqliteWatchdog() : thread_([this] { Loop(); }) {}
  ~SqliteWatchdog() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  // Watches `db` until the returned guard goes out of scope.
  struct Watch {
    SqliteWatchdog* dog;
    sqlite3* db;
    ~Watch() {
      std::lock_guard<std::mutex> l(dog->mu_);
      dog->watched_.erase(db);
    }
  };
  Watch Start(sqlite3* db, Clock::time_point deadline) {
    {
      std::lock_guard<std::mutex> l(mu_);
      watched_[db] = deadline;
    }
    cv_.notify_all();
    return Watch{this, db};
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> l(mu_);
    while (!stop_) {
      auto next = Clock::time_point::max();
      const auto now = Clock::now();
      for (const auto& [db, deadline] : watched_) {
        if (deadline <= now) sqlite3_interrupt(db);  // again after 50 ms if it still runs
        next = std::min(next, deadline <= now ? now + std::chrono::milliseconds(50) : deadline);
      }
      if (next == Clock::time_point::max())
        cv_.wait(l);
      else
        cv_.wait_until(l, next);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<sqlite3*, Clock::time_point> watched_;  // guarded by mu_
  bool stop_ = false;                              // guarded by mu_
  std::thread thread_;
};

class SqliteEngine : public QueryService::Engine {
 public:
  explicit SqliteEngine(std::string path) : path_(std::move(path)) {
    internal_.suffix = "_" + NewToken().substr(0, 24);
    for (const auto& v : QueryService::Views()) internal_.names.insert(v + internal_.suffix);
  }

  // Opens one connection, so that a bad path fails QueryService::Open.
  Status Check() {
    VMG_ASSIGN_OR_RETURN(auto conn, Acquire());
    Release(std::move(conn));
    return Status::Ok();
  }

  Result<QueryResult> Run(const QueryCaller& caller, const std::string& sql,
                          const QueryLimits& limits) override {
    VMG_ASSIGN_OR_RETURN(auto conn, Acquire());
    conn->caller = caller;
    conn->denied.clear();
    conn->deadline = Clock::now() + std::chrono::milliseconds(limits.timeout_ms);
    struct Releaser {
      SqliteEngine* engine;
      std::unique_ptr<SqliteConn>* c;
      ~Releaser() { engine->Release(std::move(*c)); }
    } releaser{this, &conn};
    // Declared after the releaser: unwatched before the connection goes back.
    auto watch = watchdog_.Start(conn->db, conn->deadline);

    sqlite3_stmt* st = nullptr;
    const char* tail = nullptr;
    int rc = sqlite3_prepare_v2(conn->db, sql.c_str(), static_cast<int>(sql.size()), &st, &tail);
    if (rc != SQLITE_OK) {
      if (rc == SQLITE_AUTH) return NotAllowed(conn->denied);
      if (rc == SQLITE_INTERRUPT) return TooLong(limits);
      return SqlError(conn->db);
    }
    std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> guard(st, sqlite3_finalize);
    if (!st) return MakeError(ErrorCode::kInvalidArgument, "the query has no statement");
    if (tail && std::string(tail).find_first_not_of(" \t\r\n;") != std::string::npos)
      return MakeError(ErrorCode::kInvalidArgument, "give one statement per query");
    if (!sqlite3_stmt_readonly(st))
      return MakeError(ErrorCode::kPermissionDenied, "only read-only SELECT queries are allowed");
    // EXPLAIN would show how the views are built, internal names included.
    if (sqlite3_stmt_isexplain(st) != 0)
      return MakeError(ErrorCode::kPermissionDenied,
                       "EXPLAIN is not allowed; use the query's result");

    QueryResult out;
    int ncol = sqlite3_column_count(st);
    size_t bytes = 0;
    for (int i = 0; i < ncol; ++i) {
      out.columns.push_back(sqlite3_column_name(st, i));
      bytes += out.columns.back().size() + 3;
    }
    while (true) {
      rc = sqlite3_step(st);
      if (rc == SQLITE_DONE) break;
      if (rc == SQLITE_ROW) {
        if (static_cast<int64_t>(out.rows.size()) >= limits.max_rows) return TooManyRows(limits);
        std::vector<json> row;
        row.reserve(static_cast<size_t>(ncol));
        for (int i = 0; i < ncol; ++i) {
          row.push_back(SqliteColumn(st, i));
          bytes += ValueBytes(row.back());
        }
        if (bytes > limits.max_result_bytes) return TooLarge(limits);
        out.rows.push_back(std::move(row));
        continue;
      }
      if (rc == SQLITE_INTERRUPT || Clock::now() > conn->deadline) return TooLong(limits);
      return SqlError(conn->db);
    }
    return out;
  }

 private:
  // SQLite's message, without the internal views' secret should it name one.
  Error SqlError(sqlite3* db) const {
    std::string msg = sqlite3_errmsg(db);
    for (size_t p; (p = msg.find(internal_.suffix)) != std::string::npos;)
      msg.erase(p, internal_.suffix.size());
    return MakeError(ErrorCode::kInvalidArgument, "SQL error: " + msg);
  }

  Result<std::unique_ptr<SqliteConn>> Acquire() {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
    }
    auto c = std::make_unique<SqliteConn>();
    c->internal = &internal_;
    if (sqlite3_open_v2(path_.c_str(), &c->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                        nullptr) != SQLITE_OK)
      return MakeError(ErrorCode::kInternal, "open " + path_ + " read-only: " +
                                                 (c->db ? sqlite3_errmsg(c->db) : "out of memory"));
    sqlite3_busy_timeout(c->db, 2000);
    sqlite3_create_function(c->db, "vmgrid_caller", 0, SQLITE_UTF8, c.get(), CallerFn, nullptr,
                            nullptr);
    sqlite3_create_function(c->db, "vmgrid_admin", 0, SQLITE_UTF8, c.get(), AdminFn, nullptr,
                            nullptr);
    // TEMP views shadow nothing in main. The internal views read the base
    // tables (always schema-qualified, so no CTE of a query can stand in
    // for them); the published views read only the internal ones.
    std::string views =
        Expand(kViews, {{"{future_id}", FutureIdSqlExpression("n.id", "h.id", "n.start")},
                        {"{mean_create_ms}",
                         "(SELECT CAST(AVG(v.create_ms) AS BIGINT) FROM main.vms v "
                         "WHERE v.image_id = i.id AND v.start = s.start AND v.create_ms > 0)"},
                        {"{create}", "CREATE TEMP VIEW "},
                        {"{pub}", "temp."},
                        {"{sfx}", internal_.suffix},
                        {"{base}", "main."},
                        {"{admin}", "vmgrid_admin()"},
                        {"{caller}", "vmgrid_caller()"}});
    for (const auto& v : QueryService::Views())
      views += "\nCREATE TEMP VIEW " + v + " AS SELECT * FROM temp." + v + internal_.suffix + ";";
    char* err = nullptr;
    if (sqlite3_exec(c->db, views.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "?";
      sqlite3_free(err);
      return MakeError(ErrorCode::kInternal, "creating the published views: " + msg);
    }
    sqlite3_set_authorizer(c->db, Authorize, c.get());
    sqlite3_progress_handler(c->db, 1000, Progress, c.get());
    for (const auto& [limit, value] : kSqliteLimits) sqlite3_limit(c->db, limit, value);
    return c;
  }

  void Release(std::unique_ptr<SqliteConn> conn) {
    std::lock_guard<std::mutex> l(mu_);
    if (idle_.size() < 8) idle_.push_back(std::move(conn));
  }

  const std::string path_;
  InternalViews internal_;  // set by the constructor, then read-only
  SqliteWatchdog watchdog_;
  std::mutex mu_;
  std::vector<std::unique_ptr<SqliteConn>> idle_;  // guarded by mu_
};

// ---------------------------------------------------------------------------
// PostgreSQL: the views live in schema `published`, owned by the controller's
// role (so they read the base tables with its rights); a query runs in a
// READ ONLY transaction inside infosvc.run_query(), a SECURITY DEFINER
// function owned by the NOLOGIN role vmgrid_query, whose only privileges are
// USAGE on `published` and SELECT on its views.
//
// Why not just SET ROLE vmgrid_query on a connection of the controller's
// role: the session user would stay the controller's role, and a query could
// call set_config('role', <that role>) and then run SQL text with its rights
// through query_to_xml() or table_to_xml(). Inside a SECURITY DEFINER
// function PostgreSQL refuses to change `role`, so the query runs there.
//
// A query can also call set_config('vmgrid.caller', ...) itself, so the
// caller's identity carries a tag, SHA-256(key || SHA-256(key || admin ':'
// caller)), which the view infosvc.caller checks against a key that only the
// controller's role can read (table infosvc.key). A wrong or missing tag
// makes the caller nobody: no VMs, no private images.

constexpr char kPgSetupHead[] = R"sql(
SELECT pg_advisory_xact_lock(hashtext('vmgrid.infosvc.setup'));
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vmgrid_query') THEN
    BEGIN
      CREATE ROLE vmgrid_query NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;  -- another database's setup
    END;
  END IF;
  IF NOT pg_has_role('vmgrid_query', 'MEMBER') THEN
    BEGIN
      EXECUTE format('GRANT vmgrid_query TO %I', current_user);
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
  END IF;
END
$$;
CREATE SCHEMA IF NOT EXISTS infosvc;
REVOKE ALL ON SCHEMA infosvc FROM PUBLIC;
CREATE TABLE IF NOT EXISTS infosvc.key (id INTEGER PRIMARY KEY CHECK (id = 1), k TEXT NOT NULL);
REVOKE ALL ON infosvc.key FROM PUBLIC;
DROP SCHEMA IF EXISTS published CASCADE;
DROP VIEW IF EXISTS infosvc.caller;
DROP FUNCTION IF EXISTS infosvc.run_query(text, bigint);
DROP FUNCTION IF EXISTS infosvc.run_query(text, bigint, bigint);
CREATE VIEW infosvc.caller AS
  SELECT CASE WHEN ok THEN c END AS user_id, COALESCE(ok AND a = '1', false) AS admin
  FROM (SELECT s.c, s.a,
               s.t = encode(sha256(convert_to(
                       k.k || encode(sha256(convert_to(k.k || s.a || ':' || s.c, 'UTF8')), 'hex'),
                       'UTF8')), 'hex') AS ok
        FROM (SELECT current_setting('vmgrid.caller', true) AS c,
                     current_setting('vmgrid.admin', true) AS a,
                     current_setting('vmgrid.tag', true) AS t) s
        CROSS JOIN infosvc.key k) x;
-- Over every VM, past the row-level security of vms (futures show the mean
-- create time of an image, whoever created it).
DROP FUNCTION IF EXISTS infosvc.mean_create_ms(text, text);
CREATE FUNCTION infosvc.mean_create_ms(text, text) RETURNS bigint
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
  SELECT CAST(AVG(create_ms) AS BIGINT) FROM vms WHERE image_id = $1 AND start = $2 AND create_ms > 0
$fn$;
REVOKE ALL ON FUNCTION infosvc.mean_create_ms(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION infosvc.mean_create_ms(text, text) TO vmgrid_query;
CREATE SCHEMA published;
)sql";

// Row-level security for the rows the views filter by caller. The policies
// restrict only queries run as vmgrid_query (inside infosvc.run_query); the
// Store's own statements (as the tables' owner, hence FORCE) pass the first
// test. They are dropped before infosvc.caller is re-created (they depend on
// it) and created again after the views.
constexpr char kPgDropPolicies[] = R"sql(
DROP POLICY IF EXISTS vmgrid_caller ON vms;
DROP POLICY IF EXISTS vmgrid_caller ON virtualization;
DROP POLICY IF EXISTS vmgrid_caller ON images;
DROP POLICY IF EXISTS vmgrid_caller ON image_cache;
DROP POLICY IF EXISTS vmgrid_caller ON users;
DROP POLICY IF EXISTS vmgrid_caller ON networks;
DROP POLICY IF EXISTS vmgrid_caller ON network_shares;
DROP POLICY IF EXISTS vmgrid_caller ON nics;
DROP POLICY IF EXISTS vmgrid_caller ON datasets;
DROP POLICY IF EXISTS vmgrid_caller ON dataset_versions;
DROP POLICY IF EXISTS vmgrid_caller ON dataset_cache;
DROP POLICY IF EXISTS vmgrid_caller ON dataset_shares;
)sql";
constexpr char kPgPolicies[] = R"sql(
CREATE POLICY vmgrid_caller ON vms USING (current_user <> 'vmgrid_query'
  OR (SELECT admin FROM infosvc.caller) OR owner_id = (SELECT user_id FROM infosvc.caller));
CREATE POLICY vmgrid_caller ON virtualization USING (current_user <> 'vmgrid_query'
  OR (SELECT admin FROM infosvc.caller) OR owner_id = (SELECT user_id FROM infosvc.caller));
CREATE POLICY vmgrid_caller ON images USING (current_user <> 'vmgrid_query'
  OR (state = 'ready' AND ((SELECT admin FROM infosvc.caller)
      OR owner_id = (SELECT user_id FROM infosvc.caller)
      OR owner_id IN (SELECT id FROM users WHERE role = 'admin'))));
CREATE POLICY vmgrid_caller ON image_cache USING (current_user <> 'vmgrid_query'
  OR image_id IN (SELECT id FROM images));
-- Users a caller may meet in the views: themselves and the admins (owners of
-- public images); the admin meets everyone.
CREATE POLICY vmgrid_caller ON users USING (current_user <> 'vmgrid_query'
  OR (SELECT admin FROM infosvc.caller) OR id = (SELECT user_id FROM infosvc.caller)
  OR role = 'admin');
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
ALTER TABLE vms ENABLE ROW LEVEL SECURITY;
ALTER TABLE vms FORCE ROW LEVEL SECURITY;
ALTER TABLE virtualization ENABLE ROW LEVEL SECURITY;
ALTER TABLE virtualization FORCE ROW LEVEL SECURITY;
ALTER TABLE images ENABLE ROW LEVEL SECURITY;
ALTER TABLE images FORCE ROW LEVEL SECURITY;
ALTER TABLE image_cache ENABLE ROW LEVEL SECURITY;
ALTER TABLE image_cache FORCE ROW LEVEL SECURITY;
-- Virtual networks: the caller's own and those shared with them; NICs of
-- the caller's VMs only.
CREATE POLICY vmgrid_caller ON network_shares USING (current_user <> 'vmgrid_query'
  OR (SELECT admin FROM infosvc.caller) OR user_id = (SELECT user_id FROM infosvc.caller));
CREATE POLICY vmgrid_caller ON networks USING (current_user <> 'vmgrid_query'
  OR (SELECT admin FROM infosvc.caller) OR owner_id = (SELECT user_id FROM infosvc.caller)
  OR id IN (SELECT network_id FROM network_shares));
CREATE POLICY vmgrid_caller ON nics USING (current_user <> 'vmgrid_query'
  OR (SELECT admin FROM infosvc.caller) OR owner_id = (SELECT user_id FROM infosvc.caller));
ALTER TABLE network_shares ENABLE ROW LEVEL SECURITY;
ALTER TABLE network_shares FORCE ROW LEVEL SECURITY;
ALTER TABLE networks ENABLE ROW LEVEL SECURITY;
ALTER TABLE networks FORCE ROW LEVEL SECURITY;
ALTER TABLE nics ENABLE ROW LEVEL SECURITY;
ALTER TABLE nics FORCE ROW LEVEL SECURITY;
-- Datasets: the caller's own and those shared with them; their versions and
-- which hosts cache them.
CREATE POLICY vmgrid_caller ON dataset_shares USING (current_user <> 'vmgrid_query'
  OR (SELECT admin FROM infosvc.caller) OR user_id = (SELECT user_id FROM infosvc.caller));
CREATE POLICY vmgrid_caller ON datasets USING (current_user <> 'vmgrid_query'
  OR (SELECT admin FROM infosvc.caller) OR owner_id = (SELECT user_id FROM infosvc.caller)
  OR id IN (SELECT dataset_id FROM dataset_shares));
CREATE POLICY vmgrid_caller ON dataset_versions USING (current_user <> 'vmgrid_query'
  OR dataset_id IN (SELECT id FROM datasets));
CREATE POLICY vmgrid_caller ON dataset_cache USING (current_user <> 'vmgrid_query'
  OR dataset_id IN (SELECT id FROM datasets));
ALTER TABLE datasets ENABLE ROW LEVEL SECURITY;
ALTER TABLE datasets FORCE ROW LEVEL SECURITY;
ALTER TABLE dataset_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE dataset_versions FORCE ROW LEVEL SECURITY;
ALTER TABLE dataset_cache ENABLE ROW LEVEL SECURITY;
ALTER TABLE dataset_cache FORCE ROW LEVEL SECURITY;
ALTER TABLE dataset_shares ENABLE ROW LEVEL SECURITY;
ALTER TABLE dataset_shares FORCE ROW LEVEL SECURITY;
)sql";

// After the views: privileges, and the function queries run in. Creating a
// function owned by vmgrid_query needs that role to have CREATE on the
// schema for a moment.
constexpr char kPgSetupTail[] = R"sql(
GRANT USAGE ON SCHEMA published TO vmgrid_query;
GRANT SELECT ON ALL TABLES IN SCHEMA published TO vmgrid_query;
-- Rows are counted in bytes as they are produced: past max_bytes the query
-- stops with SQLSTATE VGBIG, so neither the server's result store nor the
-- controller holds more than that.
CREATE FUNCTION infosvc.run_query(q text, max_rows bigint, max_bytes bigint) RETURNS SETOF json
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = published, pg_temp AS $fn$
DECLARE
  r json;
  total bigint := 0;
BEGIN
  FOR r IN EXECUTE
    'SELECT (SELECT pg_catalog.json_agg(e.value)'
    ' FROM pg_catalog.json_each(pg_catalog.to_json(vmgrid_row.*)) e) FROM ('
    || q || E'\n) vmgrid_row LIMIT ' || max_rows
  LOOP
    total := total OPERATOR(pg_catalog.+) pg_catalog.octet_length(r::text);
    IF total OPERATOR(pg_catalog.>) max_bytes THEN
      RAISE EXCEPTION 'the result is larger than % bytes', max_bytes USING ERRCODE = 'VGBIG';
    END IF;
    RETURN NEXT r;
  END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION infosvc.run_query(text, bigint, bigint) FROM PUBLIC;
GRANT CREATE ON SCHEMA infosvc TO vmgrid_query;
ALTER FUNCTION infosvc.run_query(text, bigint, bigint) OWNER TO vmgrid_query;
REVOKE CREATE ON SCHEMA infosvc FROM vmgrid_query;
)sql";

constexpr Oid kPgBoolOid = 16;

// The tag that authenticates `caller` to the views (see above).
std::string CallerTag(const std::string& key, const QueryCaller& caller) {
  return Sha256Hex(key + Sha256Hex(key + (caller.admin ? "1" : "0") + ":" + caller.user_id));
}

bool PgOk(const PGresult* r) {
  ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

class PgEngine : public QueryService::Engine {
 public:
  explicit PgEngine(std::string url) : url_(std::move(url)) {}

  // Creates or refreshes the role, schemas, views and function; reads the key.
  Status Setup() {
    VMG_ASSIGN_OR_RETURN(PgConnPtr conn, PgConnect(url_));
    PGconn* c = conn.get();
    std::string script =
        std::string("BEGIN;\n") + kPgDropPolicies + kPgSetupHead +
        Expand(kViews, {{"{future_id}", FutureIdSqlExpression("n.id", "h.id", "n.start")},
                        {"{mean_create_ms}", "infosvc.mean_create_ms(i.id, s.start)"},
                        {"{create}", "CREATE VIEW published."},
                        {"{sfx}", ""},
                        {"{pub}", "published."},
                        {"{base}", ""},
                        {"{admin}", "(SELECT admin FROM infosvc.caller)"},
                        {"{caller}", "(SELECT user_id FROM infosvc.caller)"}});
    // The caller filter is enforced by row-level security on the base
    // tables (kPgPolicies), not by security_barrier views: the planner then
    // merges the views into a query and joins them by index, while still
    // evaluating the policies before any condition of the query that could
    // raise an error revealing a hidden value (a non-leakproof function).
    script += kPgPolicies;
    script += kPgSetupTail;
    auto fail = [&](const PGresult* r) -> Error {
      std::string msg = PgMessage(c, r);
      PgResultPtr rb(PQexec(c, "ROLLBACK"));
      std::string hint = PgSqlState(r) == "42501"
                             ? " (the database's role needs CREATEROLE, or a superuser must "
                               "CREATE ROLE vmgrid_query NOLOGIN and GRANT it to that role)"
                             : "";
      return MakeError(ErrorCode::kInternal,
                       "setting up the published views on PostgreSQL: " + msg + hint);
    };
    PgResultPtr r(PQexec(c, script.c_str()));
    if (!PgOk(r.get())) return fail(r.get());
    std::string fresh = NewToken();
    const char* params[] = {fresh.c_str()};
    r.reset(PQexecParams(
        c, "INSERT INTO infosvc.key (id, k) VALUES (1, $1) ON CONFLICT (id) DO NOTHING", 1, nullptr,
        params, nullptr, nullptr, 0));
    if (!PgOk(r.get())) return fail(r.get());
    r.reset(PQexec(c, "SELECT k FROM infosvc.key"));
    if (!PgOk(r.get()) || PQntuples(r.get()) != 1) return fail(r.get());
    key_ = PQgetvalue(r.get(), 0, 0);
    r.reset(PQexec(c, "COMMIT"));
    if (!PgOk(r.get())) return fail(r.get());
    Release(std::move(conn));
    return Status::Ok();
  }

  Result<QueryResult> Run(const QueryCaller& caller, const std::string& sql,
                          const QueryLimits& limits) override {
    // The text becomes a subquery: no trailing semicolons.
    std::string q = sql;
    while (!q.empty() && (q.back() == ';' || isspace(static_cast<unsigned char>(q.back()))))
      q.pop_back();
    if (q.empty()) return MakeError(ErrorCode::kInvalidArgument, "the query has no statement");
    VMG_ASSIGN_OR_RETURN(PgConnPtr conn, Acquire());
    Result<QueryResult> result = RunIn(conn.get(), caller, q, limits);
    // End the transaction, and drop session advisory locks the query took.
    PgResultPtr end(PQexec(conn.get(), "ROLLBACK; SELECT pg_advisory_unlock_all()"));
    if (PgOk(end.get()) && PQtransactionStatus(conn.get()) == PQTRANS_IDLE)
      Release(std::move(conn));
    return result;
  }

 private:
  Result<QueryResult> RunIn(PGconn* c, const QueryCaller& caller, const std::string& q,
                            const QueryLimits& limits) {
    auto fail = [&](const PGresult* r) { return QueryError(c, r, limits); };
    PgResultPtr r(PQexec(c, "BEGIN READ ONLY"));
    if (!PgOk(r.get())) return fail(r.get());
    // Parameters, never spliced: the caller's id is data.
    std::string timeout = std::to_string(std::max<int64_t>(1, limits.timeout_ms));
    std::string admin = caller.admin ? "1" : "0";
    std::string tag = CallerTag(key_, caller);
    const char* settings[] = {timeout.c_str(), caller.user_id.c_str(), admin.c_str(), tag.c_str()};
    r.reset(
        PQexecParams(c,
                     "SELECT set_config('statement_timeout', $1, true), "
                     "set_config('search_path', 'published', true), "
                     // The tables are in memory: index probes are not 4x a
                     // sequential read, and with the default the planner
                     // scans 300,000 virtualization rows where 1,000 index
                     // probes do (57 -> 16 ms on the benchmark's join).
                     "set_config('random_page_cost', '1.1', true), "
                     "set_config('vmgrid.caller', $2, true), set_config('vmgrid.admin', $3, true), "
                     "set_config('vmgrid.tag', $4, true)",
                     4, nullptr, settings, nullptr, nullptr, 0));
    if (!PgOk(r.get())) return fail(r.get());
    // Parse and describe: one statement (a prepared statement cannot hold
    // more), its column names and types. Nothing runs yet.
    r.reset(PQprepare(c, "", q.c_str(), 0, nullptr));
    if (!PgOk(r.get())) return fail(r.get());
    r.reset(PQdescribePrepared(c, ""));
    if (!PgOk(r.get())) return fail(r.get());
    const int ncol = PQnfields(r.get());
    if (ncol == 0)
      return MakeError(ErrorCode::kPermissionDenied, "only read-only SELECT queries are allowed");
    QueryResult out;
    std::vector<bool> is_bool;
    for (int i = 0; i < ncol; ++i) {
      out.columns.push_back(PQfname(r.get(), i));
      is_bool.push_back(PQftype(r.get(), i) == kPgBoolOid);
    }
    // Run, as vmgrid_query; one more row than allowed tells "too many".
    const int64_t max_rows = std::clamp<int64_t>(limits.max_rows, 0, INT64_MAX - 1);
    std::string limit = std::to_string(max_rows + 1);
    std::string max_bytes = std::to_string(limits.max_result_bytes);
    const char* run[] = {q.c_str(), limit.c_str(), max_bytes.c_str()};
    // Row by row (single-row mode), so that the controller's memory follows
    // the byte cap rather than what libpq would buffer.
    if (!PQsendQueryParams(c, "SELECT infosvc.run_query($1, $2, $3)", 3, nullptr, run, nullptr,
                           nullptr, 0))
      return MakeError(
          ErrorCode::kUnavailable,
          std::string("the information service lost its database: ") + PQerrorMessage(c));
    PQsetSingleRowMode(c);
    // Whatever happens below, the connection is drained before it is reused.
    struct Drain {
      PGconn* c;
      ~Drain() {
        while (PGresult* rest = PQgetResult(c)) PQclear(rest);
      }
    } drain{c};
    size_t bytes = 0;
    for (const auto& name : out.columns) bytes += name.size() + 3;
    while (true) {
      r.reset(PQgetResult(c));
      if (!r) break;
      const ExecStatusType st = PQresultStatus(r.get());
      if (st == PGRES_TUPLES_OK) continue;  // the end of the rows
      if (st != PGRES_SINGLE_TUPLE) return fail(r.get());
      if (static_cast<int64_t>(out.rows.size()) >= max_rows) {
        Cancel(c);
        return TooManyRows(limits);
      }
      json values = PQgetisnull(r.get(), 0, 0)
                        ? json::array()
                        : json::parse(PQgetvalue(r.get(), 0, 0), nullptr, false);
      if (!values.is_array() || values.size() != static_cast<size_t>(ncol))
        return MakeError(ErrorCode::kInternal,
                         "query result row " + std::to_string(out.rows.size()) + " is malformed");
      std::vector<json> row;
      row.reserve(static_cast<size_t>(ncol));
      for (int col = 0; col < ncol; ++col) {
        json& v = values[static_cast<size_t>(col)];
        // Booleans read as 0/1, as on SQLite.
        if (is_bool[static_cast<size_t>(col)] && v.is_boolean()) v = v.get<bool>() ? 1 : 0;
        bytes += ValueBytes(v);
        row.push_back(std::move(v));
      }
      if (bytes > limits.max_result_bytes) {
        Cancel(c);
        return TooLarge(limits);
      }
      out.rows.push_back(std::move(row));
    }
    return out;
  }

  // Asks the server to stop the running statement (best effort).
  static void Cancel(PGconn* c) {
    if (PGcancel* cancel = PQgetCancel(c)) {
      char err[256];
      PQcancel(cancel, err, sizeof err);
      PQfreeCancel(cancel);
    }
  }

  static Error QueryError(PGconn* c, const PGresult* r, const QueryLimits& limits) {
    const std::string state = PgSqlState(r);
    const std::string msg = PgMessage(c, r);
    if (state == "VGBIG") return TooLarge(limits);
    if (PQstatus(c) != CONNECTION_OK || state.rfind("08", 0) == 0)
      return MakeError(ErrorCode::kUnavailable,
                       "the information service lost its database: " + msg);
    if (state == "57014") return TooLong(limits);  // statement_timeout
    // No privilege; a name outside the published views (unknown here, since
    // the search path holds only them); a write in the READ ONLY transaction.
    if (state == "42501" || state == "42P01" || state == "3F000" || state == "25006")
      return NotAllowed(msg);
    if (state.rfind("53", 0) == 0 || state.rfind("58", 0) == 0 || state.rfind("XX", 0) == 0)
      return MakeError(ErrorCode::kInternal, "database: " + msg);
    return MakeError(ErrorCode::kInvalidArgument, "SQL error: " + msg);
  }

  Result<PgConnPtr> Acquire() {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
    }
    return PgConnect(url_);
  }

  void Release(PgConnPtr conn) {
    std::lock_guard<std::mutex> l(mu_);
    if (idle_.size() < 8) idle_.push_back(std::move(conn));
  }

  const std::string url_;
  std::string key_;  // set by Setup, then read-only
  std::mutex mu_;
  std::vector<PgConnPtr> idle_;  // guarded by mu_
};

// ---------------------------------------------------------------------------

// Defence in depth (the internal views' secret names are the defence, see
// "SQLite" above): refuse CTE definitions that reuse a published view's name,
// written as an identifier, quoted, or as a string literal, followed by "("
// (column list) or by AS [NOT] [MATERIALIZED] "(".
Status CheckNoShadowingCte(const std::string& sql) {
  std::vector<std::string> tokens;  // lower-cased identifiers/keywords and punctuation
  for (size_t i = 0; i < sql.size();) {
    char c = sql[i];
    if (isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    if (c == '-' && i + 1 < sql.size() && sql[i + 1] == '-') {
      while (i < sql.size() && sql[i] != '\n') ++i;
      continue;
    }
    if (c == '/' && i + 1 < sql.size() && sql[i + 1] == '*') {
      size_t e = sql.find("*/", i + 2);
      i = e == std::string::npos ? sql.size() : e + 2;
      continue;
    }
    if (c == '\'') {  // string literal ('' escapes): SQLite takes one as a CTE name too
      std::string lit;
      ++i;
      while (i < sql.size()) {
        if (sql[i] == '\'' && i + 1 < sql.size() && sql[i + 1] == '\'') {
          lit += '\'';
          i += 2;
        } else if (sql[i] == '\'') {
          ++i;
          break;
        } else {
          lit += static_cast<char>(tolower(static_cast<unsigned char>(sql[i++])));
        }
      }
      tokens.push_back(lit);
      continue;
    }
    if (c == '"' || c == '`' || c == '[') {  // quoted identifier
      char close = c == '[' ? ']' : c;
      std::string id;
      ++i;
      while (i < sql.size() && sql[i] != close)
        id += static_cast<char>(tolower(static_cast<unsigned char>(sql[i++])));
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
      return MakeError(ErrorCode::kPermissionDenied, "a WITH clause may not define '" + tokens[t] +
                                                         "': that name is a published view");
  }
  return Status::Ok();
}

bool IsIdentifier(const std::string& s) {
  if (s.empty() || s.size() > 64 || !(isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_'))
    return false;
  for (char c : s)
    if (!isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return true;
}

}  // namespace

const std::vector<std::string>& QueryService::Views() {
  static const std::vector<std::string> kNames = {
      "hosts",         "vms",         "images",
      "image_cache",   "datasets",    "dataset_versions",
      "dataset_cache", "vdisks",      "virtualization",
      "futures",       "networks",    "nics",
      "machines",      "machines_ext"};
  return kNames;
}

Result<std::unique_ptr<QueryService>> QueryService::Open(const std::string& target,
                                                         int max_concurrent_per_user) {
  if (max_concurrent_per_user < 1)
    return MakeError(ErrorCode::kInvalidArgument, "queries per user must be at least 1");
  if (IsPostgresTarget(target)) {
    auto engine = std::make_unique<PgEngine>(target);
    VMG_RETURN_IF_ERROR(engine->Setup());
    return std::unique_ptr<QueryService>(
        new QueryService(std::move(engine), max_concurrent_per_user));
  }
  auto engine = std::make_unique<SqliteEngine>(target);
  VMG_RETURN_IF_ERROR(engine->Check());  // fail early on a bad path
  return std::unique_ptr<QueryService>(
      new QueryService(std::move(engine), max_concurrent_per_user));
}

class QueryService::Slot {
 public:
  Slot(QueryService* svc, std::string user) : svc_(svc), user_(std::move(user)) {}
  ~Slot() {
    std::lock_guard<std::mutex> l(svc_->slots_mu_);
    if (--svc_->running_[user_] <= 0) svc_->running_.erase(user_);
  }

 private:
  QueryService* svc_;
  std::string user_;
};

Result<std::unique_ptr<QueryService::Slot>> QueryService::TakeSlot(const QueryCaller& caller) {
  if (caller.admin) return std::unique_ptr<Slot>();  // trusted, like the controller's admission
  std::lock_guard<std::mutex> l(slots_mu_);
  int& n = running_[caller.user_id];
  if (n >= max_concurrent_per_user_) {
    if (n == 0) running_.erase(caller.user_id);
    return MakeError(ErrorCode::kTooManyRequests, "you already run " +
                                                      std::to_string(max_concurrent_per_user_) +
                                                      " queries at once; wait for one to finish");
  }
  ++n;
  return std::make_unique<Slot>(this, caller.user_id);
}

QueryService::~QueryService() = default;

Result<QueryResult> QueryService::Sql(const QueryCaller& caller, const std::string& sql,
                                      const QueryLimits& limits) {
  VMG_ASSIGN_OR_RETURN(auto slot, TakeSlot(caller));
  return RunSql(caller, sql, limits);
}

Result<QueryResult> QueryService::RunSql(const QueryCaller& caller, const std::string& sql,
                                         const QueryLimits& limits) {
  auto start = Clock::now();
  if (sql.find_first_not_of(" \t\r\n") == std::string::npos)
    return MakeError(ErrorCode::kInvalidArgument, "the query is empty");
  if (sql.size() > limits.max_sql_bytes)
    return MakeError(ErrorCode::kInvalidArgument,
                     "the query is longer than " + std::to_string(limits.max_sql_bytes) + " bytes");
  // Needed on SQLite (see above); on PostgreSQL such a CTE could only read
  // what the query role may read anyway, but one rule for both is simpler.
  VMG_RETURN_IF_ERROR(CheckNoShadowingCte(sql));
  VMG_ASSIGN_OR_RETURN(QueryResult out, engine_->Run(caller, sql, limits));
  out.elapsed_us =
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
  return out;
}

Result<SetResult> QueryService::Set(const QueryCaller& caller, const SetQuery& q,
                                    const QueryLimits& limits) {
  VMG_ASSIGN_OR_RETURN(auto slot, TakeSlot(caller));
  auto start = Clock::now();
  const auto& views = Views();
  if (std::find(views.begin(), views.end(), q.from) == views.end())
    return MakeError(ErrorCode::kInvalidArgument, "set: 'from' must be one of the published views");
  if (!q.same.empty() && !IsIdentifier(q.same))
    return MakeError(ErrorCode::kInvalidArgument, "set: 'same' must be a column name");
  if (!IsIdentifier(q.sum))
    return MakeError(ErrorCode::kInvalidArgument, "set: 'sum' must be a column name");
  if (q.size < 1 || q.size > 64)
    return MakeError(ErrorCode::kInvalidArgument, "set: 'size' must be 1..64");
  if (q.min > q.max)
    return MakeError(ErrorCode::kInvalidArgument, "set: 'min' is larger than 'max'");
  const std::string base = "SELECT id, " + (q.same.empty() ? std::string("NULL") : q.same) + ", " +
                           q.sum + " FROM " + q.from +
                           (q.where.empty() ? "" : " WHERE (" + q.where + ")") +
                           (q.same.empty() ? "" : " ORDER BY " + q.same);
  QueryLimits inner = limits;
  inner.max_rows = std::max<int64_t>(limits.max_rows, 1'000'000);
  inner.max_result_bytes = std::max<size_t>(limits.max_result_bytes, 64 << 20);
  // Rows come grouped (ordered by the shared value), so a group is complete
  // when the next one starts and the search stops after `max_sets` groups
  // with a set. Read a prefix first (with an index on the column, the
  // database stops there too); only if it holds too few sets, read all.
  constexpr int64_t kPrefixRows = 1000;
  for (int64_t limit = q.same.empty() ? 0 : kPrefixRows;; limit = 0) {
    std::string sql = base + (limit > 0 ? " LIMIT " + std::to_string(limit + 1) : "");
    VMG_ASSIGN_OR_RETURN(QueryResult rows, RunSql(caller, sql, inner));
    const bool truncated = limit > 0 && static_cast<int64_t>(rows.rows.size()) > limit;
    SetResult out;
    std::vector<int64_t> weights;
    weights.reserve(256);
    // Searches rows [begin, end) (one group).
    auto search = [&](size_t begin, size_t end) -> Status {
      ++out.groups;
      weights.clear();
      for (size_t i = begin; i < end; ++i) weights.push_back(rows.rows[i][2].get<int64_t>());
      SetSearchStats stats;
      auto found = FindKSubsetInRange(weights, q.size, q.min, q.max, &stats);
      out.used_exact_search = out.used_exact_search || stats.used_dp;
      if (!found) return Status::Ok();
      FoundSet fs;
      fs.group = rows.rows[begin][1];
      for (size_t idx : *found) {
        const auto& r = rows.rows[begin + idx];
        fs.ids.push_back(r[0].is_string() ? r[0].get<std::string>() : r[0].dump());
        fs.total += r[2].get<int64_t>();
      }
      out.sets.push_back(std::move(fs));
      return Status::Ok();
    };
    const size_t n = truncated ? static_cast<size_t>(limit) : rows.rows.size();
    size_t begin = 0;
    for (size_t i = 0; i < n && out.sets.size() < q.max_sets; ++i) {
      if (!rows.rows[i][2].is_number_integer())
        return MakeError(ErrorCode::kInvalidArgument,
                         "set: column '" + q.sum + "' is not an integer");
      if (i + 1 < rows.rows.size() && rows.rows[i + 1][1] == rows.rows[begin][1]) continue;
      // Row i ends its group (a prefix carries one row more than it uses,
      // so this is known for its last group too).
      VMG_RETURN_IF_ERROR(search(begin, i + 1));
      begin = i + 1;
    }
    if (truncated && out.sets.size() < q.max_sets) continue;  // read all
    out.candidates = static_cast<int64_t>(begin);
    out.elapsed_us =
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
    return out;
  }
}

}  // namespace vmgrid
