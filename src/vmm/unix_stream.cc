#include "vmm/unix_stream.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

namespace vmgrid::vmm {

namespace {

constexpr size_t kReadChunk = 64 * 1024;

Error ErrnoError(ErrorCode code, const std::string& what, int err) {
  return MakeError(code, what + ": " + std::strerror(err));
}

// Waits until `fd` is ready for `events` or the deadline passes.
Status WaitFd(int fd, short events, Deadline deadline, const char* what) {
  for (;;) {
    pollfd pfd{fd, events, 0};
    int rc = ::poll(&pfd, 1, MillisUntil(deadline));
    if (rc > 0) return Status::Ok();  // errors/hangup surface from the next syscall
    if (rc == 0) return MakeError(ErrorCode::kTimeout, std::string("timed out ") + what);
    if (errno != EINTR) return ErrnoError(ErrorCode::kUnavailable, "poll", errno);
  }
}

}  // namespace

int MillisUntil(Deadline deadline) {
  auto left = deadline - Clock::now();
  if (left <= Clock::duration::zero()) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<int64_t>(ms, 1 << 30));
}

UnixStream::UnixStream(UniqueFd fd) : fd_(std::move(fd)) {}

Result<UnixStream> UnixStream::Connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return MakeError(ErrorCode::kInvalidArgument, "unix socket path empty or longer than " +
                                                      std::to_string(sizeof(addr.sun_path) - 1) +
                                                      " bytes: " + path);
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return ErrnoError(ErrorCode::kInternal, "socket", errno);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    // Permission problems will not fix themselves; everything else (no
    // socket yet, no listener, backlog full) may, so it is kUnavailable.
    ErrorCode code =
        (err == EACCES || err == EPERM) ? ErrorCode::kPermissionDenied : ErrorCode::kUnavailable;
    return ErrnoError(code, "connect " + path, err);
  }
  return UnixStream(std::move(fd));
}

Result<UnixStream> UnixStream::ConnectWithRetry(const std::string& path, Deadline deadline) {
  // A socket that a process just started is about to create (QEMU's QMP
  // socket appears 30-50 ms after exec under TCG) is tried every 2 ms at
  // first, so its user waits at most that long after it appears; a failed
  // connect costs microseconds. Later tries back off to 200 ms.
  const auto start = Clock::now();
  auto backoff = std::chrono::milliseconds(2);
  for (;;) {
    Result<UnixStream> s = Connect(path);
    if (s.ok() || s.error().code != ErrorCode::kUnavailable) return s;
    if (Clock::now() + backoff >= deadline) {
      return MakeError(ErrorCode::kTimeout, s.error().message + " (gave up at deadline)");
    }
    std::this_thread::sleep_for(backoff);
    if (Clock::now() - start > std::chrono::milliseconds(300))
      backoff = std::min(backoff * 2, std::chrono::milliseconds(200));
  }
}

void UnixStream::Close() {
  fd_.Reset();
  buffer_.clear();
  scanned_ = 0;
}

Status UnixStream::WriteAll(std::string_view data, Deadline deadline) {
  if (!fd_.valid()) return MakeError(ErrorCode::kUnavailable, "socket is closed");
  while (!data.empty()) {
    ssize_t n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      VMG_RETURN_IF_ERROR(WaitFd(fd_.get(), POLLOUT, deadline, "writing to peer"));
      continue;
    }
    return ErrnoError(ErrorCode::kUnavailable, "send", n < 0 ? errno : EPIPE);
  }
  return Status::Ok();
}

Status UnixStream::WriteWithFd(std::string_view data, int fd, Deadline deadline) {
  if (!fd_.valid()) return MakeError(ErrorCode::kUnavailable, "socket is closed");
  if (data.empty()) return MakeError(ErrorCode::kInvalidArgument, "fd must ride on data");
  for (;;) {
    iovec iov{const_cast<char*>(data.data()), data.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) return WriteAll(data.substr(static_cast<size_t>(n)), deadline);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      VMG_RETURN_IF_ERROR(WaitFd(fd_.get(), POLLOUT, deadline, "writing to peer"));
      continue;
    }
    return ErrnoError(ErrorCode::kUnavailable, "sendmsg", n < 0 ? errno : EPIPE);
  }
}

Status UnixStream::Fill(Deadline deadline) {
  if (!fd_.valid()) return MakeError(ErrorCode::kUnavailable, "socket is closed");
  for (;;) {
    size_t old = buffer_.size();
    buffer_.resize(old + kReadChunk);
    ssize_t n = ::recv(fd_.get(), buffer_.data() + old, kReadChunk, MSG_DONTWAIT);
    int err = errno;
    buffer_.resize(old + (n > 0 ? static_cast<size_t>(n) : 0));
    if (n > 0) return Status::Ok();
    if (n == 0) return MakeError(ErrorCode::kUnavailable, "connection closed by peer");
    if (err == EINTR) continue;
    if (err != EAGAIN && err != EWOULDBLOCK) {
      return ErrnoError(ErrorCode::kUnavailable, "recv", err);
    }
    VMG_RETURN_IF_ERROR(WaitFd(fd_.get(), POLLIN, deadline, "waiting for peer"));
  }
}

Result<std::string> UnixStream::ReadLine(Deadline deadline, size_t max_len) {
  for (;;) {
    size_t nl = buffer_.find('\n', scanned_);
    if (nl != std::string::npos) {
      if (nl > max_len) break;
      size_t end = (nl > 0 && buffer_[nl - 1] == '\r') ? nl - 1 : nl;
      std::string line = buffer_.substr(0, end);
      buffer_.erase(0, nl + 1);
      scanned_ = 0;
      return line;
    }
    scanned_ = buffer_.size();
    if (buffer_.size() > max_len) break;
    VMG_RETURN_IF_ERROR(Fill(deadline));
  }
  Close();
  return MakeError(ErrorCode::kResourceExhausted,
                   "peer sent a line longer than " + std::to_string(max_len) + " bytes");
}

Status UnixStream::SkipPast(char byte, Deadline deadline) {
  for (;;) {
    size_t pos = buffer_.find(byte);
    if (pos != std::string::npos) {
      buffer_.erase(0, pos + 1);
      scanned_ = 0;
      return Status::Ok();
    }
    buffer_.clear();
    scanned_ = 0;
    VMG_RETURN_IF_ERROR(Fill(deadline));
  }
}

}  // namespace vmgrid::vmm
