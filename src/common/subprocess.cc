#include "common/subprocess.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

namespace vmgrid {

namespace {

constexpr size_t kMaxCapture = 16 << 20;

struct Fd {
  int fd = -1;
  ~Fd() { Reset(); }
  void Reset() {
    if (fd >= 0) close(fd);
    fd = -1;
  }
};

}  // namespace

Result<ProcessOutput> RunProcess(const std::vector<std::string>& argv,
                                 std::chrono::milliseconds timeout) {
  ProcessOptions o;
  o.timeout = timeout;
  return RunProcess(argv, o);
}

Result<ProcessOutput> RunProcess(const std::vector<std::string>& argv,
                                 const ProcessOptions& options) {
  const auto timeout = options.timeout;
  if (argv.empty()) return MakeError(ErrorCode::kInvalidArgument, "empty command");
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return MakeError(ErrorCode::kInternal, "pipe failed");
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return MakeError(ErrorCode::kInternal, "pipe failed");
  }
  Fd out_r{out_pipe[0]}, out_w{out_pipe[1]}, err_r{err_pipe[0]}, err_w{err_pipe[1]};
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);

  pid_t pid = fork();
  if (pid < 0) return MakeError(ErrorCode::kInternal, std::string("fork: ") + strerror(errno));
  if (pid == 0) {
    int in = options.stdin_fd >= 0 ? options.stdin_fd : open("/dev/null", O_RDONLY);
    dup2(in, 0);
    dup2(out_w.fd, 1);
    dup2(err_w.fd, 2);
    syscall(SYS_close_range, 3, ~0U, 0);
    if (options.drop_privileges &&
        (setgroups(0, nullptr) != 0 || setgid(options.gid) != 0 || setuid(options.uid) != 0))
      _exit(126);
    execvp(cargv[0], cargv.data());
    _exit(127);
  }
  out_w.Reset();
  err_w.Reset();

  ProcessOutput result;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool timed_out = false;
  while (out_r.fd >= 0 || err_r.fd >= 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd fds[2] = {{out_r.fd, POLLIN, 0}, {err_r.fd, POLLIN, 0}};
    int n = poll(fds, 2, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[65536];
      ssize_t r = read(fds[i].fd, buf, sizeof buf);
      std::string& dst = i == 0 ? result.out : result.err;
      if (r > 0) {
        if (dst.size() < kMaxCapture) dst.append(buf, static_cast<size_t>(r));
      } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
        (i == 0 ? out_r : err_r).Reset();
      }
    }
  }
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out)
    return MakeError(ErrorCode::kTimeout,
                     argv[0] + " did not finish within " + std::to_string(timeout.count()) + " ms");
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (result.exit_code == 127 && result.out.empty() && result.err.empty())
    return MakeError(ErrorCode::kInternal, "cannot run " + argv[0] + ": not installed?");
  return result;
}

Result<std::string> RunProcessChecked(const std::vector<std::string>& argv,
                                      std::chrono::milliseconds timeout) {
  VMG_ASSIGN_OR_RETURN(ProcessOutput out, RunProcess(argv, timeout));
  if (out.exit_code != 0) {
    std::string err = out.err.size() > 2000 ? out.err.substr(out.err.size() - 2000) : out.err;
    while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
    return MakeError(ErrorCode::kInternal,
                     argv[0] + " failed (exit " + std::to_string(out.exit_code) + "): " + err);
  }
  return out.out;
}

}  // namespace vmgrid
