#include "agent/lease_fence.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <new>
#include <string>
#include <thread>

namespace vmgrid {

// Lives in a MAP_SHARED mapping: lock-free atomics only.
struct LeaseFence::Shared {
  std::atomic<int64_t> deadline_ns{0};  // CLOCK_MONOTONIC; 0: no lease yet
  std::atomic<int32_t> fenced{0};
  std::atomic<int32_t> quit{0};
  std::atomic<int64_t> rounds{0};  // fencing rounds run (each stops every pid)
  std::atomic<int32_t> npids{0};
  std::atomic<int32_t> pids[kMaxPids];
};
static_assert(std::atomic<int64_t>::is_always_lock_free);

namespace {

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// The watchdog: async-signal-safe calls only. Polls every 50 ms; while the
// lease has run out it stops every listed QEMU each round (so a QEMU started
// meanwhile is stopped too). It outlives a killed agent until it has fenced.
[[noreturn]] void Watch(LeaseFence::Shared* s, pid_t agent) {
  prctl(PR_SET_NAME, "vmgrid-fence", 0, 0, 0);
  // It may outlive the agent: it must hold none of its files (its listening
  // socket, log pipes), or a restarted agent could not bind its port.
  if (int null = open("/dev/null", O_RDWR); null >= 0) {
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
  }
  if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
    for (int fd = 3; fd < 65536; ++fd) close(fd);
  const timespec period{0, 50'000'000};
  while (true) {
    if (s->quit.load()) _exit(0);
    const bool agent_gone = getppid() != agent;
    const int64_t deadline = s->deadline_ns.load();
    if (deadline != 0 && MonotonicNs() >= deadline) {
      s->fenced.store(1);
      const int n = s->npids.load();
      for (int i = 0; i < n && i < LeaseFence::kMaxPids; ++i)
        if (pid_t p = s->pids[i].load(); p > 0) kill(p, SIGSTOP);
      s->rounds.fetch_add(1);
      if (agent_gone) _exit(0);  // fenced for good: a new agent takes over
    } else if (agent_gone && deadline == 0) {
      _exit(0);  // never had a lease: nothing to guard
    }
    nanosleep(&period, nullptr);
  }
}

}  // namespace

Result<std::unique_ptr<LeaseFence>> LeaseFence::Start() {
  void* mem =
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED)
    return MakeError(ErrorCode::kInternal, std::string("lease fence: mmap: ") + strerror(errno));
  auto* shared = new (mem) Shared();
  const pid_t agent = getpid();
  const pid_t child = fork();
  if (child < 0) {
    munmap(mem, sizeof(Shared));
    return MakeError(ErrorCode::kInternal, std::string("lease fence: fork: ") + strerror(errno));
  }
  if (child == 0) Watch(shared, agent);
  return std::unique_ptr<LeaseFence>(new LeaseFence(shared, child));
}

LeaseFence::~LeaseFence() {
  shared_->quit.store(1);
  int status;
  waitpid(child_, &status, 0);
  munmap(shared_, sizeof(Shared));
}

void LeaseFence::Renew(std::chrono::steady_clock::time_point sent, int64_t lease_ms) {
  // steady_clock is CLOCK_MONOTONIC on Linux (libstdc++ and libc++).
  const int64_t sent_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(sent.time_since_epoch()).count();
  const int64_t deadline = sent_ns + lease_ms * 1'000'000;
  // A late answer to an older heartbeat never shortens nor lengthens beyond its own send.
  int64_t cur = shared_->deadline_ns.load();
  while (deadline > cur && !shared_->deadline_ns.compare_exchange_weak(cur, deadline)) {
  }
}

void LeaseFence::SetPids(const std::vector<pid_t>& pids) {
  const int n = static_cast<int>(std::min<size_t>(pids.size(), kMaxPids));
  // Grow: entries first, then the count; shrink: the count first.
  if (n < shared_->npids.load()) shared_->npids.store(n);
  for (int i = 0; i < n; ++i) shared_->pids[i].store(pids[i]);
  shared_->npids.store(n);
}

bool LeaseFence::fenced() const { return shared_->fenced.load() != 0; }

void LeaseFence::Resume(const std::vector<pid_t>& pids) {
  // A round that read the old deadline may still be stopping: let it end
  // (a round takes microseconds; the period is 50 ms), and continue again
  // if one ran meanwhile.
  for (int attempt = 0; attempt < 5; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(120));
    const int64_t rounds = shared_->rounds.load();
    shared_->fenced.store(0);
    for (pid_t p : pids)
      if (p > 0) kill(p, SIGCONT);
    std::this_thread::sleep_for(std::chrono::milliseconds(120));
    if (shared_->rounds.load() == rounds) return;
  }
}

}  // namespace vmgrid
