#include "store/leader_lease.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/util.h"

namespace vmgrid {

namespace {

// The database's own time in ms: every expiry is written and compared in it.
constexpr char kDbNowMs[] = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

bool InMemorySqlite(const std::string& target) {
  return target.empty() || target == ":memory:" || target.starts_with("file:");
}

}  // namespace

Result<std::unique_ptr<LeaderLease>> LeaderLease::Open(const std::string& target,
                                                       std::string holder, std::string url,
                                                       const Clock& monotonic,
                                                       LeaderLeaseOptions options) {
  if (options.act_ms <= 0 || options.act_ms >= options.lease_ms)
    return MakeError(ErrorCode::kInvalidArgument,
                     "leader lease: act_ms must be positive and below lease_ms");
  if (IsPostgresTarget(target)) {
    VMG_ASSIGN_OR_RETURN(auto db, OpenSqlBackend(target));
    return std::unique_ptr<LeaderLease>(
        new LeaderLease(std::move(db), -1, std::move(holder), std::move(url), monotonic, options));
  }
  int fd = -1;
  if (!InMemorySqlite(target)) {
    // One process owns a SQLite database: a second controller on the same
    // file would run the background loops twice and split the capacity index.
    const std::string lock_path = target + ".controller-lock";
    fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
      return MakeError(ErrorCode::kInternal,
                       "cannot open " + lock_path + ": " + std::strerror(errno));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK)
        return MakeError(ErrorCode::kFailedPrecondition,
                         "another controller uses the SQLite database " + target + " (it holds " +
                             lock_path +
                             "); several controllers need a shared PostgreSQL database "
                             "(--database postgresql://..., docs/ha.md)");
      return MakeError(ErrorCode::kInternal,
                       "cannot lock " + lock_path + ": " + std::strerror(err));
    }
  }
  return std::unique_ptr<LeaderLease>(
      new LeaderLease(nullptr, fd, std::move(holder), std::move(url), monotonic, options));
}

LeaderLease::LeaderLease(SqlBackendPtr db, int lock_fd, std::string holder, std::string url,
                         const Clock& monotonic, LeaderLeaseOptions options)
    : db_(std::move(db)),
      lock_fd_(lock_fd),
      holder_(std::move(holder)),
      url_(std::move(url)),
      monotonic_(monotonic),
      options_(options) {
  if (!db_) {  // SQLite: the only controller of its database
    held_ = true;
    term_ = 1;
  }
}

LeaderLease::~LeaderLease() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

Result<bool> LeaderLease::Renew() {
  if (!db_) return true;
  std::lock_guard<std::mutex> l(mu_);
  // Noted before the statement is sent: the database computes the expiry
  // later than this, so acting until sent + act_ms stays inside the lease.
  const int64_t sent = monotonic_.NowMs();
  const std::string sql = std::string(
                              "INSERT INTO controller_leader (id, holder, url, term, expires_ms) "
                              "VALUES (1, ?, ?, 1, ") +
                          kDbNowMs +
                          " + ?) ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, "
                          "url = EXCLUDED.url, term = CASE WHEN controller_leader.holder = "
                          "EXCLUDED.holder THEN controller_leader.term ELSE "
                          "controller_leader.term + 1 END, expires_ms = EXCLUDED.expires_ms "
                          "WHERE controller_leader.holder = EXCLUDED.holder OR "
                          "controller_leader.expires_ms < " +
                          kDbNowMs + " RETURNING term";
  auto rows = db_->Query(sql, {holder_, url_, options_.lease_ms});
  if (!rows.ok()) {
    held_ = false;
    return rows.error();
  }
  if (rows->empty()) {
    held_ = false;
    return false;
  }
  term_ = (*rows)[0].Int(0);
  valid_until_ = sent + options_.act_ms;
  held_ = true;
  return true;
}

bool LeaderLease::Held() const {
  if (!db_) return true;
  return held_.load() && monotonic_.NowMs() < valid_until_.load();
}

void LeaderLease::Release() {
  if (!db_) return;
  held_ = false;
  std::lock_guard<std::mutex> l(mu_);
  (void)db_->Exec("UPDATE controller_leader SET expires_ms = 0 WHERE holder = ?", {holder_});
}

Result<LeaderLease::Holder> LeaderLease::Current() {
  if (!db_) return Holder{holder_, url_, 1, false};
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(auto rows,
                       db_->Query(std::string("SELECT holder, url, term, CASE WHEN expires_ms < ") +
                                  kDbNowMs + " THEN 1 ELSE 0 END FROM controller_leader"));
  if (rows.empty()) return Holder{};
  return Holder{rows[0].Text(0), rows[0].Text(1), rows[0].Int(2), rows[0].Int(3) != 0};
}

}  // namespace vmgrid
