#include "store/pg.h"

#include <cassert>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <optional>

namespace vmgrid {

namespace {

// Type oids from the server's catalog/pg_type.dat (stable across versions).
constexpr Oid kBoolOid = 16;
constexpr Oid kInt8Oid = 20;
constexpr Oid kInt2Oid = 21;
constexpr Oid kInt4Oid = 23;
constexpr Oid kOidOid = 26;
constexpr Oid kFloat4Oid = 700;
constexpr Oid kFloat8Oid = 701;
constexpr Oid kNumericOid = 1700;

SqlValue ParseValue(const char* text, int len, Oid type) {
  std::string_view s(text, static_cast<size_t>(len));
  switch (type) {
    case kBoolOid:
      return int64_t{s == "t"};
    case kInt2Oid:
    case kInt4Oid:
    case kInt8Oid:
    case kOidOid:
    case kNumericOid: {
      int64_t v = 0;
      auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (ec == std::errc() && end == s.data() + s.size()) return v;
      if (type != kNumericOid) return std::string(s);
      [[fallthrough]];  // a numeric with a fraction, or too large
    }
    case kFloat4Oid:
    case kFloat8Oid:
      return std::strtod(std::string(s).c_str(), nullptr);
    default:
      return std::string(s);
  }
}

}  // namespace

bool PgIsIdentifier(const std::string& s) {
  if (s.empty() || !(isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_')) return false;
  for (char c : s)
    if (!isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return true;
}

Result<PgConnPtr> PgConnect(const std::string& url) {
  PgConnPtr conn(PQconnectdb(url.c_str()));
  if (!conn) return MakeError(ErrorCode::kInternal, "libpq: out of memory");
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(conn.get());
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    return MakeError(ErrorCode::kUnavailable,
                     "connect to PostgreSQL " + RedactTarget(url) + ": " + msg);
  }
  PQsetNoticeProcessor(
      conn.get(), [](void*, const char*) {}, nullptr);
  if (PQsetClientEncoding(conn.get(), "UTF8") != 0)
    return MakeError(ErrorCode::kInternal, "PostgreSQL: cannot set client encoding UTF8");
  return conn;
}

std::string PgSqlState(const PGresult* r) {
  const char* s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  return s ? s : "";
}

std::string PgMessage(PGconn* conn, const PGresult* r) {
  const char* m = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : nullptr;
  std::string msg = m ? m : (conn ? PQerrorMessage(conn) : "unknown error");
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  return msg;
}

std::string PgPlaceholders(const std::string& sql) {
  std::string out;
  out.reserve(sql.size() + 16);
  int n = 0;
  for (size_t i = 0; i < sql.size();) {
    char c = sql[i];
    if (c == '\'' || c == '"') {  // literal or quoted identifier; doubled quote escapes
      size_t j = i + 1;
      while (j < sql.size()) {
        if (sql[j] == c && j + 1 < sql.size() && sql[j + 1] == c)
          j += 2;
        else if (sql[j++] == c)
          break;
      }
      out.append(sql, i, j - i);
      i = j;
    } else if (c == '-' && i + 1 < sql.size() && sql[i + 1] == '-') {
      size_t j = sql.find('\n', i);
      j = j == std::string::npos ? sql.size() : j;
      out.append(sql, i, j - i);
      i = j;
    } else if (c == '/' && i + 1 < sql.size() && sql[i + 1] == '*') {
      size_t j = sql.find("*/", i + 2);
      j = j == std::string::npos ? sql.size() : j + 2;
      out.append(sql, i, j - i);
      i = j;
    } else if (c == '?') {
      out += "$" + std::to_string(++n);
      ++i;
    } else {
      out += c;
      ++i;
    }
  }
  return out;
}

Result<SqlBackendPtr> PgBackend::Open(const std::string& url) {
  VMG_ASSIGN_OR_RETURN(PgConnPtr conn, PgConnect(url));
  return SqlBackendPtr(new PgBackend(std::move(conn)));
}

Status PgBackend::EnsureConnected() {
  if (PQstatus(conn_.get()) == CONNECTION_OK || in_transaction_) return Status::Ok();
  PQreset(conn_.get());
  prepared_.clear();  // a new session has none
  pid_ = PQbackendPID(conn_.get());
  if (PQstatus(conn_.get()) != CONNECTION_OK)
    return MakeError(ErrorCode::kUnavailable,
                     "PostgreSQL connection lost: " + PgMessage(conn_.get(), nullptr));
  PQsetClientEncoding(conn_.get(), "UTF8");
  return Status::Ok();
}

Error PgBackend::CommandError(const PGresult* r, const std::string& sql) {
  std::string state = PgSqlState(r);
  std::string msg = PgMessage(conn_.get(), r);
  if (state.rfind("23", 0) == 0) return MakeError(ErrorCode::kAlreadyExists, "constraint: " + msg);
  // Class 40 (a deadlock, a serialization failure) and a lock not granted
  // within lock_timeout: the statement failed for what else ran at the
  // time; running it again may succeed.
  if (state.rfind("40", 0) == 0 || state == "55P03")
    return MakeError(ErrorCode::kUnavailable, "sql: " + msg + " (in '" + sql + "'; retry)");
  if (PQstatus(conn_.get()) != CONNECTION_OK || state.rfind("08", 0) == 0)
    return MakeError(ErrorCode::kUnavailable, "PostgreSQL connection lost: " + msg);
  return MakeError(ErrorCode::kInternal, "sql: " + msg + " (in '" + sql + "')");
}

Result<PgResultPtr> PgBackend::Run(const std::string& sql, const std::vector<SqlValue>& params) {
  VMG_RETURN_IF_ERROR(EnsureConnected());
  std::vector<std::string> text(params.size());
  std::vector<const char*> values(params.size(), nullptr);
  std::vector<Oid> types(params.size(), 0);
  for (size_t i = 0; i < params.size(); ++i) {
    const SqlValue& v = params[i];
    if (auto* n = std::get_if<int64_t>(&v)) {
      text[i] = std::to_string(*n);
      types[i] = kInt8Oid;
    } else if (auto* d = std::get_if<double>(&v)) {
      char buf[64];
      auto [end, ec] = std::to_chars(buf, buf + sizeof buf, *d);
      assert(ec == std::errc());
      text[i].assign(buf, end);
      types[i] = kFloat8Oid;
    } else if (auto* s = std::get_if<std::string>(&v)) {
      text[i] = *s;
    }
    if (!std::holds_alternative<std::nullptr_t>(v)) values[i] = text[i].c_str();
  }
  // Each distinct statement (and parameter typing) is prepared once per
  // connection and then only executed: parsing and planning were most of the
  // server's CPU at placement rates (copyObject, the parser, tree walkers).
  std::string key = sql;
  key += '\0';
  for (Oid t : types) key += std::to_string(t) + ",";
  const int n = static_cast<int>(params.size());
  PgResultPtr r;
  auto it = prepared_.find(key);
  if (it == prepared_.end() && prepared_.size() >= kMaxPrepared && !in_transaction_) {
    VMG_RETURN_IF_ERROR(ExecScript("DEALLOCATE ALL"));
    prepared_.clear();
  }
  if (!deferred_.empty()) {
    // One round trip for the deferred statements, the preparation and the
    // statement itself.
    std::string prepare, name;
    if (it != prepared_.end()) {
      name = it->second;
    } else if (prepared_.size() < kMaxPrepared) {
      prepare = name = "vmg" + std::to_string(++prepared_serial_);
    }
    auto r = RunPipelined(sql, prepare, name, n, types.data(), values.data());
    // Prepared even if the statement itself failed (the preparation is
    // answered before it), unless the round trip failed before that.
    if (!prepare.empty() && (r.ok() || prepare_ok_)) prepared_.emplace(std::move(key), prepare);
    return r;
  }
  if (it == prepared_.end() && prepared_.size() < kMaxPrepared) {
    std::string name = "vmg" + std::to_string(++prepared_serial_);
    PgResultPtr p(
        PQprepare(conn_.get(), name.c_str(), PgPlaceholders(sql).c_str(), n, types.data()));
    ExecStatusType pst = p ? PQresultStatus(p.get()) : PGRES_FATAL_ERROR;
    if (pst != PGRES_COMMAND_OK) return CommandError(p.get(), sql);
    it = prepared_.emplace(std::move(key), std::move(name)).first;
  }
  if (it != prepared_.end())
    r.reset(PQexecPrepared(conn_.get(), it->second.c_str(), n, values.data(), nullptr, nullptr, 0));
  else
    r.reset(PQexecParams(conn_.get(), PgPlaceholders(sql).c_str(), n, types.data(), values.data(),
                         nullptr, nullptr, 0));
  ExecStatusType st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return CommandError(r.get(), sql);
  return r;
}

Result<std::vector<SqlRow>> PgBackend::Query(const std::string& sql,
                                             const std::vector<SqlValue>& params) {
  VMG_ASSIGN_OR_RETURN(PgResultPtr r, Run(sql, params));
  const int nrows = PQntuples(r.get());
  const int ncols = PQnfields(r.get());
  std::vector<SqlRow> rows;
  rows.reserve(static_cast<size_t>(nrows));
  for (int i = 0; i < nrows; ++i) {
    std::vector<SqlValue> row;
    row.reserve(static_cast<size_t>(ncols));
    for (int c = 0; c < ncols; ++c) {
      if (PQgetisnull(r.get(), i, c))
        row.emplace_back(nullptr);
      else
        row.push_back(
            ParseValue(PQgetvalue(r.get(), i, c), PQgetlength(r.get(), i, c), PQftype(r.get(), c)));
    }
    rows.emplace_back(std::move(row));
  }
  return rows;
}

Result<int64_t> PgBackend::Exec(const std::string& sql, const std::vector<SqlValue>& params) {
  VMG_ASSIGN_OR_RETURN(PgResultPtr r, Run(sql, params));
  const char* n = PQcmdTuples(r.get());
  return static_cast<int64_t>(n && *n ? std::atoll(n) : 0);
}

Status PgBackend::ExecScript(const std::string& sql) {
  VMG_RETURN_IF_ERROR(EnsureConnected());
  // The deferred statements go first in the same simple query: the server
  // runs the statements of a query string in order and stops at the first
  // that fails, whose error is the answer.
  std::string text;
  for (const std::string& d : deferred_) text += d + "; ";
  deferred_.clear();
  text += sql;
  PgResultPtr r(PQexec(conn_.get(), text.c_str()));
  ExecStatusType st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return CommandError(r.get(), text);
  return Status::Ok();
}

Status PgBackend::Defer(const std::string& sql) {
  if (!in_transaction_) return ExecScript(sql);
  deferred_.push_back(sql);
  return Status::Ok();
}

Status PgBackend::Begin() {
  if (in_transaction_) return Status::Ok();  // as the server does: a warning, no new transaction
  // Reconnects a dropped connection now, while no transaction is lost; the
  // BEGIN itself goes with the transaction's first statement.
  VMG_RETURN_IF_ERROR(EnsureConnected());
  deferred_.assign(1, "BEGIN");
  in_transaction_ = true;
  return Status::Ok();
}

Error PgBackend::Broken(const std::string& what) {
  Error e = MakeError(
      ErrorCode::kUnavailable,
      "PostgreSQL connection lost: " + PgMessage(conn_.get(), nullptr) + " (" + what + ")");
  // Whatever the server did with the pipeline, the transaction is gone;
  // the next command outside a transaction starts a new session.
  PQreset(conn_.get());
  prepared_.clear();
  deferred_.clear();
  in_transaction_ = false;
  pid_ = PQbackendPID(conn_.get());
  return e;
}

Result<PgResultPtr> PgBackend::RunPipelined(const std::string& sql, const std::string& prepare,
                                            const std::string& name, int n, const Oid* types,
                                            const char* const* values) {
  PGconn* c = conn_.get();
  std::vector<std::string> sent = std::move(deferred_);
  deferred_.clear();
  prepare_ok_ = false;
  if (PQenterPipelineMode(c) != 1) return Broken("entering pipeline mode");
  bool ok = true;
  for (const std::string& d : sent)
    ok = ok && PQsendQueryParams(c, d.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0) == 1;
  const std::string text = PgPlaceholders(sql);
  if (!prepare.empty()) {
    ok = ok && PQsendPrepare(c, prepare.c_str(), text.c_str(), n, types) == 1;
    sent.push_back("PREPARE " + sql);
  }
  ok = ok &&
       (name.empty() ? PQsendQueryParams(c, text.c_str(), n, types, values, nullptr, nullptr, 0)
                     : PQsendQueryPrepared(c, name.c_str(), n, values, nullptr, nullptr, 0)) == 1;
  sent.push_back(sql);
  ok = ok && PQpipelineSync(c) == 1;
  if (!ok) return Broken("sending a pipeline");
  // One result and then a null per command, then the sync. After an error
  // the server skips the rest until the sync: PGRES_PIPELINE_ABORTED.
  std::optional<Error> first_error;
  PgResultPtr last;
  for (size_t i = 0; i < sent.size(); ++i) {
    PgResultPtr r(PQgetResult(c));
    if (!r) return Broken("reading a pipeline's results");
    const ExecStatusType st = PQresultStatus(r.get());
    if (st == PGRES_PIPELINE_ABORTED) {
      if (!first_error)
        first_error =
            MakeError(ErrorCode::kInternal, "sql: pipeline aborted (in '" + sent[i] + "')");
    } else if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      if (!first_error) first_error = CommandError(r.get(), sent[i]);
    } else if (!prepare.empty() && i + 2 == sent.size()) {
      prepare_ok_ = true;
    }
    while (PGresult* extra = PQgetResult(c)) PQclear(extra);  // the command's end
    if (i + 1 == sent.size()) last = std::move(r);
  }
  PgResultPtr sync(PQgetResult(c));
  if (!sync || PQresultStatus(sync.get()) != PGRES_PIPELINE_SYNC)
    return Broken("reading a pipeline's sync");
  if (PQexitPipelineMode(c) != 1) return Broken("leaving pipeline mode");
  if (first_error) return *first_error;
  return last;
}

Status PgBackend::Commit() {
  // COMMIT of a transaction that a failed statement aborted answers
  // "ROLLBACK", not an error: report it as the failure it is, or a caller
  // that went on after a failed statement would believe its writes landed.
  if (!in_transaction_)
    return MakeError(ErrorCode::kUnavailable,
                     "PostgreSQL: no transaction to commit (it was lost with the connection)");
  if (PQtransactionStatus(conn_.get()) == PQTRANS_INERROR) {
    deferred_.clear();
    (void)ExecScript("ROLLBACK");
    in_transaction_ = false;
    return MakeError(ErrorCode::kInternal,
                     "PostgreSQL: the transaction was aborted by a failed statement; "
                     "nothing of it was written");
  }
  if (!deferred_.empty() && deferred_[0] == "BEGIN") {
    // The server never saw this transaction: no statement ran in it.
    deferred_.clear();
    in_transaction_ = false;
    return Committed(Status::Ok());
  }
  Status s = ExecScript("COMMIT");
  // A failed COMMIT ends the transaction too (the server rolls it back); a
  // deferred statement that failed before it leaves it open and aborted.
  if (!s.ok() && PQtransactionStatus(conn_.get()) == PQTRANS_INERROR) {
    deferred_.clear();
    (void)ExecScript("ROLLBACK");
  }
  in_transaction_ = false;
  return Committed(std::move(s));
}

Status PgBackend::Rollback() {
  in_transaction_ = false;
  const bool unseen = !deferred_.empty() && deferred_[0] == "BEGIN";
  deferred_.clear();
  if (unseen) return Status::Ok();  // the server never saw the transaction
  if (PQstatus(conn_.get()) != CONNECTION_OK) return Status::Ok();  // nothing to roll back
  return ExecScript("ROLLBACK");
}

Status PgBackend::LockTable(const std::string& table) {
  if (!PgIsIdentifier(table)) return MakeError(ErrorCode::kInternal, "LockTable: bad table name");
  // SHARE ROW EXCLUSIVE conflicts with itself and with row writers, not with readers.
  return ExecScript("LOCK TABLE " + table + " IN SHARE ROW EXCLUSIVE MODE");
}

}  // namespace vmgrid
