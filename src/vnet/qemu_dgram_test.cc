// The QEMU facts the switch relies on, checked against the real QEMU 7.2:
// `-netdev dgram,local.type=unix,local.path=VM,remote.type=unix,remote.path=SW`
// binds VM, sends every frame to SW with sendto (so a switch that restarts
// and binds SW again gets the frames: no connection to lose), and delivers
// what arrives on VM to its peer. No guest is needed: QEMU with `-M none`
// relays between two dgram netdevs joined by a hub, so a test socket T plays
// the guest: T -> QEMU n1 -> hub -> n0 -> switch port, and back.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "vnet/switch_host.h"
#include "vnet/test_frames.h"

extern char** environ;

namespace vmgrid::vnet {
namespace {

using testing::ArpRequest;
using testing::Ip;
using testing::Mac;

constexpr const char* kQemu = "/usr/bin/qemu-system-x86_64";

class QemuDgramTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(kQemu, X_OK) != 0) GTEST_SKIP() << kQemu << " is not installed";
    char tmpl[] = "/tmp/vnet-qemu-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    guest_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a = Addr(dir_ + "/guest.sock");
    ASSERT_EQ(bind(guest_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  }
  void TearDown() override {
    if (qemu_pid_ > 0) {
      kill(qemu_pid_, SIGKILL);
      waitpid(qemu_pid_, nullptr, 0);
    }
    host_.reset();
    if (guest_ >= 0) close(guest_);
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  static sockaddr_un Addr(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    return a;
  }

  void StartSwitch() {
    SwitchHostOptions o;
    o.host_id = 1;
    auto h = SwitchHost::Start(o);
    ASSERT_TRUE(h.ok());
    host_ = std::move(h).value();
    NetworkConfig net;
    net.id = 5;
    net.name = "lab";
    net.subnet = Ip(10, 30, 0, 0);
    ASSERT_TRUE(host_->AddNetwork(net).ok());
    for (auto [name, mac, ip] : {std::tuple{"vm1", Mac(1), Ip(10, 30, 0, 10)},
                                 std::tuple{"vm2", Mac(2), Ip(10, 30, 0, 11)}}) {
      PortConfig p;
      p.name = name;
      p.mac = mac;
      p.ip = ip;
      p.vm_name = name;
      // A comma in the path: QemuNetdevArg must escape it for QEMU.
      p.switch_path = dir_ + "/" + name + ",sw";
      p.vm_path = dir_ + "/" + name + ",qemu";
      ASSERT_TRUE(host_->AddPort(5, p).ok());
      if (std::string(name) == "vm1") vm1_ = p;
    }
  }

  // QEMU's NIC of vm1, exactly as docs/vnet.md tells the agent to start it,
  // relayed through a hub to the test's guest socket.
  void StartQemu() {
    std::vector<std::string> args = {
        kQemu,
        "-M",
        "none",
        "-nodefaults",
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-netdev",
        QemuNetdevArg(vm1_, "n0"),
        "-netdev",
        "dgram,id=n1,local.type=unix,local.path=" + dir_ + "/relay.qemu" +
            ",remote.type=unix,remote.path=" + dir_ + "/guest.sock",
        "-netdev",
        "hubport,id=h0,hubid=0,netdev=n0",
        "-netdev",
        "hubport,id=h1,hubid=0,netdev=n1",
    };
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    ASSERT_EQ(posix_spawn(&qemu_pid_, kQemu, nullptr, nullptr, argv.data(), environ), 0);
    // QEMU binds both local paths before it runs.
    for (int i = 0; i < 500; ++i) {
      if (std::filesystem::exists(dir_ + "/relay.qemu") &&
          std::filesystem::exists(dir_ + "/vm1,qemu"))
        return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << "QEMU did not bind its local socket paths";
  }

  void GuestSend(const std::vector<uint8_t>& frame) {
    sockaddr_un a = Addr(dir_ + "/relay.qemu");
    ASSERT_EQ(
        sendto(guest_, frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a),
        static_cast<ssize_t>(frame.size()));
  }
  std::optional<std::vector<uint8_t>> GuestRecv(int timeout_ms) {
    pollfd p{guest_, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) != 1) return std::nullopt;
    std::vector<uint8_t> buf(4096);
    ssize_t n = recv(guest_, buf.data(), buf.size(), 0);
    if (n < 0) return std::nullopt;
    buf.resize(static_cast<size_t>(n));
    return buf;
  }
  // ARP for vm2 until the switch's answer comes back through QEMU (QEMU may
  // take a moment after binding before its main loop runs).
  bool ArpRoundTrip() {
    for (int i = 0; i < 50; ++i) {
      GuestSend(ArpRequest(Mac(1), Ip(10, 30, 0, 10), Ip(10, 30, 0, 11)));
      auto r = GuestRecv(100);
      if (!r) continue;
      FrameParse p = ParseFrame(*r);
      return p.ok() && p.frame.arp && p.frame.arp->sender_mac == Mac(2);
    }
    return false;
  }

  std::string dir_;
  int guest_ = -1;
  pid_t qemu_pid_ = -1;
  SwitchHostPtr host_;
  PortConfig vm1_;
};

TEST_F(QemuDgramTest, FramesFlowThroughQemuAndSurviveASwitchRestart) {
  StartSwitch();
  StartQemu();
  ASSERT_TRUE(ArpRoundTrip());
  EXPECT_GE(host_->GetPortCounters(5, "vm1")->arp_answered, 1u);
  // The switch goes away and a new one binds the same paths; QEMU is untouched.
  host_.reset();
  StartSwitch();
  ASSERT_TRUE(ArpRoundTrip());
  int status = 0;
  EXPECT_EQ(waitpid(qemu_pid_, &status, WNOHANG), 0) << "QEMU exited";
}

TEST_F(QemuDgramTest, QemuStartsBeforeTheSwitch) {
  // An agent that starts QEMU first: frames sent before the switch exists are
  // lost (ENOENT/ECONNREFUSED in QEMU, which keeps running), then flow.
  vm1_.switch_path = dir_ + "/vm1,sw";
  vm1_.vm_path = dir_ + "/vm1,qemu";
  StartQemu();
  GuestSend(ArpRequest(Mac(1), Ip(10, 30, 0, 10), Ip(10, 30, 0, 11)));
  StartSwitch();
  ASSERT_TRUE(ArpRoundTrip());
}

}  // namespace
}  // namespace vmgrid::vnet
