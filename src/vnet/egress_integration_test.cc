// Egress and port forwards with real tiny guests (QEMU, TCG) on a SwitchHost
// network: guest a on a network with egress, guest b on one without. The
// "outside" is a network namespace this test creates (a veth pair in
// 10.213.0.0/16) with a TCP server in it; nothing else beyond this host is
// ever contacted. Skipped unless root (namespaces), the tiny image
// ($VMGRID_TINY_IMAGE or build/images/tiny) and `ip` are present. The
// namespace, its processes and the QEMUs are removed in every case.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "vmm/guest_agent_client.h"
#include "vmm/nic_config.h"
#include "vmm/qemu_process.h"
#include "vmm/test_util.h"
#include "vmm/unique_fd.h"
#include "vnet/switch_host.h"

namespace vmgrid {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;
using vmm::testing::FindTinyImage;
using vmm::testing::ProcessesMentioning;
using vmm::testing::Sh;
using vmm::testing::TempDir;
using vmm::testing::TinyImage;
using vnet::Ipv4Addr;

Ipv4Addr Ip(const std::string& s) { return vnet::ParseIpv4(s).value(); }

std::string TestRunAs() {
  if (const char* env = std::getenv("VMGRID_TEST_RUNAS")) return env;
  return (::geteuid() == 0 && ::getpwnam("nobody") != nullptr) ? "nobody" : "";
}

// The outside: a network namespace joined to this host by a veth pair,
// HOST_IP on our side and NS_IP inside, a TCP server at NS_IP:7000 that
// answers every connection with "outside-ok" and logs it. Removed (with
// every process in it) on destruction.
class OutsideNamespace {
 public:
  explicit OutsideNamespace(const std::string& dir) : dir_(dir) {
    const int n = static_cast<int>(::getpid() % 250) + 1;
    name_ = "vmgrid-egr-" + std::to_string(::getpid());
    veth_ = "vegr" + std::to_string(::getpid() % 1000000);
    host_ip_ = "10.213." + std::to_string(n) + ".1";
    ns_ip_ = "10.213." + std::to_string(n) + ".2";
    log_ = dir + "/outside.log";
    const std::string script = dir + "/outside.sh";
    std::ofstream(script) << "#!/bin/sh\necho conn >>" << log_ << "\necho outside-ok\n";
    ::chmod(script.c_str(), 0755);
    ok_ = Sh("ip netns add " + name_) == 0 &&
          Sh("ip link add " + veth_ + "h type veth peer name " + veth_ + "n") == 0 &&
          Sh("ip link set " + veth_ + "n netns " + name_) == 0 &&
          Sh("ip addr add " + host_ip_ + "/24 dev " + veth_ + "h && ip link set " + veth_ +
             "h up") == 0 &&
          Sh("ip netns exec " + name_ + " sh -c 'ip link set lo up && ip addr add " + ns_ip_ +
             "/24 dev " + veth_ + "n && ip link set " + veth_ + "n up'") == 0 &&
          Sh("ip netns exec " + name_ + " busybox nc -ll -p 7000 -e " + script +
             " </dev/null >/dev/null 2>&1 &") == 0;
  }
  ~OutsideNamespace() {
    Sh("for p in $(ip netns pids " + name_ + " 2>/dev/null); do kill -9 $p; done");
    Sh("ip netns del " + name_ + " 2>/dev/null");
    Sh("ip link del " + veth_ + "h 2>/dev/null");
  }
  bool ok() const { return ok_; }
  const std::string& host_ip() const { return host_ip_; }
  const std::string& ns_ip() const { return ns_ip_; }
  int Connections() const {
    std::ifstream in(log_);
    int n = 0;
    for (std::string line; std::getline(in, line);) n += line == "conn";
    return n;
  }

 private:
  std::string dir_, name_, veth_, host_ip_, ns_ip_, log_;
  bool ok_ = false;
};

// A TCP listener of this test on the host, to see whether a guest gets in.
class HostListener {
 public:
  explicit HostListener(Ipv4Addr ip) {
    fd_.Reset(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(ip);
    socklen_t len = sizeof a;
    EXPECT_EQ(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_.get(), 8), 0);
    EXPECT_EQ(::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    port_ = ntohs(a.sin_port);
  }
  uint16_t port() const { return port_; }
  bool Accepted() {
    vmm::UniqueFd c(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    return c.valid();
  }

 private:
  vmm::UniqueFd fd_;
  uint16_t port_ = 0;
};

// Sends `data` to 127.0.0.1:port, half-closes, returns everything read back
// (empty when the connection was refused or reset before any byte).
// A TCP connection to 127.0.0.1:port; invalid if refused.
vmm::UniqueFd ConnectLoopback(uint16_t port) {
  vmm::UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return vmm::UniqueFd();
  timeval tv{30, 0};
  setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return s;
}

std::string EchoThrough(uint16_t port, const std::string& data) {
  vmm::UniqueFd s = ConnectLoopback(port);
  if (!s.valid()) return "";
  std::string got;
  // Write and read at once: the echo may fill the buffers both ways.
  std::thread writer([&] {
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::send(s.get(), data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    ::shutdown(s.get(), SHUT_WR);
  });
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(s.get(), buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  writer.join();
  return got;
}

Result<ExecResult> GuestRun(GuestAgentClient& ga, const std::string& script,
                            milliseconds timeout = seconds(30)) {
  return ga.Exec({"sh", "-c", script}, "", timeout);
}

class EgressIntegrationTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (pid_t pid : ProcessesMentioning(dir_.path())) ::kill(pid, SIGKILL);
  }
  std::string P(const std::string& name) const { return dir_.path() + "/" + name; }
  TempDir dir_;
};

TEST_F(EgressIntegrationTest, GuestsReachTheOutsideOnlyWithEgressNeverTheHostAndForwardsWork) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces)";
  std::string why;
  std::optional<TinyImage> img = FindTinyImage(VMGRID_DEFAULT_TINY_IMAGE, &why);
  if (!img) GTEST_SKIP() << why;
  if (Sh("command -v ip >/dev/null && command -v busybox >/dev/null") != 0)
    GTEST_SKIP() << "needs ip and busybox";
  ::chmod(dir_.path().c_str(), 0755);
  std::string runas = TestRunAs();
  if (!runas.empty() && Sh("su -s /bin/sh " + runas + " -c 'test -r " + img->rootfs +
                           " && test -r " + img->fast_kernel + "' 2>/dev/null") != 0)
    runas.clear();
  const struct passwd* pw = runas.empty() ? nullptr : ::getpwnam(runas.c_str());

  OutsideNamespace outside(dir_.path());
  ASSERT_TRUE(outside.ok()) << "could not set up the namespace";

  auto started = vnet::SwitchHost::Start({.host_id = 1});
  ASSERT_TRUE(started.ok()) << started.error().message;
  vnet::SwitchHostPtr host = std::move(started).value();
  vnet::NetworkConfig egress{.id = 1, .name = "egr", .subnet = Ip("10.21.0.0"), .egress = true};
  vnet::NetworkConfig plain{.id = 2, .name = "plain", .subnet = Ip("10.22.0.0")};
  ASSERT_TRUE(host->AddNetwork(egress).ok());
  ASSERT_TRUE(host->AddNetwork(plain).ok());

  struct Guest {
    std::string name, mac, ip;
    uint32_t net;
    std::unique_ptr<QemuProcess> vm;
    std::unique_ptr<GuestAgentClient> ga;
  };
  Guest guests[2] = {{"a", "52:54:00:21:00:0a", "10.21.0.10", 1, nullptr, nullptr},
                     {"b", "52:54:00:22:00:0a", "10.22.0.10", 2, nullptr, nullptr}};
  const auto t0 = Clock::now();
  for (Guest& g : guests) {
    const std::string run = P("run-" + g.name);
    ASSERT_EQ(::mkdir(run.c_str(), 0755), 0);
    if (pw) {
      ASSERT_EQ(::chown(run.c_str(), pw->pw_uid, pw->pw_gid), 0);
    }
    vnet::PortConfig port;
    port.name = g.name + "-0";
    port.mac = vnet::ParseMac(g.mac).value();
    port.ip = Ip(g.ip);
    port.vm_name = g.name;
    port.switch_path = P(g.name + ".sw");
    port.vm_path = DefaultNicSocketPath(run, 0);
    if (pw) port.socket_uid = pw->pw_uid;
    Status st = host->AddPort(g.net, port);
    ASSERT_TRUE(st.ok()) << st.error().message;

    const std::string overlay = P("disk-" + g.name + ".qcow2");
    ASSERT_EQ(Sh("qemu-img create -q -f qcow2 -b " + img->rootfs + " -F raw " + overlay), 0);
    if (pw) {
      ASSERT_EQ(::chown(overlay.c_str(), pw->pw_uid, pw->pw_gid), 0);
    }
    QemuConfig c;
    c.vm_id = "egress-" + g.name;
    c.memory_mb = 256;
    c.kernel = img->fast_kernel;
    c.initrd = img->initrd;
    c.append = img->append;  // no vmgrid.net0=: DHCP from the switch
    c.disk_path = overlay;
    c.run_dir = run;
    c.runas = runas;
    c.accel = "tcg";
    NicConfig nic;
    nic.mac = g.mac;
    nic.remote_path = port.switch_path;
    c.nics = {nic};
    auto launched = QemuProcess::Launch(c, seconds(30));
    ASSERT_TRUE(launched.ok()) << launched.error().message;
    g.vm = std::move(launched).value();
  }
  for (Guest& g : guests) {
    auto c = GuestAgentClient::ConnectWhenReady(g.vm->qga_socket(), t0 + seconds(90));
    ASSERT_TRUE(c.ok()) << c.error().message << "\nconsole: " << P("run-" + g.name) << "/"
                        << kConsoleLogName;
    g.ga = std::move(c).value();
  }
  std::cout << "[timing] both guests answer: "
            << std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count() << " ms\n";
  GuestAgentClient& a = *guests[0].ga;
  GuestAgentClient& b = *guests[1].ga;

  // DHCP from the switch: the address, and a default route via .1 only with egress.
  for (Guest& g : guests) {
    auto r = GuestRun(*g.ga,
                      "for i in $(seq 100); do ip -4 -o addr show dev eth0 | grep -q inet && "
                      "break; sleep 0.1; done; ip -4 -o addr show dev eth0; ip route");
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_NE(r->out.find("inet " + g.ip + "/24"), std::string::npos) << r->out;
    const bool has_default = r->out.find("default via 10.2") != std::string::npos;
    EXPECT_EQ(has_default, g.net == 1) << r->out;
  }

  // (a) a reaches the server outside (the namespace), through the NAT.
  std::string answer;
  for (int attempt = 0; attempt < 10 && answer.find("outside-ok") == std::string::npos; ++attempt) {
    auto r = GuestRun(a, "nc -w 5 " + outside.ns_ip() + " 7000 </dev/null");
    ASSERT_TRUE(r.ok()) << r.error().message;
    answer = r->out;
    if (answer.find("outside-ok") == std::string::npos)
      std::this_thread::sleep_for(milliseconds(500));
  }
  EXPECT_NE(answer.find("outside-ok"), std::string::npos) << answer;
  const int outside_connections = outside.Connections();
  EXPECT_GE(outside_connections, 1);

  // (b) a never reaches the host's own services: 127.0.0.1 (through .1,
  // which plain slirp maps to it) nor the host's address on the veth.
  HostListener loopback(Ip("127.0.0.1"));
  HostListener on_veth(Ip(outside.host_ip()));
  auto before = host->GetEgressCounters(1);
  ASSERT_TRUE(before.ok());
  auto r = GuestRun(a, "nc -w 3 10.21.0.1 " + std::to_string(loopback.port()) +
                           " </dev/null; echo rc=$?; nc -w 3 " + outside.host_ip() + " " +
                           std::to_string(on_veth.port()) + " </dev/null; echo rc=$?");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->out.find("rc=0"), std::string::npos) << r->out;
  auto after = host->GetEgressCounters(1);
  ASSERT_TRUE(after.ok());
  EXPECT_GT(after->drop(vnet::EgressDrop::kHostLocal), before->drop(vnet::EgressDrop::kHostLocal));
  EXPECT_FALSE(loopback.Accepted());
  EXPECT_FALSE(on_veth.Accepted());

  // (c) a port forward: a host connection to 127.0.0.1:PORT reaches an echo
  // server (busybox nc -e cat) in a, and every byte comes back.
  ASSERT_TRUE(a.WriteFile("/tmp/echo.sh", "#!/bin/sh\nexec cat\n").ok());
  r = GuestRun(a,
               "chmod 0755 /tmp/echo.sh && (nc -ll -p 8080 -e /tmp/echo.sh </dev/null "
               ">/dev/null 2>&1 &)");
  ASSERT_TRUE(r.ok() && r->exit_code == 0);
  auto port = host->AddForward(1, Ip("10.21.0.10"), 8080);
  ASSERT_TRUE(port.ok()) << port.error().message;
  std::string data(256 * 1024, '\0');
  std::mt19937 rng(42);
  for (char& ch : data) ch = static_cast<char>(rng());
  std::string echoed;
  // The guest's listener may not be bound yet: slirp then resets the
  // connection it accepted, and nothing comes back.
  for (int attempt = 0; attempt < 20 && echoed.empty(); ++attempt) {
    echoed = EchoThrough(*port, data);
    if (echoed.empty()) std::this_thread::sleep_for(milliseconds(500));
  }
  EXPECT_EQ(echoed.size(), data.size());
  EXPECT_TRUE(echoed == data) << "the bytes differ";
  // A connection still open through the forward when it is removed: the
  // removal closes the listener (not the connection, which shares its local
  // address), so nothing listens afterwards and the same port can be taken
  // again at once (a resumed VM's forward comes back on its port).
  vmm::UniqueFd held = ConnectLoopback(*port);
  ASSERT_TRUE(held.valid());
  ASSERT_EQ(::send(held.get(), "held", 4, MSG_NOSIGNAL), 4);
  char four[4];
  ASSERT_EQ(::recv(held.get(), four, sizeof four, MSG_WAITALL), 4)
      << "no echo on the held connection";
  ASSERT_TRUE(host->RemoveForward(1, Ip("127.0.0.1"), *port).ok());
  EXPECT_EQ(EchoThrough(*port, "x"), "") << "nothing listens after RemoveForward";
  auto again = host->AddForward(1, Ip("10.21.0.10"), 8080, Ip("127.0.0.1"), *port);
  ASSERT_TRUE(again.ok()) << "the same port again: " << again.error().message;
  echoed.clear();
  for (int attempt = 0; attempt < 20 && echoed.empty(); ++attempt) {
    echoed = EchoThrough(*port, "again");
    if (echoed.empty()) std::this_thread::sleep_for(milliseconds(500));
  }
  EXPECT_EQ(echoed, "again");
  held.Reset();
  ASSERT_TRUE(host->RemoveForward(1, Ip("127.0.0.1"), *port).ok());
  EXPECT_EQ(EchoThrough(*port, "x"), "") << "nothing listens after RemoveForward";

  // (d) b, on the network without egress, gets nothing out, even with a
  // route of its own: nobody answers ARP for .1, and the server saw no one.
  r = GuestRun(b, "ip route add default via 10.22.0.1 2>/dev/null; nc -w 3 " + outside.ns_ip() +
                      " 7000 </dev/null; echo rc=$?");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->out.find("outside-ok"), std::string::npos) << r->out;
  EXPECT_EQ(r->out.find("rc=0"), std::string::npos) << r->out;
  EXPECT_EQ(outside.Connections(), outside_connections);
  auto b_counters = host->GetPortCounters(2, "b-0");
  ASSERT_TRUE(b_counters.ok());
  EXPECT_GT(b_counters->drop(vnet::DropReason::kUnknownDestination), 0u);  // its ARP for .1
  EXPECT_FALSE(host->GetEgressCounters(2).ok());

  for (Guest& g : guests) {
    g.ga.reset();
    EXPECT_TRUE(g.vm->Quit(seconds(10)).ok());
  }
}

}  // namespace
}  // namespace vmgrid
