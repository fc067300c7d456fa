#include "store/pg_listener.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include "store/pg.h"
#include "store/sql_backend.h"

namespace vmgrid {

struct PgListener::Conn {
  PgConnPtr conn;
};

PgListener::PgListener(std::string url, std::vector<std::string> channels, BatchFn on_batch,
                       GapFn on_gap, OwnFn own)
    : url_(std::move(url)),
      channels_(std::move(channels)),
      on_batch_(std::move(on_batch)),
      on_gap_(std::move(on_gap)),
      own_(std::move(own)),
      conn_(std::make_unique<Conn>()) {}

Result<PgListenerPtr> PgListener::Start(const std::string& url, std::vector<std::string> channels,
                                        BatchFn on_batch, GapFn on_gap, OwnFn own) {
  for (const auto& c : channels)
    if (!PgIsIdentifier(c))
      return MakeError(ErrorCode::kInvalidArgument, "PgListener: bad channel name '" + c + "'");
  PgListenerPtr l(new PgListener(url, std::move(channels), std::move(on_batch), std::move(on_gap),
                                 std::move(own)));
  if (pipe2(l->wake_, O_CLOEXEC | O_NONBLOCK) != 0)
    return MakeError(ErrorCode::kInternal, "PgListener: pipe failed");
  // LISTEN is in force before Start returns when the server is reachable:
  // a caller that reads a snapshot afterwards misses no change.
  if (!l->Connect()) spdlog::warn("change notifications: will keep trying to listen");
  l->thread_ = std::thread([raw = l.get()] { raw->Run(); });
  return l;
}

PgListener::~PgListener() {
  stop_ = true;
  if (wake_[1] >= 0) (void)!write(wake_[1], "x", 1);
  if (thread_.joinable()) thread_.join();
  for (int fd : wake_)
    if (fd >= 0) close(fd);
}

bool PgListener::Connect() {
  conn_->conn.reset();
  auto conn = PgConnect(url_);
  if (!conn.ok()) {
    spdlog::warn("change notifications: {}", conn.error().message);
    return false;
  }
  std::string listen;
  for (const auto& c : channels_) listen += "LISTEN " + c + ";";
  PgResultPtr r(PQexec(conn->get(), listen.c_str()));
  if (!r || PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
    spdlog::warn("change notifications: LISTEN failed: {}", PgMessage(conn->get(), r.get()));
    return false;
  }
  conn_->conn = std::move(*conn);
  return true;
}

void PgListener::Run() {
  int64_t backoff_ms = 100;
  while (!stop_) {
    if (!conn_->conn) {
      if (!Connect()) {
        pollfd p{wake_[0], POLLIN, 0};
        (void)poll(&p, 1, static_cast<int>(backoff_ms));
        backoff_ms = std::min<int64_t>(backoff_ms * 2, 5'000);
        continue;
      }
      backoff_ms = 100;
      reconnects_.fetch_add(1);
      spdlog::info("change notifications: listening again; re-reading every host");
      on_gap_();
    }
    PGconn* c = conn_->conn.get();
    pollfd fds[2] = {{wake_[0], POLLIN, 0}, {PQsocket(c), POLLIN, 0}};
    // The timeout only bounds how long a lost connection that the kernel
    // has not reported yet goes unnoticed.
    int n = poll(fds, 2, 10'000);
    if (stop_) break;
    if (n < 0 && errno != EINTR) {
      spdlog::warn("change notifications: poll failed");
      conn_->conn.reset();
      continue;
    }
    if (n == 0) {
      // Quiet: check that the server is still there.
      PgResultPtr r(PQexec(c, "SELECT 1"));
      if (!r || PQresultStatus(r.get()) != PGRES_TUPLES_OK) {
        spdlog::warn("change notifications: connection lost");
        conn_->conn.reset();
        continue;
      }
    } else if (PQconsumeInput(c) == 0) {
      spdlog::warn("change notifications: connection lost: {}", PgMessage(c, nullptr));
      conn_->conn.reset();
      continue;
    }
    std::vector<PgNotification> batch;
    while (PGnotify* note = PQnotifies(c)) {
      if (!own_ || !own_(note->be_pid))
        batch.push_back({note->relname, note->extra ? note->extra : "", note->be_pid});
      PQfreemem(note);
    }
    if (!batch.empty()) on_batch_(batch);
  }
}

}  // namespace vmgrid
