// UnixStream: the transport under QmpClient and GuestAgentClient. The peer is
// untrusted, so every read/write has a deadline and lines are length-capped.
// Thread-safety: not thread-safe; the owning client serializes all calls.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "common/result.h"
#include "vmm/unique_fd.h"

namespace vmgrid::vmm {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

inline Deadline DeadlineAfter(std::chrono::milliseconds timeout) { return Clock::now() + timeout; }

// Milliseconds until `deadline` (0 if passed), rounded up so a poll never
// wakes just before the deadline and spins.
int MillisUntil(Deadline deadline);

class UnixStream {
 public:
  UnixStream() = default;
  explicit UnixStream(UniqueFd fd);  // takes a connected stream socket (tests: socketpair)

  // One connect attempt. kUnavailable when nobody listens (yet), which
  // callers treat as retryable; kInvalidArgument if the path is too long.
  static Result<UnixStream> Connect(const std::string& path);
  // Retries Connect on kUnavailable with a short backoff until `deadline`.
  static Result<UnixStream> ConnectWithRetry(const std::string& path, Deadline deadline);

  bool is_open() const { return fd_.valid(); }
  void Close();

  Status WriteAll(std::string_view data, Deadline deadline);
  // Like WriteAll, with `fd` attached as SCM_RIGHTS to the first byte.
  Status WriteWithFd(std::string_view data, int fd, Deadline deadline);

  // Returns the next line without its '\n' (and without a trailing '\r').
  // kTimeout: deadline passed (a partial line stays buffered); kUnavailable:
  // EOF or I/O error; kResourceExhausted: more than `max_len` bytes without a
  // newline (the stream cannot be resynchronized after that).
  Result<std::string> ReadLine(Deadline deadline, size_t max_len);

  // Discards input up to and including the first occurrence of `byte`.
  Status SkipPast(char byte, Deadline deadline);

 private:
  // Appends whatever is readable to buffer_, waiting until `deadline`.
  Status Fill(Deadline deadline);

  UniqueFd fd_;
  std::string buffer_;
  size_t scanned_ = 0;  // prefix of buffer_ known to hold no '\n'
};

}  // namespace vmgrid::vmm
