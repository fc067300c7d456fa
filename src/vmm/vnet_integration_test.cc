// Integration tests for VM networking at the QEMU level: the NIC arguments
// against a real QEMU 7.2 (always runs), and two tiny guests joined directly
// by QEMU's -netdev dgram, each one's local socket the other's remote (no
// switch; skipped without the tiny image), one of which is checkpointed and
// resumed with the same NIC.
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "vmm/guest_agent_client.h"
#include "vmm/machine_ops.h"
#include "vmm/nic_config.h"
#include "vmm/qemu_process.h"
#include "vmm/test_util.h"
#include "vmm/unique_fd.h"

namespace vmgrid {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;
using vmm::testing::FindTinyImage;
using vmm::testing::GiveTo;
using vmm::testing::MsSince;
using vmm::testing::ProcessesMentioning;
using vmm::testing::Sh;
using vmm::testing::TempDir;
using vmm::testing::TestRunAs;
using vmm::testing::TinyImage;

bool IsSocket(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

class VnetTest : public ::testing::Test {
 protected:
  void SetUp() override { ::chmod(dir_.path().c_str(), 0755); }
  void TearDown() override {
    for (pid_t pid : ProcessesMentioning(dir_.path())) ::kill(pid, SIGKILL);
  }
  std::string P(const std::string& name) const { return dir_.path() + "/" + name; }
  TempDir dir_;
};

// QEMU accepts the exact arguments BuildNicArgs writes, under the full
// sandbox and as an unprivileged user: the cards sit at slots 0x10 and 0x11
// with their MACs, QEMU binds the local socket, and Quit removes it.
TEST_F(VnetTest, NicsAppearAtTheirSlotsWithTheirMacs) {
  const std::string runas = TestRunAs();
  // The far end: a datagram socket of ours that QEMU's user may write to.
  vmm::UniqueFd peer(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(peer.valid());
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  const std::string peer_path = P("peer.sock");
  std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", peer_path.c_str());
  ASSERT_EQ(::bind(peer.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ::chmod(peer_path.c_str(), 0666);

  QemuConfig c;
  c.vm_id = "nics";
  c.memory_mb = 128;
  c.accel = "tcg";
  c.run_dir = P("run");
  c.runas = runas;
  NicConfig dgram;
  dgram.mac = "52:54:00:AB:CD:01";
  dgram.remote_path = peer_path;
  NicConfig user;
  user.mac = RandomLocalMac();
  user.backend = NicBackend::kUser;
  c.nics = {dgram, user};
  auto vm = QemuProcess::Launch(c, seconds(30));
  ASSERT_TRUE(vm.ok()) << vm.error().message;
  QmpClient& qmp = (*vm)->qmp();

  auto pci = qmp.Execute("query-pci", nlohmann::json::object(), seconds(10));
  ASSERT_TRUE(pci.ok()) << pci.error().message;
  std::map<int, std::string> nic_slots;  // slot -> qdev id
  for (const auto& bus : *pci) {
    for (const auto& dev : bus["devices"]) {
      if (dev["class_info"]["class"] == 0x0200 && dev["id"]["vendor"] == 0x1af4) {
        nic_slots[dev["slot"].get<int>()] = dev.value("qdev_id", "");
      }
    }
  }
  EXPECT_EQ(nic_slots, (std::map<int, std::string>{{0x10, "nic0"}, {0x11, "nic1"}}));
  for (auto [id, mac] :
       {std::pair{"nic0", std::string("52:54:00:ab:cd:01")}, std::pair{"nic1", user.mac}}) {
    auto got = qmp.Execute(
        "qom-get", {{"path", std::string("/machine/peripheral/") + id}, {"property", "mac"}},
        seconds(10));
    ASSERT_TRUE(got.ok()) << got.error().message;
    EXPECT_EQ(*got, mac) << id;
  }
  const std::string local = DefaultNicSocketPath(P("run"), 0);
  EXPECT_TRUE(IsSocket(local)) << local;
  ASSERT_TRUE((*vm)->Quit(seconds(10)).ok());
  EXPECT_FALSE(fs::exists(local)) << "Quit removes the NIC's socket";
}

// A guest command that must succeed; returns its stdout.
std::string GuestSh(GuestAgentClient& ga, const std::string& script,
                    milliseconds timeout = seconds(30)) {
  Result<ExecResult> r = ga.Exec({"sh", "-c", script}, "", timeout);
  if (!r.ok()) {
    ADD_FAILURE() << script << ": " << r.error().message;
    return "";
  }
  EXPECT_EQ(r->exit_code, 0) << script << "\nstdout: " << r->out << "\nstderr: " << r->err;
  return r->out;
}

// The receiver: started by `nc -l -e` once a connection is accepted; the
// times come from /proc/uptime (10 ms steps).
constexpr char kReceiverScript[] =
    "#!/bin/sh\n"
    "read -r start _ </proc/uptime\n"
    "cat >/tmp/recv\n"
    "read -r end _ </proc/uptime\n"
    "echo \"$start $end\" >/tmp/recv.time\n";

TEST_F(VnetTest, TwoTinyGuestsJoinedByDgramPingTransferAndResume) {
  std::string why;
  std::optional<TinyImage> img = FindTinyImage(VMGRID_DEFAULT_TINY_IMAGE, &why);
  if (!img) GTEST_SKIP() << why;
  std::string runas = TestRunAs();
  if (!runas.empty() && Sh("su -s /bin/sh " + runas + " -c 'test -r " + img->rootfs +
                           " && test -r " + img->fast_kernel + "' 2>/dev/null") != 0) {
    std::cout << "[info] image not readable by " << runas << "; running without -runas\n";
    runas.clear();
  }
  const auto t0 = Clock::now();
  const std::string names[2] = {"a", "b"};
  const std::string ips[2] = {"10.99.0.1", "10.99.0.2"};
  const std::string macs[2] = {"52:54:00:99:00:01", "52:54:00:99:00:02"};
  std::unique_ptr<QemuProcess> vm[2];
  QemuConfig config[2];
  for (int i = 0; i < 2; ++i) {
    const std::string overlay = P("disk-" + names[i] + ".qcow2");
    ASSERT_EQ(Sh("qemu-img create -q -f qcow2 -b " + img->rootfs + " -F raw " + overlay), 0);
    ASSERT_TRUE(GiveTo(overlay, runas));
    QemuConfig c;
    c.vm_id = "vnet-" + names[i];
    c.memory_mb = 256;
    c.kernel = img->fast_kernel;
    c.initrd = img->initrd;
    c.append = img->append + " vmgrid.net0=" + ips[i] + "/24";
    c.disk_path = overlay;
    c.run_dir = P("run-" + names[i]);
    c.runas = runas;
    c.accel = "tcg";
    NicConfig nic;
    nic.mac = macs[i];
    // A cable between the two: each sends to the other's default local socket.
    nic.remote_path = DefaultNicSocketPath(P("run-" + names[1 - i]), 0);
    c.nics = {nic};
    config[i] = c;
    auto launched = QemuProcess::Launch(c, seconds(30));
    ASSERT_TRUE(launched.ok()) << launched.error().message;
    vm[i] = std::move(launched).value();
  }
  std::unique_ptr<GuestAgentClient> ga[2];
  for (int i = 0; i < 2; ++i) {
    auto c = GuestAgentClient::ConnectWhenReady(vm[i]->qga_socket(), t0 + seconds(45));
    ASSERT_TRUE(c.ok()) << c.error().message << "\nconsole:\n" << vm[i]->ConsoleTail(8192);
    ga[i] = std::move(c).value();
  }
  std::cout << "[timing] both guests answer: " << MsSince(t0) << " ms\n";

  for (int i = 0; i < 2; ++i) {
    std::string out =
        GuestSh(*ga[i],
                // operstate turns "up" shortly after the link is set up (linkwatch).
                "for i in $(seq 50); do [ $(cat /sys/class/net/eth0/operstate) = up ] "
                "&& break; sleep 0.1; done; "
                "cat /sys/class/net/eth0/operstate /sys/class/net/eth0/address; "
                "ip -4 -o addr show dev eth0");
    EXPECT_NE(out.find("up\n" + macs[i] + "\n"), std::string::npos) << out;
    EXPECT_NE(out.find("inet " + ips[i] + "/24"), std::string::npos) << out;
  }

  std::string ping = GuestSh(*ga[0], "ping -c 3 -W 5 " + ips[1]);
  EXPECT_NE(ping.find("3 packets received"), std::string::npos) << ping;
  std::cout << "[info] a -> b: "
            << ping.substr(
                   ping.rfind("round-trip") == std::string::npos ? 0 : ping.rfind("round-trip"));
  ping = GuestSh(*ga[1], "ping -c 1 -W 5 " + ips[0]);
  EXPECT_NE(ping.find("1 packets received"), std::string::npos) << ping;

  // 8 MiB from a to b over TCP, checked end to end.
  constexpr int kMiB = 8;
  ASSERT_TRUE(ga[1]->WriteFile("/tmp/rx.sh", kReceiverScript).ok());
  GuestSh(*ga[1],
          "chmod 0755 /tmp/rx.sh && (nc -l -p 5001 -e /tmp/rx.sh </dev/null >/dev/null 2>&1 &)");
  std::string sent =
      GuestSh(*ga[0], "dd if=/dev/urandom of=/tmp/data bs=64k count=" + std::to_string(16 * kMiB) +
                          " 2>/dev/null && md5sum </tmp/data");
  // The listener may not be bound yet: busybox nc fails at once then.
  Result<ExecResult> send = MakeError(ErrorCode::kInternal, "not tried");
  for (int attempt = 0; attempt < 20; ++attempt) {
    send = ga[0]->Exec({"sh", "-c", "nc " + ips[1] + " 5001 </tmp/data"}, "", seconds(30));
    ASSERT_TRUE(send.ok()) << send.error().message;
    if (send->exit_code == 0) break;
    std::this_thread::sleep_for(milliseconds(200));
  }
  ASSERT_EQ(send->exit_code, 0) << send->err;
  std::string received;
  for (auto deadline = Clock::now() + seconds(30); Clock::now() < deadline;) {
    Result<ExecResult> r = ga[1]->Exec(
        {"sh", "-c", "cat /tmp/recv.time 2>/dev/null && wc -c </tmp/recv && md5sum </tmp/recv"}, "",
        seconds(30));
    ASSERT_TRUE(r.ok()) << r.error().message;
    if (r->exit_code == 0) {
      received = r->out;
      break;
    }
    std::this_thread::sleep_for(milliseconds(100));
  }
  ASSERT_FALSE(received.empty()) << "the receiver did not finish";
  std::istringstream in(received);
  double start = 0, end = 0;
  size_t bytes = 0;
  std::string md5;
  in >> start >> end >> bytes >> md5;
  EXPECT_EQ(bytes, static_cast<size_t>(kMiB) << 20);
  EXPECT_EQ(md5 + "  -\n", sent);
  std::cout << "[timing] " << kMiB << " MiB over TCP a -> b in " << (end - start) << " s (guest)\n";

  // b is checkpointed and resumed with the same NIC (same MAC, same local
  // socket, which a still sends to): the link works again, both ways.
  ga[1].reset();
  fs::create_directories(P("ckpt-b"));
  ASSERT_TRUE(GiveTo(P("ckpt-b"), runas));
  Status st = CheckpointToFiles(vm[1]->qmp(), "disk0", P("ckpt-b/disk.qcow2"), /*full_disk=*/false,
                                P("ckpt-b/memory.state"), seconds(60));
  ASSERT_TRUE(st.ok()) << st.error().message;
  ASSERT_TRUE(vm[1]->Quit(seconds(10)).ok());
  const std::string overlay2 = P("disk-b2.qcow2");
  ASSERT_EQ(
      Sh("qemu-img create -q -f qcow2 -b " + P("ckpt-b/disk.qcow2") + " -F qcow2 " + overlay2), 0);
  ASSERT_TRUE(GiveTo(overlay2, runas));
  QemuConfig resumed = config[1];
  resumed.disk_path = overlay2;
  resumed.incoming = true;
  auto t1 = Clock::now();
  auto launched = QemuProcess::Launch(resumed, seconds(30));
  ASSERT_TRUE(launched.ok()) << launched.error().message;
  vm[1] = std::move(launched).value();
  st = ResumeFromFile(vm[1]->qmp(), P("ckpt-b/memory.state"), seconds(60));
  ASSERT_TRUE(st.ok()) << st.error().message;
  auto again = GuestAgentClient::ConnectWhenReady(vm[1]->qga_socket(), Clock::now() + seconds(30));
  ASSERT_TRUE(again.ok()) << again.error().message;
  ga[1] = std::move(again).value();
  ping = GuestSh(*ga[0], "ping -c 2 -W 5 " + ips[1]);
  EXPECT_NE(ping.find("2 packets received"), std::string::npos) << ping;
  ping = GuestSh(*ga[1], "ping -c 1 -W 5 " + ips[0]);
  EXPECT_NE(ping.find("1 packets received"), std::string::npos) << ping;
  std::cout << "[timing] b checkpointed, resumed and pinging again: " << MsSince(t1)
            << " ms after its relaunch\n"
            << "[timing] whole test: " << MsSince(t0) << " ms\n";
  for (auto& v : vm) ASSERT_TRUE(v->Quit(seconds(10)).ok());
}

}  // namespace
}  // namespace vmgrid
