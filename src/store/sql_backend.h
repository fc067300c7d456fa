// SqlBackend: the one interface the Store talks SQL through, with two
// implementations — SQLite embedded (sqlite.h, the default) and PostgreSQL
// through libpq (pg.h). SQL given to a backend is written once, portably:
// positional parameters are `?` (never inside string literals), integer
// columns are BIGINT, booleans are integers, upserts are ON CONFLICT.
// A backend is one connection and is not thread-safe; the Store serializes
// access with its mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "common/result.h"

namespace vmgrid {

using SqlValue = std::variant<std::nullptr_t, int64_t, double, std::string>;

// One result row. The accessors convert like SQLite's column functions do:
// NULL reads as 0 or "", numbers read as text and text as numbers.
class SqlRow {
 public:
  explicit SqlRow(std::vector<SqlValue> values) : values_(std::move(values)) {}
  size_t size() const { return values_.size(); }
  const SqlValue& operator[](size_t col) const { return values_.at(col); }
  bool IsNull(size_t col) const { return std::holds_alternative<std::nullptr_t>(values_.at(col)); }
  int64_t Int(size_t col) const;
  double Double(size_t col) const;
  std::string Text(size_t col) const;

 private:
  std::vector<SqlValue> values_;
};

class SqlBackend;
using SqlBackendPtr = std::unique_ptr<SqlBackend>;

class SqlBackend {
 public:
  enum class Dialect { kSqlite, kPostgres };
  virtual ~SqlBackend() = default;

  virtual Dialect dialect() const = 0;

  // Runs one statement with `params` bound to its `?` placeholders in order
  // and returns its rows. Constraint violations (unique, foreign key, check)
  // are kAlreadyExists, a lost server is kUnavailable, the rest kInternal.
  virtual Result<std::vector<SqlRow>> Query(const std::string& sql,
                                            const std::vector<SqlValue>& params = {}) = 0;
  // Like Query for a statement without rows; returns how many rows it changed.
  virtual Result<int64_t> Exec(const std::string& sql,
                               const std::vector<SqlValue>& params = {}) = 0;
  // Runs several `;`-separated statements without parameters (migrations).
  virtual Status ExecScript(const std::string& sql) = 0;
  // Inside a transaction: a statement without parameters or rows (SAVEPOINT,
  // RELEASE) whose outcome can wait. PostgreSQL sends it with the next
  // command, in the same round trip (libpq's pipeline mode), and that
  // command fails with its error if it failed; SQLite, in process, runs it
  // at once.
  virtual Status Defer(const std::string& sql) { return ExecScript(sql); }

  // A write transaction. SQLite: BEGIN IMMEDIATE (it holds the database's
  // write lock, so transactions are serial). PostgreSQL: BEGIN at READ
  // COMMITTED; where a read decides a write, the caller uses LockTable.
  virtual Status Begin() = 0;
  virtual Status Commit() = 0;
  virtual Status Rollback() = 0;
  // True while a transaction begun with Begin() is open (false again after a
  // failure the server rolled it back for, where the backend can tell).
  virtual bool InTransaction() const = 0;
  // PostgreSQL: the server process serving this connection now (a
  // notification's sender, PgListener); 0 on SQLite. Any thread.
  virtual int SessionPid() const { return 0; }
  // Inside a transaction: keeps every other LockTable(`table`) and every
  // writer of `table` waiting until this transaction ends; readers go on.
  // A no-op on SQLite, where Begin already excludes all other writers.
  // `table` is a name from our code, never from input.
  virtual Status LockTable(const std::string& table) = 0;

  // `f` runs after each successful Commit() on this connection, in the
  // committing thread (with whatever locks it holds: keep it short).
  void SetAfterCommit(std::function<void()> f) { after_commit_ = std::move(f); }

 protected:
  // Backends call this when a Commit() succeeded.
  Status Committed(Status s) {
    if (s.ok() && after_commit_) after_commit_();
    return s;
  }

 private:
  std::function<void()> after_commit_;
};

// True for the targets that name a PostgreSQL database:
// "postgresql://..." and "postgres://..." (libpq connection URIs).
bool IsPostgresTarget(const std::string& target);

// Opens `target`: a PostgreSQL URI (see IsPostgresTarget) or else the path of
// a SQLite database file, created if missing.
Result<SqlBackendPtr> OpenSqlBackend(const std::string& target);

// `target` fit for messages and logs: a URI's password is replaced by "***".
std::string RedactTarget(const std::string& target);

// Begins on construction and rolls back on destruction unless Commit()
// succeeded: every multi-statement change is all-or-nothing.
class SqlTransaction {
 public:
  explicit SqlTransaction(SqlBackend* db) : db_(db), begin_(db->Begin()) {}
  ~SqlTransaction() {
    if (begin_.ok() && !done_) (void)db_->Rollback();
  }
  SqlTransaction(const SqlTransaction&) = delete;
  SqlTransaction& operator=(const SqlTransaction&) = delete;

  Status begin_status() const { return begin_; }
  Status Commit() {
    VMG_RETURN_IF_ERROR(begin_);
    VMG_RETURN_IF_ERROR(db_->Commit());
    done_ = true;
    return Status::Ok();
  }

 private:
  SqlBackend* db_;
  Status begin_;
  bool done_ = false;
};

}  // namespace vmgrid
