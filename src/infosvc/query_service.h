// QueryService: the relational grid information service. Users query a
// fixed set of published views (hosts, vms, images, image_cache, vdisks,
// virtualization, futures, machines, machines_ext) with read-only SQL, or
// ask for sets of k resources with a co-allocation operator.
//
// Safety: each query runs on a read-only SQLite connection whose authorizer
// allows only SELECT over the published views (no base tables, no PRAGMA,
// ATTACH or writes, a whitelist of functions), one statement, a time limit
// (progress handler) and a row limit. Views filter rows by the caller: a user
// sees their own VMs and disks, public images and public host attributes.
//
// Thread-safe: connections come from a pool; each query has one to itself.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"

struct sqlite3;

namespace vmgrid {

struct QueryCaller {
  std::string user_id;
  bool admin = false;
};

struct QueryLimits {
  int64_t max_rows = 10'000;
  int64_t timeout_ms = 2'000;
  size_t max_sql_bytes = 16 * 1024;
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
  nlohmann::json group;             // the shared `same` value
  std::vector<std::string> ids;
  int64_t total = 0;
};

struct SetResult {
  std::vector<FoundSet> sets;
  int64_t candidates = 0;  // rows considered
  int64_t groups = 0;
  int64_t elapsed_us = 0;
  bool used_exact_search = false;
};

class QueryService {
 public:
  // `db_path` is the controller's SQLite database (opened read-only here).
  static Result<std::unique_ptr<QueryService>> Open(const std::string& db_path);
  ~QueryService();

  Result<QueryResult> Sql(const QueryCaller& caller, const std::string& sql,
                          const QueryLimits& limits = {});
  Result<SetResult> Set(const QueryCaller& caller, const SetQuery& query,
                        const QueryLimits& limits = {});

  // Names of the published views.
  static const std::vector<std::string>& Views();

  // A pooled read-only connection with the published views, the authorizer
  // and the per-query context the SQL functions and handlers read.
  struct Conn {
    sqlite3* db = nullptr;
    QueryCaller caller;
    std::chrono::steady_clock::time_point deadline;
    std::string denied;  // what the authorizer refused, for the error message
    ~Conn();
  };

 private:
  explicit QueryService(std::string db_path) : db_path_(std::move(db_path)) {}
  Result<std::unique_ptr<Conn>> Acquire();
  void Release(std::unique_ptr<Conn> conn);

  std::string db_path_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Conn>> idle_;  // guarded by mu_
};

}  // namespace vmgrid
