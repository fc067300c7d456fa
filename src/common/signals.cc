#include "common/signals.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>

namespace vmgrid {

namespace {
int g_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  int saved = errno;
  unsigned char b = static_cast<unsigned char>(sig);
  (void)!write(g_pipe[1], &b, 1);
  errno = saved;
}
}  // namespace

void InstallTerminationHandlers() {
  if (g_pipe[0] >= 0) return;
  if (pipe2(g_pipe, O_CLOEXEC) != 0) return;
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

int WaitForTermination() {
  InstallTerminationHandlers();
  unsigned char b = 0;
  while (read(g_pipe[0], &b, 1) < 0 && errno == EINTR) {
  }
  return b;
}

void RequestTermination() {
  InstallTerminationHandlers();
  unsigned char b = 0;
  (void)!write(g_pipe[1], &b, 1);
}

}  // namespace vmgrid
