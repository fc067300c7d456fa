// Host failure end to end (issue 12 section 3, docs/host-failure.md): a real
// controller with short failure settings, two agents and tiny guests.
// A partitioned agent (SIGSTOP) has its VM paused by its lease fence, the VM
// is recovered on the other host, and when the agent resumes its stale copy
// is destroyed; the old and new QEMUs are never both running, and a VM with
// restart policy never beside it is not fenced. An agent killed
// with its QEMUs (kill -9) has its on-host-failure VM restarted on the other
// host and its never VM marked error.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>

#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace vmgrid::testing_support;

// suspect 3 s, failed 9 s, lease 5 s, grace 3 s (lease + grace <= failed).
const std::vector<std::string> kFailureArgs = {
    "--host-suspect-after-ms", "3000", "--host-failed-after-ms", "9000",
    "--host-lease-ms",         "5000", "--host-lease-grace-ms",  "3000"};

// A process's state letter from /proc/PID/stat ('T': stopped; 0: gone).
char ProcState(int pid) {
  if (pid <= 0) return 0;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return 0;
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() ? line[close + 2] : 0;
}
bool Runs(int pid) {
  const char s = ProcState(pid);
  return s != 0 && s != 'T' && s != 't' && s != 'Z';
}

class HostFailureGridTest : public ::testing::Test {
 protected:
  void SetUp() override { grid_ = StartGrid("hostfail", 2, kFailureArgs); }
  void TearDown() override {
    for (int i = 0; i < 2; ++i)
      if (pid_t p = grid_ ? grid_->agent_pid(i) : 0; p > 0) kill(p, SIGCONT);
    StopGrid(grid_);
  }
  int IndexOf(const std::string& host_name) {
    auto hosts = grid_->Admin().Get("/v1/hosts");
    EXPECT_TRUE(hosts.ok());
    // LocalGrid names its hosts host-1, host-2, ...
    return host_name == "host-1" ? 0 : 1;
  }
  json Vm(const ApiClient& api, const std::string& id) {
    auto r = api.Get("/v1/vms/" + id);
    return r.ok() ? *r : json();
  }
  // Polls `id` every 200 ms until `done`, checking on every round that the
  // VM's QEMUs on the two hosts never run at the same time.
  json PollVm(const ApiClient& api, const std::string& id,
              const std::function<bool(const json&)>& done, seconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      const int a = LiveQemuOn(*grid_, 0, id), b = LiveQemuOn(*grid_, 1, id);
      EXPECT_FALSE(Runs(a) && Runs(b))
          << "VM " << id << " runs on both hosts (pids " << a << ", " << b << ")";
      json vm = Vm(api, id);
      if (!vm.is_null() && done(vm)) return vm;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    ADD_FAILURE() << "timed out waiting for VM " << id << ": " << Vm(api, id).dump();
    return json();
  }

  std::unique_ptr<LocalGrid> grid_;
};

TEST_F(HostFailureGridTest, PartitionFencesThenRecoversAndKillRecoversByPolicy) {
  ApiClient admin = grid_->Admin();
  const std::string image = ImportTiny(admin, "tiny", false)["id"];
  ApiClient alice = NewUser(*grid_, "alice");

  // --- A partition: the agent frozen with SIGSTOP.
  json part = CreateVm(alice, {{"image", image}, {"name", "part"}, {"restart", "on-host-failure"}});
  ASSERT_EQ(part.value("state", ""), "running") << part.dump();
  EXPECT_EQ(part.value("restart", ""), "on-host-failure");
  const std::string part_id = part["id"];
  const std::string old_host = part["host"];
  const int old_i = IndexOf(old_host);
  const int old_qemu = LiveQemuOn(*grid_, old_i, part_id);
  ASSERT_GT(old_qemu, 0);
  // Beside it a VM that is never restarted elsewhere: it cannot run twice,
  // so the fence lets it run through the partition.
  json stay = CreateVm(alice, {{"image", image}, {"name", "stay"}, {"policy", "pack"}});
  ASSERT_EQ(stay.value("state", ""), "running") << stay.dump();
  ASSERT_EQ(stay["host"], old_host) << "pack puts it beside part";
  const int stay_qemu = LiveQemuOn(*grid_, old_i, stay["id"].get<std::string>());
  ASSERT_GT(stay_qemu, 0);
  // A heartbeat has reported it (a guarded VM's pid reaches the fence then).
  std::this_thread::sleep_for(seconds(3));
  const pid_t agent = grid_->agent_pid(old_i);
  ASSERT_GT(agent, 0);
  ASSERT_EQ(kill(agent, SIGSTOP), 0);
  // Its lease (5 s) runs out: the fence stops its QEMU; later the controller
  // declares the host failed (9 s) and restarts the VM on the other host.
  json moved = PollVm(
      alice, part_id,
      [&](const json& vm) { return vm.value("state", "") == "running" && vm["host"] != old_host; },
      seconds(120));
  ASSERT_FALSE(moved.is_null());
  std::cout << "[info] recovered: " << moved.value("error", "") << "\n";
  EXPECT_NE(moved.value("error", "").find("host " + old_host + " failed"), std::string::npos)
      << moved.dump();
  EXPECT_EQ(ProcState(old_qemu), 'T') << "the old copy is fenced (stopped) while the new runs";
  EXPECT_TRUE(Runs(stay_qemu)) << "a VM with restart policy never is not fenced";
  auto hosts = admin.Get("/v1/hosts/" + old_host);
  ASSERT_TRUE(hosts.ok());
  EXPECT_EQ((*hosts)["state"], "failed") << hosts->dump();
  // The agent comes back: it is told the VM is no longer its own and
  // destroys its copy; the new instance is untouched.
  ASSERT_EQ(kill(agent, SIGCONT), 0);
  PollVm(
      alice, part_id, [&](const json&) { return LiveQemuOn(*grid_, old_i, part_id) == 0; },
      seconds(60));
  auto back = PollUntil(
      admin, "/v1/hosts/" + old_host, [](const json& h) { return h.value("state", "") == "up"; },
      seconds(60));
  EXPECT_TRUE(back.ok()) << "the returning host is cleared once its stale copy is gone";
  EXPECT_EQ(Exec(alice, part_id, "echo alive"), "alive\n");
  EXPECT_GT(LiveQemuOn(*grid_, 1 - old_i, part_id), 0);

  // --- kill -9 of an agent and its QEMUs.
  json keep = CreateVm(
      alice,
      {{"image", image}, {"name", "keep"}, {"restart", "on-host-failure"}, {"policy", "pack"}});
  json lose = CreateVm(alice, {{"image", image}, {"name", "lose"}, {"policy", "pack"}});
  ASSERT_EQ(keep.value("state", ""), "running") << keep.dump();
  ASSERT_EQ(lose.value("state", ""), "running") << lose.dump();
  ASSERT_EQ(keep["host"], lose["host"]) << "pack puts them together";
  const std::string dead_host = keep["host"];
  const int dead_i = IndexOf(dead_host);
  grid_->StopAgent(dead_i, /*hard=*/true);
  for (const json* vm : {&keep, &lose})
    if (int q = LiveQemuOn(*grid_, dead_i, (*vm)["id"].get<std::string>()); q > 0) kill(q, SIGKILL);
  const std::string keep_id = keep["id"], lose_id = lose["id"];
  json kept = PollVm(
      alice, keep_id,
      [&](const json& vm) { return vm.value("state", "") == "running" && vm["host"] != dead_host; },
      seconds(120));
  EXPECT_EQ(kept.value("name", ""), "keep");
  EXPECT_EQ(Exec(alice, keep_id, "echo alive"), "alive\n");
  json lost = PollVm(
      alice, lose_id, [](const json& vm) { return vm.value("state", "") == "error"; }, seconds(60));
  std::cout << "[info] lost: " << lost.value("error", "") << "\n";
  EXPECT_NE(lost.value("error", "").find("restart policy never"), std::string::npos) << lost.dump();
}

}  // namespace
}  // namespace vmgrid
