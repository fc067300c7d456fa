// linkem_bench: measures what a LinkEmulator actually delivers on this
// machine (docs/linkem.md): small request/response round trips and bulk
// transfers each way, through the emulator and directly over loopback.
//
//   linkem_bench [--rtt-ms 40] [--rate-mbit 100] [--bulk-mb 50] [--streams 1]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "linkem/link_emulator.h"

namespace {

using Clock = std::chrono::steady_clock;
using vmgrid::vmm::UniqueFd;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

void NoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

bool SendAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool RecvAll(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Protocol of the bench server: a 9-byte request: op ('E' echo 64 bytes,
// 'U' upload N bytes then 1-byte ack, 'D' download N bytes) + uint64 N.
void Serve(int fd) {
  NoDelay(fd);
  std::vector<char> buf(1 << 20);
  char req[9];
  while (RecvAll(fd, req, sizeof(req))) {
    uint64_t n = 0;
    std::memcpy(&n, req + 1, 8);
    if (req[0] == 'E') {
      if (!RecvAll(fd, buf.data(), 64) || !SendAll(fd, buf.data(), 64)) return;
    } else if (req[0] == 'U') {
      for (uint64_t left = n; left > 0;) {
        size_t part = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
        if (!RecvAll(fd, buf.data(), part)) return;
        left -= part;
      }
      if (!SendAll(fd, "k", 1)) return;
    } else if (req[0] == 'D') {
      for (uint64_t left = n; left > 0;) {
        size_t part = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
        if (!SendAll(fd, buf.data(), part)) return;
        left -= part;
      }
    } else {
      return;
    }
  }
}

UniqueFd Connect(int port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    std::perror("connect");
    std::exit(1);
  }
  NoDelay(fd.get());
  return fd;
}

bool Request(int fd, char op, uint64_t n) {
  char req[9];
  req[0] = op;
  std::memcpy(req + 1, &n, 8);
  return SendAll(fd, req, sizeof(req));
}

struct Rtt {
  double connect_and_first = 0, min = 0, median = 0, max = 0;
};

Rtt MeasureRtt(int port, int samples) {
  Rtt r;
  char msg[64] = {};
  auto t0 = Clock::now();
  UniqueFd c = Connect(port);
  std::vector<double> ms;
  for (int i = 0; i <= samples; ++i) {
    auto s = Clock::now();
    if (!Request(c.get(), 'E', 0) || !SendAll(c.get(), msg, 64) || !RecvAll(c.get(), msg, 64)) {
      std::fprintf(stderr, "echo failed\n");
      std::exit(1);
    }
    if (i == 0) {
      r.connect_and_first = Ms(Clock::now() - t0);
    } else {
      ms.push_back(Ms(Clock::now() - s));
    }
  }
  std::sort(ms.begin(), ms.end());
  r.min = ms.front();
  r.median = ms[ms.size() / 2];
  r.max = ms.back();
  return r;
}

// Bulk transfer over `streams` parallel connections of bytes/streams each;
// returns seconds from the first request until the last byte (download) or
// the last ack (upload) arrived.
double Bulk(int port, char op, uint64_t bytes, int streams) {
  std::vector<UniqueFd> conns;
  for (int i = 0; i < streams; ++i) conns.push_back(Connect(port));
  uint64_t each = bytes / static_cast<uint64_t>(streams);
  std::atomic<bool> ok{true};
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (auto& c : conns) {
    threads.emplace_back([&, fd = c.get()] {
      std::vector<char> buf(1 << 20);
      if (!Request(fd, op, each)) ok = false;
      for (uint64_t left = each; left > 0 && ok;) {
        size_t part = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
        bool r = op == 'U' ? SendAll(fd, buf.data(), part) : RecvAll(fd, buf.data(), part);
        if (!r) ok = false;
        left -= part;
      }
      if (op == 'U' && !RecvAll(fd, buf.data(), 1)) ok = false;
    });
  }
  for (auto& t : threads) t.join();
  if (!ok) {
    std::fprintf(stderr, "bulk transfer failed\n");
    std::exit(1);
  }
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void Report(const char* name, int port, uint64_t bytes, int streams) {
  Rtt r = MeasureRtt(port, 20);
  double up = Bulk(port, 'U', bytes, streams);
  double down = Bulk(port, 'D', bytes, streams);
  std::printf("%-22s %9.2f %8.2f %8.2f %8.2f %9.2f %9.1f %9.2f %9.1f\n", name, r.connect_and_first,
              r.min, r.median, r.max, up, bytes * 8 / up / 1e6, down, bytes * 8 / down / 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  double rtt_ms = 40, rate_mbit = 100, bulk_mb = 50;
  int streams = 1;
  bool skip_direct = false;
  CLI::App app{"linkem_bench: round trips and bulk throughput through vmgrid-linkem"};
  app.add_option("--rtt-ms", rtt_ms)->capture_default_str();
  app.add_option("--rate-mbit", rate_mbit)->capture_default_str();
  app.add_option("--bulk-mb", bulk_mb, "Bytes per bulk transfer (MB = 10^6)")
      ->capture_default_str();
  app.add_option("--streams", streams, "Parallel connections per bulk transfer")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_flag("--skip-direct", skip_direct, "Do not measure plain loopback");
  CLI11_PARSE(app, argc, argv);

  UniqueFd lfd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(lfd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::listen(lfd.get(), SOMAXCONN) != 0 ||
      ::getsockname(lfd.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::perror("server socket");
    return 1;
  }
  int server_port = ntohs(a.sin_port);
  std::thread([fd = lfd.get()] {
    for (;;) {
      int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      std::thread([c] {
        UniqueFd owned(c);
        Serve(c);
      }).detach();
    }
  }).detach();

  vmgrid::linkem::LinkEmulatorOptions o;
  o.target_port = static_cast<uint16_t>(server_port);
  o.rtt = std::chrono::microseconds(std::llround(rtt_ms * 1000));
  o.rate_bps = static_cast<uint64_t>(std::llround(rate_mbit * 1e6));
  vmgrid::linkem::LinkEmulator em(o);
  auto port = em.Start();
  if (!port.ok()) {
    std::fprintf(stderr, "%s\n", port.error().message.c_str());
    return 1;
  }
  uint64_t bytes = static_cast<uint64_t>(bulk_mb * 1e6);
  std::printf("rtt %.1f ms, rate %.1f Mbit/s, bulk %.0f MB over %d stream(s); times in ms / s\n",
              rtt_ms, rate_mbit, bulk_mb, streams);
  std::printf("%-22s %9s %8s %8s %8s %9s %9s %9s %9s\n", "path", "conn+1st", "rtt_min", "rtt_med",
              "rtt_max", "up_s", "up_Mbit", "down_s", "down_Mbit");
  if (!skip_direct) Report("loopback (direct)", server_port, bytes, streams);
  Report("linkem", *port, bytes, streams);
  em.Stop();
  std::fflush(stdout);
  std::_Exit(0);  // server threads are detached and blocked in accept/recv
}
