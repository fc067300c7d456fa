#include <gtest/gtest.h>

#include <map>

#include "vnet/dhcp.h"
#include "vnet/dns.h"
#include "vnet/test_frames.h"

namespace vmgrid::vnet {
namespace {

using testing::DhcpClientMessage;
using testing::DnsQueryMessage;
using testing::Ip;
using testing::Mac;

TEST(DhcpTest, ParsesClientMessages) {
  auto m = DhcpClientMessage(3, Mac(7), 0x1234, Ip(10, 0, 0, 5), Ip(10, 0, 0, 2), 0x8000);
  auto r = ParseDhcpRequest(m);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->type, DhcpType::kRequest);
  EXPECT_EQ(r->xid, 0x1234u);
  EXPECT_EQ(r->flags, 0x8000);
  EXPECT_EQ(r->chaddr, Mac(7));
  EXPECT_EQ(r->requested_ip, Ip(10, 0, 0, 5));
  EXPECT_EQ(r->server_id, Ip(10, 0, 0, 2));
}

TEST(DhcpTest, RefusesMalformedMessages) {
  const auto good = DhcpClientMessage(1, Mac(7), 1);
  ASSERT_TRUE(ParseDhcpRequest(good).ok());
  auto reply_op = good;
  reply_op[0] = 2;
  EXPECT_FALSE(ParseDhcpRequest(reply_op).ok());
  auto no_cookie = good;
  no_cookie[236] = 0;
  EXPECT_FALSE(ParseDhcpRequest(no_cookie).ok());
  // An option whose length runs past the end (and no end option).
  std::vector<uint8_t> overrun(good.begin(), good.begin() + 240);
  overrun.insert(overrun.end(), {53, 1, 1, 12, 200, 'a'});
  EXPECT_FALSE(ParseDhcpRequest(overrun).ok());
  // No message type.
  std::vector<uint8_t> untyped(good.begin(), good.begin() + 240);
  untyped.push_back(255);
  EXPECT_FALSE(ParseDhcpRequest(untyped).ok());
  // Message type with a wrong length, a bad requested address length.
  std::vector<uint8_t> bad_type(good.begin(), good.begin() + 240);
  bad_type.insert(bad_type.end(), {53, 2, 1, 1, 255});
  EXPECT_FALSE(ParseDhcpRequest(bad_type).ok());
  std::vector<uint8_t> bad_req(good.begin(), good.begin() + 240);
  bad_req.insert(bad_req.end(), {53, 1, 3, 50, 3, 10, 0, 0, 255});
  EXPECT_FALSE(ParseDhcpRequest(bad_req).ok());
  // Every truncation fails cleanly (the end option is last).
  for (size_t n = 0; n < 250; ++n) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<long>(n));
    EXPECT_FALSE(ParseDhcpRequest(cut).ok()) << n;
  }
}

TEST(DhcpTest, ReplyCarriesTheLease) {
  DhcpReply r;
  r.type = DhcpType::kAck;
  r.xid = 42;
  r.chaddr = Mac(7);
  r.yiaddr = Ip(10, 0, 0, 5);
  r.server_id = Ip(10, 0, 0, 2);
  r.subnet_mask = 0xffffff00;
  r.router = Ip(10, 0, 0, 1);
  r.dns_server = Ip(10, 0, 0, 2);
  r.domain = "lab";
  r.hostname = "vm1";
  r.mtu = 1400;
  auto m = BuildDhcpReply(r);
  ASSERT_GE(m.size(), 300u);
  EXPECT_EQ(m[0], 2);
  EXPECT_EQ(Load32(&m[4]), 42u);
  EXPECT_EQ(Load32(&m[16]), Ip(10, 0, 0, 5));
  // Walk the options like a client would.
  std::map<uint8_t, std::vector<uint8_t>> opts;
  for (size_t i = 240; i < m.size() && m[i] != 255;) {
    if (m[i] == 0) {
      ++i;
      continue;
    }
    opts[m[i]] = std::vector<uint8_t>(m.begin() + static_cast<long>(i) + 2,
                                      m.begin() + static_cast<long>(i) + 2 + m[i + 1]);
    i += 2 + m[i + 1];
  }
  EXPECT_EQ(opts[53], std::vector<uint8_t>{5});
  EXPECT_EQ(Load32(opts[54].data()), Ip(10, 0, 0, 2));
  EXPECT_EQ(Load32(opts[1].data()), 0xffffff00u);
  EXPECT_EQ(Load32(opts[3].data()), Ip(10, 0, 0, 1));
  EXPECT_EQ(Load32(opts[6].data()), Ip(10, 0, 0, 2));
  EXPECT_EQ(std::string(opts[15].begin(), opts[15].end()), "lab");
  EXPECT_EQ(std::string(opts[12].begin(), opts[12].end()), "vm1");
  EXPECT_EQ(Load16(opts[26].data()), 1400);
  EXPECT_EQ(Load32(opts[51].data()), 3600u);
}

TEST(DnsTest, ParsesAQuery) {
  auto m = DnsQueryMessage(0xbeef, "Web1.Lab");
  auto q = ParseDnsQuery(m);
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(q->id, 0xbeef);
  EXPECT_EQ(q->name, "web1.lab");
  EXPECT_EQ(q->qtype, kDnsTypeA);
  EXPECT_TRUE(q->recursion_desired);
  auto resp = BuildDnsResponse(*q, DnsRcode::kNoError, Ip(10, 0, 0, 5), 10);
  EXPECT_EQ(Load16(&resp[0]), 0xbeef);
  EXPECT_EQ(Load16(&resp[2]) & 0x800f, 0x8000);
  EXPECT_EQ(Load16(&resp[6]), 1);
  EXPECT_EQ(Load32(&resp[resp.size() - 4]), Ip(10, 0, 0, 5));
  auto nx = BuildDnsResponse(*q, DnsRcode::kNxDomain, std::nullopt, 10);
  EXPECT_EQ(Load16(&nx[2]) & 0xf, 3);
  EXPECT_EQ(Load16(&nx[6]), 0);
}

TEST(DnsTest, RefusesMalformedQueries) {
  const auto good = DnsQueryMessage(1, "a.b");
  ASSERT_TRUE(ParseDnsQuery(good).ok());
  auto response = good;
  response[2] |= 0x80;
  EXPECT_FALSE(ParseDnsQuery(response).ok());
  auto two = good;
  two[5] = 2;
  EXPECT_FALSE(ParseDnsQuery(two).ok());
  auto answers = good;
  answers[7] = 1;
  EXPECT_FALSE(ParseDnsQuery(answers).ok());
  auto pointer = good;
  pointer[12] = 0xc0;
  EXPECT_FALSE(ParseDnsQuery(pointer).ok());
  auto bad_byte = good;
  bad_byte[13] = '/';
  EXPECT_FALSE(ParseDnsQuery(bad_byte).ok());
  auto opcode = good;
  opcode[2] |= 0x08;
  EXPECT_FALSE(ParseDnsQuery(opcode).ok());
  EXPECT_FALSE(ParseDnsQuery(DnsQueryMessage(1, std::string(64, 'a'))).ok());  // label > 63
  std::string long_name;
  for (int i = 0; i < 5; ++i) long_name += std::string(60, 'a') + ".";
  long_name.pop_back();
  EXPECT_FALSE(ParseDnsQuery(DnsQueryMessage(1, long_name)).ok());  // name > 253
  for (size_t n = 0; n < good.size(); ++n) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<long>(n));
    EXPECT_FALSE(ParseDnsQuery(cut).ok()) << n;
  }
}

}  // namespace
}  // namespace vmgrid::vnet
