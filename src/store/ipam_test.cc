#include "store/ipam.h"

#include <gtest/gtest.h>

namespace vmgrid {
namespace {

TEST(IpamTest, ParsesPrivateSubnetsOnly) {
  auto s = ParseSubnet("10.20.0.0/24");
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->prefix, 24);
  EXPECT_EQ(s->size(), 256u);
  EXPECT_EQ(s->last_vm_index(), 254u);
  EXPECT_EQ(FormatSubnet(*s), "10.20.0.0/24");
  EXPECT_EQ(HostAddress(*s, 10), "10.20.0.10");
  for (const char* ok : {"172.16.5.0/24", "192.168.0.0/16", "100.64.0.0/16", "10.0.0.16/28"})
    EXPECT_TRUE(ParseSubnet(ok).ok()) << ok;
  for (const char* bad : {"", "/24", "10.20.0.0/", "10.20.0.0/33", "10.20.0.0/8", "10.20.0.0/29",
                          "10.20.0.5/24", "11.0.0.0/16", "172.32.0.0/16", "1.2.3/24",
                          "10.20.0.0/024", "10.20.0.0 /24", "10.020.0.0/24x"}) {
    auto r = ParseSubnet(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message.find("subnet"), std::string::npos);
  }
  // The error names the network address when host bits are set.
  EXPECT_NE(ParseSubnet("10.20.0.5/24").error().message.find("10.20.0.0"), std::string::npos);
}

TEST(IpamTest, MacsAreLocallyAdministeredUnicastAndUniquePerAddress) {
  EXPECT_EQ(NicMac(1, 10), "0a:00:00:01:00:0a");
  EXPECT_EQ(NicMac(0xABCDEF, 0x1234), "0a:ab:cd:ef:12:34");
  EXPECT_NE(NicMac(1, 10), NicMac(2, 10));
  EXPECT_NE(NicMac(1, 10), NicMac(1, 11));
  // First octet 0x0a: bit 0 clear (unicast), bit 1 set (locally administered).
  EXPECT_EQ(0x0a & 1, 0);
  EXPECT_EQ(0x0a & 2, 2);
}

}  // namespace
}  // namespace vmgrid
