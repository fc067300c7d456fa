// The egress gateway (libslirp behind .1) on a real SwitchHost: a test
// socket plays the VM (QEMU's role, as in switch_test.cc) and sends frames
// built by hand, including ones no well-behaved guest kernel would send
// (a SYN to 127.0.0.1). Only loopback and this host's own addresses are
// touched. Absence is checked after the evidence that the frame was handled:
// the gateway's drop counter, or slirp's answer to the guest.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <thread>

#include "vnet/egress_gateway.h"
#include "vnet/switch_host.h"
#include "vnet/test_frames.h"

namespace vmgrid::vnet {
namespace {

using testing::ArpRequest;
using testing::Ip;
using testing::Mac;
using testing::UdpFrame;
using Bytes = std::vector<uint8_t>;

const Ipv4Addr kSubnet = Ip(10, 20, 0, 0);
const Ipv4Addr kGateway = Ip(10, 20, 0, 1);
const Ipv4Addr kVmIp = Ip(10, 20, 0, 10);
constexpr uint32_t kNet = 7;

// IPv4 header into f at offset 14 (Ethernet already there); returns the
// header's start.
uint8_t* Ipv4Header(Bytes& f, const MacAddr& src_mac, const MacAddr& dst_mac, Ipv4Addr src,
                    Ipv4Addr dst, uint8_t proto, size_t payload_len) {
  f.assign(kEthernetHeaderLen + 20 + payload_len, 0);
  std::memcpy(&f[0], dst_mac.data(), 6);
  std::memcpy(&f[6], src_mac.data(), 6);
  Store16(&f[12], kEtherTypeIpv4);
  uint8_t* ip = &f[kEthernetHeaderLen];
  ip[0] = 0x45;
  Store16(ip + 2, static_cast<uint16_t>(20 + payload_len));
  Store16(ip + 6, 0x4000);
  ip[8] = 64;
  ip[9] = proto;
  Store32(ip + 12, src);
  Store32(ip + 16, dst);
  Store16(ip + 10, ChecksumFinish(ChecksumAdd(0, {ip, 20})));
  return ip;
}

// A TCP SYN with a correct checksum (slirp checks it).
Bytes TcpSyn(const MacAddr& src_mac, const MacAddr& dst_mac, Ipv4Addr src, Ipv4Addr dst,
             uint16_t sport, uint16_t dport) {
  Bytes f;
  uint8_t* ip = Ipv4Header(f, src_mac, dst_mac, src, dst, 6, 20);
  uint8_t* tcp = ip + 20;
  Store16(tcp, sport);
  Store16(tcp + 2, dport);
  Store32(tcp + 4, 1000);  // seq
  tcp[12] = 5 << 4;        // data offset
  tcp[13] = 0x02;          // SYN
  Store16(tcp + 14, 65535);
  uint32_t sum = ChecksumAdd(0, {ip + 12, 8});
  sum += 6;
  sum += 20;
  sum = ChecksumAdd(sum, {tcp, 20});
  Store16(tcp + 16, ChecksumFinish(sum));
  return f;
}

Bytes IcmpEcho(const MacAddr& src_mac, const MacAddr& dst_mac, Ipv4Addr src, Ipv4Addr dst) {
  Bytes f;
  uint8_t* ip = Ipv4Header(f, src_mac, dst_mac, src, dst, kIpProtoIcmp, 16);
  uint8_t* icmp = ip + 20;
  icmp[0] = 8;
  Store16(icmp + 4, 0x1234);  // id
  Store16(icmp + 6, 1);       // seq
  std::memcpy(icmp + 8, "vmgrid!!", 8);
  Store16(icmp + 2, ChecksumFinish(ChecksumAdd(0, {icmp, 16})));
  return f;
}

EgressScope Scope() {
  EgressScope s;
  s.subnet = kSubnet;
  s.netmask = 0xffffff00;
  s.gateway_ip = kGateway;
  s.host_addresses = {Ip(10, 0, 0, 5), Ip(192, 168, 1, 20)};
  return s;
}

EgressDrop Verdict(Ipv4Addr dst) {
  Bytes f = UdpFrame(Mac(1), EgressGatewayMac(kGateway), kVmIp, dst, 1000, 53, {1, 2, 3});
  FrameParse p = ParseFrame(f);
  EXPECT_TRUE(p.ok());
  return CheckToOutside(p.frame, Scope());
}

TEST(EgressPolicyTest, TheHostItselfAndSpecialAddressesAreNotOutside) {
  EXPECT_EQ(Verdict(Ip(127, 0, 0, 1)), EgressDrop::kHostLoopback);
  EXPECT_EQ(Verdict(Ip(127, 9, 8, 7)), EgressDrop::kHostLoopback);
  EXPECT_EQ(Verdict(Ip(0, 0, 0, 0)), EgressDrop::kHostLocal);
  EXPECT_EQ(Verdict(Ip(10, 0, 0, 5)), EgressDrop::kHostLocal);  // an interface's address
  EXPECT_EQ(Verdict(Ip(192, 168, 1, 20)), EgressDrop::kHostLocal);
  EXPECT_EQ(Verdict(Ip(169, 254, 169, 254)), EgressDrop::kLinkLocal);
  EXPECT_EQ(Verdict(Ip(224, 0, 0, 251)), EgressDrop::kMulticast);
  EXPECT_EQ(Verdict(Ip(255, 255, 255, 255)), EgressDrop::kMulticast);
  EXPECT_EQ(Verdict(Ip(240, 1, 2, 3)), EgressDrop::kMulticast);
  EXPECT_EQ(Verdict(Ip(10, 20, 0, 2)), EgressDrop::kThisNetwork);  // the switch: not via NAT
  EXPECT_EQ(Verdict(Ip(10, 20, 0, 11)), EgressDrop::kThisNetwork);
  EXPECT_EQ(Verdict(Ip(10, 20, 0, 255)), EgressDrop::kThisNetwork);
}

TEST(EgressPolicyTest, OutsideAndTheGatewayPass) {
  EXPECT_EQ(Verdict(Ip(10, 213, 0, 2)), EgressDrop::kNone);
  EXPECT_EQ(Verdict(Ip(10, 0, 0, 6)), EgressDrop::kNone);  // a neighbour of the host, not the host
  EXPECT_EQ(Verdict(Ip(9, 9, 9, 9)), EgressDrop::kNone);
  EXPECT_EQ(Verdict(kGateway), EgressDrop::kNone);  // slirp refuses new connections to it
  // ARP: only replies (the switch's answers to slirp's requests).
  Bytes arp = ArpRequest(Mac(1), kVmIp, kGateway);
  FrameParse p = ParseFrame(arp);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(CheckToOutside(p.frame, Scope()), EgressDrop::kMalformed);
  arp = testing::ArpFrame(2, Mac(1), EgressGatewayMac(kGateway), Mac(1), kVmIp, kGateway);
  p = ParseFrame(arp);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(CheckToOutside(p.frame, Scope()), EgressDrop::kNone);
}

TEST(EgressPolicyTest, OnlySegmentsOfConnectionsStartNoFlow) {
  auto starts = [](const Bytes& b) {
    FrameParse p = ParseFrame(b);
    EXPECT_TRUE(p.ok());
    return StartsNewFlow(p.frame);
  };
  const MacAddr gw = EgressGatewayMac(kGateway);
  Bytes syn = TcpSyn(Mac(1), gw, kVmIp, Ip(9, 9, 9, 9), 1, 2);
  EXPECT_TRUE(starts(syn));
  syn[kEthernetHeaderLen + 20 + 13] = 0x12;  // SYN+ACK: answers a forward's connection
  EXPECT_FALSE(starts(syn));
  syn[kEthernetHeaderLen + 20 + 13] = 0x10;  // ACK
  EXPECT_FALSE(starts(syn));
  EXPECT_TRUE(starts(UdpFrame(Mac(1), gw, kVmIp, Ip(9, 9, 9, 9), 1, 2, {})));
  EXPECT_TRUE(starts(IcmpEcho(Mac(1), gw, kVmIp, Ip(9, 9, 9, 9))));
}

TEST(EgressPolicyTest, GatewayMacIsSlirps) {
  EXPECT_EQ(FormatMac(EgressGatewayMac(Ip(10, 20, 0, 1))), "52:55:0a:14:00:01");
}

TEST(EgressPolicyTest, LocalAddressesIncludeLoopback) {
  auto a = LocalIpv4Addresses();
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_TRUE(std::binary_search(a->begin(), a->end(), Ip(127, 0, 0, 1)));
}

bool WaitFor(const std::function<bool()>& done) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

NetworkConfig EgressNet(uint32_t id = kNet) {
  NetworkConfig c;
  c.id = id;
  c.name = "lab";
  c.subnet = kSubnet;
  c.prefix_len = 24;
  c.egress = true;
  return c;
}

vmm::UniqueFd PairEnd() {
  int pair[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pair), 0);
  ::close(pair[0]);
  return vmm::UniqueFd(pair[1]);
}

TEST(EgressGatewayConfigTest, StartRefusesBadConfigs) {
  NetworkConfig c = EgressNet();
  c.egress = false;
  auto r = EgressGateway::Start(c, PairEnd());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);

  for (auto [subnet, prefix] : {std::pair{Ip(127, 0, 0, 0), 24}, std::pair{Ip(169, 254, 0, 0), 24},
                                std::pair{Ip(224, 0, 0, 0), 24}, std::pair{Ip(0, 0, 0, 0), 24},
                                std::pair{Ip(10, 20, 0, 1), 24}, std::pair{Ip(10, 0, 0, 0), 30}}) {
    c = EgressNet();
    c.subnet = subnet;
    c.prefix_len = prefix;
    r = EgressGateway::Start(c, PairEnd());
    ASSERT_FALSE(r.ok()) << FormatIpv4(subnet) << "/" << prefix;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << r.error().message;
  }
  c = EgressNet();
  c.mtu = 100;
  r = EgressGateway::Start(c, PairEnd());
  ASSERT_FALSE(r.ok());
  r = EgressGateway::Start(EgressNet(), vmm::UniqueFd());
  ASSERT_FALSE(r.ok());
  r = EgressGateway::Start(EgressNet(), PairEnd());
  ASSERT_TRUE(r.ok()) << r.error().message;
}

TEST(EgressGatewayConfigTest, ForwardsAreCheckedAndFreeTheirPortOnRemoval) {
  auto g = EgressGateway::Start(EgressNet(), PairEnd());
  ASSERT_TRUE(g.ok()) << g.error().message;
  const Ipv4Addr lo = Ip(127, 0, 0, 1);
  for (Ipv4Addr bad :
       {Ip(10, 21, 0, 10), kSubnet, kGateway, Ip(10, 20, 0, 2), Ip(10, 20, 0, 255)}) {
    auto r = (*g)->AddForward(bad, 80, lo, 0);
    ASSERT_FALSE(r.ok()) << FormatIpv4(bad);
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  }
  EXPECT_FALSE((*g)->AddForward(kVmIp, 0, lo, 0).ok());
  auto port = (*g)->AddForward(kVmIp, 80, lo, 0);
  ASSERT_TRUE(port.ok()) << port.error().message;
  // A port of our own, never one of the kernel's ephemeral (source) ports,
  // which an outgoing connection could hold when the forward is added again.
  const PortRange range = ForwardPortRange();
  EXPECT_GE(*port, range.first);
  EXPECT_LE(*port, range.last);
  int eph_lo = 0, eph_hi = 0;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> eph_lo >> eph_hi;
  if (eph_lo - kForwardPortFloor > 1000) {
    EXPECT_LT(*port, eph_lo);
  }
  auto again = (*g)->AddForward(kVmIp, 81, lo, *port);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kAlreadyExists);
  // The same forward again (a re-attach adds its VM's forwards again): its port.
  auto same = (*g)->AddForward(kVmIp, 80, lo, *port);
  ASSERT_TRUE(same.ok()) << same.error().message;
  EXPECT_EQ(*same, *port);
  ASSERT_EQ((*g)->forwards().size(), 1u);
  EXPECT_EQ((*g)->forwards()[0].guest_port, 80);
  EXPECT_EQ((*g)->RemoveForward(lo, static_cast<uint16_t>(*port + 1)).error().code,
            ErrorCode::kNotFound);
  ASSERT_TRUE((*g)->RemoveForward(lo, *port).ok());
  EXPECT_TRUE((*g)->forwards().empty());
  // The port is free again: slirp closed its listening socket.
  vmm::UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(*port);
  a.sin_addr.s_addr = htonl(lo);
  int one = 1;
  setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  EXPECT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << strerror(errno);

  // A gateway that goes away (its network left the host) frees its
  // forwards' ports too.
  auto last = (*g)->AddForward(kVmIp, 80, lo, 0);
  ASSERT_TRUE(last.ok()) << last.error().message;
  g->reset();
  vmm::UniqueFd s2(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  a.sin_port = htons(*last);
  setsockopt(s2.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  EXPECT_EQ(::bind(s2.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << strerror(errno);
}

TEST(EgressGatewayConfigTest, BeyondItsSocketsNewFlowsAreDroppedButConnectionsGoOn) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pair), 0);
  vmm::UniqueFd switch_end(pair[0]);
  auto g = EgressGateway::Start(EgressNet(), vmm::UniqueFd(pair[1]), /*max_sockets=*/2);
  ASSERT_TRUE(g.ok()) << g.error().message;
  // Two forwards: two listening sockets of slirp's.
  ASSERT_TRUE((*g)->AddForward(kVmIp, 80, Ip(127, 0, 0, 1), 0).ok());
  ASSERT_TRUE((*g)->AddForward(kVmIp, 81, Ip(127, 0, 0, 1), 0).ok());
  ASSERT_TRUE(WaitFor([&] { return (*g)->counters().sockets == 2; }));
  const MacAddr gw = EgressGatewayMac(kGateway);
  const Ipv4Addr outside = Ip(192, 0, 2, 1);  // TEST-NET-1; nothing is sent there
  auto send = [&](const Bytes& f) {
    ASSERT_EQ(::send(switch_end.get(), f.data(), f.size(), 0), static_cast<ssize_t>(f.size()));
  };
  send(UdpFrame(Mac(1), gw, kVmIp, outside, 5000, 9, {1}));
  send(TcpSyn(Mac(1), gw, kVmIp, outside, 5001, 9));
  ASSERT_TRUE(WaitFor([&] { return (*g)->counters().drop(EgressDrop::kTooManyFlows) == 2; }));
  EXPECT_EQ((*g)->counters().to_outside, 0u);
  // A segment of an existing connection still reaches slirp (which resets it
  // here: there is no such connection).
  Bytes ack = TcpSyn(Mac(1), gw, kVmIp, outside, 5002, 9);
  uint8_t* tcp = &ack[kEthernetHeaderLen + 20];
  tcp[13] = 0x10;  // ACK
  Store16(tcp + 16, 0);
  uint32_t sum = ChecksumAdd(0, {&ack[kEthernetHeaderLen + 12], 8}) + 6 + 20;
  Store16(tcp + 16, ChecksumFinish(ChecksumAdd(sum, {tcp, 20})));
  send(ack);
  ASSERT_TRUE(WaitFor([&] { return (*g)->counters().to_outside == 1; }));
  EXPECT_EQ((*g)->counters().drop(EgressDrop::kTooManyFlows), 2u);
}

// The VM's side of a port, as QEMU would be.
class FakeVm {
 public:
  FakeVm(const std::string& vm_path, const std::string& switch_path) : switch_path_(switch_path) {
    fd_.Reset(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, vm_path.c_str(), sizeof a.sun_path - 1);
    ::unlink(vm_path.c_str());
    EXPECT_EQ(bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << strerror(errno);
  }
  void Send(const Bytes& frame) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, switch_path_.c_str(), sizeof a.sun_path - 1);
    ASSERT_EQ(
        sendto(fd_.get(), frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a),
        static_cast<ssize_t>(frame.size()))
        << strerror(errno);
  }
  std::optional<Bytes> Recv(int timeout_ms = 5000) {
    pollfd p{fd_.get(), POLLIN, 0};
    if (poll(&p, 1, timeout_ms) != 1) return std::nullopt;
    Bytes buf(4096);
    ssize_t n = recv(fd_.get(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) return std::nullopt;
    buf.resize(static_cast<size_t>(n));
    return buf;
  }
  // The next IPv4 frame (ARP replies from the switch are skipped).
  std::optional<Frame> RecvIpv4(Bytes& storage) {
    for (int i = 0; i < 10; ++i) {
      auto b = Recv();
      if (!b) return std::nullopt;
      storage = *b;
      FrameParse p = ParseFrame(storage);
      if (p.ok() && p.frame.ipv4) return p.frame;
    }
    return std::nullopt;
  }

 private:
  vmm::UniqueFd fd_;
  std::string switch_path_;
};

// A TCP listener on this host, to see whether anything reaches it.
class Listener {
 public:
  explicit Listener(Ipv4Addr ip) {
    fd_.Reset(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(ip);
    socklen_t len = sizeof a;
    EXPECT_EQ(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_.get(), 8), 0);
    EXPECT_EQ(::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    port_ = ntohs(a.sin_port);
  }
  uint16_t port() const { return port_; }
  bool Accepted() {
    vmm::UniqueFd c(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    return c.valid();
  }

 private:
  vmm::UniqueFd fd_;
  uint16_t port_ = 0;
};

class EgressSwitchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vnet-egress-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    SwitchHostOptions o;
    o.host_id = 1;
    auto h = SwitchHost::Start(o);
    ASSERT_TRUE(h.ok()) << h.error().message;
    host_ = std::move(h).value();
    ASSERT_TRUE(host_->AddNetwork(EgressNet()).ok());
    PortConfig p;
    p.name = "a";
    p.mac = Mac(1);
    p.ip = kVmIp;
    p.vm_name = "vm-a";
    p.switch_path = dir_ + "/a.sw";
    p.vm_path = dir_ + "/a.vm";
    vm_ = std::make_unique<FakeVm>(p.vm_path, p.switch_path);
    ASSERT_TRUE(host_->AddPort(kNet, p).ok());
  }
  void TearDown() override {
    host_.reset();
    vm_.reset();
    std::filesystem::remove_all(dir_);
  }
  uint64_t Dropped(EgressDrop why) {
    auto c = host_->GetEgressCounters(kNet);
    EXPECT_TRUE(c.ok());
    return c.ok() ? c->drop(why) : 0;
  }

  std::string dir_;
  SwitchHostPtr host_;
  std::unique_ptr<FakeVm> vm_;
  const MacAddr gw_mac_ = EgressGatewayMac(kGateway);
};

TEST_F(EgressSwitchTest, ArpForTheGatewayGivesSlirpsMacAndSlirpAnswersPings) {
  vm_->Send(ArpRequest(Mac(1), kVmIp, kGateway));
  auto reply = vm_->Recv();
  ASSERT_TRUE(reply.has_value());
  FrameParse p = ParseFrame(*reply);
  ASSERT_TRUE(p.ok() && p.frame.arp);
  EXPECT_EQ(p.frame.arp->sender_ip, kGateway);
  EXPECT_EQ(p.frame.arp->sender_mac, gw_mac_);

  // The echo goes through the switch to slirp, which ARPs for the VM (the
  // switch answers) and replies from .1.
  vm_->Send(IcmpEcho(Mac(1), gw_mac_, kVmIp, kGateway));
  Bytes storage;
  auto f = vm_->RecvIpv4(storage);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->eth.src, gw_mac_);
  EXPECT_EQ(f->ipv4->src, kGateway);
  EXPECT_EQ(f->ipv4->dst, kVmIp);
  ASSERT_EQ(f->ipv4->protocol, kIpProtoIcmp);
  EXPECT_EQ(f->ipv4->payload[0], 0);  // echo reply
  auto counters = host_->GetEgressCounters(kNet);
  ASSERT_TRUE(counters.ok());
  EXPECT_EQ(counters->to_outside, 2u);    // the echo and the switch's ARP reply to slirp
  EXPECT_EQ(counters->from_outside, 2u);  // slirp's ARP request and the echo reply
  auto gw_port = host_->GetPortCounters(kNet, kEgressPortName);
  ASSERT_TRUE(gw_port.ok());
  EXPECT_GE(gw_port->rx_frames, 2u);  // slirp's ARP request and its reply
  EXPECT_EQ(gw_port->arp_answered, 1u);
}

// Written first: whatever a guest puts in its frames, it never opens a
// connection to a service of this host (the agent's and controller's APIs
// listen on 127.0.0.1 or on the host's addresses).
TEST_F(EgressSwitchTest, AGuestNeverReachesTheHostsOwnServices) {
  Listener loopback(Ip(127, 0, 0, 1));
  Listener any(0);  // 0.0.0.0: every address of the host
  const uint16_t lp = loopback.port();

  vm_->Send(TcpSyn(Mac(1), gw_mac_, kVmIp, Ip(127, 0, 0, 1), 40000, lp));
  ASSERT_TRUE(WaitFor([&] { return Dropped(EgressDrop::kHostLoopback) == 1; }));
  vm_->Send(TcpSyn(Mac(1), gw_mac_, kVmIp, Ip(0, 0, 0, 0), 40001, any.port()));
  ASSERT_TRUE(WaitFor([&] { return Dropped(EgressDrop::kHostLocal) == 1; }));
  // Every address of this host's interfaces (here at least loopback's).
  auto local = LocalIpv4Addresses();
  ASSERT_TRUE(local.ok());
  uint64_t expect_local = 1;
  for (Ipv4Addr a : *local) {
    if ((a >> 24) == 127) continue;
    vm_->Send(TcpSyn(Mac(1), gw_mac_, kVmIp, a, 40002, any.port()));
    ++expect_local;
    ASSERT_TRUE(WaitFor([&] { return Dropped(EgressDrop::kHostLocal) == expect_local; }))
        << FormatIpv4(a);
  }

  // The gateway address, which plain slirp maps to 127.0.0.1: slirp itself
  // refuses (disable_host_loopback) and tells the guest so.
  vm_->Send(TcpSyn(Mac(1), gw_mac_, kVmIp, kGateway, 40003, lp));
  Bytes storage;
  auto answer = vm_->RecvIpv4(storage);
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(answer->ipv4->src, kGateway);
  const bool rst = answer->ipv4->protocol == 6 && (answer->ipv4->payload[13] & 0x04);
  const bool unreachable = answer->ipv4->protocol == kIpProtoIcmp && answer->ipv4->payload[0] == 3;
  EXPECT_TRUE(rst || unreachable);
  // The switch's service address is not a way out either.
  vm_->Send(TcpSyn(Mac(1), gw_mac_, kVmIp, Ip(10, 20, 0, 2), 40004, lp));
  ASSERT_TRUE(WaitFor([&] { return Dropped(EgressDrop::kThisNetwork) == 1; }));

  EXPECT_FALSE(loopback.Accepted());
  EXPECT_FALSE(any.Accepted());
}

TEST_F(EgressSwitchTest, ForwardsOnlyToTheNetworksOwnNicsAndGoWithThem) {
  auto r = host_->AddForward(kNet, Ip(10, 20, 0, 99), 80);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  r = host_->AddForward(kNet, kGateway, 80);
  ASSERT_FALSE(r.ok());
  r = host_->AddForward(99, kVmIp, 80);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  r = host_->AddForward(kNet, kVmIp, 80);
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto fw = host_->GetForwards(kNet);
  ASSERT_TRUE(fw.ok());
  ASSERT_EQ(fw->size(), 1u);
  EXPECT_EQ((*fw)[0].listen_ip, Ip(127, 0, 0, 1));
  EXPECT_EQ((*fw)[0].listen_port, *r);
  EXPECT_EQ((*fw)[0].guest_ip, kVmIp);

  EXPECT_FALSE(host_->RemovePort(kNet, kEgressPortName).ok());
  ASSERT_TRUE(host_->RemovePort(kNet, "a").ok());
  fw = host_->GetForwards(kNet);
  ASSERT_TRUE(fw.ok());
  EXPECT_TRUE(fw->empty());

  // A network without egress has no gateway and no forwards.
  NetworkConfig plain = EgressNet(8);
  plain.egress = false;
  ASSERT_TRUE(host_->AddNetwork(plain).ok());
  r = host_->AddForward(8, kVmIp, 80);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_FALSE(host_->GetEgressCounters(8).ok());
  EXPECT_FALSE(host_->GetPortCounters(8, kEgressPortName).ok());
  ASSERT_TRUE(host_->RemoveNetwork(kNet).ok());
  EXPECT_FALSE(host_->GetEgressCounters(kNet).ok());
}

TEST_F(EgressSwitchTest, AFailedEgressNetworkLeavesNothingBehind) {
  NetworkConfig bad = EgressNet(9);
  bad.subnet = Ip(127, 1, 0, 0);  // the switch takes it, the gateway does not
  EXPECT_FALSE(host_->AddNetwork(bad).ok());
  EXPECT_EQ(host_->GetEgressCounters(9).error().code, ErrorCode::kNotFound);
  bad.subnet = Ip(10, 30, 0, 0);
  EXPECT_TRUE(host_->AddNetwork(bad).ok());
}

}  // namespace
}  // namespace vmgrid::vnet
