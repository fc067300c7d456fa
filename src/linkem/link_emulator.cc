#include "linkem/link_emulator.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <vector>

namespace vmgrid::linkem {
namespace {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using std::chrono::nanoseconds;

constexpr size_t kReadSize = 64 * 1024;

Error SysError(const std::string& what) {
  return MakeError(ErrorCode::kInternal, what + ": " + std::strerror(errno));
}

struct Address {
  sockaddr_storage addr{};
  socklen_t len = 0;
};

Result<Address> Resolve(const std::string& host, uint16_t port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot resolve " + host + ": " + ::gai_strerror(rc));
  }
  Address out;
  std::memcpy(&out.addr, res->ai_addr, res->ai_addrlen);
  out.len = res->ai_addrlen;
  ::freeaddrinfo(res);
  return out;
}

void SetNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Sends all of `data`; false if the peer is gone (or the socket was shut
// down by Stop). MSG_NOSIGNAL: a vanished peer must not raise SIGPIPE.
bool SendAll(int fd, const char* data, size_t len) {
  while (len > 0) {
    ssize_t n = ::send(fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// A run of bytes in flight on the emulated link, or the FIN after them.
struct Segment {
  TimePoint release;  // not delivered before this
  std::vector<char> data;
  bool fin = false;
};

}  // namespace

// One direction's bottleneck: the time at which it is next free. Shared by
// every connection's direction when options.shared_link.
struct LinkEmulator::Link {
  Link(uint64_t rate_bps, size_t queue_bytes)
      : rate_bps(rate_bps), max_backlog(SerializationTime(queue_bytes)) {}

  nanoseconds SerializationTime(size_t bytes) const {
    // Rounded up: the link must never run faster than rate_bps.
    uint64_t bits_ns = static_cast<uint64_t>(bytes) * 8 * 1'000'000'000ULL;
    return nanoseconds((bits_ns + rate_bps - 1) / rate_bps);
  }

  // Reserves the link for `bytes` starting no earlier than `now`; returns the
  // time the last of them has left (entered propagation).
  TimePoint Reserve(size_t bytes, TimePoint now) {
    std::lock_guard<std::mutex> l(mu);
    free_at = std::max(now, free_at) + SerializationTime(bytes);
    return free_at;
  }

  // The earliest time at which the queue is within queue_bytes, so the
  // sender may be read again.
  TimePoint AdmitAt() {
    std::lock_guard<std::mutex> l(mu);
    return free_at - max_backlog;
  }

  const uint64_t rate_bps;
  const nanoseconds max_backlog;
  std::mutex mu;
  TimePoint free_at;  // guarded by mu
};

namespace {

// One direction of one connection: a reader fills the queue with stamped
// segments, a writer delivers them at their release times.
struct Direction {
  LinkEmulator::Link* link = nullptr;            // null: unlimited rate
  std::unique_ptr<LinkEmulator::Link> own_link;  // when the link is not shared
  std::atomic<uint64_t>* delivered = nullptr;

  std::mutex mu;
  std::condition_variable cv;
  // State below is guarded by mu.
  std::deque<Segment> queue;
  size_t queued_bytes = 0;
  TimePoint last_release;
  bool reader_done = false;
  bool failed = false;  // the destination is gone: the reader must stop
};

}  // namespace

struct LinkEmulator::Connection {
  Connection(LinkEmulator* em, vmm::UniqueFd client_fd, TimePoint accepted)
      : em(em), client(std::move(client_fd)), accepted_at(accepted) {
    const auto& o = em->options_;
    delay = nanoseconds(o.rtt) / 2;
    segment_bytes = kReadSize;
    if (o.rate_bps > 0) {
      // About 1 ms of link time per segment: pacing granularity vs wakeups.
      segment_bytes = std::clamp<size_t>(o.rate_bps / 8 / 1000, 1500, kReadSize);
      if (o.shared_link) {
        to_target.link = em->link_to_target_.get();
        to_client.link = em->link_to_client_.get();
      } else {
        to_target.own_link = std::make_unique<Link>(o.rate_bps, o.queue_bytes);
        to_client.own_link = std::make_unique<Link>(o.rate_bps, o.queue_bytes);
        to_target.link = to_target.own_link.get();
        to_client.link = to_client.own_link.get();
      }
    }
    to_target.delivered = &em->bytes_to_target_;
    to_client.delivered = &em->bytes_to_client_;
  }

  bool Stopping() const { return em->stopping_.load(); }

  // Sleeps until `deadline` or until Stop; false if stopped.
  bool SleepUntil(TimePoint deadline) {
    for (;;) {
      if (Stopping()) return false;
      auto now = Clock::now();
      if (now >= deadline) return true;
      auto left = std::chrono::duration_cast<nanoseconds>(deadline - now);
      timespec ts{static_cast<time_t>(left.count() / 1'000'000'000),
                  static_cast<long>(left.count() % 1'000'000'000)};
      pollfd p{em->stop_fd_.get(), POLLIN, 0};
      ::ppoll(&p, 1, &ts, nullptr);
    }
  }

  // Connects to the target; false if refused, unreachable or stopped.
  bool ConnectTarget() {
    const sockaddr_storage& addr = em->target_addr_;
    int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      spdlog::warn("linkem: socket: {}", std::strerror(errno));
      return false;
    }
    {
      std::lock_guard<std::mutex> l(fd_mu);
      if (Stopping()) {
        ::close(fd);
        return false;
      }
      target = vmm::UniqueFd(fd);
    }
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), em->target_addr_len_) != 0) {
      if (errno != EINPROGRESS) return false;
      pollfd p[2] = {{fd, POLLOUT, 0}, {em->stop_fd_.get(), POLLIN, 0}};
      while (::poll(p, 2, -1) < 0 && errno == EINTR) {
      }
      if (Stopping()) return false;
      int err = 0;
      socklen_t len = sizeof(err);
      if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        spdlog::debug("linkem: connect to target: {}", std::strerror(err));
        return false;
      }
    }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    SetNoDelay(fd);
    return true;
  }

  // Reads `src` into `dir`, stamping each segment with its release time.
  void ReadLoop(int src, Direction& dir) {
    const auto& o = em->options_;
    std::vector<char> buf(kReadSize);
    for (;;) {
      {
        std::unique_lock<std::mutex> l(dir.mu);
        for (;;) {
          if (Stopping() || dir.failed) {
            dir.reader_done = true;
            dir.cv.notify_all();
            return;
          }
          if (dir.queued_bytes >= o.max_inflight_bytes) {
            dir.cv.wait(l);
            continue;
          }
          if (dir.link != nullptr) {
            // The bottleneck queue is full: leave the bytes in the sender's
            // socket so TCP flow control slows it down.
            TimePoint admit = dir.link->AdmitAt();
            if (Clock::now() < admit) {
              dir.cv.wait_until(l, admit);
              continue;
            }
          }
          break;
        }
      }
      ssize_t n = ::recv(src, buf.data(), buf.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      TimePoint now = Clock::now();
      std::lock_guard<std::mutex> l(dir.mu);
      if (n <= 0) {
        // EOF, or a reset/error: either way a FIN after the data so far.
        Segment fin;
        fin.fin = true;
        fin.release = std::max(now + delay, dir.last_release);
        dir.queue.push_back(std::move(fin));
        dir.reader_done = true;
        dir.cv.notify_all();
        return;
      }
      size_t len = static_cast<size_t>(n);
      for (size_t off = 0; off < len; off += segment_bytes) {
        size_t part = std::min(segment_bytes, len - off);
        TimePoint left_link = dir.link != nullptr ? dir.link->Reserve(part, now) : now;
        Segment seg;
        seg.release = std::max(left_link + delay, dir.last_release);
        seg.data.assign(buf.data() + off, buf.data() + off + part);
        dir.last_release = seg.release;
        dir.queue.push_back(std::move(seg));
      }
      dir.queued_bytes += len;
      dir.cv.notify_all();
    }
  }

  // Delivers `dir` to `dst` at the release times. If `dst` is gone, marks the
  // direction failed and wakes its reader by shutting down reads on `src`.
  void WriteLoop(int dst, Direction& dir, int src) {
    std::unique_lock<std::mutex> l(dir.mu);
    std::vector<Segment> due;
    for (;;) {
      if (Stopping()) return;
      if (dir.queue.empty()) {
        if (dir.reader_done) return;
        dir.cv.wait(l);
        continue;
      }
      TimePoint now = Clock::now();
      if (now < dir.queue.front().release) {
        dir.cv.wait_until(l, dir.queue.front().release);
        continue;
      }
      due.clear();
      while (!dir.queue.empty() && dir.queue.front().release <= now) {
        due.push_back(std::move(dir.queue.front()));
        dir.queue.pop_front();
      }
      l.unlock();
      bool ok = true;
      bool fin = false;
      for (const Segment& seg : due) {
        if (seg.fin) {
          ::shutdown(dst, SHUT_WR);
          fin = true;
          break;
        }
        if (!SendAll(dst, seg.data.data(), seg.data.size())) {
          ok = false;
          break;
        }
        dir.delivered->fetch_add(seg.data.size());
      }
      l.lock();
      for (const Segment& seg : due) dir.queued_bytes -= seg.data.size();
      dir.cv.notify_all();  // room for the reader
      if (!ok) {
        dir.failed = true;
        dir.queue.clear();
        dir.queued_bytes = 0;
        ::shutdown(src, SHUT_RD);
        return;
      }
      if (fin) return;
    }
  }

  void Run() {
    std::thread read_client([this] { ReadLoop(client.get(), to_target); });
    // The SYN travels rtt/2 before the target sees the connection.
    bool connected = SleepUntil(accepted_at + delay) && ConnectTarget();
    if (connected) {
      std::thread read_target([this] { ReadLoop(target.get(), to_client); });
      std::thread write_client([this] { WriteLoop(client.get(), to_client, target.get()); });
      WriteLoop(target.get(), to_target, client.get());
      write_client.join();
      read_target.join();
    } else {
      if (!Stopping()) em->target_failures_.fetch_add(1);
      {
        std::lock_guard<std::mutex> l(to_target.mu);
        to_target.failed = true;
        to_target.queue.clear();
        to_target.queued_bytes = 0;
      }
      to_target.cv.notify_all();
      // The refusal travels rtt/2 back before the client sees the close.
      SleepUntil(Clock::now() + delay);
      ::shutdown(client.get(), SHUT_RDWR);
    }
    read_client.join();
    {
      std::lock_guard<std::mutex> l(fd_mu);
      client.Reset();
      target.Reset();
    }
    done.store(true);
  }

  // Unblocks every thread of this connection (Stop). Linger 0 makes the
  // final close send a reset: a FIN queued behind unsent data would never
  // reach a peer that has stopped reading, leaving it waiting forever.
  void Abort() {
    {
      std::lock_guard<std::mutex> l(fd_mu);
      linger hard{1, 0};
      for (vmm::UniqueFd* fd : {&client, &target}) {
        if (!fd->valid()) continue;
        ::setsockopt(fd->get(), SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
        ::shutdown(fd->get(), SHUT_RDWR);
      }
    }
    for (Direction* d : {&to_target, &to_client}) {
      { std::lock_guard<std::mutex> l(d->mu); }
      d->cv.notify_all();
    }
  }

  LinkEmulator* const em;
  nanoseconds delay{0};
  size_t segment_bytes = kReadSize;
  std::mutex fd_mu;  // guards closing client/target against Abort
  vmm::UniqueFd client;
  vmm::UniqueFd target;
  const TimePoint accepted_at;
  Direction to_target;
  Direction to_client;
  std::thread thread;
  std::atomic<bool> done{false};
};

LinkEmulator::LinkEmulator(LinkEmulatorOptions options) : options_(std::move(options)) {}

LinkEmulator::~LinkEmulator() { Stop(); }

Result<int> LinkEmulator::Start() {
  if (started_) return MakeError(ErrorCode::kFailedPrecondition, "link emulator already started");
  VMG_ASSIGN_OR_RETURN(Address target, Resolve(options_.target_host, options_.target_port, false));
  VMG_ASSIGN_OR_RETURN(Address listen, Resolve(options_.listen_host, options_.listen_port, true));

  vmm::UniqueFd fd(::socket(listen.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return SysError("socket");
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&listen.addr), listen.len) != 0) {
    return SysError("bind " + options_.listen_host + ":" + std::to_string(options_.listen_port));
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) return SysError("listen");
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &bound_len) != 0) {
    return SysError("getsockname");
  }
  int port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                         : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  vmm::UniqueFd stop_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd.valid()) return SysError("eventfd");

  target_addr_ = target.addr;
  target_addr_len_ = target.len;
  if (options_.rate_bps > 0) {
    link_to_target_ = std::make_unique<Link>(options_.rate_bps, options_.queue_bytes);
    link_to_client_ = std::make_unique<Link>(options_.rate_bps, options_.queue_bytes);
  }
  listen_fd_ = std::move(fd);
  stop_fd_ = std::move(stop_fd);
  started_ = true;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  spdlog::debug("linkem: listening on port {} -> {}:{}", port, options_.target_host,
                options_.target_port);
  return port;
}

void LinkEmulator::AcceptLoop() {
  for (;;) {
    pollfd p[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    int rc = ::poll(p, 2, 200);
    if (stopping_.load()) return;
    ReapFinished();
    if (rc <= 0 || !(p[0].revents & POLLIN)) continue;
    int c = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EMFILE || errno == ENFILE) {
        spdlog::warn("linkem: accept: {}", std::strerror(errno));
        ::poll(nullptr, 0, 100);  // do not spin while out of fds
      }
      continue;
    }
    vmm::UniqueFd client(c);
    TimePoint now = Clock::now();
    std::lock_guard<std::mutex> l(mu_);
    if (connections_.size() >= options_.max_connections) {
      rejected_.fetch_add(1);
      continue;  // closed by ~UniqueFd
    }
    SetNoDelay(client.get());
    connections_total_.fetch_add(1);
    auto conn = std::make_unique<Connection>(this, std::move(client), now);
    Connection* raw = conn.get();
    connections_.push_back(std::move(conn));
    raw->thread = std::thread([raw] { raw->Run(); });
  }
}

void LinkEmulator::ReapFinished() {
  std::list<std::unique_ptr<Connection>> finished;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      if ((*it)->done.load()) {
        finished.splice(finished.end(), connections_, it++);
      } else {
        ++it;
      }
    }
  }
  for (auto& c : finished) c->thread.join();
}

void LinkEmulator::Stop() {
  if (!started_ || stopping_.load()) return;
  stopping_.store(true);
  uint64_t one = 1;
  if (::write(stop_fd_.get(), &one, sizeof(one)) < 0) {
    spdlog::warn("linkem: eventfd write: {}", std::strerror(errno));
  }
  accept_thread_.join();
  listen_fd_.Reset();
  std::list<std::unique_ptr<Connection>> all;
  {
    std::lock_guard<std::mutex> l(mu_);
    all.swap(connections_);
  }
  for (auto& c : all) c->Abort();
  for (auto& c : all) c->thread.join();
}

LinkEmulatorStats LinkEmulator::stats() const {
  LinkEmulatorStats s;
  s.connections = connections_total_.load();
  s.rejected = rejected_.load();
  s.target_failures = target_failures_.load();
  s.bytes_to_target = bytes_to_target_.load();
  s.bytes_to_client = bytes_to_client_.load();
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& c : connections_) {
    if (!c->done.load()) ++s.active_connections;
  }
  return s;
}

}  // namespace vmgrid::linkem
