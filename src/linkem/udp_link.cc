#include "linkem/udp_link.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

namespace vmgrid {

namespace {

using Clock = std::chrono::steady_clock;

Error Errno(const std::string& what) {
  return MakeError(ErrorCode::kInternal, what + ": " + std::strerror(errno));
}

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

Result<vmm::UniqueFd> BoundSocket(uint16_t* port) {
  vmm::UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return Errno("socket");
  int size = 4 << 20;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  sockaddr_in a = Loopback(0);
  socklen_t len = sizeof a;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return Errno("bind");
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
    return Errno("getsockname");
  *port = ntohs(a.sin_port);
  return fd;
}

// One direction of the link.
struct Direction {
  struct Datagram {
    Clock::time_point due;
    std::string bytes;
  };
  std::deque<Datagram> queue;   // in order of arrival, so of due time
  Clock::time_point free_at{};  // when the bottleneck finishes the last datagram
};

}  // namespace

Result<std::unique_ptr<UdpLink>> UdpLink::Start(const UdpLinkOptions& options) {
  if (options.a_port == 0 || options.b_port == 0)
    return MakeError(ErrorCode::kInvalidArgument, "UdpLink needs both endpoints' ports");
  std::unique_ptr<UdpLink> l(new UdpLink());
  l->options_ = options;
  VMG_ASSIGN_OR_RETURN(l->b_facing_, BoundSocket(&l->b_facing_port_));
  VMG_ASSIGN_OR_RETURN(l->a_facing_, BoundSocket(&l->a_facing_port_));
  l->wake_ = vmm::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!l->wake_.valid()) return Errno("eventfd");
  l->thread_ = std::thread([p = l.get()] { p->Run(); });
  return l;
}

UdpLink::~UdpLink() { Stop(); }

void UdpLink::Stop() {
  if (stop_.exchange(true)) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
}

UdpLinkStats UdpLink::stats() const {
  return {delivered_.load(), delivered_bytes_.load(), dropped_.load()};
}

void UdpLink::Run() {
  // dir[0]: A -> B (arrives at b_facing, leaves a_facing to B);
  // dir[1]: B -> A (arrives at a_facing, leaves b_facing to A).
  Direction dir[2];
  const int in_fd[2] = {b_facing_.get(), a_facing_.get()};
  const int out_fd[2] = {a_facing_.get(), b_facing_.get()};
  const sockaddr_in to[2] = {Loopback(options_.b_port), Loopback(options_.a_port)};
  const auto half_rtt = options_.rtt / 2;
  std::vector<char> buf(65536);
  while (!stop_.load()) {
    auto now = Clock::now();
    // Deliver what is due.
    for (int d = 0; d < 2; ++d) {
      Direction& q = dir[d];
      while (!q.queue.empty() && q.queue.front().due <= now) {
        const std::string& b = q.queue.front().bytes;
        ssize_t n = ::sendto(out_fd[d], b.data(), b.size(), 0,
                             reinterpret_cast<const sockaddr*>(&to[d]), sizeof to[d]);
        if (n >= 0) {
          delivered_.fetch_add(1);
          delivered_bytes_.fetch_add(b.size());
        } else {
          dropped_.fetch_add(1);  // the receiver's socket is full or gone
        }
        q.queue.pop_front();
      }
    }
    int timeout_ms = 100;
    for (const Direction& q : dir)
      if (!q.queue.empty()) {
        auto wait = std::chrono::ceil<std::chrono::milliseconds>(q.queue.front().due - now);
        timeout_ms = std::min<int>(timeout_ms, std::max<int>(0, static_cast<int>(wait.count())));
      }
    pollfd fds[3] = {{in_fd[0], POLLIN, 0}, {in_fd[1], POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    if (::poll(fds, 3, timeout_ms) < 0 && errno != EINTR) return;
    now = Clock::now();
    for (int d = 0; d < 2; ++d) {
      if (!(fds[d].revents & POLLIN)) continue;
      Direction& q = dir[d];
      for (int i = 0; i < 256; ++i) {  // a batch; then deliveries get their turn
        ssize_t n = ::recv(in_fd[d], buf.data(), buf.size(), 0);
        if (n < 0) break;
        const size_t size = static_cast<size_t>(n);
        // Bytes still in the bottleneck when this one arrives.
        if (q.free_at > now && options_.rate_bps > 0) {
          const double backlog_s = std::chrono::duration<double>(q.free_at - now).count();
          if (backlog_s * static_cast<double>(options_.rate_bps) / 8 > options_.queue_bytes) {
            dropped_.fetch_add(1);
            continue;
          }
        }
        Clock::time_point start = std::max(now, q.free_at);
        if (options_.rate_bps > 0)
          q.free_at =
              start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                          static_cast<double>(size) * 8 / options_.rate_bps));
        else
          q.free_at = start;
        q.queue.push_back({q.free_at + half_rtt, std::string(buf.data(), size)});
      }
    }
  }
}

}  // namespace vmgrid
