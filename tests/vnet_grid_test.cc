// Virtual networks end to end (issue 11): a real controller and two agents,
// real tiny guests with NICs on users' networks. The guests get their
// addresses by DHCP from their host's switch, resolve each other by name,
// talk across hosts through the encrypted tunnel, and see nothing of
// another user's network; an agent killed with -9 does not take the VMs'
// network down for longer than its restart.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace vmgrid::testing_support;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

class VnetGridTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    grid_ = StartGrid("vnet", 2).release();
    image_ = new json(ImportTiny(grid_->Admin(), "tiny", false));
  }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
    delete image_;
    grid_ = nullptr;
    image_ = nullptr;
  }
  // Two VMs of alice on two hosts: DHCP, names, 50 MB over TCP, isolation
  // from bob, spoofing counted, an agent's kill -9 survived.
  void UsersVmsTalkAcrossHosts();
  static ApiClient User(const std::string& name) { return NewUser(*grid_, name); }
  static std::string NicIp(const json& vm, int index = 0) {
    const json& nics = vm["nics"];
    if (!nics.is_array() || nics.size() <= static_cast<size_t>(index)) return "";
    return nics[index].value("ip", "");
  }

  static LocalGrid* grid_;
  static json* image_;
};
LocalGrid* VnetGridTest::grid_ = nullptr;
json* VnetGridTest::image_ = nullptr;

// The receiver (`nc -l -e`): the bytes it got, their md5.
constexpr char kReceiver[] = "#!/bin/sh\ncat >/tmp/recv\nmd5sum </tmp/recv >/tmp/recv.md5\n";

// The same grid with each agent in a network namespace of its own, joined
// by a bridge (dev/host_namespaces.h): tunnels, heartbeats and chunk fetches
// cross real links, and the links' byte counters show the traffic on them.
class VnetNamespacesTest : public VnetGridTest {
 protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0 || std::system("command -v ip >/dev/null 2>&1") != 0) return;
    grid_ = StartGrid("vnetns", 2, {}, true, /*host_namespaces=*/true).release();
    image_ = new json(ImportTiny(grid_->Admin(), "tiny", false));
  }
  static void TearDownTestSuite() { VnetGridTest::TearDownTestSuite(); }
  void SetUp() override {
    if (!grid_) GTEST_SKIP() << "needs root and ip (network namespaces)";
  }
};

void VnetGridTest::UsersVmsTalkAcrossHosts() {
  ApiClient alice = User("alice"), bob = User("bob");
  ASSERT_TRUE(alice.Post("/v1/networks", {{"name", "lab"}}).ok());
  ASSERT_TRUE(bob.Post("/v1/networks", {{"name", "lab"}}).ok());  // same name, same subnet
  const std::string image = (*image_)["id"];
  json a1 = CreateVm(alice, {{"image", image}, {"name", "a1"}, {"nets", {"lab"}}});
  // a2 on the other host: a future there (the information service's VMs that could exist).
  auto f = alice.Post("/v1/query",
                      {{"sql",
                        "SELECT id FROM futures WHERE start = 'boot' AND "
                        "image_id = '" +
                            image + "' AND host_id <> '" + a1.value("host_id", "") + "' LIMIT 1"}});
  ASSERT_TRUE(f.ok()) << f.error().message;
  ASSERT_EQ((*f)["rows"].size(), 1u) << f->dump();
  json a2 =
      CreateVm(alice, {{"from_future", (*f)["rows"][0][0]}, {"name", "a2"}, {"nets", {"lab"}}});
  json b1 = CreateVm(bob, {{"image", image}, {"name", "b1"}, {"nets", {"lab"}}});
  for (const json* v : {&a1, &a2, &b1}) ASSERT_EQ(v->value("state", ""), "running") << v->dump();
  // The two VMs of alice on different hosts, so their frames cross the tunnel.
  ASSERT_NE(a1["host_id"], a2["host_id"]) << "placement put both VMs on one host";
  const std::string ip1 = NicIp(a1), ip2 = NicIp(a2), ipb = NicIp(b1);
  ASSERT_FALSE(ip1.empty()) << a1.dump();
  // Bob's network is another network with the same subnet: his VM may hold
  // the address of one of alice's.
  std::cout << "[info] a1 " << ip1 << " on " << a1["host_id"] << ", a2 " << ip2 << " on "
            << a2["host_id"] << ", b1 " << ipb << " on " << b1["host_id"] << "\n";

  // DHCP gave each guest the controller's address.
  for (auto [vm, ip] : {std::pair{&a1, ip1}, {&a2, ip2}}) {
    auto [code, out] = Sh(alice, (*vm)["id"],
                          "for i in $(seq 100); do ip -4 -o addr show dev eth0 | grep -q inet "
                          "&& break; sleep 0.1; done; ip -4 -o addr show dev eth0");
    EXPECT_EQ(code, 0) << out;
    EXPECT_NE(out.find("inet " + ip + "/"), std::string::npos) << out;
  }

  // By name, across hosts.
  auto [pcode, ping] = Sh(alice, a1["id"], "ping -c 3 -W 5 a2.lab");
  EXPECT_EQ(pcode, 0) << ping;
  EXPECT_NE(ping.find("3 packets received"), std::string::npos) << ping;
  EXPECT_NE(ping.find(ip2), std::string::npos) << "a2.lab resolved elsewhere: " << ping;

  // 50 MB over TCP from a1 to a2, checked end to end.
  ASSERT_EQ(Sh(alice, a2["id"],
               "printf '" + std::string(kReceiver) +
                   "' >/tmp/rx.sh && chmod 0755 /tmp/rx.sh && "
                   "(nc -l -p 5001 -e /tmp/rx.sh </dev/null >/dev/null 2>&1 &)")
                .first,
            0);
  auto [dcode, sent] = Sh(alice, a1["id"],
                          "dd if=/dev/urandom of=/tmp/data bs=1M count=50 2>/dev/null && "
                          "md5sum </tmp/data");
  ASSERT_EQ(dcode, 0) << sent;
  const auto t0 = Clock::now();
  int send_code = -1;
  std::string send_out;
  for (int attempt = 0; attempt < 20 && send_code != 0; ++attempt) {
    std::tie(send_code, send_out) = Sh(alice, a1["id"], "nc " + ip2 + " 5001 </tmp/data", 300);
    if (send_code != 0) std::this_thread::sleep_for(milliseconds(300));
  }
  ASSERT_EQ(send_code, 0) << send_out;
  std::string got;
  for (auto deadline = Clock::now() + std::chrono::seconds(60); Clock::now() < deadline;) {
    auto [c, out] = Sh(alice, a2["id"], "cat /tmp/recv.md5 && wc -c </tmp/recv");
    if (c == 0) {
      got = out;
      break;
    }
    std::this_thread::sleep_for(milliseconds(300));
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_EQ(got, sent + "52428800\n");
  std::cout << "[info] 50 MB a1 -> a2 across hosts in " << secs << " s (with exec polling)\n";
  if (HostNamespaces* ns = grid_->namespaces()) {
    // The tunnel crossed both hosts' links: each carried the 50 MB.
    for (int i = 0; i < 2; ++i) {
      auto bytes = ns->LinkBytes(i);
      ASSERT_TRUE(bytes.ok()) << bytes.error().message;
      std::cout << "[info] link of host-" << i + 1 << ": " << bytes->first << " bytes in, "
                << bytes->second << " bytes out\n";
      EXPECT_GT(std::max(bytes->first, bytes->second), 50u << 20);
    }
    // ... and each host reports its tunnel on its own address.
    auto hosts = grid_->Admin().Get("/v1/hosts");
    ASSERT_TRUE(hosts.ok());
    for (const auto& h : (*hosts)["hosts"]) {
      const int i = std::stoi(h["name"].get<std::string>().substr(5)) - 1;
      auto full = grid_->Admin().Get("/v1/hosts/" + h["id"].get<std::string>());
      ASSERT_TRUE(full.ok());
      EXPECT_NE(full->dump().find(ns->host_ip(i)), std::string::npos) << full->dump();
    }
  }

  // Bob's VM: nothing of alice's network answers, whatever the address.
  // (b1 may hold a1's address: only the others are asked for.)
  std::string others;
  for (const std::string& ip : {ip1, ip2})
    if (ip != ipb) others += "ping -c 2 -W 2 " + ip + "; arping -c 2 -w 3 -I eth0 " + ip + "; ";
  auto [bcode, bout] = Sh(bob, b1["id"], others + "ping -c 1 -W 2 a1.lab; ip neigh");
  (void)bcode;
  EXPECT_EQ(bout.find(" 0% packet loss"), std::string::npos) << bout;
  EXPECT_EQ(bout.find("Unicast reply"), std::string::npos) << bout;
  // ... and alice's VMs see nothing of bob's.
  auto [acode, aout] = Sh(alice, a2["id"], "ping -c 1 -W 2 b1.lab");
  EXPECT_NE(acode, 0) << aout;

  // A guest that takes another address or MAC gets nothing through, and its
  // host's switch counts why (the admin sees the counters in host show).
  auto [scode, sout] =
      Sh(alice, a2["id"],
         "ip addr add 10.20.0.99/24 dev eth0; ping -c 2 -W 2 -I 10.20.0.99 " + ip1 +
             "; ip addr del 10.20.0.99/24 dev eth0; "
             "ip link set dev eth0 address 0a:66:66:66:66:66; ping -c 2 -W 2 " +
             ip1 + "; ip link set dev eth0 address " + a2["nics"][0].value("mac", "") +
             "; ping -c 1 -W 5 " + ip1);
  (void)scode;
  EXPECT_NE(sout.find("2 packets transmitted, 0 packets received"), std::string::npos) << sout;
  EXPECT_NE(sout.find("1 packets transmitted, 1 packets received"), std::string::npos)
      << "a2 did not get its network back with its own MAC: " << sout;
  json counters;
  for (auto deadline = Clock::now() + std::chrono::seconds(10); Clock::now() < deadline;) {
    auto host = grid_->Admin().Get("/v1/hosts/" + a2["host_id"].get<std::string>());
    ASSERT_TRUE(host.ok());
    for (const auto& n : (*host)["networks"].value("networks", json::array()))
      for (const auto& [name, port] : n["ports"].items())
        if (name.rfind(a2["id"].get<std::string>(), 0) == 0) counters = port["drops"];
    if (counters.value("spoofed_ip", 0) > 0 && counters.value("spoofed_mac", 0) > 0) break;
    std::this_thread::sleep_for(milliseconds(500));
  }
  EXPECT_GT(counters.value("spoofed_ip", 0), 0) << counters.dump();
  EXPECT_GT(counters.value("spoofed_mac", 0), 0) << counters.dump();
  std::cout << "[info] a2's port drops after spoofing: " << counters.dump() << "\n";

  // Cross-user: bob cannot see alice's VMs or network.
  auto alice_lab = alice.Get("/v1/networks/lab");
  ASSERT_TRUE(alice_lab.ok());
  auto seen = bob.Get("/v1/networks/" + (*alice_lab)["id"].get<std::string>());
  EXPECT_FALSE(seen.ok()) << seen->dump();

  // An agent killed with -9 and started again: the VMs live on, and the
  // pings a1 sends to a2 all along resume.
  ASSERT_EQ(Sh(alice, a1["id"],
               "(ping -i 0.2 " + ip2 +
                   " >/tmp/ping.log 2>&1 </dev/null &) ; sleep 2; "
                   "tail -n 1 /tmp/ping.log")
                .first,
            0);
  int host_index = a1["host_id"] == a2["host_id"] ? 0 : -1;
  auto hosts = grid_->Admin().Get("/v1/hosts");
  ASSERT_TRUE(hosts.ok());
  for (const auto& h : (*hosts)["hosts"])
    if (h["id"] == a1["host_id"])
      host_index = std::stoi(h["name"].get<std::string>().substr(5)) - 1;
  ASSERT_GE(host_index, 0);
  grid_->StopAgent(host_index, /*hard=*/true);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  ASSERT_TRUE(grid_->StartAgent(host_index).ok());
  std::this_thread::sleep_for(std::chrono::seconds(4));
  auto [lcode, log] = Sh(alice, a1["id"], "pkill ping; sleep 0.5; cat /tmp/ping.log");
  ASSERT_EQ(lcode, 0) << log;
  // The longest run of lost sequence numbers, and the last ones answered.
  std::istringstream in(log);
  std::string line;
  int last = -1, worst = 0, answered = 0, max_seq = -1;
  while (std::getline(in, line)) {
    auto at = line.find("seq=");
    if (at == std::string::npos) continue;
    int seq = std::stoi(line.substr(at + 4));
    if (last >= 0) worst = std::max(worst, seq - last - 1);
    last = seq;
    max_seq = std::max(max_seq, seq);
    ++answered;
  }
  EXPECT_GT(answered, 10) << log;
  std::cout << "[info] agent kill -9 + restart: longest gap " << worst << " pings (" << worst * 0.2
            << " s at 0.2 s each), " << answered << " answered\n";
  // The pings after the restart are answered: the last seconds of the log
  // (4 s = 20 pings at 0.2 s) are not all lost.
  EXPECT_GE(last, max_seq) << log;
  EXPECT_NE(log.rfind("seq="), std::string::npos);
  for (const json* v : {&a1, &a2}) {
    auto now = alice.Get("/v1/vms/" + (*v)["id"].get<std::string>());
    ASSERT_TRUE(now.ok());
    EXPECT_EQ((*now)["state"], "running") << now->dump();
  }
  auto [qcode, again] = Sh(alice, a1["id"], "ping -c 2 -W 3 a2.lab");
  EXPECT_EQ(qcode, 0) << again;

  for (const json* v : {&a1, &a2}) DeleteVm(alice, (*v)["id"]);
  DeleteVm(bob, b1["id"]);
}

TEST_F(VnetGridTest, OneUsersVmsTalkAcrossHostsAndNoOneElseSeesThem) { UsersVmsTalkAcrossHosts(); }

TEST_F(VnetNamespacesTest, OneUsersVmsTalkAcrossHostsOverRealLinks) { UsersVmsTalkAcrossHosts(); }

// Resumed VMs start with someone else's network state: a clone of a VM's
// checkpoint has that VM's MAC and lease, a VM resumed from the image's
// post-boot checkpoint has no NIC the guest kernel knows of. The agent
// reconfigures the guest (agent/guest_network.h): each gets its own MAC
// and address, and all of them talk to each other by name.
TEST_F(VnetGridTest, ResumedClonesGetTheirOwnAddressesAndTalkToTheOriginal) {
  ApiClient erin = User("erin");
  ASSERT_TRUE(erin.Post("/v1/networks", {{"name", "cl"}}).ok());
  const std::string image = (*image_)["id"];
  // The image's post-boot checkpoint (made without NICs).
  auto ck = grid_->Admin().Post("/v1/images/" + image + "/checkpoint", json::object());
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  auto ready = PollUntil(
      grid_->Admin(), "/v1/images/" + image,
      [](const json& j) {
        return j["checkpoint"].is_object() && j["checkpoint"].value("state", "") != "creating";
      },
      std::chrono::seconds(300));
  ASSERT_TRUE(ready.ok()) << ready.error().message;
  ASSERT_EQ((*ready)["checkpoint"]["state"], "ready") << ready->dump();

  json o1 = CreateVm(erin, {{"image", image}, {"name", "o1"}, {"nets", {"cl"}}});
  ASSERT_EQ(o1.value("state", ""), "running") << o1.dump();
  ASSERT_EQ(Act(erin, o1["id"], "checkpoint", {{"leave_running", true}}).value("state", ""),
            "running");
  json c1 = CreateVm(erin, {{"from_checkpoint", o1["id"]}, {"name", "c1"}, {"nets", {"cl"}}});
  json r1 =
      CreateVm(erin, {{"image", image}, {"name", "r1"}, {"start", "resume"}, {"nets", {"cl"}}});
  ASSERT_EQ(c1.value("state", ""), "running") << c1.dump();
  ASSERT_EQ(r1.value("state", ""), "running") << r1.dump();
  EXPECT_EQ(c1.value("start", ""), "resume");
  EXPECT_EQ(r1.value("start", ""), "resume");
  std::set<std::string> macs, ips;
  for (const json* v : {&o1, &c1, &r1}) {
    macs.insert((*v)["nics"][0].value("mac", ""));
    ips.insert(NicIp(*v));
  }
  EXPECT_EQ(macs.size(), 3u);
  EXPECT_EQ(ips.size(), 3u);

  // Each guest holds its own MAC and address on the card at slot 0x10.
  for (const json* v : {&c1, &r1}) {
    const std::string mac = (*v)["nics"][0]["mac"], ip = NicIp(*v);
    auto [code, out] = Sh(erin, (*v)["id"],
                          "for i in $(seq 100); do ip -4 -o addr show | grep -q 'inet " + ip +
                              "/' && break; sleep 0.1; done; ip -o link; ip -4 -o addr show");
    EXPECT_EQ(code, 0) << out;
    EXPECT_NE(out.find(mac), std::string::npos) << (*v)["name"] << ": " << out;
    EXPECT_NE(out.find("inet " + ip + "/"), std::string::npos) << (*v)["name"] << ": " << out;
  }
  // And they talk, by name, both ways.
  for (auto [from, to] : {std::pair{&c1, "o1"}, {&o1, "c1"}, {&r1, "c1"}, {&c1, "r1"}}) {
    auto [code, out] = Sh(erin, (*from)["id"], std::string("ping -c 2 -W 5 ") + to + ".cl");
    EXPECT_EQ(code, 0) << (*from)["name"] << " -> " << to << ": " << out;
  }
  for (const json* v : {&o1, &c1, &r1}) DeleteVm(erin, (*v)["id"]);
}

TEST_F(VnetGridTest, ForwardExposesAGuestPortToItsOwnerOnly) {
  ApiClient carol = User("carol"), dave = User("dave");
  ASSERT_TRUE(carol.Post("/v1/networks", {{"name", "web"}, {"egress", true}}).ok());
  // (Another subnet: a guest with two cards in one subnet routes its answers by chance.)
  ASSERT_TRUE(carol.Post("/v1/networks", {{"name", "closed"}, {"subnet", "10.30.0.0/24"}}).ok());
  const std::string image = (*image_)["id"];
  json w = CreateVm(carol, {{"image", image}, {"name", "w1"}, {"nets", {"web", "closed"}}});
  ASSERT_EQ(w.value("state", ""), "running") << w.dump();
  const std::string id = w["id"];
  ASSERT_EQ(Sh(carol, id, "(nc -ll -p 8080 -e /bin/cat </dev/null >/dev/null 2>&1 &)").first, 0);

  // Not dave's VM; not through a network without egress; not on another address.
  auto theirs = dave.Post("/v1/vms/" + id + "/forwards", {{"guest_port", 8080}});
  ASSERT_FALSE(theirs.ok());
  EXPECT_EQ(theirs.error().code, ErrorCode::kNotFound);
  auto closed = carol.Post("/v1/vms/" + id + "/forwards", {{"guest_port", 8080}, {"nic", 1}});
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().code, ErrorCode::kFailedPrecondition) << closed.error().message;
  auto wide =
      carol.Post("/v1/vms/" + id + "/forwards", {{"guest_port", 8080}, {"listen_ip", "0.0.0.0"}});
  ASSERT_FALSE(wide.ok());
  EXPECT_EQ(wide.error().code, ErrorCode::kPermissionDenied) << wide.error().message;
  auto bad = carol.Post("/v1/vms/" + id + "/forwards", {{"guest_port", 70000}});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);

  auto f = carol.Post("/v1/vms/" + id + "/forwards", {{"guest_port", 8080}});
  ASSERT_TRUE(f.ok()) << f.error().message;
  const int port = (*f)["listen_port"];
  EXPECT_EQ((*f)["guest_ip"], NicIp(w, 0));
  const std::string text = "through the egress gateway to the guest and back\n";
  std::string got;
  for (int attempt = 0; attempt < 30 && got != text; ++attempt) {
    got = EchoThrough(port, text);
    if (got != text) std::this_thread::sleep_for(milliseconds(300));
  }
  EXPECT_EQ(got, text);

  // The admin sees the gateway's counters in host show: the echo went
  // through slirp both ways.
  json egress;
  for (auto deadline = Clock::now() + std::chrono::seconds(10); Clock::now() < deadline;) {
    auto host = grid_->Admin().Get("/v1/hosts/" + w["host_id"].get<std::string>());
    ASSERT_TRUE(host.ok());
    for (const auto& n : (*host)["networks"].value("networks", json::array()))
      if (n.value("name", "") == "web") egress = n.value("egress", json());
    if (egress.is_object() && egress.value("from_outside", 0) > 0) break;
    std::this_thread::sleep_for(milliseconds(500));
  }
  ASSERT_TRUE(egress.is_object()) << "no egress counters in host show";
  EXPECT_GT(egress.value("from_outside", 0), 0) << egress.dump();
  EXPECT_GT(egress.value("to_outside", 0), 0) << egress.dump();

  // Stop and resume: the forward is still there, on its port (the switch
  // port and its forwards are kept when the resume attaches them unchanged).
  Act(carol, id, "stop");
  json again = Act(carol, id, "resume");
  ASSERT_EQ(again.value("state", ""), "running") << again.dump();
  ASSERT_EQ(Sh(carol, id, "(nc -ll -p 8080 -e /bin/cat </dev/null >/dev/null 2>&1 &)").first, 0);
  got.clear();
  for (int attempt = 0; attempt < 30 && got != text; ++attempt) {
    got = EchoThrough(port, text);
    if (got != text) std::this_thread::sleep_for(milliseconds(300));
  }
  EXPECT_EQ(got, text) << "the forward did not come back after stop and resume";

  EXPECT_EQ(dave.Delete("/v1/vms/" + id + "/forwards/" + std::to_string(port)).error().code,
            ErrorCode::kNotFound);
  ASSERT_TRUE(carol.Delete("/v1/vms/" + id + "/forwards/" + std::to_string(port)).ok());
  EXPECT_EQ(EchoThrough(port, text), "");
  DeleteVm(carol, id);
}

}  // namespace
}  // namespace vmgrid
