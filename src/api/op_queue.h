// OpQueue: the controller's background work. Long operations (a VM create
// waits for the guest to boot, a checkpoint for minutes) run on a pool of
// worker threads so that no request holds a server thread; the VMs they work
// on are marked in flight meanwhile, so reconciliation leaves them alone.
// Operations a user polls (exec, image finalize, checkpoint publish,
// workspace delete: GET /v1/operations/ID) are recorded here too, in memory
// only: a controller restart forgets them (polling one then answers 404; the
// work itself is not repeated).
//
// Thread-safe: every method. Destruction: idle workers are joined; when work
// is still running (the owner's Wait gave up on it), the workers are
// detached, as they hold on to whatever their work captured.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/result.h"

namespace vmgrid {

class OpQueue {
 public:
  // A polled operation.
  struct Operation {
    std::string id, kind, owner_id, vm_id, image_id, workspace_id;
    std::string state;  // running | succeeded | failed
    nlohmann::json result, error;
    nlohmann::json progress;  // null or {step, percent}
    int64_t created_ms = 0, finished_ms = 0;
  };

  // Workers start on demand, up to `max_workers`, and live until the queue
  // is destroyed. An operation holds its worker for as long as the agent
  // takes, so the bound is generous: one VM's stop must not queue behind a
  // burst of other VMs' boots. Reuse, not the bound, is what saves the
  // thread start per create.
  explicit OpQueue(const Clock& clock = SystemClock::Get(), size_t max_workers = 256);
  ~OpQueue();
  OpQueue(const OpQueue&) = delete;
  OpQueue& operator=(const OpQueue&) = delete;

  // Runs `fn` on a worker (queued when all `max_workers` are busy); `vm_id`
  // (if set) is in flight from now until `fn` has returned. `fn` (and so
  // what it captures) is destroyed before the work counts as ended.
  void Run(const std::string& vm_id, std::function<void()> fn);
  bool InFlight(const std::string& vm_id) const;
  // Work waiting for a worker, and work running (for /metrics).
  struct Load {
    size_t queued = 0;
    int running = 0;
  };
  Load load() const;
  // Waits at most `grace` until no work runs; whether none does.
  bool WaitIdle(std::chrono::milliseconds grace);

  // Records `op` (state running, a fresh id and creation time) for its
  // owner, forgetting finished operations past their time; returns its JSON.
  nlohmann::json Start(Operation& op);
  // Ends operation `id` with `outcome` (its result, or its error); returns
  // its JSON (null if it was forgotten).
  nlohmann::json Finish(const std::string& id, const Result<nlohmann::json>& outcome);
  // `more` (an object, if given): further fields of the progress, e.g. a
  // drain's per-VM states.
  void SetProgress(const std::string& id, const std::string& step, int percent,
                   const nlohmann::json& more = nullptr);
  // The operation's JSON; another user's operation is not found (unless
  // `admin`), like their VMs.
  Result<nlohmann::json> Get(const std::string& id, const std::string& user_id, bool admin) const;

  // Finished operations are kept this long, and at most this many per user.
  static constexpr int64_t kKeepMs = 10 * 60'000;
  static constexpr size_t kFinishedPerUser = 256;

 private:
  void Worker();
  nlohmann::json ToJson(const Operation& op) const;

  const Clock& clock_;
  const size_t max_workers_;

  // The pool and the VMs it works on, under a mutex of their own: every
  // create passes through it twice, and the operation records must not
  // queue behind it.
  mutable std::mutex mu_;
  std::multiset<std::string> inflight_;      // guarded by mu_
  int running_ = 0;                          // guarded by mu_
  std::condition_variable idle_cv_;          // running_ fell to 0
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  std::vector<std::thread> workers_;         // guarded by mu_
  size_t idle_workers_ = 0;                  // guarded by mu_
  bool stop_ = false;                        // guarded by mu_
  std::condition_variable work_cv_;          // queued work or stop_

  mutable std::mutex records_mu_;
  std::map<std::string, Operation> records_;  // guarded by records_mu_
};

}  // namespace vmgrid
