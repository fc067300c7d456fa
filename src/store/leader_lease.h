// LeaderLease: which of several controllers on one database runs the
// background loops (host failure detection and recovery, interrupted
// migrations, event retention; docs/ha.md). Every controller serves the API;
// only the holder of this lease acts on its own initiative.
//
// PostgreSQL: the one row of `controller_leader` (schema migration 16),
// taken or renewed by one conditional upsert whose expiry is computed in the
// database's time (`clock_timestamp()`), so that no two controllers' clocks
// are ever compared. The holder renews every renew period on a connection of
// its own (never queued behind the store's writes), and treats the lease as
// held only for `act_ms` after the *start* of its last successful renewal,
// measured on its own monotonic clock; act_ms < lease_ms, so it stops acting
// before anyone else may take the row (the argument is in docs/ha.md).
//
// SQLite: one controller per database file. Open takes an exclusive lock
// (flock) on DB.controller-lock and refuses a second controller with a clear
// error; the one that holds it is always the leader.
//
// Thread-safety: Renew and Release from one thread (the controller's lease
// loop); Held, term and Current from any.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "common/clock.h"
#include "common/result.h"
#include "store/sql_backend.h"

namespace vmgrid {

struct LeaderLeaseOptions {
  // How long a renewal keeps the row, in database time.
  int64_t lease_ms = 5'000;
  // How long after the start of its last successful renewal the holder
  // still acts, on its monotonic clock. Must be below lease_ms; the margin
  // covers clock rate differences and an action that began just before.
  int64_t act_ms = 3'000;
};

class LeaderLease {
 public:
  // `target` as for Store::Open. `holder`: this controller's unique id;
  // `url`: where it serves (shown to operators). kFailedPrecondition on
  // SQLite when another controller has the database open.
  static Result<std::unique_ptr<LeaderLease>> Open(const std::string& target, std::string holder,
                                                   std::string url, const Clock& monotonic,
                                                   LeaderLeaseOptions options = {});
  ~LeaderLease();
  LeaderLease(const LeaderLease&) = delete;
  LeaderLease& operator=(const LeaderLease&) = delete;

  // One attempt to take or renew the lease; true when this controller holds
  // it now. On an error (database unreachable) the lease is not held as far
  // as this controller knows, and Held turns false once act_ms has passed.
  Result<bool> Renew();
  // Whether this controller may act as the leader now.
  bool Held() const;
  // The leadership term of the last successful renewal: it grows by one each
  // time the row changes hands (0: never held).
  int64_t term() const { return term_.load(); }
  // Gives the lease up (at shutdown), so that another controller takes over
  // at its next attempt instead of after the expiry.
  void Release();

  struct Holder {
    std::string id, url;
    int64_t term = 0;
    bool expired = true;
  };
  // The row as the database has it now (SQLite: this controller).
  Result<Holder> Current();

  const std::string& holder() const { return holder_; }
  const LeaderLeaseOptions& options() const { return options_; }

 private:
  LeaderLease(SqlBackendPtr db, int lock_fd, std::string holder, std::string url,
              const Clock& monotonic, LeaderLeaseOptions options);

  std::mutex mu_;
  SqlBackendPtr db_;   // PostgreSQL only; guarded by mu_
  const int lock_fd_;  // SQLite: the flock'ed file, else -1
  const std::string holder_, url_;
  const Clock& monotonic_;
  const LeaderLeaseOptions options_;
  std::atomic<bool> held_{false};
  std::atomic<int64_t> valid_until_{0};  // monotonic ms
  std::atomic<int64_t> term_{0};
};

}  // namespace vmgrid
