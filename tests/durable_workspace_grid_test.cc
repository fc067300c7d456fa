// Durable workspaces end to end (issue 12 section 4, docs/vm-lifecycle.md):
// a real controller, image server and two agents with tiny guests. A
// persistent VM writes a file and is stopped: its workspace is pushed to the
// image server as a durable version; a second push after a small change sends
// only a few chunks; then its host is killed (agent and QEMU, kill -9) and the
// VM restarts on the other host from the durable version, with the file.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <iostream>
#include <thread>

#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace vmgrid::testing_support;

// Host failure detected quickly (as host_failure_grid_test); no interval pushes.
const std::vector<std::string> kArgs = {
    "--host-suspect-after-ms",   "3000", "--host-failed-after-ms", "9000",
    "--host-lease-ms",           "5000", "--host-lease-grace-ms",  "3000",
    "--workspace-push-interval", "0"};

json Workspace(const ApiClient& api, const std::string& name) {
  auto r = api.Get("/v1/workspaces");
  EXPECT_TRUE(r.ok());
  if (!r.ok()) return json();
  for (const auto& w : (*r)["workspaces"])
    if (w.value("name", "") == name) return w;
  return json();
}

TEST(DurableWorkspaceGridTest, StopPushesOnlyChangedChunksAndHostFailureRestartsFromIt) {
  auto grid = StartGrid("durable", 2, kArgs);
  ASSERT_TRUE(grid);
  ApiClient admin = grid->Admin();
  const std::string image = ImportTiny(admin, "tiny", false)["id"];
  ApiClient alice = NewUser(*grid, "alice");

  json vm = CreateVm(alice, {{"image", image},
                             {"name", "dw"},
                             {"disk", "persistent"},
                             {"workspace", "dws"},
                             {"restart", "on-host-failure"}});
  ASSERT_EQ(vm.value("state", ""), "running") << vm.dump();
  const std::string id = vm["id"];
  EXPECT_TRUE(Workspace(alice, "dws")["durable"].is_null()) << "no version before a push";
  Exec(alice, id, "echo first > /root/durable.txt && sync");

  // Stop: version 1 (the chunks the image does not share travel).
  ASSERT_EQ(Act(alice, id, "stop").value("state", ""), "stopped");
  json d1 = Workspace(alice, "dws")["durable"];
  ASSERT_TRUE(d1.is_object()) << Workspace(alice, "dws").dump();
  std::cout << "[info] version 1: " << d1.dump() << "\n";
  EXPECT_EQ(d1.value("version", 0), 1);
  EXPECT_GT(d1.value("chunks", 0), 0);
  EXPECT_LT(d1.value("sent_chunks", 0), d1.value("chunks", 0))
      << "dedup with the image: most of the workspace's chunks were on the server already";

  // A small change, stop again: version 2, only a few chunks sent.
  ASSERT_EQ(Act(alice, id, "resume").value("state", ""), "running");
  Exec(alice, id, "echo second >> /root/durable.txt && sync");
  ASSERT_EQ(Act(alice, id, "stop").value("state", ""), "stopped");
  json d2 = Workspace(alice, "dws")["durable"];
  std::cout << "[info] version 2: " << d2.dump() << "\n";
  EXPECT_EQ(d2.value("version", 0), 2);
  EXPECT_GT(d2.value("sent_chunks", 0), 0);
  EXPECT_LE(d2.value("sent_chunks", 0), 16) << "only the changed chunks travel";
  EXPECT_LT(d2.value("sent_chunks", 0), d2.value("chunks", 0));

  // A checkpoint pushes too: version 3, with what the guest wrote before it.
  ASSERT_EQ(Act(alice, id, "resume").value("state", ""), "running");
  Exec(alice, id, "echo third >> /root/durable.txt && sync");
  ASSERT_EQ(Act(alice, id, "checkpoint").value("state", ""), "suspended");
  json d3 = Workspace(alice, "dws")["durable"];
  std::cout << "[info] version 3 (checkpoint): " << d3.dump() << "\n";
  EXPECT_EQ(d3.value("version", 0), 3);
  EXPECT_LE(d3.value("sent_chunks", 0), 16) << "only the changed chunks travel";

  // Running again on its host; then the host dies (agent and QEMU, kill -9).
  json running = Act(alice, id, "resume");
  ASSERT_EQ(running.value("state", ""), "running") << running.dump();
  const std::string dead_host = running["host"];
  const int dead_i = dead_host == "host-1" ? 0 : 1;
  grid->StopAgent(dead_i, /*hard=*/true);
  if (int q = LiveQemuOn(*grid, dead_i, id); q > 0) kill(q, SIGKILL);
  auto moved = PollUntil(
      alice, "/v1/vms/" + id,
      [&](const json& v) { return v.value("state", "") == "running" && v["host"] != dead_host; },
      seconds(180));
  ASSERT_TRUE(moved.ok()) << moved.error().message;
  std::cout << "[info] restarted: " << moved->value("error", "") << "\n";
  EXPECT_NE(moved->value("error", "").find("durable version 3"), std::string::npos)
      << moved->dump();
  EXPECT_EQ(Exec(alice, id, "cat /root/durable.txt"), "first\nsecond\nthird\n");
  json ws = Workspace(alice, "dws");
  EXPECT_NE(ws.value("host_id", ""), "") << ws.dump();
  EXPECT_EQ(ws["host_id"], (*moved)["host_id"]) << "the workspace is the new host's now";

  // On the new host it is pushed like any workspace: version 4 on stop.
  ASSERT_EQ(Act(alice, id, "stop").value("state", ""), "stopped");
  json d4 = Workspace(alice, "dws")["durable"];
  std::cout << "[info] version 4: " << d4.dump() << "\n";
  EXPECT_EQ(d4.value("version", 0), 4);
  EXPECT_EQ(d4.value("host", ""), (*moved)["host"]);
  StopGrid(grid);
}

// --workspace-push-interval: a running persistent VM's workspace is pushed
// while it runs (a point-in-time copy), without a stop or a checkpoint; while
// the guest writes nothing the interval skips the push; a later push after a
// small write sends only a few chunks.
TEST(DurableWorkspaceGridTest, IntervalPushesWhileTheVmRuns) {
  auto grid = StartGrid("durable-interval", 1, {"--workspace-push-interval", "3"});
  ASSERT_TRUE(grid);
  const std::string image = ImportTiny(grid->Admin(), "tiny", false)["id"];
  ApiClient alice = NewUser(*grid, "alice");
  json vm = CreateVm(
      alice, {{"image", image}, {"name", "iv"}, {"disk", "persistent"}, {"workspace", "ivs"}});
  ASSERT_EQ(vm.value("state", ""), "running") << vm.dump();
  const std::string id = vm["id"];
  Exec(alice, id, "echo one > /root/interval.txt && sync");
  auto version = [&] {
    const json d = Workspace(alice, "ivs")["durable"];
    return d.is_object() ? d.value("version", 0) : 0;
  };
  const auto give_up = std::chrono::steady_clock::now() + seconds(90);
  while (version() < 1 && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int first = version();
  ASSERT_GE(first, 1) << "no interval push in 90 s: " << Workspace(alice, "ivs").dump();
  // Idle between pushes: the next interval finds nothing written since the
  // last copy and skips the copy, the read and the push.
  auto unchanged = [&] {
    auto hosts = grid->Admin().Get("/v1/hosts");
    int64_t n = 0;
    if (hosts.ok())
      for (const auto& h : hosts->value("hosts", json::array()))
        n += h.value("images", json::object())
                 .value("workspace_pushes", json::object())
                 .value("unchanged_skipped", int64_t{0});
    return n;
  };
  const auto idle_give_up = std::chrono::steady_clock::now() + seconds(60);
  while (unchanged() < 1 && std::chrono::steady_clock::now() < idle_give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ASSERT_GE(unchanged(), 1) << "an idle workspace was pushed again and again: "
                            << Workspace(alice, "ivs").dump();
  const int idle = version();
  Exec(alice, id, "echo two >> /root/interval.txt && sync");
  while (version() <= idle && std::chrono::steady_clock::now() < give_up + seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  json later = Workspace(alice, "ivs")["durable"];
  std::cout << "[info] interval pushes: version " << first << ", then " << later.dump() << "\n";
  ASSERT_GT(later.value("version", 0), idle)
      << "a write after skipped pushes is pushed: " << later.dump();
  EXPECT_LE(later.value("sent_chunks", 0), 16) << "only the changed chunks travel";
  auto now = alice.Get("/v1/vms/" + id);
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(now->value("state", ""), "running") << "never stopped";
  // A stop after an interval push with nothing written since pushes nothing
  // more: the latest version is the disk.
  const int64_t skips = unchanged();
  const auto settle_give_up = std::chrono::steady_clock::now() + seconds(60);
  while (unchanged() <= skips && std::chrono::steady_clock::now() < settle_give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int settled = version();
  const int64_t before_stop = unchanged();
  ASSERT_GT(before_stop, skips) << "no interval push skipped after the last write";
  ASSERT_EQ(Act(alice, id, "stop").value("state", ""), "stopped");
  const auto stop_give_up = std::chrono::steady_clock::now() + seconds(30);
  while (unchanged() <= before_stop && std::chrono::steady_clock::now() < stop_give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the next heartbeat
  EXPECT_GT(unchanged(), before_stop) << "the stop's push was not skipped";
  EXPECT_EQ(version(), settled) << Workspace(alice, "ivs").dump();
  StopGrid(grid);
}

}  // namespace
}  // namespace vmgrid
