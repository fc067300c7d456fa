#include "common/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

namespace vmgrid {

std::string SelfExecutable() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

Result<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(const std::vector<std::string>& argv,
                                                          const std::string& log_path) {
  if (argv.empty()) return MakeError(ErrorCode::kInvalidArgument, "empty command");
  int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) return MakeError(ErrorCode::kInternal, "open " + log_path + ": " + strerror(errno));
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    close(log);
    return MakeError(ErrorCode::kInternal, std::string("fork: ") + strerror(errno));
  }
  if (pid == 0) {
    // Own process group, so a terminal's Ctrl-C reaches only the parent,
    // which then shuts the children down in order.
    setpgid(0, 0);
    // A helper must not outlive the process that owns it (a crashed test or
    // `vmgrid dev`). VMs are not ChildProcesses: they outlive everything.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(log, 1);
    dup2(log, 2);
    syscall(SYS_close_range, 3, ~0U, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execvp(cargv[0], cargv.data());
    _exit(127);
  }
  close(log);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid));
}

bool ChildProcess::Reap(bool block, int* status) {
  if (reaped_) {
    *status = status_;
    return true;
  }
  pid_t r;
  do {
    r = waitpid(pid_, &status_, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_ || (r < 0 && errno == ECHILD)) {
    reaped_ = true;
    *status = status_;
    return true;
  }
  return false;
}

bool ChildProcess::Running() {
  int st;
  return !Reap(false, &st);
}

int ChildProcess::Terminate(std::chrono::milliseconds grace) {
  int st = 0;
  if (Reap(false, &st)) return st;
  kill(pid_, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (std::chrono::steady_clock::now() < deadline) {
    if (Reap(false, &st)) return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid_, SIGKILL);
  Reap(true, &st);
  return st;
}

void ChildProcess::KillHard() {
  int st;
  if (Reap(false, &st)) return;
  kill(pid_, SIGKILL);
  Reap(true, &st);
}

ChildProcess::~ChildProcess() { Terminate(std::chrono::seconds(10)); }

}  // namespace vmgrid
