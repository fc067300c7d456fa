// Reconciliation that converges (issue 12, section 6; docs/vm-lifecycle.md,
// "After a crash"): an agent killed with SIGKILL in the middle of a create,
// at several points of it, and started again. Afterwards every QEMU of the
// host belongs to a VM record that says it runs there, and a VM whose record
// says `error` has no QEMU left: nothing runs unrecorded, outside any
// reservation.
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <iostream>

#include "common/util.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

// Every QEMU process of VM `id` under `state_dir`, found by its command line
// (its run directory is part of it), whether or not its pid file exists.
std::vector<int> QemusOf(const std::string& state_dir, const std::string& id) {
  std::vector<int> pids;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string pid = e.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    auto cmdline = ReadFile(e.path().string() + "/cmdline", 1 << 20);
    if (!cmdline.ok() || cmdline->find("qemu-system") == std::string::npos) continue;
    if (cmdline->find(state_dir + "/vms/" + id + "/") == std::string::npos) continue;
    auto stat = ReadFile(e.path().string() + "/stat", 4096);
    if (stat.ok() && stat->find(") Z") != std::string::npos) continue;  // exited, not reaped yet
    pids.push_back(std::stoi(pid));
  }
  return pids;
}

TEST(ConvergenceGridTest, AgentKilledMidCreateLeavesNoUnrecordedQemu) {
  auto grid = StartGrid("converge", 1);
  ASSERT_TRUE(grid);
  ApiClient admin = grid->Admin();
  const std::string image = ImportTiny(admin, "tiny", false)["id"];
  ApiClient alice = NewUser(*grid, "alice");
  const std::string state_dir = std::filesystem::absolute(grid->agent_state_dir(0)).string();

  // From "the request has just reached the agent" to "the guest runs" (on
  // a loaded machine a TCG create takes several seconds: the last is after it).
  for (int delay_ms : {150, 500, 1000, 2000, 4000, 12000}) {
    SCOPED_TRACE("agent killed " + std::to_string(delay_ms) + " ms into the create");
    auto created =
        alice.Post("/v1/vms", {{"image", image}, {"name", "k" + std::to_string(delay_ms)}});
    ASSERT_TRUE(created.ok()) << created.error().message;
    const std::string id = (*created)["id"];
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    grid->StopAgent(0, /*hard=*/true);
    ASSERT_TRUE(grid->StartAgent(0).ok());

    // The record settles (the create answered, or failed with the agent),
    // then the records and the host's processes must agree.
    json vm = WaitVm(alice, id, seconds(120));
    ASSERT_FALSE(vm.is_null());
    std::string state, detail;
    std::vector<int> qemus;
    const auto end = std::chrono::steady_clock::now() + seconds(60);
    bool agreed = false;
    while (!agreed && std::chrono::steady_clock::now() < end) {
      vm = WaitVm(alice, id, seconds(60));
      state = vm.value("state", "");
      qemus = QemusOf(state_dir, id);
      agreed = state == "running" ? qemus.size() == 1 && LiveQemuOn(*grid, 0, id) == qemus[0]
               : state == "error" ? qemus.empty()
                                  : false;
      if (!agreed) std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    std::cout << "[info] killed at " << delay_ms << " ms: the VM ended " << state << " ("
              << vm.value("error", "") << "), " << qemus.size() << " QEMU process(es)\n";
    EXPECT_TRUE(agreed) << "record " << vm.dump() << " but " << qemus.size()
                        << " QEMU process(es) of it on the host";
    if (state == "running") {
      EXPECT_EQ(Exec(alice, id, "echo alive"), "alive\n");
    }
    DeleteVm(alice, id);
    EXPECT_TRUE(QemusOf(state_dir, id).empty()) << "a deleted VM leaves no QEMU";
  }
  // Nothing of any of them is left on the host, and the records hold no room.
  auto host = admin.Get("/v1/hosts/host-1");
  ASSERT_TRUE(host.ok());
  EXPECT_EQ((*host)["free_vcpus"], (*host)["vcpus"]) << host->dump();
  StopGrid(grid);
}

}  // namespace
}  // namespace vmgrid
