// PgListener: PostgreSQL LISTEN on a connection of its own, handing the
// notifications to a callback from a thread of its own. The Store uses it to
// learn of other controllers' committed changes to hosts, VMs and image
// caches (docs/ha.md, "Capacity indexes"): a NOTIFY sent in a transaction is
// delivered only once that transaction commits, and never if it rolls back.
//
// Notifications sent while the connection is down are lost: after a
// reconnect (and when the first connection cannot be made) `on_gap` is
// called, after LISTEN is in force again, so that the caller re-reads
// everything. Notifications sent by the backends in `ignored_pids` (the
// caller's own connections, whose changes it already knows) are dropped.
//
// Thread-safety: the callbacks run on the listener's thread, one at a time;
// the destructor stops the thread (it waits for a callback in progress) and
// closes the connection.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"

namespace vmgrid {

struct PgNotification {
  std::string channel;
  std::string payload;
  int backend_pid = 0;  // of the session that sent it
};

class PgListener;
using PgListenerPtr = std::unique_ptr<PgListener>;

class PgListener {
 public:
  // A batch of notifications: all that had arrived when the thread woke,
  // in the order the server sent them.
  using BatchFn = std::function<void(const std::vector<PgNotification>&)>;
  using GapFn = std::function<void()>;
  // Whether a notification of this backend pid is the caller's own.
  using OwnFn = std::function<bool(int backend_pid)>;

  // Connects to `url`, LISTENs on `channels` (identifiers from our code) and
  // starts the thread. If the server cannot be reached now the thread keeps
  // trying (backing off up to 5 s) and calls `on_gap` once it listens: this
  // returns an error only for bad arguments.
  static Result<PgListenerPtr> Start(const std::string& url, std::vector<std::string> channels,
                                     BatchFn on_batch, GapFn on_gap, OwnFn own);
  ~PgListener();
  PgListener(const PgListener&) = delete;
  PgListener& operator=(const PgListener&) = delete;

  // Times the connection was (re)established after a loss, for tests and logs.
  int64_t reconnects() const { return reconnects_.load(); }

 private:
  struct Conn;
  PgListener(std::string url, std::vector<std::string> channels, BatchFn on_batch, GapFn on_gap,
             OwnFn own);
  // Connects and LISTENs; false (logged) if that failed.
  bool Connect();
  void Run();

  const std::string url_;
  const std::vector<std::string> channels_;
  const BatchFn on_batch_;
  const GapFn on_gap_;
  const OwnFn own_;
  std::unique_ptr<Conn> conn_;  // used by the thread only, once it runs
  int wake_[2] = {-1, -1};      // a pipe: the destructor writes, the thread wakes
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> reconnects_{0};
  std::thread thread_;
};

}  // namespace vmgrid
