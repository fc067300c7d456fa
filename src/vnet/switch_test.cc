// Switches on real sockets: ports are unix datagram sockets in a temp dir
// played by FakeVm (QEMU's role: it binds its own path and sends to the
// switch's), tunnels are loopback UDP. Absence of a frame is checked only
// after the switch counted the frame that could have caused it: counters are
// read under the lock the loop holds until its batch is sent, so anything it
// sent is already queued on the receiving socket.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <thread>

#include "vnet/dhcp.h"
#include "vnet/dns.h"
#include "vnet/switch_host.h"
#include "vnet/test_frames.h"

namespace vmgrid::vnet {
namespace {

using testing::ArpFrame;
using testing::ArpRequest;
using testing::Bytes;
using testing::DhcpClientMessage;
using testing::DnsQueryMessage;
using testing::Ip;
using testing::Mac;
using testing::UdpFrame;
using Bytes_t = std::vector<uint8_t>;

class FakeVm {
 public:
  FakeVm(const std::string& vm_path, const std::string& switch_path) : switch_path_(switch_path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, vm_path.c_str(), sizeof a.sun_path - 1);
    ::unlink(vm_path.c_str());
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << strerror(errno);
  }
  ~FakeVm() { close(fd_); }
  FakeVm(const FakeVm&) = delete;
  FakeVm& operator=(const FakeVm&) = delete;

  void Send(const Bytes_t& frame) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, switch_path_.c_str(), sizeof a.sun_path - 1);
    ASSERT_EQ(sendto(fd_, frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a),
              static_cast<ssize_t>(frame.size()))
        << strerror(errno);
  }
  std::optional<Bytes_t> Recv(int timeout_ms = 3000) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) != 1) return std::nullopt;
    Bytes_t buf(4096);
    ssize_t n = recv(fd_, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) return std::nullopt;
    buf.resize(static_cast<size_t>(n));
    return buf;
  }
  bool Empty() { return !Recv(0).has_value(); }

 private:
  int fd_ = -1;
  std::string switch_path_;
};

bool WaitFor(const std::function<bool()>& done) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

constexpr uint32_t kNet = 10;
constexpr uint32_t kOtherNet = 11;
const Ipv4Addr kSubnet = Ip(10, 20, 0, 0);

NetworkConfig Net(uint32_t id, const std::string& name) {
  NetworkConfig c;
  c.id = id;
  c.name = name;
  c.subnet = kSubnet;  // both networks use the same subnet: isolation may not rely on addresses
  c.prefix_len = 24;
  return c;
}

class SwitchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vnet-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    h1_ = StartHost(1);
    ASSERT_TRUE(h1_->AddNetwork(Net(kNet, "lab")).ok());
    ASSERT_TRUE(h1_->AddNetwork(Net(kOtherNet, "other")).ok());
    a_ = AddPort(*h1_, kNet, "a", Mac(1), Ip(10, 20, 0, 10), "vm-a");
    b_ = AddPort(*h1_, kNet, "b", Mac(2), Ip(10, 20, 0, 11), "vm-b");
    c_ = AddPort(*h1_, kNet, "c", Mac(3), Ip(10, 20, 0, 12), "vm-c");
    // Same IP as a, another network.
    x_ = AddPort(*h1_, kOtherNet, "x", Mac(4), Ip(10, 20, 0, 10), "vm-x");
  }
  void TearDown() override {
    a_.reset();
    b_.reset();
    c_.reset();
    x_.reset();
    h1_.reset();
    h2_.reset();
    std::filesystem::remove_all(dir_);
  }

  SwitchHostPtr StartHost(HostId id) {
    SwitchHostOptions o;
    o.host_id = id;
    auto h = SwitchHost::Start(o);
    EXPECT_TRUE(h.ok()) << h.error().message;
    return std::move(h).value();
  }

  PortConfig PortCfg(const std::string& name, const MacAddr& mac, Ipv4Addr ip,
                     const std::string& vm) {
    PortConfig p;
    p.name = name;
    p.mac = mac;
    p.ip = ip;
    p.vm_name = vm;
    p.switch_path = dir_ + "/" + name + ".sw";
    p.vm_path = dir_ + "/" + name + ".vm";
    return p;
  }

  std::unique_ptr<FakeVm> AddPort(SwitchHost& h, uint32_t net, const std::string& name,
                                  const MacAddr& mac, Ipv4Addr ip, const std::string& vm) {
    PortConfig p = PortCfg(name, mac, ip, vm);
    Status st = h.AddPort(net, p);
    EXPECT_TRUE(st.ok()) << st.error().message;
    return std::make_unique<FakeVm>(p.vm_path, p.switch_path);
  }

  PortCounters Counters(SwitchHost& h, uint32_t net, const std::string& port) {
    auto c = h.GetPortCounters(net, port);
    EXPECT_TRUE(c.ok());
    return c.ok() ? *c : PortCounters{};
  }
  // Waits until `port` has read `n` frames (and the loop finished that batch).
  void WaitRx(SwitchHost& h, uint32_t net, const std::string& port, uint64_t n) {
    ASSERT_TRUE(WaitFor([&] { return Counters(h, net, port).rx_frames >= n; }))
        << port << " never read " << n << " frames";
  }

  std::string dir_;
  SwitchHostPtr h1_, h2_;
  std::unique_ptr<FakeVm> a_, b_, c_, x_;
};

Bytes_t Udp(uint8_t from, uint8_t to_mac, uint8_t to_ip, const std::string& text) {
  return UdpFrame(Mac(from), Mac(to_mac), Ip(10, 20, 0, from + 9), Ip(10, 20, 0, to_ip), 4000, 5000,
                  Bytes(text));
}

TEST_F(SwitchTest, UnicastGoesToTheOwnerOnly) {
  auto f = Udp(1, 2, 11, "to b");
  a_->Send(f);
  auto got = b_->Recv();
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, f);
  WaitRx(*h1_, kNet, "a", 1);
  EXPECT_TRUE(c_->Empty());
  EXPECT_TRUE(a_->Empty());
  EXPECT_TRUE(x_->Empty());
  EXPECT_EQ(Counters(*h1_, kNet, "b").tx_frames, 1u);
}

TEST_F(SwitchTest, BroadcastStaysInItsNetwork) {
  auto f =
      UdpFrame(Mac(1), kBroadcastMac, Ip(10, 20, 0, 10), Ip(10, 20, 0, 255), 1, 2, Bytes("all"));
  a_->Send(f);
  ASSERT_TRUE(b_->Recv());
  ASSERT_TRUE(c_->Recv());
  WaitRx(*h1_, kNet, "a", 1);
  EXPECT_TRUE(a_->Empty());  // not echoed to the sender
  EXPECT_TRUE(x_->Empty());  // another network
  // And the other way: x's broadcast and x's unicast to a's MAC reach nobody.
  x_->Send(
      UdpFrame(Mac(4), kBroadcastMac, Ip(10, 20, 0, 10), Ip(10, 20, 0, 255), 1, 2, Bytes("x")));
  x_->Send(UdpFrame(Mac(4), Mac(1), Ip(10, 20, 0, 10), Ip(10, 20, 0, 10), 1, 2, Bytes("x")));
  WaitRx(*h1_, kOtherNet, "x", 2);
  EXPECT_TRUE(a_->Empty());
  EXPECT_TRUE(b_->Empty());
  EXPECT_TRUE(c_->Empty());
  EXPECT_EQ(Counters(*h1_, kOtherNet, "x").drop(DropReason::kUnknownDestination), 1u);
}

TEST_F(SwitchTest, ArpIsAnsweredByTheSwitch) {
  a_->Send(ArpRequest(Mac(1), Ip(10, 20, 0, 10), Ip(10, 20, 0, 11)));
  auto reply = a_->Recv();
  ASSERT_TRUE(reply);
  FrameParse p = ParseFrame(*reply);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(p.frame.arp);
  EXPECT_EQ(p.frame.arp->op, 2);
  EXPECT_EQ(p.frame.arp->sender_mac, Mac(2));
  EXPECT_EQ(p.frame.arp->sender_ip, Ip(10, 20, 0, 11));
  EXPECT_EQ(p.frame.arp->target_ip, Ip(10, 20, 0, 10));
  EXPECT_EQ(p.frame.eth.dst, Mac(1));
  // The switch's service address answers too; unknown addresses do not.
  a_->Send(ArpRequest(Mac(1), Ip(10, 20, 0, 10), Ip(10, 20, 0, 2)));
  reply = a_->Recv();
  ASSERT_TRUE(reply);
  EXPECT_EQ(ParseFrame(*reply).frame.arp->sender_mac, Net(kNet, "lab").switch_mac());
  a_->Send(ArpRequest(Mac(1), Ip(10, 20, 0, 10), Ip(10, 20, 0, 99)));
  a_->Send(ArpRequest(Mac(1), Ip(10, 20, 0, 10), Ip(10, 20, 0, 1)));  // no egress: no gateway
  WaitRx(*h1_, kNet, "a", 4);
  EXPECT_TRUE(a_->Empty());
  EXPECT_TRUE(b_->Empty());  // requests are never broadcast
  EXPECT_TRUE(c_->Empty());
  auto ca = Counters(*h1_, kNet, "a");
  EXPECT_EQ(ca.arp_answered, 2u);
  EXPECT_EQ(ca.drop(DropReason::kUnknownDestination), 2u);
  // Another network's port cannot resolve this network's addresses.
  x_->Send(ArpRequest(Mac(4), Ip(10, 20, 0, 10), Ip(10, 20, 0, 11)));
  WaitRx(*h1_, kOtherNet, "x", 1);
  EXPECT_TRUE(x_->Empty());
}

TEST_F(SwitchTest, SpoofedFramesAreDroppedAndCounted) {
  // Forged source MAC (b's), forged source IP, forged ARP (claims b's IP),
  // a changed MAC with a matching ARP body, IPv6, a VLAN tag, garbage.
  a_->Send(UdpFrame(Mac(2), Mac(3), Ip(10, 20, 0, 11), Ip(10, 20, 0, 12), 1, 2, {}));
  a_->Send(UdpFrame(Mac(1), Mac(3), Ip(10, 20, 0, 11), Ip(10, 20, 0, 12), 1, 2, {}));
  a_->Send(ArpFrame(2, Mac(1), Mac(3), Mac(1), Ip(10, 20, 0, 11), Ip(10, 20, 0, 12), Mac(3)));
  a_->Send(ArpFrame(1, Mac(9), kBroadcastMac, Mac(9), Ip(10, 20, 0, 10), Ip(10, 20, 0, 12)));
  auto v6 = Udp(1, 3, 12, "v6");
  Store16(&v6[12], 0x86dd);
  a_->Send(v6);
  auto vlan = Udp(1, 3, 12, "vlan");
  Store16(&vlan[12], kEtherTypeVlan);
  a_->Send(vlan);
  a_->Send(Bytes_t{1, 2, 3});
  WaitRx(*h1_, kNet, "a", 7);
  EXPECT_TRUE(c_->Empty());
  EXPECT_TRUE(b_->Empty());
  EXPECT_TRUE(a_->Empty());
  auto ca = Counters(*h1_, kNet, "a");
  EXPECT_EQ(ca.drop(DropReason::kSpoofedMac), 2u);
  EXPECT_EQ(ca.drop(DropReason::kSpoofedIp), 1u);
  EXPECT_EQ(ca.drop(DropReason::kSpoofedArp), 1u);
  EXPECT_EQ(ca.drop(DropReason::kUnsupportedProtocol), 1u);
  EXPECT_EQ(ca.drop(DropReason::kVlanTagged), 1u);
  EXPECT_EQ(ca.drop(DropReason::kMalformed), 1u);
  // Still forwards what is legitimate afterwards.
  a_->Send(Udp(1, 3, 12, "ok"));
  ASSERT_TRUE(c_->Recv());
}

TEST_F(SwitchTest, UnknownUnicastIsDropped) {
  a_->Send(UdpFrame(Mac(1), Mac(77), Ip(10, 20, 0, 10), Ip(10, 20, 0, 77), 1, 2, {}));
  a_->Send(UdpFrame(Mac(1), Mac(4), Ip(10, 20, 0, 10), Ip(10, 20, 0, 10), 1, 2, {}));  // x's MAC
  a_->Send(UdpFrame(Mac(1), Mac(1), Ip(10, 20, 0, 10), Ip(10, 20, 0, 10), 1, 2, {}));  // itself
  WaitRx(*h1_, kNet, "a", 3);
  EXPECT_EQ(Counters(*h1_, kNet, "a").drop(DropReason::kUnknownDestination), 3u);
  EXPECT_TRUE(x_->Empty());
  EXPECT_TRUE(a_->Empty());
}

std::map<uint8_t, Bytes_t> DhcpOptions(const Bytes_t& m) {
  std::map<uint8_t, Bytes_t> opts;
  for (size_t i = 240; i + 1 < m.size() && m[i] != 255;) {
    if (m[i] == 0) {
      ++i;
      continue;
    }
    opts[m[i]] = Bytes_t(m.begin() + static_cast<long>(i) + 2,
                         m.begin() + static_cast<long>(i) + 2 + m[i + 1]);
    i += 2 + m[i + 1];
  }
  return opts;
}

TEST_F(SwitchTest, DhcpGivesTheControllersAddress) {
  const Ipv4Addr service = Ip(10, 20, 0, 2);
  auto send = [&](const Bytes_t& msg) {
    a_->Send(UdpFrame(Mac(1), kBroadcastMac, 0, 0xffffffff, 68, 67, msg));
  };
  send(DhcpClientMessage(1, Mac(1), 0xabcd));  // DISCOVER
  auto offer = a_->Recv();
  ASSERT_TRUE(offer);
  FrameParse p = ParseFrame(*offer);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(p.frame.udp);
  EXPECT_EQ(p.frame.udp->src_port, 67);
  EXPECT_EQ(p.frame.udp->dst_port, 68);
  EXPECT_EQ(p.frame.ipv4->src, service);
  EXPECT_EQ(p.frame.eth.dst, Mac(1));
  Bytes_t body(p.frame.udp->payload.begin(), p.frame.udp->payload.end());
  EXPECT_EQ(body[0], 2);
  EXPECT_EQ(Load32(&body[4]), 0xabcdu);
  EXPECT_EQ(Load32(&body[16]), Ip(10, 20, 0, 10));  // yiaddr
  auto opts = DhcpOptions(body);
  EXPECT_EQ(opts[53], Bytes_t{2});  // OFFER
  EXPECT_EQ(Load32(opts[54].data()), service);
  EXPECT_EQ(Load32(opts[1].data()), 0xffffff00u);
  EXPECT_EQ(Load32(opts[6].data()), service);
  EXPECT_EQ(std::string(opts[15].begin(), opts[15].end()), "lab");
  EXPECT_EQ(std::string(opts[12].begin(), opts[12].end()), "vm-a");
  EXPECT_EQ(opts.count(3), 0u);  // no egress, no router

  send(DhcpClientMessage(3, Mac(1), 0xabce, Ip(10, 20, 0, 10), service));  // REQUEST
  auto ack = a_->Recv();
  ASSERT_TRUE(ack);
  p = ParseFrame(*ack);
  body.assign(p.frame.udp->payload.begin(), p.frame.udp->payload.end());
  EXPECT_EQ(DhcpOptions(body)[53], Bytes_t{5});  // ACK

  send(DhcpClientMessage(3, Mac(1), 0xabcf, Ip(10, 20, 0, 50), service));  // wrong address
  auto nak = a_->Recv();
  ASSERT_TRUE(nak);
  p = ParseFrame(*nak);
  EXPECT_EQ(p.frame.ipv4->dst, 0xffffffffu);
  body.assign(p.frame.udp->payload.begin(), p.frame.udp->payload.end());
  EXPECT_EQ(DhcpOptions(body)[53], Bytes_t{6});  // NAK

  // Another client's hardware address, and garbage: no answer, counted.
  send(DhcpClientMessage(1, Mac(2), 1));
  send(Bytes("not dhcp"));
  WaitRx(*h1_, kNet, "a", 5);
  EXPECT_TRUE(a_->Empty());
  EXPECT_TRUE(b_->Empty());  // DHCP is never forwarded
  auto ca = Counters(*h1_, kNet, "a");
  EXPECT_EQ(ca.dhcp_answered, 3u);
  EXPECT_EQ(ca.drop(DropReason::kDhcpRefused), 2u);
}

TEST_F(SwitchTest, DnsAnswersNamesOfThisNetworkOnly) {
  const MacAddr sw = Net(kNet, "lab").switch_mac();
  auto ask = [&](uint16_t id, const std::string& name, uint16_t type = kDnsTypeA) {
    a_->Send(UdpFrame(Mac(1), sw, Ip(10, 20, 0, 10), Ip(10, 20, 0, 2), 33333, 53,
                      DnsQueryMessage(id, name, type)));
    auto r = a_->Recv();
    EXPECT_TRUE(r);
    if (!r) return Bytes_t{};
    FrameParse p = ParseFrame(*r);
    EXPECT_TRUE(p.ok() && p.frame.udp);
    EXPECT_EQ(p.frame.udp->dst_port, 33333);
    EXPECT_EQ(p.frame.ipv4->src, Ip(10, 20, 0, 2));
    Bytes_t body(p.frame.udp->payload.begin(), p.frame.udp->payload.end());
    EXPECT_EQ(Load16(&body[0]), id);
    return body;
  };
  auto r = ask(1, "vm-b.lab");
  EXPECT_EQ(Load16(&r[2]) & 0xf, 0);
  EXPECT_EQ(Load16(&r[6]), 1);
  EXPECT_EQ(Load32(&r[r.size() - 4]), Ip(10, 20, 0, 11));
  r = ask(2, "VM-C");  // bare name, any case
  EXPECT_EQ(Load32(&r[r.size() - 4]), Ip(10, 20, 0, 12));
  r = ask(3, "vm-x.lab");  // exists, but on another network
  EXPECT_EQ(Load16(&r[2]) & 0xf, 3);
  r = ask(4, "vm-x.other");
  EXPECT_EQ(Load16(&r[2]) & 0xf, 3);
  r = ask(5, "vm-b.lab", 28);  // AAAA: no data, not NXDOMAIN
  EXPECT_EQ(Load16(&r[2]) & 0xf, 0);
  EXPECT_EQ(Load16(&r[6]), 0);
  // Malformed: dropped and counted; other traffic to the switch: not served.
  auto bad = DnsQueryMessage(6, "vm-b.lab");
  bad[12] = 0xc0;
  a_->Send(UdpFrame(Mac(1), sw, Ip(10, 20, 0, 10), Ip(10, 20, 0, 2), 33333, 53, bad));
  a_->Send(UdpFrame(Mac(1), sw, Ip(10, 20, 0, 10), Ip(10, 20, 0, 2), 33333, 54, {}));
  WaitRx(*h1_, kNet, "a", 7);
  EXPECT_TRUE(a_->Empty());
  auto ca = Counters(*h1_, kNet, "a");
  EXPECT_EQ(ca.dns_answered, 5u);
  EXPECT_EQ(ca.drop(DropReason::kDnsRefused), 1u);
  EXPECT_EQ(ca.drop(DropReason::kNotServed), 1u);
}

TEST_F(SwitchTest, TheSwitchAnswersPings) {
  const MacAddr sw = Net(kNet, "lab").switch_mac();
  // An ICMP echo request (id 0x1234, seq 7, 4 data bytes) to the service address.
  Bytes_t icmp = {8, 0, 0, 0, 0x12, 0x34, 0, 7, 'p', 'i', 'n', 'g'};
  Store16(&icmp[2], ChecksumFinish(ChecksumAdd(0, icmp)));
  Bytes_t f(kMaxFrameLen);
  UdpEndpoints e{Mac(1), sw, Ip(10, 20, 0, 10), Ip(10, 20, 0, 2), 0, 0};
  f.resize(BuildUdpFrame(f, e, {}));  // an IPv4 frame to rewrite as ICMP
  f.resize(14 + 20);
  f.insert(f.end(), icmp.begin(), icmp.end());
  f[14 + 9] = kIpProtoIcmp;
  Store16(&f[14 + 2], static_cast<uint16_t>(20 + icmp.size()));
  Store16(&f[14 + 10], 0);
  Store16(&f[14 + 10], ChecksumFinish(ChecksumAdd(0, {&f[14], 20})));
  a_->Send(f);
  auto r = a_->Recv();
  ASSERT_TRUE(r);
  FrameParse p = ParseFrame(*r);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(p.frame.ipv4);
  EXPECT_EQ(p.frame.ipv4->src, Ip(10, 20, 0, 2));
  EXPECT_EQ(p.frame.ipv4->dst, Ip(10, 20, 0, 10));
  const auto& reply = p.frame.ipv4->payload;
  ASSERT_EQ(reply.size(), icmp.size());
  EXPECT_EQ(reply[0], 0);
  EXPECT_EQ(Load16(&reply[4]), 0x1234);
  EXPECT_EQ(Load16(&reply[6]), 7);
  EXPECT_EQ(ChecksumFinish(ChecksumAdd(0, reply)), 0);
  // The gateway does not answer without egress.
  Store32(&f[14 + 16], Ip(10, 20, 0, 1));
  Store16(&f[14 + 10], 0);
  Store16(&f[14 + 10], ChecksumFinish(ChecksumAdd(0, {&f[14], 20})));
  a_->Send(f);
  WaitRx(*h1_, kNet, "a", 2);
  EXPECT_TRUE(a_->Empty());
  EXPECT_EQ(Counters(*h1_, kNet, "a").echo_answered, 1u);
  EXPECT_EQ(Counters(*h1_, kNet, "a").drop(DropReason::kNotServed), 1u);
}

TEST_F(SwitchTest, ControlCallsWhileTrafficFlows) {
  // Ports come and go, counters are read and the remote table is replaced
  // while a and b exchange frames (run under TSan too: the lock is the contract).
  std::atomic<bool> stop{false};
  std::thread traffic([&] {
    while (!stop) {
      a_->Send(Udp(1, 2, 11, "x"));
      a_->Send(UdpFrame(Mac(1), kBroadcastMac, Ip(10, 20, 0, 10), Ip(10, 20, 0, 255), 1, 2, {}));
      while (b_->Recv(0)) {
      }
      while (c_->Recv(0)) {
      }
      while (auto r = a_->Recv(0)) {
      }
    }
  });
  for (int i = 0; i < 50; ++i) {
    auto p = PortCfg("tmp", Mac(50), Ip(10, 20, 0, 50), "tmp");
    ASSERT_TRUE(h1_->AddPort(kNet, p).ok());
    ASSERT_TRUE(h1_->SetRemote(kNet, {PeerHost{9, Ip(127, 0, 0, 1), 9}},
                               {RemoteNic{Mac(60), Ip(10, 20, 0, 60), "far", 9}})
                    .ok());
    EXPECT_TRUE(h1_->GetPortCounters(kNet, "a").ok());
    ASSERT_TRUE(h1_->RemovePort(kNet, "tmp").ok());
  }
  // The traffic thread may not have run yet on a busy machine: wait for it.
  EXPECT_TRUE(WaitFor([&] { return Counters(*h1_, kNet, "b").tx_frames > 0; }));
  stop = true;
  traffic.join();
}

TEST_F(SwitchTest, ControlPlaneRefusesCollisions) {
  EXPECT_EQ(h1_->AddPort(kNet, PortCfg("a", Mac(9), Ip(10, 20, 0, 40), "")).error().code,
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(h1_->AddPort(kNet, PortCfg("d", Mac(1), Ip(10, 20, 0, 40), "")).error().code,
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(h1_->AddPort(kNet, PortCfg("d", Mac(9), Ip(10, 20, 0, 11), "")).error().code,
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(h1_->AddPort(kNet, PortCfg("d", Mac(9), Ip(10, 20, 0, 40), "vm-b")).error().code,
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(h1_->AddPort(kNet, PortCfg("d", Mac(9), Ip(10, 20, 1, 40), "")).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(h1_->AddPort(kNet, PortCfg("d", Mac(9), Ip(10, 20, 0, 2), "")).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(h1_->AddPort(kNet, PortCfg("d", kBroadcastMac, Ip(10, 20, 0, 40), "")).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(h1_->AddPort(99, PortCfg("d", Mac(9), Ip(10, 20, 0, 40), "")).error().code,
            ErrorCode::kNotFound);
  EXPECT_EQ(h1_->AddNetwork(Net(kNet, "again")).error().code, ErrorCode::kAlreadyExists);
  // A failed AddPort left nothing behind: the name is still free.
  EXPECT_TRUE(h1_->AddPort(kNet, PortCfg("d", Mac(9), Ip(10, 20, 0, 40), "vm-d")).ok());
}

TEST_F(SwitchTest, AVmMigratingHereHasItsPortBeforeThePlanMovesItsNic) {
  const std::vector<PeerHost> peers{PeerHost{9, Ip(127, 0, 0, 1), 9}};
  const RemoteNic far{Mac(60), Ip(10, 20, 0, 60), "far", 9};
  ASSERT_TRUE(h1_->SetRemote(kNet, peers, {far}).ok());
  // Another NIC with its MAC or its address is still a conflict.
  EXPECT_EQ(h1_->AddPort(kNet, PortCfg("m", Mac(60), Ip(10, 20, 0, 61), "far")).error().code,
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(h1_->AddPort(kNet, PortCfg("m", Mac(61), Ip(10, 20, 0, 60), "x")).error().code,
            ErrorCode::kAlreadyExists);
  // The same NIC arriving (live migration): its port wins, and the plan that
  // still has it on its old host is accepted until the next one.
  ASSERT_TRUE(h1_->AddPort(kNet, PortCfg("m", Mac(60), Ip(10, 20, 0, 60), "far")).ok());
  EXPECT_TRUE(h1_->SetRemote(kNet, peers, {far}).ok());
  // But never two ports of it.
  EXPECT_EQ(h1_->AddPort(kNet, PortCfg("m2", Mac(60), Ip(10, 20, 0, 60), "far")).error().code,
            ErrorCode::kAlreadyExists);
  EXPECT_TRUE(h1_->RemovePort(kNet, "m").ok());
  EXPECT_TRUE(h1_->SetRemote(kNet, peers, {}).ok());
}

TEST_F(SwitchTest, RemovedPortGetsNothingAndItsPathIsGone) {
  ASSERT_TRUE(h1_->RemovePort(kNet, "b").ok());
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/b.sw"));
  a_->Send(Udp(1, 2, 11, "to b"));
  WaitRx(*h1_, kNet, "a", 1);
  EXPECT_TRUE(b_->Empty());
  EXPECT_EQ(Counters(*h1_, kNet, "a").drop(DropReason::kUnknownDestination), 1u);
  EXPECT_EQ(h1_->RemovePort(kNet, "b").error().code, ErrorCode::kNotFound);
}

TEST_F(SwitchTest, ARestartedSwitchTakesOverTheSamePaths) {
  // The VMs (FakeVm sockets) stay; only the switch process is replaced.
  h1_.reset();
  h1_ = StartHost(1);
  ASSERT_TRUE(h1_->AddNetwork(Net(kNet, "lab")).ok());
  ASSERT_TRUE(h1_->AddPort(kNet, PortCfg("a", Mac(1), Ip(10, 20, 0, 10), "vm-a")).ok());
  ASSERT_TRUE(h1_->AddPort(kNet, PortCfg("b", Mac(2), Ip(10, 20, 0, 11), "vm-b")).ok());
  auto f = Udp(1, 2, 11, "after restart");
  a_->Send(f);
  auto got = b_->Recv();
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, f);
}

TEST_F(SwitchTest, ANewSwitchBindingThePathFirstKeepsIt) {
  // Overlap: the new switch binds while the old one still runs; the old one
  // must not unlink the new socket file when it goes.
  auto h = StartHost(1);
  ASSERT_TRUE(h->AddNetwork(Net(kNet, "lab")).ok());
  ASSERT_TRUE(h->AddPort(kNet, PortCfg("a", Mac(1), Ip(10, 20, 0, 10), "vm-a")).ok());
  ASSERT_TRUE(h->AddPort(kNet, PortCfg("b", Mac(2), Ip(10, 20, 0, 11), "vm-b")).ok());
  h1_.reset();
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/a.sw"));
  a_->Send(Udp(1, 2, 11, "new switch"));
  EXPECT_TRUE(b_->Recv());
  h1_ = std::move(h);
}

TEST(QueueLengthTest, ReadsTheSettingWithoutLoweringIt) {
  auto v = EnsureUnixDgramQueueLength(1);  // never lowers, so this writes nothing
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_GE(*v, 1);
}

TEST(TxBatchTest, KeepsOrderAndDropsWhatAFullReceiverRefuses) {
  char tmpl[] = "/tmp/vnet-tx-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  {
    FakeVm rx(dir + "/rx", dir + "/unused");
    int tx_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un to{};
    to.sun_family = AF_UNIX;
    std::strncpy(to.sun_path, (dir + "/rx").c_str(), sizeof to.sun_path - 1);
    sockaddr_un nobody = to;
    std::strncpy(nobody.sun_path, (dir + "/nobody").c_str(), sizeof nobody.sun_path - 1);
    TxBatch batch;
    std::vector<Bytes_t> frames;
    for (int i = 0; i < 200; ++i) frames.push_back(Bytes_t{static_cast<uint8_t>(i)});
    uint64_t ok = 0, failed = 0, gone = 0;
    for (auto& f : frames) {
      batch.Add(tx_fd, reinterpret_cast<sockaddr*>(&to), sizeof to, f.data(), f.size(), &ok,
                &failed);
      batch.Add(tx_fd, reinterpret_cast<sockaddr*>(&nobody), sizeof nobody, f.data(), f.size(),
                nullptr, &gone);
    }
    batch.Flush();
    EXPECT_EQ(batch.size(), 0u);
    EXPECT_EQ(ok + failed, 200u);
    EXPECT_EQ(gone, 200u);
    EXPECT_GT(ok, 0u);
    // What arrived is a prefix, in order (the receiver's queue filled up, the rest was dropped).
    for (uint64_t i = 0; i < ok; ++i) {
      auto got = rx.Recv(0);
      ASSERT_TRUE(got);
      EXPECT_EQ((*got)[0], static_cast<uint8_t>(i));
    }
    EXPECT_TRUE(rx.Empty());
    close(tx_fd);
  }
  std::filesystem::remove_all(dir);
}

// ---- two hosts joined by a tunnel --------------------------------------------

class TwoHostTest : public SwitchTest {
 protected:
  void SetUp() override {
    SwitchTest::SetUp();
    h2_ = StartHost(2);
    ASSERT_TRUE(h2_->AddNetwork(Net(kNet, "lab")).ok());
    r_ = AddPort(*h2_, kNet, "r", Mac(5), Ip(10, 20, 0, 14), "vm-r");
    key_.fill(0x5a);
    ASSERT_TRUE(h1_->InstallTunnelKey(kNet, 1, key_).ok());
    ASSERT_TRUE(h2_->InstallTunnelKey(kNet, 1, key_).ok());
    // What the controller gives each host: the other host and its NICs.
    ASSERT_TRUE(h1_->SetRemote(kNet, {PeerHost{2, Ip(127, 0, 0, 1), h2_->tunnel_port()}},
                               {RemoteNic{Mac(5), Ip(10, 20, 0, 14), "vm-r", 2}})
                    .ok());
    ASSERT_TRUE(h2_->SetRemote(kNet, {PeerHost{1, Ip(127, 0, 0, 1), h1_->tunnel_port()}},
                               {RemoteNic{Mac(1), Ip(10, 20, 0, 10), "vm-a", 1},
                                RemoteNic{Mac(2), Ip(10, 20, 0, 11), "vm-b", 1},
                                RemoteNic{Mac(3), Ip(10, 20, 0, 12), "vm-c", 1}})
                    .ok());
  }
  void TearDown() override {
    r_.reset();
    SwitchTest::TearDown();
  }
  TunnelCounters Tunnel(SwitchHost& h) { return *h.GetTunnelCounters(kNet); }
  void SendUdp(const Bytes_t& pkt) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(h2_->tunnel_port());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(sendto(fd, pkt.data(), pkt.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a),
              static_cast<ssize_t>(pkt.size()));
    close(fd);
  }
  uint64_t TunnelSeen(SwitchHost& h) {
    TunnelCounters t = Tunnel(h);
    uint64_t n = t.rx_packets;
    for (uint64_t d : t.drops) n += d;
    TunnelCounters hc = h.host_tunnel_counters();
    for (uint64_t d : hc.drops) n += d;
    return n;
  }

  std::unique_ptr<FakeVm> r_;
  TunnelKey key_;
};

TEST_F(TwoHostTest, UnicastCrossesTheTunnelBothWays) {
  auto f = UdpFrame(Mac(1), Mac(5), Ip(10, 20, 0, 10), Ip(10, 20, 0, 14), 1, 2, Bytes("hi r"));
  a_->Send(f);
  auto got = r_->Recv();
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, f);
  auto back = UdpFrame(Mac(5), Mac(2), Ip(10, 20, 0, 14), Ip(10, 20, 0, 11), 2, 1, Bytes("hi b"));
  r_->Send(back);
  got = b_->Recv();
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, back);
  EXPECT_EQ(Tunnel(*h1_).tx_packets, 1u);
  EXPECT_EQ(Tunnel(*h2_).rx_packets, 1u);
  EXPECT_TRUE(a_->Empty());
  EXPECT_TRUE(c_->Empty());
}

TEST_F(TwoHostTest, BroadcastReachesRemoteHostsOfTheNetworkOnly) {
  auto f = UdpFrame(Mac(1), kBroadcastMac, Ip(10, 20, 0, 10), Ip(10, 20, 0, 255), 1, 2, Bytes("b"));
  a_->Send(f);
  ASSERT_TRUE(r_->Recv());
  ASSERT_TRUE(b_->Recv());
  ASSERT_TRUE(c_->Recv());
  WaitRx(*h1_, kNet, "a", 1);
  EXPECT_TRUE(x_->Empty());
  // The remote switch does not send it back.
  ASSERT_TRUE(WaitFor([&] { return Tunnel(*h2_).rx_packets == 1; }));
  EXPECT_EQ(Tunnel(*h2_).tx_packets, 0u);
  EXPECT_TRUE(a_->Empty());
}

TEST_F(TwoHostTest, ArpForARemoteVmIsAnsweredLocally) {
  a_->Send(ArpRequest(Mac(1), Ip(10, 20, 0, 10), Ip(10, 20, 0, 14)));
  auto reply = a_->Recv();
  ASSERT_TRUE(reply);
  EXPECT_EQ(ParseFrame(*reply).frame.arp->sender_mac, Mac(5));
  EXPECT_EQ(Tunnel(*h1_).tx_packets, 0u);
  EXPECT_TRUE(r_->Empty());
  // And DNS knows the remote VM.
  a_->Send(UdpFrame(Mac(1), Net(kNet, "lab").switch_mac(), Ip(10, 20, 0, 10), Ip(10, 20, 0, 2), 999,
                    53, DnsQueryMessage(7, "vm-r.lab")));
  auto dns = a_->Recv();
  ASSERT_TRUE(dns);
  EXPECT_EQ(Load32(&(*dns)[dns->size() - 4]), Ip(10, 20, 0, 14));
}

TEST_F(TwoHostTest, ForgedTunnelPacketsAreDroppedAndCounted) {
  const Bytes_t frame =
      UdpFrame(Mac(1), Mac(5), Ip(10, 20, 0, 10), Ip(10, 20, 0, 14), 1, 2, Bytes("forged"));
  auto seal = [&](TunnelCodec& c) {
    Bytes_t out(frame.size() + kTunnelOverhead);
    out.resize(c.Seal(frame, out));
    return out;
  };
  TunnelCodec wrong_key(kNet, 1);
  TunnelKey other;
  other.fill(0x01);
  ASSERT_TRUE(wrong_key.InstallKey(1, other).ok());
  TunnelCodec as_host1(kNet, 1);  // has the key (a member host)
  ASSERT_TRUE(as_host1.InstallKey(1, key_).ok());
  TunnelCodec stranger(kNet, 9);  // right key, but not a peer of h2
  ASSERT_TRUE(stranger.InstallKey(1, key_).ok());
  TunnelCodec other_net(kOtherNet, 1);
  ASSERT_TRUE(other_net.InstallKey(1, key_).ok());

  const Bytes_t good = seal(as_host1);
  SendUdp(seal(wrong_key));
  SendUdp(good);
  SendUdp(good);  // replay
  const Bytes_t good2 = seal(as_host1);
  Bytes_t truncated(good2.begin(), good2.end() - 1);
  SendUdp(truncated);
  SendUdp(Bytes_t(good.begin(), good.begin() + 10));
  SendUdp(seal(stranger));
  SendUdp(seal(other_net));  // h2 has no network 11
  ASSERT_TRUE(WaitFor([&] { return TunnelSeen(*h2_) >= 7; }));
  auto t = Tunnel(*h2_);
  EXPECT_EQ(t.rx_packets, 1u);
  EXPECT_EQ(t.drop(TunnelDrop::kAuthFailed), 2u);  // wrong key, truncated (tag cut)
  EXPECT_EQ(t.drop(TunnelDrop::kReplayed), 1u);
  EXPECT_EQ(t.drop(TunnelDrop::kUnknownSender), 1u);
  auto hc = h2_->host_tunnel_counters();
  EXPECT_EQ(hc.drop(TunnelDrop::kTruncated), 1u);
  EXPECT_EQ(hc.drop(TunnelDrop::kUnknownNetwork), 1u);
  // Exactly one copy of the genuine frame was delivered.
  auto got = r_->Recv();
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, frame);
  EXPECT_TRUE(r_->Empty());
}

TEST_F(TwoHostTest, FramesFromAPeerMustComeFromItsOwnNics) {
  // A member host (it has the key) sends a frame claiming r's MAC (on h2
  // itself) and one from a's MAC with another IP: both refused.
  TunnelCodec as_host1(kNet, 1);
  ASSERT_TRUE(as_host1.InstallKey(1, key_).ok());
  auto seal = [&](const Bytes_t& frame) {
    Bytes_t out(frame.size() + kTunnelOverhead);
    out.resize(as_host1.Seal(frame, out));
    return out;
  };
  SendUdp(seal(UdpFrame(Mac(5), Mac(5), Ip(10, 20, 0, 14), Ip(10, 20, 0, 14), 1, 2, {})));
  SendUdp(seal(UdpFrame(Mac(1), Mac(5), Ip(10, 20, 0, 11), Ip(10, 20, 0, 14), 1, 2, {})));
  SendUdp(seal(ArpRequest(Mac(1), Ip(10, 20, 0, 10), Ip(10, 20, 0, 14))));
  ASSERT_TRUE(WaitFor([&] { return TunnelSeen(*h2_) >= 3; }));
  auto t = Tunnel(*h2_);
  EXPECT_EQ(t.frame_drop(DropReason::kSpoofedMac), 1u);
  EXPECT_EQ(t.frame_drop(DropReason::kSpoofedIp), 1u);
  EXPECT_EQ(t.frame_drop(DropReason::kUnsupportedProtocol), 1u);
  EXPECT_TRUE(r_->Empty());
}

TEST_F(TwoHostTest, KeyRotationKeepsTrafficFlowing) {
  TunnelKey k2;
  k2.fill(0x77);
  // h1 rotates first: h2 still knows only epoch 1, so it drops epoch 2 ...
  ASSERT_TRUE(h1_->InstallTunnelKey(kNet, 2, k2).ok());
  a_->Send(UdpFrame(Mac(1), Mac(5), Ip(10, 20, 0, 10), Ip(10, 20, 0, 14), 1, 2, Bytes("e2")));
  ASSERT_TRUE(WaitFor([&] { return Tunnel(*h2_).drop(TunnelDrop::kUnknownEpoch) == 1; }));
  // ... until it has the key; then both directions work (h2 seals with 2,
  // h1 still accepts 1 as the previous epoch anyway).
  ASSERT_TRUE(h2_->InstallTunnelKey(kNet, 2, k2).ok());
  auto f = UdpFrame(Mac(1), Mac(5), Ip(10, 20, 0, 10), Ip(10, 20, 0, 14), 1, 2, Bytes("e2 again"));
  a_->Send(f);
  auto got = r_->Recv();
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, f);
  r_->Send(UdpFrame(Mac(5), Mac(1), Ip(10, 20, 0, 14), Ip(10, 20, 0, 10), 2, 1, Bytes("back")));
  EXPECT_TRUE(a_->Recv());
}

TEST_F(TwoHostTest, TwoStepRotationLosesNothing) {
  TunnelKey k2;
  k2.fill(0x77);
  ASSERT_TRUE(h1_->InstallTunnelKey(kNet, 2, k2, KeyUse::kOpenOnly).ok());
  ASSERT_TRUE(h2_->InstallTunnelKey(kNet, 2, k2, KeyUse::kOpenOnly).ok());
  ASSERT_TRUE(h1_->InstallTunnelKey(kNet, 2, k2).ok());  // h1 seals with 2, h2 not yet
  auto f = UdpFrame(Mac(1), Mac(5), Ip(10, 20, 0, 10), Ip(10, 20, 0, 14), 1, 2, Bytes("e2"));
  a_->Send(f);
  auto got = r_->Recv();
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, f);
  r_->Send(UdpFrame(Mac(5), Mac(1), Ip(10, 20, 0, 14), Ip(10, 20, 0, 10), 2, 1, Bytes("e1")));
  EXPECT_TRUE(a_->Recv());
  ASSERT_TRUE(h2_->InstallTunnelKey(kNet, 2, k2).ok());
  r_->Send(UdpFrame(Mac(5), Mac(1), Ip(10, 20, 0, 14), Ip(10, 20, 0, 10), 2, 1, Bytes("e2")));
  EXPECT_TRUE(a_->Recv());
  EXPECT_EQ(Tunnel(*h1_).drop(TunnelDrop::kUnknownEpoch), 0u);
  EXPECT_EQ(Tunnel(*h2_).drop(TunnelDrop::kUnknownEpoch), 0u);
}

TEST_F(TwoHostTest, NoKeyMeansNothingLeavesTheHost) {
  auto h3 = StartHost(3);
  ASSERT_TRUE(h3->AddNetwork(Net(kNet, "lab")).ok());
  auto p = PortCfg("z", Mac(8), Ip(10, 20, 0, 30), "vm-z");
  ASSERT_TRUE(h3->AddPort(kNet, p).ok());
  FakeVm z(p.vm_path, p.switch_path);
  ASSERT_TRUE(h3->SetRemote(kNet, {PeerHost{2, Ip(127, 0, 0, 1), h2_->tunnel_port()}},
                            {RemoteNic{Mac(5), Ip(10, 20, 0, 14), "vm-r", 2}})
                  .ok());
  z.Send(UdpFrame(Mac(8), Mac(5), Ip(10, 20, 0, 30), Ip(10, 20, 0, 14), 1, 2, {}));
  ASSERT_TRUE(WaitFor([&] { return h3->GetTunnelCounters(kNet)->tx_no_key == 1; }));
}

}  // namespace
}  // namespace vmgrid::vnet
