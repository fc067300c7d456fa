// SqliteBackend: the SqlBackend over the SQLite C API (the default, embedded
// backend): one connection with WAL, foreign keys and a busy timeout. Each
// distinct statement text is prepared once and kept (at most 512; then all
// are dropped and prepared again as used).
// Not thread-safe; the Store serializes access with a mutex.
#pragma once

#include <string>
#include <unordered_map>

#include "store/sql_backend.h"

struct sqlite3;
struct sqlite3_stmt;

namespace vmgrid {

class SqliteBackend : public SqlBackend {
 public:
  // Opens (creating if needed) the database file at `path`.
  static Result<SqlBackendPtr> Open(const std::string& path);
  ~SqliteBackend() override;

  Dialect dialect() const override { return Dialect::kSqlite; }
  Result<std::vector<SqlRow>> Query(const std::string& sql,
                                    const std::vector<SqlValue>& params) override;
  Result<int64_t> Exec(const std::string& sql, const std::vector<SqlValue>& params) override;
  Status ExecScript(const std::string& sql) override;
  Status Begin() override { return Run("BEGIN IMMEDIATE", {}, nullptr); }
  Status Commit() override { return Committed(Run("COMMIT", {}, nullptr)); }
  Status Rollback() override { return Run("ROLLBACK", {}, nullptr); }
  Status LockTable(const std::string&) override { return Status::Ok(); }
  bool InTransaction() const override;

 private:
  explicit SqliteBackend(sqlite3* db) : db_(db) {}
  // Prepares, binds and steps `sql` to completion, collecting rows if `rows`.
  Status Run(const std::string& sql, const std::vector<SqlValue>& params,
             std::vector<SqlRow>* rows);

  void DropStatements();

  sqlite3* db_;
  std::unordered_map<std::string, sqlite3_stmt*> statements_;  // by text; reset after each use
};

}  // namespace vmgrid
