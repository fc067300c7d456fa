#include "vnet/tunnel.h"

#include <gtest/gtest.h>

#include <vector>

namespace vmgrid::vnet {
namespace {

TunnelKey Key(uint8_t fill) {
  TunnelKey k;
  k.fill(fill);
  return k;
}

std::vector<uint8_t> Seal(TunnelCodec& c, const std::vector<uint8_t>& frame) {
  std::vector<uint8_t> out(frame.size() + kTunnelOverhead);
  size_t n = c.Seal(frame, out);
  out.resize(n);
  return out;
}

TunnelCodec::Opened Open(TunnelCodec& c, const std::vector<uint8_t>& pkt,
                         std::vector<uint8_t>* frame = nullptr) {
  std::vector<uint8_t> out(pkt.size());
  auto o = c.Open(pkt, out);
  if (frame && o.ok())
    *frame = std::vector<uint8_t>(out.begin(), out.begin() + static_cast<long>(o.frame_len));
  return o;
}

struct Pair {
  TunnelCodec a{7, 1};
  TunnelCodec b{7, 2};
  Pair() {
    EXPECT_TRUE(a.InstallKey(1, Key(0x11)).ok());
    EXPECT_TRUE(b.InstallKey(1, Key(0x11)).ok());
  }
};

const std::vector<uint8_t> kFrame = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

TEST(TunnelTest, RoundTrip) {
  Pair p;
  auto pkt = Seal(p.a, kFrame);
  ASSERT_EQ(pkt.size(), kFrame.size() + kTunnelOverhead);
  std::vector<uint8_t> frame;
  auto o = Open(p.b, pkt, &frame);
  ASSERT_TRUE(o.ok()) << TunnelDropName(o.error);
  EXPECT_EQ(frame, kFrame);
  EXPECT_EQ(o.header.sender, 1u);
  EXPECT_EQ(o.header.network_id, 7u);
}

TEST(TunnelTest, NoKeyNoSeal) {
  TunnelCodec c(7, 1);
  std::vector<uint8_t> out(100);
  EXPECT_EQ(c.Seal(kFrame, out), 0u);
  EXPECT_FALSE(c.InstallKey(1, std::vector<uint8_t>(16)).ok());
}

TEST(TunnelTest, WrongKeyFailsAuthentication) {
  Pair p;
  TunnelCodec other(7, 3);
  ASSERT_TRUE(other.InstallKey(1, Key(0x22)).ok());
  EXPECT_EQ(Open(p.b, Seal(other, kFrame)).error, TunnelDrop::kAuthFailed);
}

TEST(TunnelTest, AnyFlippedBitFails) {
  Pair p;
  auto pkt = Seal(p.a, kFrame);
  for (size_t i = 0; i < pkt.size(); ++i) {
    auto bad = pkt;
    bad[i] ^= 0x01;
    auto o = Open(p.b, bad);
    EXPECT_FALSE(o.ok()) << "byte " << i;
  }
  EXPECT_TRUE(Open(p.b, pkt).ok());  // and the window did not move for the forgeries
}

TEST(TunnelTest, OtherNetworkRefused) {
  Pair p;
  TunnelCodec net8(8, 1);
  ASSERT_TRUE(net8.InstallKey(1, Key(0x11)).ok());  // even with the same key
  EXPECT_EQ(Open(p.b, Seal(net8, kFrame)).error, TunnelDrop::kUnknownNetwork);
}

TEST(TunnelTest, TruncatedRefused) {
  Pair p;
  auto pkt = Seal(p.a, kFrame);
  for (size_t n = 0; n < pkt.size(); ++n) {
    std::vector<uint8_t> cut(pkt.begin(), pkt.begin() + static_cast<long>(n));
    auto o = Open(p.b, cut);
    EXPECT_FALSE(o.ok()) << n;
    if (n < kTunnelOverhead) {
      EXPECT_EQ(o.error, TunnelDrop::kTruncated);
    }
  }
}

TEST(TunnelTest, ReplayRefused) {
  Pair p;
  auto pkt = Seal(p.a, kFrame);
  EXPECT_TRUE(Open(p.b, pkt).ok());
  EXPECT_EQ(Open(p.b, pkt).error, TunnelDrop::kReplayed);
}

TEST(TunnelTest, ReorderWithinWindowAcceptedBeyondRefused) {
  Pair p;
  std::vector<std::vector<uint8_t>> pkts;
  for (size_t i = 0; i < ReplayWindow::kSize + 10; ++i) pkts.push_back(Seal(p.a, kFrame));
  // Deliver 1..end first, then 0 (too old) and a late one still in the window.
  for (size_t i = 1; i < pkts.size(); ++i)
    if (i != pkts.size() - 5) {
      ASSERT_TRUE(Open(p.b, pkts[i]).ok()) << i;
    }
  EXPECT_EQ(Open(p.b, pkts[0]).error, TunnelDrop::kTooOld);
  EXPECT_TRUE(Open(p.b, pkts[pkts.size() - 5]).ok());
  EXPECT_EQ(Open(p.b, pkts[pkts.size() - 5]).error, TunnelDrop::kReplayed);
}

TEST(TunnelTest, ReplayWindowEdges) {
  ReplayWindow w;
  EXPECT_EQ(w.Check(5000), TunnelDrop::kNone);
  w.Accept(5000);
  EXPECT_EQ(w.Check(5000), TunnelDrop::kReplayed);
  EXPECT_EQ(w.Check(5000 - ReplayWindow::kSize + 1), TunnelDrop::kNone);
  EXPECT_EQ(w.Check(5000 - ReplayWindow::kSize), TunnelDrop::kTooOld);
  w.Accept(5000 + ReplayWindow::kSize);  // slides past 5000: its bit must not linger
  EXPECT_EQ(w.Check(5000), TunnelDrop::kTooOld);
  EXPECT_EQ(w.Check(5001), TunnelDrop::kNone);
  w.Accept(5001);
  EXPECT_EQ(w.Check(5001), TunnelDrop::kReplayed);
  w.Accept(5000 + 5 * ReplayWindow::kSize);
  EXPECT_EQ(w.Check(5000 + 4 * ReplayWindow::kSize + 1), TunnelDrop::kNone);
}

TEST(TunnelTest, RotationAcceptsCurrentAndPreviousOnly) {
  Pair p;
  auto e1 = Seal(p.a, kFrame);
  ASSERT_TRUE(p.a.InstallKey(2, Key(0x22)).ok());
  ASSERT_TRUE(p.b.InstallKey(2, Key(0x22)).ok());
  auto e2 = Seal(p.a, kFrame);
  EXPECT_EQ(ParseTunnelHeader(e2).header.epoch, 2u);
  EXPECT_TRUE(Open(p.b, e1).ok());  // previous epoch: still accepted
  EXPECT_TRUE(Open(p.b, e2).ok());
  auto e2b = Seal(p.a, kFrame);
  ASSERT_TRUE(p.b.InstallKey(3, Key(0x33)).ok());
  EXPECT_TRUE(Open(p.b, e2b).ok());  // epoch 2 is now the previous one
  auto e1b = e1;
  EXPECT_EQ(Open(p.b, e1b).error, TunnelDrop::kUnknownEpoch);  // epoch 1 forgotten
  // Epochs only move forward.
  EXPECT_EQ(p.b.InstallKey(3, Key(0x44)).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(p.b.InstallKey(2, Key(0x44)).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(p.b.current_epoch(), 3u);
}

TEST(TunnelTest, OpenOnlyKeyThenSealingLosesNothing) {
  Pair p;
  // Phase 1: both learn epoch 2 for opening; both still seal with 1.
  ASSERT_TRUE(p.a.InstallKey(2, Key(0x22), KeyUse::kOpenOnly).ok());
  ASSERT_TRUE(p.b.InstallKey(2, Key(0x22), KeyUse::kOpenOnly).ok());
  EXPECT_EQ(p.a.current_epoch(), 1u);
  EXPECT_TRUE(Open(p.b, Seal(p.a, kFrame)).ok());
  // Phase 2, a first: a seals with 2, which b (still at 1) accepts as its next key.
  ASSERT_TRUE(p.a.InstallKey(2, Key(0x22)).ok());
  auto e2 = Seal(p.a, kFrame);
  EXPECT_EQ(ParseTunnelHeader(e2).header.epoch, 2u);
  EXPECT_TRUE(Open(p.b, e2).ok());
  EXPECT_TRUE(Open(p.a, Seal(p.b, kFrame)).ok());  // b's epoch 1: a's previous
  // b promotes epoch 2: the replay window it built while 2 was open-only stays.
  ASSERT_TRUE(p.b.InstallKey(2, Key(0x22)).ok());
  EXPECT_EQ(Open(p.b, e2).error, TunnelDrop::kReplayed);
  EXPECT_TRUE(Open(p.b, Seal(p.a, kFrame)).ok());
  // An open-only key must be newer than the current one; a newer one replaces it.
  EXPECT_FALSE(p.b.InstallKey(2, Key(0x33), KeyUse::kOpenOnly).ok());
  ASSERT_TRUE(p.b.InstallKey(3, Key(0x33), KeyUse::kOpenOnly).ok());
  ASSERT_TRUE(p.b.InstallKey(4, Key(0x44), KeyUse::kOpenOnly).ok());
  TunnelCodec c3(7, 3);
  ASSERT_TRUE(c3.InstallKey(3, Key(0x33)).ok());
  EXPECT_EQ(Open(p.b, Seal(c3, kFrame)).error, TunnelDrop::kUnknownEpoch);
}

TEST(TunnelTest, SequenceNeverRepeatsAcrossCodecs) {
  // A restarted switch (a new codec with the same key) starts above the old one.
  TunnelCodec first(7, 1);
  ASSERT_TRUE(first.InstallKey(1, Key(1)).ok());
  const uint64_t s1 = ParseTunnelHeader(Seal(first, kFrame)).header.seq;
  const uint64_t s2 = ParseTunnelHeader(Seal(first, kFrame)).header.seq;
  EXPECT_EQ(s2, s1 + 1);
  TunnelCodec restarted(7, 1);
  ASSERT_TRUE(restarted.InstallKey(1, Key(1)).ok());
  EXPECT_GT(ParseTunnelHeader(Seal(restarted, kFrame)).header.seq, s2);
}

TEST(TunnelTest, HeaderChecks) {
  Pair p;
  auto pkt = Seal(p.a, kFrame);
  auto v2 = pkt;
  v2[0] = 2;
  EXPECT_EQ(ParseTunnelHeader(v2).error, TunnelDrop::kBadHeader);
  auto reserved = pkt;
  reserved[3] = 1;
  EXPECT_EQ(Open(p.b, reserved).error, TunnelDrop::kBadHeader);
}

}  // namespace
}  // namespace vmgrid::vnet
