// Running short-lived helper programs (qemu-img) and capturing their output.
// Long-lived processes (QEMU itself) are handled by vmm/qemu_process.h.
// Thread-safe: each call forks its own child.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "common/result.h"

namespace vmgrid {

struct ProcessOutput {
  int exit_code = -1;  // -1 if killed by a signal
  std::string out;
  std::string err;
};

// Runs argv[0] (looked up in PATH) with the given arguments, no shell. The
// child gets stdin from /dev/null and no other inherited fds. Kills it and
// returns kTimeout after `timeout`. Output beyond 16 MiB per stream is dropped.
Result<ProcessOutput> RunProcess(const std::vector<std::string>& argv,
                                 std::chrono::milliseconds timeout = std::chrono::minutes(10));

// For programs run on untrusted input (qemu-img on a user's image).
struct ProcessOptions {
  std::chrono::milliseconds timeout = std::chrono::minutes(10);
  int stdin_fd = -1;  // -1: /dev/null; else this fd becomes the child's stdin
  // When set, the child drops to uid/gid (no supplementary groups) before exec.
  bool drop_privileges = false;
  uid_t uid = 0;
  gid_t gid = 0;
};
Result<ProcessOutput> RunProcess(const std::vector<std::string>& argv,
                                 const ProcessOptions& options);

// Like RunProcess but fails with the tail of stderr unless the exit code is 0.
Result<std::string> RunProcessChecked(const std::vector<std::string>& argv,
                                      std::chrono::milliseconds timeout = std::chrono::minutes(10));

}  // namespace vmgrid
