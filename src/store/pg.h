// PgBackend: the SqlBackend over libpq, for a PostgreSQL server named by a
// connection URI ("postgresql://user@host/db", "postgresql:///db?host=/sock").
// One connection; `?` placeholders become $1, $2, ...; each statement is
// prepared once (per parameter typing) and executed by name after that; parameters are sent
// as text (integers typed int8, reals float8, strings left for the server to
// infer from the column, like a literal). Results are converted by column
// type: integers (and integral numerics, e.g. SUM) to int64, reals to double,
// booleans to 0/1, everything else to text.
// BEGIN and the statements given to Defer wait for the next command and go
// with it in one round trip: a write transaction of one statement and an
// event under a savepoint cost two round trips, not five.
// Not thread-safe; the Store serializes access with a mutex.
#pragma once

#include <libpq-fe.h>

#include <atomic>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "store/sql_backend.h"

namespace vmgrid {

struct PgConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnDeleter>;
struct PgResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgResultPtr = std::unique_ptr<PGresult, PgResultDeleter>;

// Connects to `url` with client encoding UTF-8 and server notices dropped.
// kUnavailable (with the password redacted) when the server cannot be reached.
Result<PgConnPtr> PgConnect(const std::string& url);

// The SQLSTATE of a failed command ("" if none), and its primary message.
std::string PgSqlState(const PGresult* r);
std::string PgMessage(PGconn* conn, const PGresult* r);

// Rewrites the `?` placeholders of `sql` as $1, $2, ... Quoted strings,
// quoted identifiers and comments are left alone.
std::string PgPlaceholders(const std::string& sql);

// Whether `s` is a plain SQL identifier (letters, digits, '_'; no leading digit).
bool PgIsIdentifier(const std::string& s);

class PgBackend : public SqlBackend {
 public:
  static Result<SqlBackendPtr> Open(const std::string& url);

  Dialect dialect() const override { return Dialect::kPostgres; }
  Result<std::vector<SqlRow>> Query(const std::string& sql,
                                    const std::vector<SqlValue>& params) override;
  Result<int64_t> Exec(const std::string& sql, const std::vector<SqlValue>& params) override;
  Status ExecScript(const std::string& sql) override;
  Status Defer(const std::string& sql) override;
  Status Begin() override;
  Status Commit() override;
  Status Rollback() override;
  Status LockTable(const std::string& table) override;
  bool InTransaction() const override { return in_transaction_; }
  int SessionPid() const override { return pid_.load(); }

 private:
  explicit PgBackend(PgConnPtr conn) : conn_(std::move(conn)), pid_(PQbackendPID(conn_.get())) {}
  // Runs one command with parameters; returns its result or the mapped error.
  Result<PgResultPtr> Run(const std::string& sql, const std::vector<SqlValue>& params);
  // Outside a transaction, reconnects a connection the server dropped.
  Status EnsureConnected();
  Error CommandError(const PGresult* r, const std::string& sql);
  // Sends deferred_ and then the command (prepared as `prepare` first when
  // that is not empty; executed by the name `name`, or unnamed when it is
  // empty) in pipeline mode with one sync, and returns the command's result
  // or the first error of the round trip.
  Result<PgResultPtr> RunPipelined(const std::string& sql, const std::string& prepare,
                                   const std::string& name, int n, const Oid* types,
                                   const char* const* values);
  // The transaction is lost (the round trip broke): reconnect next time.
  Error Broken(const std::string& what);

  PgConnPtr conn_;
  bool in_transaction_ = false;
  // Statements waiting for the next command (Defer; BEGIN). Only inside a
  // transaction; "BEGIN" is first when the server has not seen it yet.
  std::vector<std::string> deferred_;
  bool prepare_ok_ = false;  // RunPipelined's preparation succeeded
  std::atomic<int> pid_;     // the server process of conn_ (readable from any thread)
  // Statements prepared on this connection: SQL + parameter types -> name.
  // Emptied (DEALLOCATE ALL) outside a transaction when full.
  static constexpr size_t kMaxPrepared = 512;
  std::unordered_map<std::string, std::string> prepared_;
  uint64_t prepared_serial_ = 0;
};

}  // namespace vmgrid
