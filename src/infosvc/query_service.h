// QueryService: the relational grid information service. Users query a
// fixed set of published views (hosts, vms, images, image_cache, vdisks,
// virtualization, futures, machines, machines_ext) with read-only SQL, or
// ask for sets of k resources with a co-allocation operator.
//
// Safety: one SELECT statement over the published views only, a time limit
// and a row limit; views filter rows by the caller (a user sees their own VMs
// and disks, public images and public host attributes). How the database
// engine enforces it differs per backend (docs/infosvc.md, "Backends"):
// - SQLite: each query runs on a read-only connection whose authorizer allows
//   only SELECT over the views (no base tables, PRAGMA, ATTACH or writes, a
//   whitelist of functions), with a progress handler as the clock.
// - PostgreSQL: each query runs in a READ ONLY transaction as the NOLOGIN
//   role vmgrid_query, which may read the views of schema `published` and
//   nothing else, with statement_timeout as the clock; the caller's identity
//   reaches the views authenticated, so a query cannot pose as someone else.
//
// Both: the time limit holds inside a single function call (SQLite: a
// watchdog thread interrupts the connection, and no value exceeds 64 KiB;
// PostgreSQL: statement_timeout); the result is capped in rows and bytes;
// each user runs at most `max_concurrent_per_user` queries at once (more is
// kTooManyRequests). Why the SQLite views come in two layers, and what a
// query cannot name: query_service.cc, "SQLite".
//
// Thread-safe: connections come from a pool; each query has one to itself.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"

namespace vmgrid {

struct QueryCaller {
  std::string user_id;
  bool admin = false;
};

struct QueryLimits {
  int64_t max_rows = 10'000;
  int64_t timeout_ms = 2'000;
  size_t max_sql_bytes = 16 * 1024;
  // The result's size, counted as JSON text (roughly): column names and
  // values. Bounds the controller's memory as much as the rows do.
  size_t max_result_bytes = 8 * 1024 * 1024;
};

struct QueryResult {
  std::vector<std::string> columns;
  std::vector<std::vector<nlohmann::json>> rows;
  int64_t elapsed_us = 0;
};

// "Find sets of `size` different rows of `from` with the same `same` value
// whose `sum` column totals between `min` and `max`."
struct SetQuery {
  std::string from = "vms";
  size_t size = 2;
  std::string same;  // column to group by ("" = one group)
  std::string sum;   // integer column to total
  int64_t min = 0;
  int64_t max = 0;
  std::string where;  // optional SQL condition over `from`
  size_t max_sets = 10;
};

struct FoundSet {
  nlohmann::json group;  // the shared `same` value
  std::vector<std::string> ids;
  int64_t total = 0;
};

// Groups are searched in ascending order of the shared value (the
// database's order); the search stops after `max_sets` sets.
struct SetResult {
  std::vector<FoundSet> sets;
  int64_t candidates = 0;  // rows of the groups searched
  int64_t groups = 0;      // groups searched
  int64_t elapsed_us = 0;
  bool used_exact_search = false;
};

class QueryService {
 public:
  // `target` is the controller's database as given to Store::Open, after the
  // Store has migrated it: a SQLite file (opened read-only here) or a
  // PostgreSQL URI. On PostgreSQL, Open (re)creates the schema `published`
  // (the views), the schema `infosvc` (the service's key and query function)
  // and, if missing, the role vmgrid_query — so the URI's role needs
  // CREATEROLE the first time, or a superuser must create vmgrid_query and
  // grant it to that role beforehand.
  // At most `max_concurrent_per_user` queries (Sql or Set) of one user run
  // at once; more answer kTooManyRequests at once, without waiting. The
  // admin is not limited.
  static Result<std::unique_ptr<QueryService>> Open(const std::string& target,
                                                    int max_concurrent_per_user = 4);
  ~QueryService();

  Result<QueryResult> Sql(const QueryCaller& caller, const std::string& sql,
                          const QueryLimits& limits = {});
  Result<SetResult> Set(const QueryCaller& caller, const SetQuery& query,
                        const QueryLimits& limits = {});

  // Names of the published views.
  static const std::vector<std::string>& Views();

  // Runs one restricted query on one backend. `sql` is non-empty, within the
  // size limit and defines no CTE named like a published view.
  class Engine {
   public:
    virtual ~Engine() = default;
    virtual Result<QueryResult> Run(const QueryCaller& caller, const std::string& sql,
                                    const QueryLimits& limits) = 0;
  };

 private:
  QueryService(std::unique_ptr<Engine> engine, int max_concurrent_per_user)
      : engine_(std::move(engine)), max_concurrent_per_user_(max_concurrent_per_user) {}

  // Takes one of the caller's query slots until the returned guard is gone.
  class Slot;
  Result<std::unique_ptr<Slot>> TakeSlot(const QueryCaller& caller);
  Result<QueryResult> RunSql(const QueryCaller& caller, const std::string& sql,
                             const QueryLimits& limits);

  std::unique_ptr<Engine> engine_;
  const int max_concurrent_per_user_;
  std::mutex slots_mu_;
  std::map<std::string, int> running_;  // user id -> queries running; guarded by slots_mu_
};

}  // namespace vmgrid
