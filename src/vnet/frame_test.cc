#include "vnet/frame.h"

#include <gtest/gtest.h>

#include "vnet/test_frames.h"

namespace vmgrid::vnet {
namespace {

using testing::ArpRequest;
using testing::Ip;
using testing::Mac;
using testing::UdpFrame;

TEST(FrameTest, ParsesArpRequest) {
  auto f = ArpRequest(Mac(1), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6));
  FrameParse p = ParseFrame(f);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(p.frame.arp);
  EXPECT_EQ(p.frame.arp->op, 1);
  EXPECT_EQ(p.frame.arp->sender_ip, Ip(10, 0, 0, 5));
  EXPECT_EQ(p.frame.arp->target_ip, Ip(10, 0, 0, 6));
  EXPECT_EQ(p.frame.eth.dst, kBroadcastMac);
}

TEST(FrameTest, EveryTruncationOfValidFramesIsRefusedOrSafe) {
  auto udp = UdpFrame(Mac(1), Mac(2), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6), 1000, 2000,
                      testing::Bytes("hello world"));
  auto arp = ArpRequest(Mac(1), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6));
  for (const auto& full : {udp, arp}) {
    ASSERT_TRUE(ParseFrame(full).ok());
    for (size_t n = 0; n < full.size(); ++n) {
      // Copy to an exact-size heap buffer so ASan sees any over-read.
      std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<long>(n));
      FrameParse p = ParseFrame(cut);
      EXPECT_FALSE(p.ok()) << "length " << n;
    }
  }
}

TEST(FrameTest, ParsesUdpAndRespectsLengths) {
  auto f =
      UdpFrame(Mac(1), Mac(2), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6), 1000, 53, testing::Bytes("abc"));
  f.resize(f.size() + 10, 0);  // Ethernet padding after the IPv4 total length
  FrameParse p = ParseFrame(f);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(p.frame.udp);
  EXPECT_EQ(p.frame.udp->dst_port, 53);
  EXPECT_EQ(p.frame.udp->payload.size(), 3u);
  EXPECT_EQ(p.frame.ipv4->payload.size(), 11u);
}

TEST(FrameTest, RefusesBadIpv4Headers) {
  auto good = UdpFrame(Mac(1), Mac(2), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6), 1, 2, {});
  auto bad_sum = good;
  bad_sum[14 + 10] ^= 1;
  EXPECT_EQ(ParseFrame(bad_sum).error, DropReason::kMalformed);
  auto bad_version = good;
  bad_version[14] = 0x65;
  EXPECT_EQ(ParseFrame(bad_version).error, DropReason::kMalformed);
  auto short_ihl = good;
  short_ihl[14] = 0x44;
  EXPECT_EQ(ParseFrame(short_ihl).error, DropReason::kMalformed);
  // Options claimed beyond the frame.
  auto long_ihl = good;
  long_ihl[14] = 0x4f;
  EXPECT_EQ(ParseFrame(long_ihl).error, DropReason::kMalformed);
  auto long_total = good;
  Store16(&long_total[16], 2000);
  EXPECT_EQ(ParseFrame(long_total).error, DropReason::kMalformed);
  // UDP length beyond the IPv4 payload (header checksum still valid).
  auto bad_udp = good;
  Store16(&bad_udp[14 + 20 + 4], 100);
  EXPECT_EQ(ParseFrame(bad_udp).error, DropReason::kMalformed);
}

TEST(FrameTest, Ipv4OptionsAreSkipped) {
  // A 24-byte header (one 4-byte option: NOPs), checksum recomputed.
  auto f = UdpFrame(Mac(1), Mac(2), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6), 7, 9, testing::Bytes("x"));
  std::vector<uint8_t> g(f.begin(), f.begin() + 34);
  g.insert(g.end(), {1, 1, 1, 1});
  g.insert(g.end(), f.begin() + 34, f.end());
  g[14] = 0x46;
  Store16(&g[16], static_cast<uint16_t>(Load16(&g[16]) + 4));
  Store16(&g[24], 0);
  Store16(&g[24], ChecksumFinish(ChecksumAdd(0, {&g[14], 24})));
  FrameParse p = ParseFrame(g);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(p.frame.udp);
  EXPECT_EQ(p.frame.udp->dst_port, 9);
}

TEST(FrameTest, FragmentsCarryNoUdpView) {
  auto f = UdpFrame(Mac(1), Mac(2), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6), 7, 9, testing::Bytes("x"));
  Store16(&f[14 + 6], 0x2000);  // MF
  Store16(&f[14 + 10], 0);
  Store16(&f[14 + 10], ChecksumFinish(ChecksumAdd(0, {&f[14], 20})));
  FrameParse p = ParseFrame(f);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p.frame.ipv4->fragment);
  EXPECT_FALSE(p.frame.udp);
}

TEST(FrameTest, VlanTagsAndOversizeAreRefused) {
  auto f = ArpRequest(Mac(1), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6));
  Store16(&f[12], kEtherTypeVlan);
  EXPECT_EQ(ParseFrame(f).error, DropReason::kVlanTagged);
  Store16(&f[12], kEtherTypeQinQ);
  EXPECT_EQ(ParseFrame(f).error, DropReason::kVlanTagged);
  std::vector<uint8_t> big(kMaxFrameLen + 1, 0);
  EXPECT_EQ(ParseFrame(big).error, DropReason::kMalformed);
}

TEST(FrameTest, ArpForOtherProtocolsIsMalformed) {
  auto f = ArpRequest(Mac(1), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6));
  f[19] = 16;  // plen 16
  EXPECT_EQ(ParseFrame(f).error, DropReason::kMalformed);
  f = ArpRequest(Mac(1), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6));
  Store16(&f[20], 3);  // RARP op
  EXPECT_EQ(ParseFrame(f).error, DropReason::kMalformed);
}

TEST(FrameTest, BuiltUdpFrameHasValidChecksums) {
  auto f = UdpFrame(Mac(1), Mac(2), Ip(10, 0, 0, 5), Ip(10, 0, 0, 6), 67, 68,
                    testing::Bytes("payload!"));
  FrameParse p = ParseFrame(f);
  ASSERT_TRUE(p.ok());
  // UDP checksum over pseudo-header + datagram folds to zero.
  const uint8_t* ip = &f[14];
  uint32_t sum = ChecksumAdd(0, {ip + 12, 8});
  sum += kIpProtoUdp;
  sum += Load16(ip + 20 + 4);
  sum = ChecksumAdd(sum, {ip + 20, Load16(ip + 20 + 4)});
  EXPECT_EQ(ChecksumFinish(sum), 0);
  std::vector<uint8_t> tiny(20);
  EXPECT_EQ(BuildUdpFrame(tiny, {}, testing::Bytes("x")), 0u);
  EXPECT_EQ(BuildArpReply(tiny, Mac(1), 1, Mac(2), 2), 0u);
}

TEST(FrameTest, MacAndIpText) {
  EXPECT_EQ(FormatMac(Mac(0xab)), "52:54:00:00:00:ab");
  auto m = ParseMac("52:54:00:00:00:AB");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*m, Mac(0xab));
  EXPECT_FALSE(ParseMac("52:54:00:00:00").ok());
  EXPECT_FALSE(ParseMac("52-54-00-00-00-ab").ok());
  EXPECT_EQ(FormatIpv4(Ip(10, 20, 0, 1)), "10.20.0.1");
  EXPECT_EQ(*ParseIpv4("10.20.0.1"), Ip(10, 20, 0, 1));
  for (const char* bad : {"10.20.0", "10.20.0.256", "10.20.0.01", "1.2.3.4.", "a.b.c.d", ""})
    EXPECT_FALSE(ParseIpv4(bad).ok()) << bad;
}

}  // namespace
}  // namespace vmgrid::vnet
