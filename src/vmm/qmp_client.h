// QmpClient: a QEMU Machine Protocol client over QEMU's unix monitor socket.
// Replies are matched by "id", events arriving meanwhile are queued, and all
// input is untrusted (bounded lines, malformed JSON is an Error, no throws).
// Thread-safety: thread-safe. Calls are serialized by an internal mutex, so a
// slow Execute or WaitEvent blocks other callers until it returns.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/result.h"
#include "vmm/unix_stream.h"

namespace vmgrid {

class QmpClient {
 public:
  // A longer line means a broken or hostile peer; real replies are far smaller.
  static constexpr size_t kMaxLineBytes = 16 * 1024 * 1024;
  // Events nobody waits for must not grow memory without bound; the oldest
  // are dropped first.
  static constexpr size_t kMaxQueuedEvents = 1024;

  // Retries connecting until `timeout` (QEMU may not have created the socket
  // yet), reads the greeting and negotiates capabilities. QEMU serves one
  // monitor client at a time: while another client is connected the greeting
  // never comes and this fails with kTimeout.
  static Result<std::unique_ptr<QmpClient>> Connect(const std::string& unix_path,
                                                    std::chrono::milliseconds timeout);

  // Wraps an already connected stream; reads the greeting and negotiates.
  static Result<std::unique_ptr<QmpClient>> FromStream(
      vmm::UnixStream stream, std::chrono::steady_clock::time_point deadline);

  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  // Runs `cmd` and returns its "return" value. A QEMU error reply becomes an
  // Error whose message holds QEMU's class and desc (kNotFound for
  // CommandNotFound/DeviceNotFound, kFailedPrecondition otherwise). A timeout
  // leaves the connection usable: the late reply is recognized by its id and
  // discarded. kUnavailable once the connection is closed or broken.
  Result<nlohmann::json> Execute(const std::string& cmd,
                                 const nlohmann::json& args = nlohmann::json::object(),
                                 std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Execute with `fd` passed alongside via SCM_RIGHTS (for getfd / add-fd).
  // The caller keeps ownership of its copy of `fd`.
  Result<nlohmann::json> ExecuteWithFd(
      const std::string& cmd, const nlohmann::json& args, int fd,
      std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Returns the first queued or newly arriving event named `name` (the whole
  // event object: "event", "data", "timestamp"), removing it from the queue.
  // Other events stay queued in order.
  Result<nlohmann::json> WaitEvent(const std::string& name, std::chrono::milliseconds timeout);
  Result<nlohmann::json> WaitEventIf(const std::function<bool(const nlohmann::json&)>& match,
                                     std::chrono::milliseconds timeout);

  // Returns and clears all queued events (e.g. to drop stale ones before
  // starting an operation whose events matter).
  std::deque<nlohmann::json> DrainEvents();

  // The greeting's "QMP" object (version, capabilities).
  const nlohmann::json& greeting() const { return greeting_; }

  // True once the connection is unusable (EOF, I/O error, oversized line).
  bool broken() const;

  // Closes the socket; later calls fail with kUnavailable.
  void Close();

 private:
  explicit QmpClient(vmm::UnixStream stream);

  Result<nlohmann::json> ExecuteLocked(const std::string& cmd, const nlohmann::json& args,
                                       std::optional<int> fd,
                                       std::chrono::steady_clock::time_point deadline);
  // Runs `execute`; at trace level logs the command and how long it took.
  static Result<nlohmann::json> TimedLocked(const std::string& cmd,
                                            const std::function<Result<nlohmann::json>()>& execute);
  // Reads one message object; marks the client broken on transport errors.
  Result<nlohmann::json> ReadMessageLocked(std::chrono::steady_clock::time_point deadline);
  void QueueEventLocked(nlohmann::json event);

  mutable std::mutex mu_;
  vmm::UnixStream stream_;
  nlohmann::json greeting_;
  uint64_t next_id_ = 1;
  std::deque<nlohmann::json> events_;
  bool broken_ = false;
};

}  // namespace vmgrid
