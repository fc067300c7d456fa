#include "vmm/guest_agent_client.h"

#include <openssl/crypto.h>
#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>
#include <thread>
#include <utility>

#include "common/base64.h"
#include "vmm/json_util.h"

namespace vmgrid {

namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using vmgrid::Base64Decode;
using vmgrid::Base64Encode;
using vmm::Clock;
using vmm::Deadline;
using vmm::DeadlineAfter;
using vmm::DumpJson;
using vmm::FindField;
using vmm::GetBool;
using vmm::GetInt;
using vmm::GetString;
using vmm::MillisUntil;
using vmm::ParseUntrustedJson;
using vmm::UnixStream;

// 0xFF is never valid in JSON: sent to the agent it resets its parser, and
// the agent puts it before a guest-sync-delimited reply.
constexpr char kDelimiter = '\xff';

// After the main deadline has passed, cleanup (closing a guest file handle)
// still gets this long so handles do not leak inside the guest.
constexpr milliseconds kCleanupGrace(2000);

Error QgaError(const std::string& cmd, const json& error) {
  std::string cls = GetString(error, "class").value_or("UnknownError");
  std::string desc = GetString(error, "desc").value_or("(no description)");
  ErrorCode code = cls == "CommandNotFound" ? ErrorCode::kNotFound : ErrorCode::kFailedPrecondition;
  return MakeError(code, "guest agent " + cmd + ": " + cls + ": " + desc);
}

int64_t RandomSyncId() {
  // Any value the agent echoes works; randomness only has to make replies to
  // an earlier, abandoned sync distinguishable.
  std::random_device rd;
  std::uniform_int_distribution<int64_t> dist(1, (int64_t{1} << 31) - 1);
  return dist(rd);
}

Status HostRandom(unsigned char* buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = ::getrandom(buf + got, len - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kInternal, std::string("getrandom: ") + std::strerror(errno));
    }
    got += static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

GuestAgentClient::GuestAgentClient(UnixStream stream) : stream_(std::move(stream)) {}

Result<std::unique_ptr<GuestAgentClient>> GuestAgentClient::Connect(const std::string& path,
                                                                    milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  Result<UnixStream> stream = UnixStream::ConnectWithRetry(path, deadline);
  if (!stream.ok()) return stream.error().Wrap("guest agent connect");
  auto client = std::make_unique<GuestAgentClient>(std::move(stream).value());
  {
    std::lock_guard<std::mutex> lock(client->mu_);
    VMG_RETURN_IF_ERROR(client->SyncLocked(deadline));
  }
  return client;
}

Status GuestAgentClient::WaitReady(const std::string& path, Deadline deadline) {
  Result<std::unique_ptr<GuestAgentClient>> client = ConnectWhenReady(path, deadline);
  if (!client.ok()) return client.error();
  return Status::Ok();
}

Result<std::unique_ptr<GuestAgentClient>> GuestAgentClient::ConnectWhenReady(
    const std::string& path, Deadline deadline) {
  // Each try uses a fresh connection so requests that queued up unanswered
  // are dropped with the old socket. The per-try wait grows because a guest
  // under TCG can be slower than 500 ms to answer even once the agent runs.
  milliseconds per_try(500);
  Error last = MakeError(ErrorCode::kTimeout, "deadline passed before the first attempt");
  while (Clock::now() < deadline) {
    auto try_start = Clock::now();
    Result<UnixStream> stream = UnixStream::Connect(path);
    if (stream.ok()) {
      auto client = std::make_unique<GuestAgentClient>(std::move(stream).value());
      Deadline try_deadline = std::min(deadline, Clock::now() + per_try);
      Status st = client->Sync(milliseconds(MillisUntil(try_deadline)));
      if (st.ok()) {
        st = client->Ping(milliseconds(MillisUntil(std::min(deadline, Clock::now() + per_try))));
        if (st.ok()) return client;
      }
      last = st.error();
      per_try = std::min(per_try * 3 / 2, milliseconds(2000));
    } else {
      last = stream.error();
      if (last.code == ErrorCode::kInvalidArgument) return last;
    }
    // Failures that return at once (no socket yet, EOF) must not spin.
    auto next_try = try_start + milliseconds(100);
    if (next_try > Clock::now()) std::this_thread::sleep_until(std::min(next_try, deadline));
  }
  return MakeError(ErrorCode::kTimeout,
                   "guest agent not ready by deadline; last error: " + last.message);
}

Status GuestAgentClient::Sync(milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  std::lock_guard<std::mutex> lock(mu_);
  return SyncLocked(deadline);
}

Status GuestAgentClient::SyncLocked(Deadline deadline) {
  if (!stream_.is_open()) return MakeError(ErrorCode::kUnavailable, "guest agent: not connected");
  need_sync_ = true;
  int64_t id = RandomSyncId();
  json request = {{"execute", "guest-sync-delimited"}, {"arguments", {{"id", id}}}};
  std::string line = std::string(1, kDelimiter) + request.dump() + "\n";
  Status sent = stream_.WriteAll(line, deadline);
  if (!sent.ok()) {
    stream_.Close();
    return sent.error().Wrap("guest agent sync");
  }
  for (;;) {
    Status skipped = stream_.SkipPast(kDelimiter, deadline);
    Result<std::string> reply = skipped.ok() ? stream_.ReadLine(deadline, kMaxLineBytes)
                                             : Result<std::string>(skipped.error());
    if (!reply.ok()) {
      if (reply.error().code != ErrorCode::kTimeout) stream_.Close();
      return reply.error().Wrap("guest agent sync");
    }
    // Anything else after a delimiter is a stale or garbled reply.
    Result<json> msg = ParseUntrustedJson(*reply);
    if (msg.ok() && GetInt(*msg, "return") == id) {
      need_sync_ = false;
      return Status::Ok();
    }
  }
}

Result<json> GuestAgentClient::Call(const std::string& cmd, const json& args,
                                    milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  std::lock_guard<std::mutex> lock(mu_);
  return CallLocked(cmd, args, deadline);
}

Result<json> GuestAgentClient::CallLocked(const std::string& cmd, const json& args,
                                          Deadline deadline) {
  if (!stream_.is_open()) return MakeError(ErrorCode::kUnavailable, "guest agent: not connected");
  if (!args.is_object()) {
    return MakeError(ErrorCode::kInvalidArgument, "guest agent " + cmd + ": args not an object");
  }
  if (need_sync_) VMG_RETURN_IF_ERROR(SyncLocked(deadline));
  json request = {{"execute", cmd}};
  if (!args.empty()) request["arguments"] = args;
  VMG_ASSIGN_OR_RETURN(std::string line, DumpJson(request));
  line += '\n';
  Status sent = stream_.WriteAll(line, deadline);
  if (!sent.ok()) {
    stream_.Close();
    return sent.error().Wrap("guest agent " + cmd);
  }
  for (;;) {
    Result<std::string> reply = stream_.ReadLine(deadline, kMaxLineBytes);
    if (!reply.ok()) {
      // The reply may still come; it must not be taken for the next one's.
      need_sync_ = true;
      if (reply.error().code != ErrorCode::kTimeout) stream_.Close();
      return reply.error().Wrap("guest agent " + cmd);
    }
    std::string_view text = *reply;
    while (!text.empty() && (text.front() == kDelimiter || text.front() == ' ' ||
                             text.front() == '\t' || text.front() == '\r')) {
      text.remove_prefix(1);
    }
    if (text.empty()) continue;
    Result<json> msg = ParseUntrustedJson(text);
    if (!msg.ok() || !msg->is_object()) {
      need_sync_ = true;
      return MakeError(ErrorCode::kInternal, "guest agent " + cmd + ": malformed reply");
    }
    if (const json* error = FindField(*msg, "error")) return QgaError(cmd, *error);
    const json* ret = FindField(*msg, "return");
    if (ret == nullptr) {
      need_sync_ = true;
      return MakeError(ErrorCode::kInternal, "guest agent " + cmd + ": reply without return");
    }
    return *ret;
  }
}

Status GuestAgentClient::Ping(milliseconds timeout) {
  Result<json> r = Call("guest-ping", json::object(), timeout);
  if (!r.ok()) return r.error();
  return Status::Ok();
}

Result<ExecResult> GuestAgentClient::Exec(const std::vector<std::string>& argv,
                                          const std::string& input, milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  if (argv.empty() || argv[0].empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "guest exec: empty argv");
  }
  json args = {{"path", argv[0]},
               {"arg", std::vector<std::string>(argv.begin() + 1, argv.end())},
               {"capture-output", true}};
  if (!input.empty()) args["input-data"] = Base64Encode(input);

  std::unique_lock<std::mutex> lock(mu_);
  VMG_ASSIGN_OR_RETURN(json started, CallLocked("guest-exec", args, deadline));
  std::optional<int64_t> pid = GetInt(started, "pid");
  if (!pid) return MakeError(ErrorCode::kInternal, "guest-exec: reply without pid");

  milliseconds poll_interval(10);
  for (;;) {
    VMG_ASSIGN_OR_RETURN(json st, CallLocked("guest-exec-status", {{"pid", *pid}}, deadline));
    std::optional<bool> exited = GetBool(st, "exited");
    if (!exited) return MakeError(ErrorCode::kInternal, "guest-exec-status: no exited field");
    if (*exited) {
      ExecResult result;
      if (auto sig = GetInt(st, "signal")) {
        result.signaled = true;
        result.exit_code = static_cast<int>(*sig);
      } else {
        result.exit_code = static_cast<int>(GetInt(st, "exitcode").value_or(-1));
      }
      if (auto out = GetString(st, "out-data")) {
        VMG_ASSIGN_OR_RETURN(result.out, Base64Decode(*out));
      }
      if (auto err = GetString(st, "err-data")) {
        VMG_ASSIGN_OR_RETURN(result.err, Base64Decode(*err));
      }
      result.out_truncated = GetBool(st, "out-truncated").value_or(false);
      result.err_truncated = GetBool(st, "err-truncated").value_or(false);
      return result;
    }
    if (Clock::now() + poll_interval >= deadline) {
      return MakeError(ErrorCode::kTimeout, "guest exec " + argv[0] + " (pid " +
                                                std::to_string(*pid) +
                                                ") still running at deadline");
    }
    // Other callers may use the agent while the guest process runs.
    lock.unlock();
    std::this_thread::sleep_for(poll_interval);
    lock.lock();
    poll_interval = std::min(poll_interval * 2, milliseconds(200));
  }
}

void GuestAgentClient::CloseFileLocked(int64_t handle, Deadline deadline) {
  if (!stream_.is_open()) return;  // the agent closes nothing for us, but we cannot reach it
  Deadline close_deadline = std::max(deadline, Clock::now() + kCleanupGrace);
  (void)CallLocked("guest-file-close", {{"handle", handle}}, close_deadline);
}

Result<std::string> GuestAgentClient::ReadFile(const std::string& path, size_t max_bytes,
                                               milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  std::lock_guard<std::mutex> lock(mu_);
  VMG_ASSIGN_OR_RETURN(json opened,
                       CallLocked("guest-file-open", {{"path", path}, {"mode", "r"}}, deadline));
  if (!opened.is_number_integer()) {
    return MakeError(ErrorCode::kInternal, "guest-file-open: handle is not an integer");
  }
  int64_t handle = opened.get<int64_t>();
  std::string data;
  for (;;) {
    // One byte beyond the limit tells "exactly max_bytes" from "larger".
    size_t want = std::min(kFileChunkBytes, max_bytes - data.size() + 1);
    Result<json> r = CallLocked(
        "guest-file-read", {{"handle", handle}, {"count", static_cast<int64_t>(want)}}, deadline);
    if (!r.ok()) {
      CloseFileLocked(handle, deadline);
      return r.error().Wrap("reading " + path);
    }
    std::optional<int64_t> count = GetInt(*r, "count");
    std::optional<std::string> b64 = GetString(*r, "buf-b64");
    bool eof = GetBool(*r, "eof").value_or(false);
    Result<std::string> chunk =
        b64 ? Base64Decode(*b64)
            : Result<std::string>(MakeError(ErrorCode::kInternal, "no buf-b64"));
    if (!count || !chunk.ok() || static_cast<int64_t>(chunk->size()) != *count ||
        chunk->size() > want) {
      CloseFileLocked(handle, deadline);
      return MakeError(ErrorCode::kInternal, "guest-file-read " + path + ": malformed reply");
    }
    data += *chunk;
    if (data.size() > max_bytes) {
      CloseFileLocked(handle, deadline);
      return MakeError(ErrorCode::kResourceExhausted, "guest file " + path + " is larger than " +
                                                          std::to_string(max_bytes) + " bytes");
    }
    // A zero-byte read without eof would otherwise loop until the deadline.
    if (eof || chunk->empty()) break;
  }
  CloseFileLocked(handle, deadline);
  return data;
}

Status GuestAgentClient::WriteFile(const std::string& path, const std::string& data,
                                   milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  std::lock_guard<std::mutex> lock(mu_);
  return WriteFileLocked(path, data, deadline);
}

Status GuestAgentClient::WriteFileLocked(const std::string& path, const std::string& data,
                                         Deadline deadline) {
  VMG_ASSIGN_OR_RETURN(json opened,
                       CallLocked("guest-file-open", {{"path", path}, {"mode", "w"}}, deadline));
  if (!opened.is_number_integer()) {
    return MakeError(ErrorCode::kInternal, "guest-file-open: handle is not an integer");
  }
  int64_t handle = opened.get<int64_t>();
  std::string_view rest = data;
  while (!rest.empty()) {
    std::string_view chunk = rest.substr(0, kFileChunkBytes);
    Result<json> r = CallLocked("guest-file-write",
                                {{"handle", handle}, {"buf-b64", Base64Encode(chunk)}}, deadline);
    if (!r.ok()) {
      CloseFileLocked(handle, deadline);
      return r.error().Wrap("writing " + path);
    }
    std::optional<int64_t> count = GetInt(*r, "count");
    if (!count || *count <= 0 || static_cast<uint64_t>(*count) > chunk.size()) {
      CloseFileLocked(handle, deadline);
      return MakeError(ErrorCode::kInternal, "guest-file-write " + path + ": bad count in reply");
    }
    rest.remove_prefix(static_cast<size_t>(*count));
  }
  // Closing flushes stdio buffers in the agent, so its failure is a write
  // failure, unlike on the error paths above.
  Result<json> closed = CallLocked("guest-file-close", {{"handle", handle}}, deadline);
  if (!closed.ok()) return closed.error().Wrap("closing " + path);
  return Status::Ok();
}

Result<int64_t> GuestAgentClient::OpenLocked(const std::string& path, const char* mode,
                                             Deadline deadline) {
  Result<json> opened = CallLocked("guest-file-open", {{"path", path}, {"mode", mode}}, deadline);
  if (!opened.ok()) {
    // qemu-ga's desc ends with strerror(): "failed to open file 'P' (mode:
    // 'r'): No such file or directory".
    const std::string& m = opened.error().message;
    ErrorCode code = opened.error().code;
    if (m.find("No such file or directory") != std::string::npos) {
      code = ErrorCode::kNotFound;
    } else if (m.find("Permission denied") != std::string::npos ||
               m.find("Read-only file system") != std::string::npos) {
      code = ErrorCode::kPermissionDenied;
    }
    size_t at = m.rfind("): ");
    std::string why = at == std::string::npos ? m : m.substr(at + 3);
    return MakeError(code, "guest file " + path + ": " + why);
  }
  if (!opened->is_number_integer())
    return MakeError(ErrorCode::kInternal, "guest-file-open: handle is not an integer");
  return opened->get<int64_t>();
}

Result<int64_t> GuestAgentClient::SeekLocked(int64_t handle, int64_t offset, const char* whence,
                                             Deadline deadline) {
  VMG_ASSIGN_OR_RETURN(
      json r, CallLocked("guest-file-seek",
                         {{"handle", handle}, {"offset", offset}, {"whence", whence}}, deadline));
  std::optional<int64_t> position = GetInt(r, "position");
  if (!position || *position < 0)
    return MakeError(ErrorCode::kInternal, "guest-file-seek: reply without position");
  return *position;
}

Result<GuestFileSlice> GuestAgentClient::ReadFileAt(const std::string& path, int64_t offset,
                                                    size_t max_bytes, milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  std::lock_guard<std::mutex> lock(mu_);
  VMG_ASSIGN_OR_RETURN(int64_t handle, OpenLocked(path, "r", deadline));
  auto body = [&]() -> Result<GuestFileSlice> {
    GuestFileSlice slice;
    VMG_ASSIGN_OR_RETURN(int64_t at, SeekLocked(handle, offset, "set", deadline));
    if (at != offset) return MakeError(ErrorCode::kInternal, "guest-file-seek: wrong position");
    while (slice.data.size() < max_bytes) {
      size_t want = std::min(kFileChunkBytes, max_bytes - slice.data.size());
      Result<json> r = CallLocked(
          "guest-file-read", {{"handle", handle}, {"count", static_cast<int64_t>(want)}}, deadline);
      if (!r.ok()) {
        const std::string& m = r.error().message;
        if (m.find("Is a directory") != std::string::npos)
          return MakeError(ErrorCode::kFailedPrecondition,
                           "guest file " + path + " is a directory");
        return r.error().Wrap("reading guest file " + path);
      }
      std::optional<int64_t> count = GetInt(*r, "count");
      std::optional<std::string> b64 = GetString(*r, "buf-b64");
      Result<std::string> chunk =
          b64 ? Base64Decode(*b64)
              : Result<std::string>(MakeError(ErrorCode::kInternal, "no buf-b64"));
      if (!count || !chunk.ok() || static_cast<int64_t>(chunk->size()) != *count ||
          chunk->size() > want)
        return MakeError(ErrorCode::kInternal, "guest-file-read " + path + ": malformed reply");
      slice.data += *chunk;
      if (GetBool(*r, "eof").value_or(false) || chunk->empty()) {
        slice.eof = true;
        break;
      }
    }
    // The size is asked after reading: a directory opens for reading, and
    // only its read says what it is (above); its "size" means nothing.
    VMG_ASSIGN_OR_RETURN(slice.size, SeekLocked(handle, 0, "end", deadline));
    if (offset + static_cast<int64_t>(slice.data.size()) >= slice.size) slice.eof = true;
    return slice;
  };
  Result<GuestFileSlice> r = body();
  CloseFileLocked(handle, deadline);
  return r;
}

Result<int64_t> GuestAgentClient::WriteFileAt(const std::string& path, int64_t offset,
                                              const std::string& data, milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  std::lock_guard<std::mutex> lock(mu_);
  VMG_ASSIGN_OR_RETURN(int64_t handle, OpenLocked(path, offset == 0 ? "w" : "r+", deadline));
  auto body = [&]() -> Result<int64_t> {
    if (offset > 0) {
      VMG_ASSIGN_OR_RETURN(int64_t size, SeekLocked(handle, 0, "end", deadline));
      if (size != offset)
        return MakeError(ErrorCode::kFailedPrecondition,
                         "guest file " + path + " is " + std::to_string(size) + " bytes, not " +
                             std::to_string(offset) + "; a copy writes its chunks in order");
    }
    std::string_view rest = data;
    while (!rest.empty()) {
      std::string_view chunk = rest.substr(0, kFileChunkBytes);
      VMG_ASSIGN_OR_RETURN(
          json r, CallLocked("guest-file-write",
                             {{"handle", handle}, {"buf-b64", Base64Encode(chunk)}}, deadline));
      std::optional<int64_t> count = GetInt(r, "count");
      if (!count || *count <= 0 || static_cast<uint64_t>(*count) > chunk.size())
        return MakeError(ErrorCode::kInternal, "guest-file-write " + path + ": bad count in reply");
      rest.remove_prefix(static_cast<size_t>(*count));
    }
    return offset + static_cast<int64_t>(data.size());
  };
  Result<int64_t> r = body();
  if (!r.ok()) {
    CloseFileLocked(handle, deadline);
    return r;
  }
  // Closing flushes stdio buffers in the agent: its failure is a write failure.
  Result<json> closed = CallLocked("guest-file-close", {{"handle", handle}}, deadline);
  if (!closed.ok()) return closed.error().Wrap("closing guest file " + path);
  return r;
}

Status GuestAgentClient::ReseedRandom(milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  unsigned char buf[64];
  VMG_RETURN_IF_ERROR(HostRandom(buf, sizeof(buf)));
  std::string data(reinterpret_cast<const char*>(buf), sizeof(buf));
  OPENSSL_cleanse(buf, sizeof(buf));
  Status st;
  {
    std::lock_guard<std::mutex> lock(mu_);
    st = WriteFileLocked("/dev/urandom", data, deadline);
  }
  OPENSSL_cleanse(data.data(), data.size());
  return st;
}

}  // namespace vmgrid
