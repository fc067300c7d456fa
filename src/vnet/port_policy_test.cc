#include "vnet/port_policy.h"

#include <gtest/gtest.h>

#include "vnet/test_frames.h"

namespace vmgrid::vnet {
namespace {

using testing::ArpFrame;
using testing::ArpRequest;
using testing::Ip;
using testing::Mac;
using testing::UdpFrame;

const PortIdentity kPort{Mac(1), Ip(10, 0, 0, 5)};

DropReason Verdict(const PortIdentity& port, const std::vector<uint8_t>& bytes) {
  FrameParse p = ParseFrame(bytes);
  if (!p.ok()) return p.error;
  return CheckFromPort(port, p.frame);
}

TEST(PortPolicyTest, OwnTrafficPasses) {
  EXPECT_EQ(Verdict(kPort, ArpRequest(Mac(1), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6))),
            DropReason::kNone);
  EXPECT_EQ(Verdict(kPort, UdpFrame(Mac(1), Mac(2), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6), 1, 2, {})),
            DropReason::kNone);
  // Gratuitous ARP for its own address and an RFC 5227 probe.
  EXPECT_EQ(Verdict(kPort, ArpRequest(Mac(1), Ip(10, 0, 0, 5), Ip(10, 0, 0, 5))),
            DropReason::kNone);
  EXPECT_EQ(Verdict(kPort, ArpRequest(Mac(1), 0, Ip(10, 0, 0, 5))), DropReason::kNone);
}

TEST(PortPolicyTest, ForgedSourcesAreDropped) {
  EXPECT_EQ(Verdict(kPort, UdpFrame(Mac(9), Mac(2), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6), 1, 2, {})),
            DropReason::kSpoofedMac);
  EXPECT_EQ(Verdict(kPort, UdpFrame(Mac(1), Mac(2), Ip(10, 0, 0, 7), Ip(10, 0, 0, 6), 1, 2, {})),
            DropReason::kSpoofedIp);
  // ARP claiming another IP, or another sender MAC inside the ARP body.
  EXPECT_EQ(Verdict(kPort, ArpRequest(Mac(1), Ip(10, 0, 0, 7), Ip(10, 0, 0, 6))),
            DropReason::kSpoofedArp);
  EXPECT_EQ(Verdict(kPort, ArpFrame(2, Mac(1), Mac(2), Mac(9), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6))),
            DropReason::kSpoofedArp);
  // Gratuitous ARP taking over someone else's address.
  EXPECT_EQ(Verdict(kPort, ArpRequest(Mac(1), Ip(10, 0, 0, 6), Ip(10, 0, 0, 6))),
            DropReason::kSpoofedArp);
}

// A router port (the egress gateway) sends the outside's addresses as IPv4
// sources, but its MAC and its ARP are held to the same rules as a VM's.
TEST(PortPolicyTest, RouterPortMaySendAnyIpv4SourceButNotAnotherMacOrArp) {
  const PortIdentity router{Mac(1), Ip(10, 0, 0, 1), /*router=*/true};
  EXPECT_EQ(Verdict(router, UdpFrame(Mac(1), Mac(2), Ip(9, 9, 9, 9), Ip(10, 0, 0, 6), 1, 2, {})),
            DropReason::kNone);
  EXPECT_EQ(Verdict(router, UdpFrame(Mac(9), Mac(2), Ip(9, 9, 9, 9), Ip(10, 0, 0, 6), 1, 2, {})),
            DropReason::kSpoofedMac);
  EXPECT_EQ(Verdict(router, ArpRequest(Mac(1), Ip(10, 0, 0, 1), Ip(10, 0, 0, 6))),
            DropReason::kNone);
  EXPECT_EQ(Verdict(router, ArpRequest(Mac(1), Ip(9, 9, 9, 9), Ip(10, 0, 0, 6))),
            DropReason::kSpoofedArp);
  // A VM port is not a router.
  EXPECT_EQ(Verdict(kPort, UdpFrame(Mac(1), Mac(2), Ip(9, 9, 9, 9), Ip(10, 0, 0, 6), 1, 2, {})),
            DropReason::kSpoofedIp);
}

TEST(PortPolicyTest, UnassignedPortMayOnlyDoDhcp) {
  const PortIdentity bare{Mac(1), 0};
  EXPECT_EQ(Verdict(bare, UdpFrame(Mac(1), kBroadcastMac, 0, 0xffffffff, 68, 67, {})),
            DropReason::kNone);
  EXPECT_EQ(Verdict(bare, UdpFrame(Mac(1), kBroadcastMac, 0, 0xffffffff, 68, 68, {})),
            DropReason::kSpoofedIp);
  EXPECT_EQ(Verdict(bare, UdpFrame(Mac(1), Mac(2), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6), 68, 67, {})),
            DropReason::kSpoofedIp);
  EXPECT_EQ(Verdict(bare, ArpRequest(Mac(1), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6))),
            DropReason::kSpoofedArp);
  EXPECT_EQ(Verdict(bare, ArpRequest(Mac(1), 0, Ip(10, 0, 0, 6))), DropReason::kNone);
}

TEST(PortPolicyTest, OtherEthertypesAreUnsupported) {
  auto f = ArpRequest(Mac(1), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6));
  Store16(&f[12], 0x86dd);  // IPv6
  EXPECT_EQ(Verdict(kPort, f), DropReason::kUnsupportedProtocol);
}

}  // namespace
}  // namespace vmgrid::vnet
