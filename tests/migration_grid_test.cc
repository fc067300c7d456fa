// Live migration end to end (issue 12, docs/migration.md): a real controller
// and two agents, a tiny guest with a NIC on a virtual network. `POST
// /v1/vms/ID/migrate` moves it to the other host while it runs: the record
// names the new host, the guest keeps a file it wrote before (its disk was
// mirrored), exec works on the target, and its NIC still reaches a VM on
// the network.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace vmgrid::testing_support;

class MigrationGridTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    grid_ = StartGrid("migrate", 2).release();
    image_ = new json(ImportTiny(grid_->Admin(), "tiny", false));
  }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
    delete image_;
    grid_ = nullptr;
    image_ = nullptr;
  }
  static ApiClient User(const std::string& name) { return NewUser(*grid_, name); }

  // A VM with a NIC moves to the other host and back (by the API, then the
  // CLI), keeping its boot, disk and network.
  void MovesWithItsDiskAndNetwork();

  static LocalGrid* grid_;
  static json* image_;
};
LocalGrid* MigrationGridTest::grid_ = nullptr;
json* MigrationGridTest::image_ = nullptr;

// The same with each agent in a network namespace of its own
// (dev/host_namespaces.h): the target's listeners bind its own address and
// the disk, memory and tunnel traffic cross real links.
class MigrationNamespacesTest : public MigrationGridTest {
 protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0 || std::system("command -v ip >/dev/null 2>&1") != 0) return;
    grid_ = StartGrid("migratens", 2, {}, true, /*host_namespaces=*/true).release();
    image_ = new json(ImportTiny(grid_->Admin(), "tiny", false));
  }
  static void TearDownTestSuite() { MigrationGridTest::TearDownTestSuite(); }
  void SetUp() override {
    if (!grid_) GTEST_SKIP() << "needs root and ip (network namespaces)";
  }
};

TEST_F(MigrationGridTest, ARunningVmMovesToTheOtherHostWithItsDiskAndNetwork) {
  MovesWithItsDiskAndNetwork();
}

TEST_F(MigrationNamespacesTest, ARunningVmMovesAcrossRealLinks) { MovesWithItsDiskAndNetwork(); }

void MigrationGridTest::MovesWithItsDiskAndNetwork() {
  auto made = grid_->Admin().Post("/v1/users", {{"name", "alice"}});
  ASSERT_TRUE(made.ok()) << made.error().message;
  const std::string alice_token = (*made)["token"];
  ApiClient alice(grid_->url(), alice_token), bob = User("bob");
  ASSERT_TRUE(alice.Post("/v1/networks", {{"name", "lab"}}).ok());
  const std::string image = (*image_)["id"];
  json a1 = CreateVm(alice, {{"image", image}, {"name", "a1"}, {"nets", {"lab"}}});
  json a2 = CreateVm(alice, {{"image", image}, {"name", "a2"}, {"nets", {"lab"}}});
  ASSERT_EQ(a1.value("state", ""), "running") << a1.dump();
  ASSERT_EQ(a2.value("state", ""), "running") << a2.dump();
  const std::string id = a1["id"], from = a1["host_id"];

  // A file on the guest's disk, and the network up.
  auto [wcode, wout] =
      Sh(alice, id,
         "echo before-migration-$(cat /proc/sys/kernel/random/boot_id) > /root/mig.txt"
         " && sync && cat /root/mig.txt");
  ASSERT_EQ(wcode, 0) << wout;
  const std::string written = wout;
  auto [p0, ping0] = Sh(alice, id, "ping -c 2 -W 5 a2.lab");
  EXPECT_EQ(p0, 0) << ping0;

  // Refusals: another user's VM is not found; the VM's own host is no target.
  auto theirs = bob.Post("/v1/vms/" + id + "/migrate", json::object());
  ASSERT_FALSE(theirs.ok());
  EXPECT_EQ(theirs.error().code, ErrorCode::kNotFound);
  auto same = alice.Post("/v1/vms/" + id + "/migrate", {{"to", from}});
  ASSERT_FALSE(same.ok());
  EXPECT_EQ(same.error().code, ErrorCode::kInvalidArgument) << same.error().message;

  const auto t0 = std::chrono::steady_clock::now();
  auto started = alice.Post("/v1/vms/" + id + "/migrate", json::object());
  ASSERT_TRUE(started.ok()) << started.error().message;
  EXPECT_EQ((*started)["kind"], "migrate");
  auto vm_during = alice.Get("/v1/vms/" + id);
  ASSERT_TRUE(vm_during.ok());
  EXPECT_EQ((*vm_during)["state"], "migrating");
  auto result = AwaitOperation(alice, started);
  const auto wall_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  ASSERT_TRUE(result.ok()) << result.error().message;
  std::cout << "[info] migration " << result->dump() << " (wall " << wall_ms << " ms)\n";
  EXPECT_GT(result->value("ram_bytes", 0), 0);
  EXPECT_GE(result->value("downtime_ms", -1), 0);

  json moved = WaitVm(alice, id);
  EXPECT_EQ(moved.value("state", ""), "running") << moved.dump();
  EXPECT_NE(moved.value("host_id", ""), from) << moved.dump();
  EXPECT_EQ(moved.value("host", ""), result->value("to", "")) << moved.dump();

  // The guest runs on: the same boot, the file there, and new writes work.
  auto [rcode, rout] = Sh(alice, id, "cat /root/mig.txt && echo after >> /root/mig.txt && sync");
  EXPECT_EQ(rcode, 0) << rout;
  EXPECT_EQ(rout, written) << "the guest rebooted or lost its disk";
  // Its NIC is planned on the new host: a2 answers (the plan reaches the
  // hosts with their next heartbeat).
  auto [p1, ping1] = Sh(alice, id,
                        "for i in $(seq 15); do ping -c 1 -W 2 a2.lab >/dev/null && break; "
                        "sleep 1; done; ping -c 3 -W 5 a2.lab",
                        90);
  EXPECT_EQ(p1, 0) << ping1;

  // The source's room is free again; the target holds the VM's.
  auto hosts = grid_->Admin().Get("/v1/hosts");
  ASSERT_TRUE(hosts.ok());
  std::cout << "[info] hosts after " << hosts->dump() << "\n";

  // And back with the CLI, naming the host.
  const std::string cmd = "VMGRID_TOKEN=" + alice_token + " " + VMGRID_BINARY + " --url " +
                          grid_->url() + " --ca " + grid_->ca_file() + " vm migrate a1 --to " +
                          a1.value("host", "") + " 2>&1";
  std::string cli_out;
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[512];
  while (fgets(buf, sizeof buf, p)) cli_out += buf;
  const int cli_rc = pclose(p);
  std::cout << "[info] migration back: " << cli_out;
  EXPECT_EQ(cli_rc, 0) << cli_out;
  EXPECT_NE(
      cli_out.find("migrated a1 from " + moved.value("host", "") + " to " + a1.value("host", "")),
      std::string::npos)
      << cli_out;
  json home = WaitVm(alice, id);
  EXPECT_EQ(home.value("host_id", ""), from);
  auto [bcode, bout] = Sh(alice, id, "cat /root/mig.txt");
  EXPECT_EQ(bcode, 0);
  EXPECT_EQ(bout, written + "after\n");
  auto [p2, ping2] = Sh(alice, id,
                        "for i in $(seq 15); do ping -c 1 -W 2 a2.lab >/dev/null && break; "
                        "sleep 1; done; ping -c 3 -W 5 a2.lab",
                        90);
  EXPECT_EQ(p2, 0) << ping2;
}

// A stopped VM moves cold (docs/migration.md, "Cold migration"): its disk
// arrives on the other host, the VM stays stopped there, holds no room on
// its old host, and boots there with what it wrote before it was stopped.
TEST_F(MigrationGridTest, AStoppedVmMovesColdAndStartsThereWithItsDisk) {
  ApiClient dora = User("dora");
  json vm = CreateVm(dora, {{"image", (*image_)["id"]}, {"name", "cold1"}});
  ASSERT_EQ(vm.value("state", ""), "running") << vm.dump();
  const std::string id = vm["id"], from = vm["host_id"];
  auto [wc, written] = Sh(dora, id,
                          "head -c 2000000 /dev/urandom > /root/cold.bin && sync && "
                          "md5sum /root/cold.bin | cut -c1-32");
  ASSERT_EQ(wc, 0) << written;
  ASSERT_TRUE(dora.Post("/v1/vms/" + id + "/stop", json::object()).ok());
  json stopped = WaitVm(dora, id);
  ASSERT_EQ(stopped.value("state", ""), "stopped") << stopped.dump();

  auto started = dora.Post("/v1/vms/" + id + "/migrate", json::object());
  ASSERT_TRUE(started.ok()) << started.error().message;
  auto result = AwaitOperation(dora, started);
  ASSERT_TRUE(result.ok()) << result.error().message;
  std::cout << "[info] cold migration " << result->dump() << "\n";
  EXPECT_TRUE(result->value("cold", false)) << result->dump();
  EXPECT_GE(result->value("disk_bytes", 0), 2000000) << result->dump();
  EXPECT_EQ(result->value("ram_bytes", -1), 0) << result->dump();
  json moved = WaitVm(dora, id);
  EXPECT_EQ(moved.value("state", ""), "stopped") << moved.dump();
  EXPECT_NE(moved.value("host_id", ""), from) << moved.dump();
  // No QEMU of it runs anywhere while it is stopped.
  for (int i = 0; i < grid_->hosts(); ++i) EXPECT_EQ(LiveQemuOn(*grid_, i, id), 0) << i;

  ASSERT_TRUE(dora.Post("/v1/vms/" + id + "/resume", json::object()).ok());
  json running = WaitVm(dora, id);
  ASSERT_EQ(running.value("state", ""), "running") << running.dump();
  EXPECT_EQ(running.value("host_id", ""), moved.value("host_id", ""));
  auto [rc, now] = Sh(dora, id, "md5sum /root/cold.bin | cut -c1-32");
  EXPECT_EQ(rc, 0) << now;
  EXPECT_EQ(now, written) << "the disk did not arrive whole";
  DeleteVm(dora, id);
}

// A port forward follows its VM: after a live migration the guest's port
// is forwarded on the new host (the listener on the old one went with the
// source's copy), and the guest's server, which kept running, answers.
TEST_F(MigrationGridTest, AForwardFollowsItsVmToTheNewHost) {
  ApiClient erin = User("erin");
  ASSERT_TRUE(erin.Post("/v1/networks", {{"name", "fw"}, {"egress", true}}).ok());
  json vm = CreateVm(erin, {{"image", (*image_)["id"]}, {"name", "fw1"}, {"nets", {"fw"}}});
  ASSERT_EQ(vm.value("state", ""), "running") << vm.dump();
  const std::string id = vm["id"];
  ASSERT_EQ(Sh(erin, id, "(nc -ll -p 8080 -e /bin/cat </dev/null >/dev/null 2>&1 &)").first, 0);
  auto f = erin.Post("/v1/vms/" + id + "/forwards", {{"guest_port", 8080}});
  ASSERT_TRUE(f.ok()) << f.error().message;
  const std::string text = "through the forward after a migration\n";
  auto echo = [&](int port) {
    std::string got;
    for (int attempt = 0; attempt < 30 && got != text; ++attempt) {
      got = EchoThrough(port, text);
      if (got != text) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
    return got;
  };
  ASSERT_EQ(echo((*f)["listen_port"]), text);

  auto started = erin.Post("/v1/vms/" + id + "/migrate", json::object());
  ASSERT_TRUE(started.ok()) << started.error().message;
  auto result = AwaitOperation(erin, started);
  ASSERT_TRUE(result.ok()) << result.error().message;
  std::cout << "[info] migration with a forward " << result->dump() << "\n";
  EXPECT_FALSE(result->contains("warning")) << result->dump();
  ASSERT_EQ(result->value("forwards", json::array()).size(), 1u) << result->dump();
  const json& moved = (*result)["forwards"][0];
  EXPECT_EQ(moved.value("guest_port", 0), 8080);
  // The same listen port when it is free on the new host (here both hosts
  // share 127.0.0.1, and the old listener is gone first).
  EXPECT_EQ(moved.value("listen_port", 0), (*f)["listen_port"].get<int>());
  EXPECT_EQ(echo(moved.value("listen_port", 0)), text);

  // Stopped, it moves cold: the new host records the forward, and it opens
  // there when the VM starts (a guest booted again starts its server again).
  ASSERT_TRUE(erin.Post("/v1/vms/" + id + "/stop", json::object()).ok());
  ASSERT_EQ(WaitVm(erin, id).value("state", ""), "stopped");
  auto cold = erin.Post("/v1/vms/" + id + "/migrate", json::object());
  ASSERT_TRUE(cold.ok()) << cold.error().message;
  auto cold_result = AwaitOperation(erin, cold);
  ASSERT_TRUE(cold_result.ok()) << cold_result.error().message;
  std::cout << "[info] cold migration with a forward " << cold_result->dump() << "\n";
  EXPECT_TRUE(cold_result->value("cold", false)) << cold_result->dump();
  EXPECT_FALSE(cold_result->contains("warning")) << cold_result->dump();
  ASSERT_EQ(cold_result->value("forwards", json::array()).size(), 1u) << cold_result->dump();
  const int cold_port = (*cold_result)["forwards"][0].value("listen_port", 0);
  EXPECT_EQ(cold_port, moved.value("listen_port", 0));
  EXPECT_NE(EchoThrough(cold_port, text), text) << "a stopped VM's forward must not be open";
  ASSERT_TRUE(erin.Post("/v1/vms/" + id + "/resume", json::object()).ok());
  ASSERT_EQ(WaitVm(erin, id).value("state", ""), "running");
  ASSERT_EQ(Sh(erin, id, "(nc -ll -p 8080 -e /bin/cat </dev/null >/dev/null 2>&1 &)").first, 0);
  EXPECT_EQ(echo(cold_port), text);
  DeleteVm(erin, id);
}

// Where a VM of this grid runs: its host's index ("host-N" is index N-1).
int HostIndex(const json& vm) { return std::stoi(vm.value("host", "host-0").substr(5)) - 1; }

// Killing a process mid-migration leaves the VM running on exactly one host,
// its record saying which, its disk intact, and no room held for it on the
// other: the target's QEMU, the target's agent, then the controller, each
// killed (SIGKILL) while the source is sending.
TEST_F(MigrationGridTest, AKillMidMigrationLeavesTheVmRunningOnExactlyOneHost) {
  ApiClient carol = User("carol");
  json vm = CreateVm(carol, {{"image", (*image_)["id"]}, {"name", "c1"}});
  ASSERT_EQ(vm.value("state", ""), "running") << vm.dump();
  const std::string id = vm["id"];
  auto [wcode, written] = Sh(carol, id,
                             "echo kept-$(cat /proc/sys/kernel/random/boot_id) "
                             "> /root/k.txt && sync && cat /root/k.txt");
  ASSERT_EQ(wcode, 0) << written;

  // Starts a migration and returns once the source is sending (the
  // operation's `migrate` step) or the operation has ended.
  auto migrate_until_sending = [&]() -> json {
    auto op = carol.Post("/v1/vms/" + id + "/migrate", json::object());
    EXPECT_TRUE(op.ok()) << op.error().message;
    if (!op.ok()) return json();
    auto sending = PollUntil(
        carol, "/v1/operations/" + (*op)["id"].get<std::string>(),
        [](const json& j) {
          return j.value("state", "") != "running" ||
                 (j["progress"].is_object() && j["progress"].value("step", "") == "migrate");
        },
        seconds(120));
    EXPECT_TRUE(sending.ok());
    return *op;
  };
  // The VM runs on one host only, as its record says, with its disk; each
  // host's free room is its size less the VMs recorded there.
  auto runs_once = [&](const std::string& after) -> int {
    SCOPED_TRACE(after);
    json now = WaitVm(carol, id);
    EXPECT_EQ(now.value("state", ""), "running") << now.dump();
    const int on = HostIndex(now);
    EXPECT_GT(LiveQemuOn(*grid_, on, id), 0) << "no QEMU where the record says it runs";
    EXPECT_EQ(LiveQemuOn(*grid_, 1 - on, id), 0) << "a second QEMU on the other host";
    auto [code, out] = Sh(carol, id, "cat /root/k.txt");
    EXPECT_EQ(code, 0) << out;
    EXPECT_EQ(out, written) << "the guest rebooted or lost its disk";
    auto vms = grid_->Admin().Get("/v1/vms");
    auto hosts = grid_->Admin().Get("/v1/hosts");
    EXPECT_TRUE(vms.ok() && hosts.ok());
    if (!vms.ok() || !hosts.ok()) return on;
    for (const auto& h : (*hosts)["hosts"]) {
      int64_t used = 0;
      for (const auto& v : (*vms)["vms"])
        if (v.value("host_id", "") == h.value("id", "")) used += v.value("memory_mb", 0);
      EXPECT_EQ(h.value("free_memory_mb", -1), h.value("memory_mb", 0) - used) << h.dump();
    }
    return on;
  };

  // 1. The target's QEMU dies: the source never stopped for good.
  {
    const int source = HostIndex(vm);
    json op = migrate_until_sending();
    const int target_pid = LiveQemuOn(*grid_, 1 - source, id);
    ASSERT_GT(target_pid, 0) << "no incoming QEMU on the target";
    ::kill(target_pid, SIGKILL);
    auto r = AwaitOperation(carol, op);
    std::cout << "[info] target QEMU killed: " << (r.ok() ? r->dump() : r.error().message) << "\n";
    EXPECT_FALSE(r.ok()) << r->dump();
    EXPECT_EQ(runs_once("target QEMU killed"), source);
  }
  // 2. The target's agent dies: the migration fails at the latest when the
  // target should start; the agent, back, drops the half-arrived copy.
  {
    const int source = HostIndex(WaitVm(carol, id));
    json op = migrate_until_sending();
    grid_->StopAgent(1 - source, /*hard=*/true);
    auto r = AwaitOperation(carol, op);
    std::cout << "[info] target agent killed: " << (r.ok() ? r->dump() : r.error().message) << "\n";
    EXPECT_FALSE(r.ok()) << r->dump();
    ASSERT_TRUE(grid_->StartAgent(1 - source).ok());
    ASSERT_TRUE(grid_->WaitHostsUp(2, seconds(60)).ok());
    EXPECT_EQ(runs_once("target agent killed"), source);
  }
  // 3. The controller dies: the next one finds the migration's row and
  // settles it by what the two hosts report.
  {
    json op = migrate_until_sending();
    grid_->StopController(/*hard=*/true);
    ASSERT_TRUE(grid_->StartController().ok());
    const int on = runs_once("controller killed");
    std::cout << "[info] controller killed mid-migration: the VM runs on host-" << on + 1 << "\n";
    // And it still migrates.
    auto again = AwaitOperation(carol, carol.Post("/v1/vms/" + id + "/migrate", json::object()));
    EXPECT_TRUE(again.ok()) << again.error().message;
    EXPECT_EQ(runs_once("migrated again"), 1 - on);
  }
  DeleteVm(carol, id);
}

}  // namespace
}  // namespace vmgrid
