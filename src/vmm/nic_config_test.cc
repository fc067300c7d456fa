#include "vmm/nic_config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "vmm/qemu_process.h"

namespace vmgrid {
namespace {

NicConfig Dgram(const std::string& mac, const std::string& remote, const std::string& local = "") {
  NicConfig n;
  n.mac = mac;
  n.backend = NicBackend::kDgram;
  n.remote_path = remote;
  n.local_path = local;
  return n;
}

TEST(MacTest, AcceptsUnicastAndRejectsTheRest) {
  EXPECT_TRUE(IsValidMac("52:54:00:12:34:56"));
  EXPECT_TRUE(IsValidMac("02:00:00:00:00:01"));
  EXPECT_TRUE(IsValidMac("AA:bb:CC:dd:EE:0f"));
  EXPECT_TRUE(IsValidMac("00:1b:21:00:00:01"));  // a vendor's (universal) address is allowed
  for (const char* bad : {"", "52:54:00:12:34", "52:54:00:12:34:56:78", "52-54-00-12-34-56",
                          "52:54:00:12:34:5g", "5:54:00:12:34:567", "52:54:00:12:34:56 ",
                          "00:00:00:00:00:00",   // zero
                          "01:00:5e:00:00:01",   // multicast
                          "ff:ff:ff:ff:ff:ff",   // broadcast
                          "53:54:00:12:34:56"})  // I/G bit set
  {
    EXPECT_FALSE(IsValidMac(bad)) << bad;
  }
}

TEST(MacTest, LocallyAdministered) {
  EXPECT_TRUE(IsLocallyAdministeredMac("52:54:00:12:34:56"));  // QEMU's default prefix is local
  EXPECT_TRUE(IsLocallyAdministeredMac("02:00:00:00:00:01"));
  EXPECT_FALSE(IsLocallyAdministeredMac("00:1b:21:00:00:01"));
  EXPECT_EQ(NormalizeMac("AA:BB:cc:DD:ee:FF"), "aa:bb:cc:dd:ee:ff");
}

TEST(MacTest, GeneratedMacsAreLocalUnicastAndDiffer) {
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    std::string mac = RandomLocalMac();
    EXPECT_TRUE(IsValidMac(mac)) << mac;
    EXPECT_TRUE(IsLocallyAdministeredMac(mac)) << mac;
    EXPECT_EQ(mac, NormalizeMac(mac));
    seen.insert(mac);
  }
  EXPECT_GT(seen.size(), 195u);
  // The two low bits of the first octet are forced; the rest is kept.
  EXPECT_EQ(LocalMacFromBytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), "fe:ff:ff:ff:ff:ff");
  EXPECT_EQ(LocalMacFromBytes({0, 0, 0, 0, 0, 0}), "02:00:00:00:00:00");
  EXPECT_EQ(LocalMacFromBytes({0x01, 0x20, 0x30, 0x40, 0x50, 0x60}), "02:20:30:40:50:60");
  EXPECT_TRUE(IsValidMac("02:00:00:00:00:00"));
}

TEST(NicBackendTest, StringCodec) {
  for (NicBackend b : {NicBackend::kDgram, NicBackend::kUser}) {
    auto parsed = ParseNicBackend(ToString(b));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, b);
  }
  EXPECT_FALSE(ParseNicBackend("tap").ok());
  EXPECT_FALSE(ParseNicBackend("").ok());
}

TEST(NicJsonTest, RoundTripAndStrictParsing) {
  NicConfig d = Dgram("52:54:00:00:00:01", "/sw/p.sock", "/run/l.sock");
  nlohmann::json j = ToJson(d);
  EXPECT_EQ(j, nlohmann::json({{"mac", "52:54:00:00:00:01"},
                               {"backend", "dgram"},
                               {"local_path", "/run/l.sock"},
                               {"remote_path", "/sw/p.sock"}}));
  auto back = NicConfigFromJson(j);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->mac, d.mac);
  EXPECT_EQ(back->backend, d.backend);
  EXPECT_EQ(back->local_path, d.local_path);
  EXPECT_EQ(back->remote_path, d.remote_path);

  NicConfig u;
  u.mac = "02:00:00:00:00:02";
  u.backend = NicBackend::kUser;
  EXPECT_EQ(ToJson(u), nlohmann::json({{"mac", "02:00:00:00:00:02"}, {"backend", "user"}}));
  back = NicConfigFromJson(ToJson(u));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->backend, NicBackend::kUser);
  // The backend defaults to dgram.
  back = NicConfigFromJson({{"mac", "02:00:00:00:00:02"}, {"remote_path", "/s"}});
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->backend, NicBackend::kDgram);

  for (const nlohmann::json& bad : {
           nlohmann::json::array(),
           nlohmann::json{{"remote_path", "/s"}},                             // no mac
           nlohmann::json{{"mac", "02:00:00:00:00:02"}, {"ip", "10.0.0.1"}},  // unknown
           nlohmann::json{{"mac", 5}},
           nlohmann::json{{"mac", "02:00:00:00:00:02"}, {"backend", "tap"}},
           nlohmann::json{{"mac", "02:00:00:00:00:02"}, {"remote_path", nullptr}},
       }) {
    auto r = NicConfigFromJson(bad);
    EXPECT_FALSE(r.ok()) << bad.dump();
    if (!r.ok()) {
      EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    }
  }
}

TEST(BuildNicArgsTest, DgramAndUserNicsAtFixedSlots) {
  std::vector<NicConfig> nics = {
      Dgram("52:54:00:AA:00:01", "/var/lib/vmgrid/sw/n1/port-7.sock"),
      Dgram("52:54:00:aa:00:02", "/peer/run/nic0.sock", "/vms/a/run/link.sock"),
  };
  NicConfig user;
  user.mac = "02:00:00:00:00:03";
  user.backend = NicBackend::kUser;
  nics.push_back(user);
  // clang-format off
  std::vector<std::string> want = {
      "-netdev", "dgram,id=net0,local.type=unix,local.path=/vms/a/run/nic0.sock,"
                 "remote.type=unix,remote.path=/var/lib/vmgrid/sw/n1/port-7.sock",
      "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:aa:00:01,addr=0x10,romfile=,id=nic0",
      "-netdev", "dgram,id=net1,local.type=unix,local.path=/vms/a/run/link.sock,"
                 "remote.type=unix,remote.path=/peer/run/nic0.sock",
      "-device", "virtio-net-pci,netdev=net1,mac=52:54:00:aa:00:02,addr=0x11,romfile=,id=nic1",
      "-netdev", "user,id=net2,restrict=on",
      "-device", "virtio-net-pci,netdev=net2,mac=02:00:00:00:00:03,addr=0x12,romfile=,id=nic2",
  };
  // clang-format on
  EXPECT_EQ(BuildNicArgs(nics, "/vms/a/run/"), want);
  EXPECT_TRUE(ValidateNics(nics, "/vms/a/run").ok());
  EXPECT_TRUE(BuildNicArgs({}, "/r").empty());
}

TEST(BuildNicArgsTest, NicsFollowTheFixedDevicesInTheFullArgv) {
  QemuConfig c;
  c.vm_id = "v";
  c.run_dir = "/r";
  c.nics = {Dgram("52:54:00:00:00:01", "/sw/p.sock")};
  std::vector<std::string> a = BuildQemuArgv(c);
  auto vmgenid = std::find(a.begin(), a.end(), "vmgenid,id=vmgen0,guid=auto");
  ASSERT_NE(vmgenid, a.end());
  ASSERT_LT(vmgenid + 4, a.end());
  EXPECT_EQ(*(vmgenid + 1), "-netdev");
  EXPECT_EQ(*(vmgenid + 2),
            "dgram,id=net0,local.type=unix,local.path=/r/nic0.sock,remote.type=unix,"
            "remote.path=/sw/p.sock");
  EXPECT_EQ(*(vmgenid + 3), "-device");
  EXPECT_EQ(*(vmgenid + 5), "-chardev");  // the serial console follows the NICs
  // No NIC: no network device at all (-nodefaults adds none either).
  c.nics.clear();
  a = BuildQemuArgv(c);
  EXPECT_EQ(std::find(a.begin(), a.end(), "-netdev"), a.end());
}

TEST(ValidateNicsTest, RejectsBadLists) {
  auto bad = [](std::vector<NicConfig> nics, const std::string& run = "/vms/a/run") {
    Status st = ValidateNics(nics, run);
    return !st.ok() && st.error().code == ErrorCode::kInvalidArgument;
  };
  const std::string mac1 = "52:54:00:00:00:01", mac2 = "52:54:00:00:00:02";
  EXPECT_TRUE(bad({Dgram("", "/s")}));
  EXPECT_TRUE(bad({Dgram("ff:ff:ff:ff:ff:ff", "/s")}));
  EXPECT_TRUE(bad({Dgram("01:00:5e:00:00:01", "/s")}));
  EXPECT_TRUE(bad({Dgram(mac1, "")})) << "dgram without a remote";
  EXPECT_TRUE(bad({Dgram(mac1, "/s"), Dgram("52:54:00:00:00:01", "/t")})) << "same MAC";
  EXPECT_TRUE(bad({Dgram("52:54:00:00:00:0A", "/t"), Dgram("52:54:00:00:00:0a", "/u")}))
      << "same MAC, different case";
  EXPECT_TRUE(bad({Dgram(mac1, "/s", "/l"), Dgram(mac2, "/t", "/l")})) << "shared local path";
  EXPECT_TRUE(bad({Dgram(mac1, "/vms/a/run/nic0.sock")})) << "sends to itself";
  EXPECT_TRUE(bad({Dgram(mac1, "/s,x")}));
  EXPECT_TRUE(bad({Dgram(mac1, "/s", "/l,x")}));
  EXPECT_TRUE(bad({Dgram(mac1, "/s\nx")}));
  EXPECT_TRUE(bad({Dgram(mac1, "/s", std::string("/l\0x", 4))}));
  // sun_path holds 107 bytes and the terminating NUL.
  const std::string longest = "/" + std::string(106, 'p');
  EXPECT_FALSE(bad({Dgram(mac1, longest)}));
  EXPECT_TRUE(bad({Dgram(mac1, longest + "p")}));
  EXPECT_TRUE(bad({Dgram(mac1, "/s", longest + "p")}));
  // The default local path (RUN/nicN.sock) is checked too.
  EXPECT_TRUE(bad({Dgram(mac1, "/s")}, "/" + std::string(100, 'r')));
  NicConfig user;
  user.mac = mac1;
  user.backend = NicBackend::kUser;
  EXPECT_FALSE(bad({user}));
  user.remote_path = "/s";
  EXPECT_TRUE(bad({user})) << "user-mode NICs have no sockets";
  std::vector<NicConfig> many;
  for (int i = 0; i < kMaxNics + 1; ++i) {
    many.push_back(Dgram(LocalMacFromBytes({0, 0, 0, 0, 0, static_cast<uint8_t>(i + 1)}),
                         "/sw/p" + std::to_string(i)));
  }
  EXPECT_TRUE(bad(many));
  many.pop_back();
  EXPECT_FALSE(bad(many));
}

TEST(ValidateNicsTest, QemuConfigValidationIncludesNicsWithAbsolutePaths) {
  QemuConfig c;
  c.vm_id = "v";
  c.run_dir = "/r";
  c.nics = {Dgram("52:54:00:00:00:01", "/sw/p.sock")};
  EXPECT_TRUE(ValidateQemuConfig(c).ok());
  c.nics[0].mac = "01:00:00:00:00:01";
  EXPECT_FALSE(ValidateQemuConfig(c).ok());
  // A relative remote path that only becomes too long once made absolute.
  c.nics[0].mac = "52:54:00:00:00:01";
  c.nics[0].remote_path = std::string(100, 'x');
  EXPECT_FALSE(ValidateQemuConfig(c).ok());
}

}  // namespace
}  // namespace vmgrid
