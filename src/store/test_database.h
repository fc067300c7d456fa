// TestDatabase: a fresh, empty database per test, on either backend, for the
// value-parameterized tests that run one suite against SQLite and PostgreSQL
// (store_test, query_service_test). Test-only.
//
// SQLite: a file in its own temporary directory. PostgreSQL: a new database
// t_<pid>_<n> on the server named by the environment variable
// VMGRID_TEST_PG_URL (a libpq URI of any database there, whose role may
// CREATE DATABASE; `make test` starts one with scripts/pg-test-server.sh),
// dropped again by the destructor.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "common/util.h"
#include "store/sql_backend.h"

namespace vmgrid::testing_db {

inline constexpr char kSqlite[] = "sqlite";
inline constexpr char kPostgres[] = "postgres";
inline constexpr char kPgUrlEnv[] = "VMGRID_TEST_PG_URL";

// The backends every parameterized suite runs against.
inline auto Backends() { return ::testing::Values(std::string(kSqlite), std::string(kPostgres)); }
inline std::string BackendName(const ::testing::TestParamInfo<std::string>& info) {
  return info.param;
}

// `url` with its database name replaced by `db`
// ("postgresql://u@h/old?x=y" -> "postgresql://u@h/db?x=y").
inline std::string WithDatabase(const std::string& url, const std::string& db) {
  size_t auth = url.find("://") + 3;
  size_t path = url.find_first_of("/?", auth);
  if (path == std::string::npos) return url + "/" + db;
  size_t query = url.find('?', path);
  return url.substr(0, path) + "/" + db + (query == std::string::npos ? "" : url.substr(query));
}

class TestDatabase {
 public:
  // Makes the database; `skip` is set (with the reason) when the backend is not
  // configured here, `error` when creating it failed.
  explicit TestDatabase(const std::string& backend) : backend_(backend) {
    static std::atomic<int> counter{0};
    const std::string unique = std::to_string(getpid()) + "_" + std::to_string(counter++);
    if (backend == kSqlite) {
      dir_ = ::testing::TempDir() + "/vmgrid_test_" + unique;
      (void)RemoveTree(dir_);
      Status made = MakeDirs(dir_);
      if (!made.ok()) error = made.error().message;
      target_ = dir_ + "/vmgrid.db";
      return;
    }
    const char* base = std::getenv(kPgUrlEnv);
    if (!base || !*base) {
      skip = std::string(kPgUrlEnv) +
             " is not set: PostgreSQL tests skipped (make test starts a server and sets it)";
      return;
    }
    base_url_ = base;
    name_ = "t_" + unique;
    auto admin = OpenSqlBackend(base_url_);
    if (!admin.ok()) {
      error = admin.error().message;
      return;
    }
    Status created = (*admin)->ExecScript("CREATE DATABASE " + name_);
    if (!created.ok()) {
      error = created.error().message;
      return;
    }
    target_ = WithDatabase(base_url_, name_);
  }
  ~TestDatabase() {
    if (!dir_.empty()) (void)RemoveTree(dir_);
    if (!name_.empty()) {
      auto admin = OpenSqlBackend(base_url_);
      if (admin.ok())
        (void)(*admin)->ExecScript("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
    }
  }
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;

  // What Store::Open and QueryService::Open take.
  const std::string& target() const { return target_; }
  bool is_postgres() const { return backend_ == kPostgres; }
  // SQLite only: the database file.
  const std::string& file() const { return target_; }

  std::string skip;
  std::string error;

 private:
  std::string backend_;
  std::string dir_;       // SQLite
  std::string base_url_;  // PostgreSQL
  std::string name_;
  std::string target_;
};

}  // namespace vmgrid::testing_db

// In SetUp(): skips or fails the test when its database could not be made.
#define VMGRID_REQUIRE_TEST_DATABASE(db)               \
  do {                                                 \
    if (!(db).skip.empty()) GTEST_SKIP() << (db).skip; \
    ASSERT_TRUE((db).error.empty()) << (db).error;     \
  } while (0)
