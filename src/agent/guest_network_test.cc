#include "agent/guest_network.h"

#include <gtest/gtest.h>

namespace vmgrid {
namespace {

NicSpec Nic(int index, const std::string& mac) {
  NicSpec n;
  n.index = index;
  n.vni = 7;
  n.network = "lab";
  n.subnet = "10.20.0.0/24";
  n.mac = mac;
  n.ip = "10.20.0.10";
  return n;
}

TEST(GuestNetworkTest, OneLinePerNicAtItsPciSlot) {
  auto s = GuestNetworkReconfigScript({Nic(0, "0a:00:00:00:00:01"), Nic(2, "0A:00:00:00:00:FF")});
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_NE(s->find("\nnic 10 0a:00:00:00:00:01\n"), std::string::npos) << *s;
  EXPECT_NE(s->find("\nnic 12 0a:00:00:00:00:ff\n"), std::string::npos) << *s;
  EXPECT_NE(s->find("/sys/bus/pci/rescan"), std::string::npos);
  EXPECT_TRUE(s->ends_with("exit $rc\n"));
}

TEST(GuestNetworkTest, OnlyVmgridsValuesReachTheScript) {
  // The MAC and slot go into a shell script: anything else is refused.
  for (std::string mac : {"0a:00:00:00:00:01; reboot", "$(reboot)", "0a:00:00:00:00", ""}) {
    auto s = GuestNetworkReconfigScript({Nic(0, mac)});
    ASSERT_FALSE(s.ok()) << mac;
    EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument) << mac;
  }
  for (int index : {-1, 8, 100}) {
    auto s = GuestNetworkReconfigScript({Nic(index, "0a:00:00:00:00:01")});
    ASSERT_FALSE(s.ok()) << index;
    EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument);
  }
}

TEST(GuestNetworkTest, NoNicsNoWork) {
  EXPECT_TRUE(ReconfigureGuestNetwork("/nonexistent/qga.sock", {}, std::chrono::seconds(1)).ok());
}

}  // namespace
}  // namespace vmgrid
