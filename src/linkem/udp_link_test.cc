// UdpLink on real loopback sockets: who sees whom, the added delay (a
// lower bound only: the emulator cannot deliver early, however loaded the
// machine), and drop-tail at a full bottleneck.
#include "linkem/udp_link.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <string>
#include <thread>

namespace vmgrid {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Endpoint {
  vmm::UniqueFd fd;
  uint16_t port = 0;
  Endpoint() : fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    port = ntohs(a.sin_port);
  }
  void SendTo(uint16_t to, const std::string& data) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(to);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(
        ::sendto(fd.get(), data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a),
        static_cast<ssize_t>(data.size()));
  }
  // The next datagram within `wait` and the port it came from ("" if none).
  std::pair<std::string, uint16_t> Receive(std::chrono::milliseconds wait) {
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) return {"", 0};
    char buf[2048];
    sockaddr_in from{};
    socklen_t len = sizeof from;
    ssize_t n = ::recvfrom(fd.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
    if (n < 0) return {"", 0};
    return {std::string(buf, static_cast<size_t>(n)), ntohs(from.sin_port)};
  }
};

TEST(UdpLinkTest, EachSideSeesTheOtherAtItsFacingPortAfterHalfTheRtt) {
  Endpoint a, b;
  auto link = UdpLink::Start({.a_port = a.port, .b_port = b.port, .rtt = 40ms});
  ASSERT_TRUE(link.ok()) << link.error().message;
  const auto t0 = Clock::now();
  a.SendTo((*link)->b_facing_port(), "to b");
  auto [got, from] = b.Receive(5000ms);
  EXPECT_GE(Clock::now() - t0, 20ms);
  EXPECT_EQ(got, "to b");
  EXPECT_EQ(from, (*link)->a_facing_port()) << "B must see A where it was told A is";
  b.SendTo(from, "to a");
  auto [back, via] = a.Receive(5000ms);
  EXPECT_EQ(back, "to a");
  EXPECT_EQ(via, (*link)->b_facing_port());
  // The link counts a datagram after sendto() returns, so the receiver can
  // see it a moment before the count moves: wait for the count, briefly.
  for (auto until = Clock::now() + 2s; (*link)->stats().delivered < 2 && Clock::now() < until;)
    std::this_thread::sleep_for(1ms);
  EXPECT_EQ((*link)->stats().delivered, 2u);
  EXPECT_EQ((*link)->stats().dropped, 0u);
}

TEST(UdpLinkTest, AFullBottleneckDropsTheTailAndTheRestArrivesInOrder) {
  Endpoint a, b;
  // 1 Mbit/s with a 10 KB buffer: 100 datagrams of 1000 bytes sent at once
  // cannot all wait.
  auto link = UdpLink::Start({.a_port = a.port,
                              .b_port = b.port,
                              .rtt = 0ms,
                              .rate_bps = 1'000'000,
                              .queue_bytes = 10'000});
  ASSERT_TRUE(link.ok()) << link.error().message;
  for (int i = 0; i < 100; ++i) {
    std::string d(1000, 'x');
    std::snprintf(d.data(), 8, "%07d", i);
    a.SendTo((*link)->b_facing_port(), d);
  }
  int received = 0, last = -1;
  bool in_order = true;
  for (;;) {
    auto [got, from] = b.Receive(2000ms);
    if (got.empty()) break;
    const int seq = std::stoi(got.substr(0, 7));
    in_order = in_order && seq > last;
    last = seq;
    ++received;
  }
  EXPECT_TRUE(in_order);
  EXPECT_GT(received, 0);
  EXPECT_LT(received, 100);
  EXPECT_EQ((*link)->stats().dropped + static_cast<uint64_t>(received), 100u);
}

TEST(UdpLinkTest, NeedsBothPorts) {
  EXPECT_EQ(UdpLink::Start({.a_port = 0, .b_port = 1}).error().code, ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace vmgrid
