#include "store/sqlite.h"

namespace vmgrid {

static Error SqlError(sqlite3* db, const std::string& what) {
  return MakeError(ErrorCode::kInternal, what + ": " + sqlite3_errmsg(db));
}

SqlStmt& SqlStmt::Bind(int index, const SqlValue& v) {
  if (std::holds_alternative<std::nullptr_t>(v)) {
    sqlite3_bind_null(stmt_, index);
  } else if (auto* i = std::get_if<int64_t>(&v)) {
    sqlite3_bind_int64(stmt_, index, *i);
  } else if (auto* d = std::get_if<double>(&v)) {
    sqlite3_bind_double(stmt_, index, *d);
  } else {
    const auto& s = std::get<std::string>(v);
    sqlite3_bind_text(stmt_, index, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
  }
  return *this;
}

Result<bool> SqlStmt::Step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  if (rc == SQLITE_CONSTRAINT)
    return MakeError(ErrorCode::kAlreadyExists, std::string("constraint: ") + sqlite3_errmsg(db_));
  return SqlError(db_, "step");
}

std::string SqlStmt::Text(int col) const {
  const unsigned char* p = sqlite3_column_text(stmt_, col);
  if (!p) return "";
  return std::string(reinterpret_cast<const char*>(p),
                     static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
}

Result<std::unique_ptr<SqliteDb>> SqliteDb::Open(const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return MakeError(ErrorCode::kInternal, "open database " + path + ": " + msg);
  }
  std::unique_ptr<SqliteDb> out(new SqliteDb(db));
  sqlite3_busy_timeout(db, 5000);
  VMG_RETURN_IF_ERROR(out->Exec("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; "
                                "PRAGMA synchronous=NORMAL;"));
  return out;
}

SqliteDb::~SqliteDb() { sqlite3_close_v2(db_); }

Status SqliteDb::Exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown";
    sqlite3_free(err);
    return MakeError(ErrorCode::kInternal, "sql: " + msg);
  }
  return Status::Ok();
}

Result<std::unique_ptr<SqlStmt>> SqliteDb::Prepare(const std::string& sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK)
    return SqlError(db_, "prepare '" + sql + "'");
  return std::make_unique<SqlStmt>(db_, stmt);
}

Result<int> SqliteDb::Run(const std::string& sql, const std::vector<SqlValue>& params) {
  VMG_ASSIGN_OR_RETURN(auto stmt, Prepare(sql));
  for (size_t i = 0; i < params.size(); ++i) stmt->Bind(static_cast<int>(i + 1), params[i]);
  VMG_ASSIGN_OR_RETURN(bool row, stmt->Step());
  (void)row;
  return sqlite3_changes(db_);
}

SqlTransaction::SqlTransaction(SqliteDb* db) : db_(db), begin_(db->Exec("BEGIN IMMEDIATE")) {}

SqlTransaction::~SqlTransaction() {
  if (begin_.ok() && !done_) (void)db_->Exec("ROLLBACK");
}

Status SqlTransaction::Commit() {
  VMG_RETURN_IF_ERROR(begin_);
  VMG_RETURN_IF_ERROR(db_->Exec("COMMIT"));
  done_ = true;
  return Status::Ok();
}

}  // namespace vmgrid
