// Killing the agent and the controller (SIGKILL) never kills a VM or loses a
// record; after restart the VM is managed again.
#include <gtest/gtest.h>
#include <signal.h>

#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

int QemuPidFor(const LocalGrid& grid, const std::string& vm_id) {
  for (int i = 0; i < grid.hosts(); ++i) {
    auto pid = ReadFile(grid.agent_state_dir(i) + "/vms/" + vm_id + "/run/qemu.pid");
    if (pid.ok()) return std::atoi(pid->c_str());
  }
  return 0;
}

TEST(RestartTest, KillAgentAndControllerWhileVmsRun) {
  auto grid = StartGrid("restart", 1);
  ApiClient api = grid->Admin();
  ImportTiny(api, "tiny", false);
  json vm = CreateVm(api, {{"image", "tiny"}, {"name", "survivor"}});
  ASSERT_EQ(vm["state"], "running") << vm.dump();
  std::string id = vm["id"];
  Exec(api, id, "echo before > /root/f && sync");
  int pid = QemuPidFor(*grid, id);
  ASSERT_GT(pid, 0);

  grid->StopAgent(0, /*hard=*/true);
  grid->StopController(/*hard=*/true);
  EXPECT_EQ(kill(pid, 0), 0) << "QEMU died with its agent";

  ASSERT_TRUE(grid->StartController().ok());
  ASSERT_TRUE(grid->StartAgent(0).ok());
  ASSERT_TRUE(grid->WaitHostsUp(1, seconds(30)).ok());
  EXPECT_EQ(kill(pid, 0), 0);
  EXPECT_EQ(QemuPidFor(*grid, id), pid);

  // The record is intact and the VM is managed again: exec, checkpoint, resume.
  json again = WaitVm(api, id);
  EXPECT_EQ(again["state"], "running");
  EXPECT_EQ(Exec(api, id, "cat /root/f"), "before\n");
  // The disk's base is a lazily fetched NBD export of the agent: QEMU
  // reconnected to the new agent, so blocks never read before (the whole
  // disk, bypassing the guest's page cache) are still served.
  EXPECT_EQ(Exec(api, id, "dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null && echo read-all"),
            "read-all\n");
  EXPECT_EQ(Act(api, id, "checkpoint")["state"], "suspended");
  EXPECT_EQ(Act(api, id, "resume")["state"], "running");
  EXPECT_EQ(Exec(api, id, "cat /root/f"), "before\n");

  // Kill only the agent during a running VM, then let the controller see it.
  grid->StopAgent(0, true);
  ASSERT_TRUE(grid->StartAgent(0).ok());
  ASSERT_TRUE(grid->WaitHostsUp(1, seconds(30)).ok());
  EXPECT_EQ(Act(api, id, "stop")["state"], "stopped");
  DeleteVm(api, id);
  StopGrid(grid);
}

TEST(RestartTest, VmWhoseQemuDiedWhileAgentWasDownIsReported) {
  auto grid = StartGrid("crash", 1);
  ApiClient api = grid->Admin();
  ImportTiny(api, "tiny", false);
  json vm = CreateVm(api, {{"image", "tiny"}, {"name", "victim"}});
  ASSERT_EQ(vm["state"], "running");
  std::string id = vm["id"];
  int pid = QemuPidFor(*grid, id);
  grid->StopAgent(0, true);
  kill(pid, SIGKILL);
  ASSERT_TRUE(grid->StartAgent(0).ok());
  auto r = PollUntil(
      api, "/v1/vms/" + id, [](const json& j) { return j["state"] == "stopped"; }, seconds(60));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_NE((*r)["error"].get<std::string>().find("QEMU"), std::string::npos);
  // It can be booted again on its disk.
  EXPECT_EQ(Act(api, id, "resume")["state"], "running");
  DeleteVm(api, id);
  StopGrid(grid);
}

}  // namespace
}  // namespace vmgrid
