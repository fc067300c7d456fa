// LinkEmulator over loopback: integrity, half-close, refusal, Stop, and the
// two timing lower bounds that follow from the emulator's own delays (a
// request/response takes at least the RTT; N bytes take at least N*8/rate).
// No upper bounds on time: a loaded machine may be arbitrarily slow.
#include "linkem/link_emulator.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace vmgrid::linkem {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
using vmm::UniqueFd;

UniqueFd Listen(uint16_t* port, bool do_listen = true) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  if (do_listen) {
    EXPECT_EQ(::listen(fd.get(), SOMAXCONN), 0);
  }
  socklen_t len = sizeof(a);
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

UniqueFd Connect(int port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0) << strerror(errno);
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

bool WriteAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// Reads until EOF (or error); the bytes read.
std::string ReadToEof(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

std::string ReadExactly(int fd, size_t want) {
  std::string out;
  char buf[65536];
  while (out.size() < want) {
    ssize_t n = ::recv(fd, buf, std::min(sizeof(buf), want - out.size()), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&s[i], &v, std::min<size_t>(8, n - i));
  }
  return s;
}

// A loopback TCP server running `handler` on each accepted connection in its
// own thread. Handlers must return once their peer closes.
class TestServer {
 public:
  explicit TestServer(std::function<void(int)> handler) : handler_(std::move(handler)) {
    listen_ = Listen(&port_);
    accept_thread_ = std::thread([this] {
      while (!stop_.load()) {
        pollfd p{listen_.get(), POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        int c = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        std::lock_guard<std::mutex> l(mu_);
        handlers_.emplace_back([this, c] {
          UniqueFd fd(c);
          handler_(fd.get());
        });
      }
    });
  }
  ~TestServer() {
    stop_.store(true);
    accept_thread_.join();
    for (auto& t : handlers_) t.join();
  }
  uint16_t port() const { return port_; }

 private:
  std::function<void(int)> handler_;
  UniqueFd listen_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread accept_thread_;
  std::mutex mu_;
  std::vector<std::thread> handlers_;
};

void Echo(int fd) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (!WriteAll(fd, std::string(buf, static_cast<size_t>(n)))) return;
  }
  ::shutdown(fd, SHUT_WR);
}

LinkEmulatorOptions Opts(uint16_t target_port, milliseconds rtt, uint64_t rate_bps) {
  LinkEmulatorOptions o;
  o.target_port = target_port;
  o.rtt = rtt;
  o.rate_bps = rate_bps;
  return o;
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

TEST(LinkEmulatorTest, LargePayloadIntactBothDirections) {
  TestServer server(Echo);
  LinkEmulator em(Opts(server.port(), milliseconds(20), 200'000'000));
  auto port = em.Start();
  ASSERT_TRUE(port.ok()) << port.error().message;

  const std::string payload = RandomBytes(6 << 20, 1);
  UniqueFd c = Connect(*port);
  std::thread writer([&] {
    EXPECT_TRUE(WriteAll(c.get(), payload));
    ::shutdown(c.get(), SHUT_WR);
  });
  std::string echoed = ReadToEof(c.get());
  writer.join();
  ASSERT_EQ(echoed.size(), payload.size());
  EXPECT_TRUE(echoed == payload);
  em.Stop();
  auto s = em.stats();
  EXPECT_EQ(s.connections, 1u);
  EXPECT_EQ(s.bytes_to_target, payload.size());
  EXPECT_EQ(s.bytes_to_client, payload.size());
}

TEST(LinkEmulatorTest, DifferentPayloadsEachWaySimultaneously) {
  const std::string up = RandomBytes(3 << 20, 2);
  const std::string down = RandomBytes(5 << 20, 3);
  std::promise<std::string> server_got;
  TestServer server([&](int fd) {
    std::thread w([&] {
      EXPECT_TRUE(WriteAll(fd, down));
      ::shutdown(fd, SHUT_WR);
    });
    server_got.set_value(ReadToEof(fd));
    w.join();
  });
  LinkEmulator em(Opts(server.port(), milliseconds(10), 0));
  auto port = em.Start();
  ASSERT_TRUE(port.ok());
  UniqueFd c = Connect(*port);
  std::thread w([&] {
    EXPECT_TRUE(WriteAll(c.get(), up));
    ::shutdown(c.get(), SHUT_WR);
  });
  std::string got_down = ReadToEof(c.get());
  w.join();
  EXPECT_TRUE(got_down == down);
  EXPECT_TRUE(server_got.get_future().get() == up);
}

TEST(LinkEmulatorTest, ManyConcurrentConnections) {
  TestServer server(Echo);
  LinkEmulatorOptions o = Opts(server.port(), milliseconds(10), 400'000'000);
  LinkEmulator em(o);
  auto port = em.Start();
  ASSERT_TRUE(port.ok());
  constexpr int kClients = 40;
  std::vector<std::thread> clients;
  std::atomic<int> good{0};
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      const std::string payload = RandomBytes(100'000 + i * 1000, 100 + i);
      UniqueFd c = Connect(*port);
      std::thread w([&] {
        WriteAll(c.get(), payload);
        ::shutdown(c.get(), SHUT_WR);
      });
      std::string back = ReadToEof(c.get());
      w.join();
      if (back == payload) good.fetch_add(1);
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(good.load(), kClients);
  EXPECT_EQ(em.stats().connections, static_cast<uint64_t>(kClients));
}

TEST(LinkEmulatorTest, ClientHalfCloseReachesTargetAfterData) {
  std::promise<std::string> server_got;
  TestServer server([&](int fd) {
    server_got.set_value(ReadToEof(fd));  // returns only on the FIN
    WriteAll(fd, "bye");
    ::shutdown(fd, SHUT_WR);
  });
  LinkEmulator em(Opts(server.port(), milliseconds(30), 1'000'000));
  auto port = em.Start();
  ASSERT_TRUE(port.ok());
  UniqueFd c = Connect(*port);
  ASSERT_TRUE(WriteAll(c.get(), "hello"));
  ::shutdown(c.get(), SHUT_WR);
  EXPECT_EQ(ReadToEof(c.get()), "bye");
  EXPECT_EQ(server_got.get_future().get(), "hello");
}

TEST(LinkEmulatorTest, TargetHalfCloseReachesClientAndClientCanStillSend) {
  std::promise<std::string> server_got;
  TestServer server([&](int fd) {
    WriteAll(fd, "banner");
    ::shutdown(fd, SHUT_WR);
    server_got.set_value(ReadToEof(fd));
  });
  LinkEmulator em(Opts(server.port(), milliseconds(30), 0));
  auto port = em.Start();
  ASSERT_TRUE(port.ok());
  UniqueFd c = Connect(*port);
  EXPECT_EQ(ReadToEof(c.get()), "banner");
  ASSERT_TRUE(WriteAll(c.get(), "after the server's FIN"));
  ::shutdown(c.get(), SHUT_WR);
  EXPECT_EQ(server_got.get_future().get(), "after the server's FIN");
}

TEST(LinkEmulatorTest, TargetRefusingClosesClient) {
  uint16_t dead_port = 0;
  UniqueFd bound_not_listening = Listen(&dead_port, /*do_listen=*/false);  // refuses
  LinkEmulator em(Opts(dead_port, milliseconds(20), 0));
  auto port = em.Start();
  ASSERT_TRUE(port.ok());
  UniqueFd c = Connect(*port);
  WriteAll(c.get(), "anyone there?");
  char b;
  ssize_t n;
  do {
    n = ::recv(c.get(), &b, 1, 0);
  } while (n < 0 && errno == EINTR);
  EXPECT_LE(n, 0);  // EOF or reset
  for (int i = 0; i < 200 && em.stats().target_failures == 0; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_EQ(em.stats().target_failures, 1u);
  EXPECT_EQ(em.stats().bytes_to_target, 0u);
}

TEST(LinkEmulatorTest, StopWithOpenConnectionsReturnsAndClosesClients) {
  // The target accepts but never reads, so the client's bulk data sits in
  // the emulator and in socket buffers; other clients are idle.
  TestServer server([](int fd) {
    pollfd p{fd, POLLRDHUP, 0};
    while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
  });
  LinkEmulator em(Opts(server.port(), milliseconds(50), 10'000'000));
  auto port = em.Start();
  ASSERT_TRUE(port.ok());
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 5; ++i) idle.push_back(Connect(*port));
  UniqueFd bulk = Connect(*port);
  std::thread writer([&] { WriteAll(bulk.get(), RandomBytes(32 << 20, 4)); });
  while (em.stats().active_connections < 6) std::this_thread::sleep_for(milliseconds(10));
  std::this_thread::sleep_for(milliseconds(200));  // let the data pile up

  // Hang detector, not a timing assertion: Stop must not wait for peers.
  auto stopped = std::async(std::launch::async, [&] { em.Stop(); });
  if (stopped.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    ADD_FAILURE() << "Stop() hung";
    std::abort();
  }
  for (auto& c : idle) EXPECT_TRUE(ReadToEof(c.get()).empty());
  ::shutdown(bulk.get(), SHUT_RDWR);  // the writer may be blocked on a full buffer
  writer.join();
  EXPECT_EQ(em.stats().active_connections, 0u);
}

TEST(LinkEmulatorTest, MaxConnectionsRejectsExtraClients) {
  TestServer server(Echo);
  LinkEmulatorOptions o = Opts(server.port(), milliseconds(0), 0);
  o.max_connections = 1;
  LinkEmulator em(o);
  auto port = em.Start();
  ASSERT_TRUE(port.ok());
  UniqueFd first = Connect(*port);
  ASSERT_TRUE(WriteAll(first.get(), "x"));
  EXPECT_EQ(ReadExactly(first.get(), 1), "x");  // surely accepted by now
  UniqueFd second = Connect(*port);
  EXPECT_TRUE(ReadToEof(second.get()).empty());
  EXPECT_EQ(em.stats().rejected, 1u);
}

TEST(LinkEmulatorTest, StartTwiceFailsAndBadHostIsRejected) {
  LinkEmulator em(Opts(1, milliseconds(0), 0));
  ASSERT_TRUE(em.Start().ok());
  auto again = em.Start();
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kFailedPrecondition);

  LinkEmulatorOptions o = Opts(1, milliseconds(0), 0);
  o.target_host = "no such host.invalid";
  LinkEmulator bad(o);
  auto r = bad.Start();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
}

// Lower bounds only: they follow from the emulator's own sleeps.
TEST(LinkEmulatorTest, RoundTripTakesAtLeastTheRtt) {
  TestServer server(Echo);
  LinkEmulator em(Opts(server.port(), milliseconds(100), 0));
  auto port = em.Start();
  ASSERT_TRUE(port.ok());
  UniqueFd c = Connect(*port);
  for (int i = 0; i < 3; ++i) {
    auto t0 = Clock::now();
    ASSERT_TRUE(WriteAll(c.get(), "ping"));
    ASSERT_EQ(ReadExactly(c.get(), 4), "ping");
    EXPECT_GE(Clock::now() - t0, milliseconds(100));
  }
}

TEST(LinkEmulatorTest, TransferTakesAtLeastSizeOverRate) {
  constexpr size_t kBytes = 1 << 20;
  TestServer server([](int fd) {
    if (ReadExactly(fd, kBytes).size() == kBytes) WriteAll(fd, "k");
    ReadToEof(fd);
  });
  LinkEmulator em(Opts(server.port(), milliseconds(0), 8'000'000));
  auto port = em.Start();
  ASSERT_TRUE(port.ok());
  UniqueFd c = Connect(*port);
  auto t0 = Clock::now();
  std::thread w([&] { WriteAll(c.get(), RandomBytes(kBytes, 5)); });
  EXPECT_EQ(ReadExactly(c.get(), 1), "k");
  double secs = Seconds(Clock::now() - t0);
  w.join();
  EXPECT_GE(secs, kBytes * 8 / 8e6);  // 1.048 s
}

TEST(LinkEmulatorTest, SharedLinkCapsTheSumOfConnections) {
  constexpr size_t kBytes = 512 << 10;
  TestServer server([](int fd) {
    if (ReadExactly(fd, kBytes).size() == kBytes) WriteAll(fd, "k");
    ReadToEof(fd);
  });
  LinkEmulator em(Opts(server.port(), milliseconds(0), 8'000'000));  // shared by default
  auto port = em.Start();
  ASSERT_TRUE(port.ok());
  auto t0 = Clock::now();
  std::vector<std::thread> clients;
  for (int i = 0; i < 2; ++i) {
    clients.emplace_back([&, i] {
      UniqueFd c = Connect(*port);
      std::thread w([&] { WriteAll(c.get(), RandomBytes(kBytes, 6 + i)); });
      EXPECT_EQ(ReadExactly(c.get(), 1), "k");
      w.join();
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_GE(Seconds(Clock::now() - t0), 2 * kBytes * 8 / 8e6);  // 1.048 s for both
}

}  // namespace
}  // namespace vmgrid::linkem
