// SqliteBackend: the SqlBackend over the SQLite C API (the default, embedded
// backend): one connection with WAL, foreign keys and a busy timeout.
// Not thread-safe; the Store serializes access with a mutex.
#pragma once

#include <string>

#include "store/sql_backend.h"

struct sqlite3;

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
  Status Begin() override { return ExecScript("BEGIN IMMEDIATE"); }
  Status Commit() override { return ExecScript("COMMIT"); }
  Status Rollback() override { return ExecScript("ROLLBACK"); }
  Status LockTable(const std::string&) override { return Status::Ok(); }

 private:
  explicit SqliteBackend(sqlite3* db) : db_(db) {}
  // Prepares, binds and steps `sql` to completion, collecting rows if `rows`.
  Status Run(const std::string& sql, const std::vector<SqlValue>& params,
             std::vector<SqlRow>* rows);

  sqlite3* db_;
};

}  // namespace vmgrid
