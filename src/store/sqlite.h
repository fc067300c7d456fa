// Thin RAII wrapper over the SQLite C API: a connection, prepared statements
// with bind-by-index, and transactions. Used by Store; nothing else should
// talk SQL directly.
// A SqliteDb is not thread-safe; Store serializes access with a mutex.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "common/result.h"

namespace vmgrid {

using SqlValue = std::variant<std::nullptr_t, int64_t, double, std::string>;

class SqlStmt {
 public:
  SqlStmt(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  ~SqlStmt() { sqlite3_finalize(stmt_); }
  SqlStmt(const SqlStmt&) = delete;
  SqlStmt& operator=(const SqlStmt&) = delete;

  SqlStmt& Bind(int index, const SqlValue& v);
  // Advances; true when a row is available, false when done.
  Result<bool> Step();

  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  double Double(int col) const { return sqlite3_column_double(stmt_, col); }
  std::string Text(int col) const;
  bool IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_;
};

class SqliteDb {
 public:
  // Opens (creating if needed) with WAL, foreign keys and a busy timeout.
  static Result<std::unique_ptr<SqliteDb>> Open(const std::string& path);
  ~SqliteDb();

  Status Exec(const std::string& sql);
  Result<std::unique_ptr<SqlStmt>> Prepare(const std::string& sql);
  // Runs a statement with parameters and no result rows; returns changes().
  Result<int> Run(const std::string& sql, const std::vector<SqlValue>& params = {});
  sqlite3* raw() { return db_; }

 private:
  explicit SqliteDb(sqlite3* db) : db_(db) {}
  sqlite3* db_;
};

// Runs BEGIN IMMEDIATE on construction; ROLLBACK on destruction unless
// Commit() succeeded. Keeps every multi-row change all-or-nothing.
class SqlTransaction {
 public:
  explicit SqlTransaction(SqliteDb* db);
  ~SqlTransaction();
  Status begin_status() const { return begin_; }
  Status Commit();

 private:
  SqliteDb* db_;
  Status begin_;
  bool done_ = false;
};

}  // namespace vmgrid
