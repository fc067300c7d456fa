// LeaseFence with a real watchdog process and a stand-in for QEMU (`sleep`):
// nothing is stopped before a lease was granted; a lease that runs out stops
// the listed process; a renewal and Resume continue it.
#include "agent/lease_fence.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>

namespace vmgrid {
namespace {

char ProcState(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return 0;
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() ? line[close + 2] : 0;
}

// Waits (bounded, 10 s) until `pid`'s state is or is not 'T'.
bool WaitStopped(pid_t pid, bool stopped) {
  for (int i = 0; i < 1000; ++i) {
    if ((ProcState(pid) == 'T') == stopped) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

TEST(LeaseFenceTest, StopsWhenTheLeaseRunsOutAndResumesOnRenewal) {
  const pid_t vm = fork();
  ASSERT_GE(vm, 0);
  if (vm == 0) {
    execlp("sleep", "sleep", "60", static_cast<char*>(nullptr));
    _exit(127);
  }
  {
    auto fence = LeaseFence::Start();
    ASSERT_TRUE(fence.ok()) << fence.error().message;
    (*fence)->SetPids({vm});
    // No lease granted yet: never fenced.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_NE(ProcState(vm), 'T');
    EXPECT_FALSE((*fence)->fenced());
    // A lease that has already run out (sent 2 s ago, 1 s long).
    (*fence)->Renew(std::chrono::steady_clock::now() - std::chrono::seconds(2), 1000);
    EXPECT_TRUE(WaitStopped(vm, true)) << "the fence did not stop the process";
    EXPECT_TRUE((*fence)->fenced());
    // Renewed for a minute: resumed.
    (*fence)->Renew(std::chrono::steady_clock::now(), 60'000);
    (*fence)->Resume({vm});
    EXPECT_TRUE(WaitStopped(vm, false));
    EXPECT_FALSE((*fence)->fenced());
  }
  kill(vm, SIGKILL);
  int st;
  waitpid(vm, &st, 0);
}

}  // namespace
}  // namespace vmgrid
