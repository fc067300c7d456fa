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

}  // namespace
}  // namespace vmgrid
