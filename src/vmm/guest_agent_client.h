// GuestAgentClient: talks to qemu-guest-agent inside the VM (exec, file I/O,
// entropy) through the virtserialport chardev socket RUN/qga.sock.
// Thread-safety: thread-safe; calls are serialized by an internal mutex.
//
// The chardev runs with server=on,wait=off, so before the guest agent is up
// our writes succeed and nothing ever answers: every call has a deadline, and
// after any timeout or garbled reply the stream is resynchronized with
// guest-sync-delimited before the next command.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"
#include "vmm/unix_stream.h"

namespace vmgrid {

struct ExecResult {
  int exit_code = 0;      // the exit status, or the signal number if `signaled`
  std::string out, err;   // captured stdout/stderr
  bool signaled = false;  // killed by a signal
  bool out_truncated = false, err_truncated = false;  // the agent caps capture (16 MiB in 7.2)
};

// A piece of a guest file (ReadFileAt).
struct GuestFileSlice {
  std::string data;
  int64_t size = 0;  // the file's size when it was opened
  bool eof = false;  // the slice reaches the end of the file
};

class GuestAgentClient {
 public:
  // guest-exec-status returns all captured output on one line, base64-coded;
  // two 16 MiB captures need about 43 MiB.
  static constexpr size_t kMaxLineBytes = 64 * 1024 * 1024;
  static constexpr size_t kFileChunkBytes = 1024 * 1024;

  // Connects (retrying until `timeout` while the socket does not exist) and
  // synchronizes. Fails with kTimeout if the guest agent does not answer.
  static Result<std::unique_ptr<GuestAgentClient>> Connect(const std::string& path,
                                                           std::chrono::milliseconds timeout);

  // Waits for a responsive agent: connect, sync (~500 ms per try), ping,
  // repeated on a fresh connection until it works or `deadline` passes.
  static Status WaitReady(const std::string& path, std::chrono::steady_clock::time_point deadline);
  // Same loop, handing back the connection that answered.
  static Result<std::unique_ptr<GuestAgentClient>> ConnectWhenReady(
      const std::string& path, std::chrono::steady_clock::time_point deadline);

  // Wraps a connected stream without syncing (tests, or callers that sync).
  explicit GuestAgentClient(vmm::UnixStream stream);

  GuestAgentClient(const GuestAgentClient&) = delete;
  GuestAgentClient& operator=(const GuestAgentClient&) = delete;

  // guest-sync-delimited with a random id: discards stale bytes up to the
  // 0xFF delimiter and stale sync replies until the one carrying our id.
  Status Sync(std::chrono::milliseconds timeout);
  Status Ping(std::chrono::milliseconds timeout);

  // Runs argv (argv[0] is looked up in the guest's PATH) with `input` on
  // stdin, capturing output. kTimeout if it has not exited by then; the guest
  // process is left running (QGA 7.2 cannot kill it).
  Result<ExecResult> Exec(const std::vector<std::string>& argv, const std::string& input,
                          std::chrono::milliseconds timeout);

  // Whole-file read; kResourceExhausted if the file is larger than max_bytes.
  Result<std::string> ReadFile(const std::string& path, size_t max_bytes,
                               std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Creates or truncates `path` and writes `data`.
  Status WriteFile(const std::string& path, const std::string& data,
                   std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Up to `max_bytes` of `path` from `offset` (guest-file-open "r", -seek,
  // -read, -close). Open failures map errno text to codes: no such file ->
  // kNotFound, permission denied -> kPermissionDenied, others
  // kFailedPrecondition; the message names the guest path.
  Result<GuestFileSlice> ReadFileAt(const std::string& path, int64_t offset, size_t max_bytes,
                                    std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Writes `data` at `offset`: offset 0 creates or truncates the file ("w"),
  // a later offset must equal the file's size ("r+" then seek; kFailedPrecondition
  // otherwise). Returns the file's size after the write. Errors as ReadFileAt.
  Result<int64_t> WriteFileAt(const std::string& path, int64_t offset, const std::string& data,
                              std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Mixes 64 bytes of host getrandom() output into the guest's entropy pool
  // by writing them to /dev/urandom. (This mixes but credits no entropy; it
  // exists so that clones of one checkpoint diverge.)
  Status ReseedRandom(std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Runs any agent command; returns its "return" value.
  Result<nlohmann::json> Call(const std::string& cmd, const nlohmann::json& args,
                              std::chrono::milliseconds timeout);

 private:
  Status SyncLocked(std::chrono::steady_clock::time_point deadline);
  Result<nlohmann::json> CallLocked(const std::string& cmd, const nlohmann::json& args,
                                    std::chrono::steady_clock::time_point deadline);
  // guest-file-close that must not be skipped just because the main
  // operation's deadline passed.
  void CloseFileLocked(int64_t handle, std::chrono::steady_clock::time_point deadline);
  Result<int64_t> OpenLocked(const std::string& path, const char* mode,
                             std::chrono::steady_clock::time_point deadline);
  Result<int64_t> SeekLocked(int64_t handle, int64_t offset, const char* whence,
                             std::chrono::steady_clock::time_point deadline);
  Status WriteFileLocked(const std::string& path, const std::string& data,
                         std::chrono::steady_clock::time_point deadline);

  std::mutex mu_;
  vmm::UnixStream stream_;
  bool need_sync_ = true;  // true until synced, and after any desync
};

}  // namespace vmgrid
