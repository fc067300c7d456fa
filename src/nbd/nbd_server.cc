#include "nbd/nbd_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace vmgrid::nbd {
namespace {

Error SysError(const std::string& what) {
  return MakeError(ErrorCode::kInternal, what + ": " + std::strerror(errno));
}

// A connected socket as a ByteStream. A receive timeout (SO_RCVTIMEO) bounds
// the handshake; it is lifted once the client enters transmission.
class SocketStream final : public ByteStream {
 public:
  SocketStream(int fd, std::chrono::milliseconds handshake_timeout) : fd_(fd) {
    SetReceiveTimeout(handshake_timeout);
  }

  Result<size_t> ReadSome(char* buf, size_t cap) override {
    for (;;) {
      ssize_t n = ::recv(fd_, buf, cap, 0);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return MakeError(ErrorCode::kTimeout, "handshake timed out");
      }
      return MakeError(ErrorCode::kUnavailable, std::string("recv: ") + std::strerror(errno));
    }
  }

  // Any number of parts (a READ with holes has two per run), sent in
  // batches of up to kMaxParts iovecs.
  Status WriteAll(std::span<const std::string_view> parts) override {
    constexpr size_t kMaxParts = 64;
    while (!parts.empty()) {
      iovec iov[kMaxParts];
      size_t count = 0, used = 0;
      for (; used < parts.size() && count < kMaxParts; ++used) {
        if (parts[used].empty()) continue;
        iov[count++] = iovec{const_cast<char*>(parts[used].data()), parts[used].size()};
      }
      parts = parts.subspan(used);
      VMG_RETURN_IF_ERROR(SendAll(iov, count));
    }
    return Status::Ok();
  }

  void EnterTransmission() override { SetReceiveTimeout(std::chrono::milliseconds(0)); }

 private:
  Status SendAll(iovec* next, size_t count) {
    while (count > 0) {
      msghdr msg{};
      msg.msg_iov = next;
      msg.msg_iovlen = count;
      // MSG_NOSIGNAL: a client that vanished must not SIGPIPE the agent.
      ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return MakeError(ErrorCode::kUnavailable, std::string("send: ") + std::strerror(errno));
      }
      size_t sent = static_cast<size_t>(n);
      while (count > 0 && sent >= next->iov_len) {
        sent -= next->iov_len;
        ++next;
        --count;
      }
      if (count > 0) {
        next->iov_base = static_cast<char*>(next->iov_base) + sent;
        next->iov_len -= sent;
      }
    }
    return Status::Ok();
  }

  void SetReceiveTimeout(std::chrono::milliseconds timeout) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    (void)::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }

  int fd_;
};

Result<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return MakeError(ErrorCode::kInvalidArgument, "unix socket path too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

// Removes a socket file left behind by a server that died; refuses to touch
// anything that is not a socket or that someone still listens on.
Status RemoveStaleSocket(const std::string& path, const sockaddr_un& addr) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return SysError("stat " + path);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return MakeError(ErrorCode::kAlreadyExists, path + " exists and is not a socket");
  }
  vmm::UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!probe.valid()) return SysError("socket");
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
    return MakeError(ErrorCode::kAlreadyExists, "a server is already listening on " + path);
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return SysError("unlink " + path);
  return Status::Ok();
}

}  // namespace

NbdServer::NbdServer(NbdServerOptions options) : options_(std::move(options)) {}

NbdServer::~NbdServer() { Stop(); }

Status NbdServer::AddExport(const std::string& name, BlockSourcePtr source) {
  return exports_.Add(name, std::move(source));
}

Status NbdServer::RemoveExport(const std::string& name) { return exports_.Remove(name); }

NbdStats NbdServer::stats() const {
  NbdStats s;
  s.connections = counters_.connections.load(std::memory_order_relaxed);
  s.active_connections = active_.load(std::memory_order_relaxed);
  s.requests = counters_.requests.load(std::memory_order_relaxed);
  s.bytes_read = counters_.bytes_read.load(std::memory_order_relaxed);
  s.errors = counters_.errors.load(std::memory_order_relaxed);
  s.source_errors = counters_.source_errors.load(std::memory_order_relaxed);
  return s;
}

Status NbdServer::Start() {
  if (started_) return MakeError(ErrorCode::kFailedPrecondition, "NBD server already started");
  if (options_.unix_socket_path.empty() && !options_.listen_tcp) {
    return MakeError(ErrorCode::kInvalidArgument, "NBD server: no listener configured");
  }
  Status listening = Listen();
  if (!listening.ok()) {
    CloseListeners();
    return listening;
  }
  started_ = true;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  spdlog::info("nbd: serving on {}{}{}", options_.unix_socket_path,
               options_.listen_tcp && !options_.unix_socket_path.empty() ? " and " : "",
               options_.listen_tcp ? "127.0.0.1:" + std::to_string(tcp_port_) : "");
  return Status::Ok();
}

Status NbdServer::Listen() {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) return SysError("pipe");
  wake_read_.Reset(pipe_fds[0]);
  wake_write_.Reset(pipe_fds[1]);

  if (!options_.unix_socket_path.empty()) {
    const std::string& path = options_.unix_socket_path;
    VMG_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
    VMG_RETURN_IF_ERROR(RemoveStaleSocket(path, addr));
    unix_inode_ = 0;
    unix_fd_.Reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!unix_fd_.valid()) return SysError("socket");
    if (::bind(unix_fd_.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      return SysError("bind " + path);
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return SysError("stat " + path);
    unix_inode_ = st.st_ino;
    // Nobody can connect before listen(), so setting the mode here is race-free.
    if (::chmod(path.c_str(), static_cast<mode_t>(options_.unix_socket_mode)) != 0) {
      return SysError("chmod " + path);
    }
    if (::listen(unix_fd_.get(), SOMAXCONN) != 0) return SysError("listen " + path);
  }

  if (options_.listen_tcp) {
    tcp_fd_.Reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!tcp_fd_.valid()) return SysError("socket");
    int one = 1;
    (void)::setsockopt(tcp_fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(options_.tcp_port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(tcp_fd_.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      return SysError("bind 127.0.0.1:" + std::to_string(options_.tcp_port));
    }
    socklen_t len = sizeof addr;
    if (::getsockname(tcp_fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return SysError("getsockname");
    }
    tcp_port_ = ntohs(addr.sin_port);
    if (::listen(tcp_fd_.get(), SOMAXCONN) != 0) return SysError("listen tcp");
  }
  return Status::Ok();
}

void NbdServer::CloseListeners() {
  if (unix_fd_.valid()) {
    unix_fd_.Reset();
    // Unlink only the socket we bound: a newer server may own the path by now.
    struct stat st {};
    if (::lstat(options_.unix_socket_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
        st.st_ino == unix_inode_) {
      (void)::unlink(options_.unix_socket_path.c_str());
    }
  }
  tcp_fd_.Reset();
  wake_read_.Reset();
  wake_write_.Reset();
}

void NbdServer::AcceptLoop() {
  for (;;) {
    pollfd fds[3];
    nfds_t n = 0;
    fds[n++] = pollfd{wake_read_.get(), POLLIN, 0};
    if (unix_fd_.valid()) fds[n++] = pollfd{unix_fd_.get(), POLLIN, 0};
    if (tcp_fd_.valid()) fds[n++] = pollfd{tcp_fd_.get(), POLLIN, 0};
    int ready = ::poll(fds, n, -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      spdlog::error("nbd: poll: {}", std::strerror(errno));
      return;
    }
    if (fds[0].revents != 0) return;  // Stop()
    for (nfds_t i = 1; i < n; ++i) {
      if (fds[i].revents != 0) Accept(fds[i].fd, fds[i].fd == tcp_fd_.get());
    }
  }
}

void NbdServer::Accept(int listen_fd, bool tcp) {
  vmm::UniqueFd fd(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd.valid()) {
    // EMFILE and friends: back off briefly instead of spinning on a ready listener.
    if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
      spdlog::warn("nbd: accept: {}", std::strerror(errno));
      ::poll(nullptr, 0, 100);
    }
    return;
  }
  ReapFinished();
  counters_.connections.fetch_add(1, std::memory_order_relaxed);
  if (active_.load(std::memory_order_relaxed) >= options_.max_connections) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("nbd: {} connections active, refusing another", options_.max_connections);
    return;
  }
  if (tcp) {
    int one = 1;
    (void)::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  auto connection = std::make_unique<Connection>();
  connection->peer = (tcp ? "tcp#" : "unix#") + std::to_string(++next_id_);
  connection->fd = std::move(fd);
  Connection* raw = connection.get();
  active_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  connections_.push_back(std::move(connection));
  raw->thread = std::thread([this, raw] { Serve(raw); });
}

void NbdServer::Serve(Connection* connection) {
  SocketStream stream(connection->fd.get(), options_.handshake_timeout);
  SessionOptions session;
  session.max_payload = options_.max_payload;
  session.peer = connection->peer;
  session.workers = options_.session_workers;
  Status end = RunSession(stream, exports_, counters_, session);
  if (end.ok()) {
    spdlog::debug("nbd {}: session ended", connection->peer);
  } else {
    spdlog::debug("nbd {}: session ended: {}", connection->peer, end.error().message);
  }
  std::lock_guard lock(mu_);
  connection->fd.Reset();  // under mu_, so Stop never shuts down a recycled fd
  connection->done = true;
  active_.fetch_sub(1, std::memory_order_relaxed);
}

void NbdServer::ReapFinished() {
  std::list<std::unique_ptr<Connection>> finished;
  {
    std::lock_guard lock(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto next = std::next(it);
      if ((*it)->done) finished.splice(finished.end(), connections_, it);
      it = next;
    }
  }
  for (auto& c : finished) c->thread.join();  // done: the thread is past its last lock
}

void NbdServer::Stop() {
  if (!started_) return;
  started_ = false;
  char byte = 1;
  (void)!::write(wake_write_.get(), &byte, 1);
  accept_thread_.join();

  std::list<std::unique_ptr<Connection>> all;
  {
    std::lock_guard lock(mu_);
    // Wakes threads blocked in recv/send; a thread inside BlockSource::Read
    // finishes that read first.
    for (auto& c : connections_) {
      if (!c->done) ::shutdown(c->fd.get(), SHUT_RDWR);
    }
    all.swap(connections_);
  }
  for (auto& c : all) c->thread.join();
  CloseListeners();
  spdlog::info("nbd: stopped ({} connections, {} requests, {} bytes read, {} errors)",
               counters_.connections.load(), counters_.requests.load(), counters_.bytes_read.load(),
               counters_.errors.load());
}

}  // namespace vmgrid::nbd
