// ChildProcess: a long-running helper process we own (the controller and
// agents under `vmgrid dev`, servers in tests). Output goes to a log file.
// The destructor terminates the child (SIGTERM, then SIGKILL), and the child
// gets SIGTERM if the spawning thread dies. Not thread-safe; own it from the
// thread that spawned it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"

namespace vmgrid {

class ChildProcess {
 public:
  // Starts argv[0] (a path, or a name looked up in PATH) with stdout+stderr appended to `log_path`.
  static Result<std::unique_ptr<ChildProcess>> Spawn(const std::vector<std::string>& argv,
                                                     const std::string& log_path);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool Running();
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status.
  int Terminate(std::chrono::milliseconds grace = std::chrono::seconds(10));
  // SIGKILL without grace (tests of crash recovery).
  void KillHard();

 private:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  bool Reap(bool block, int* status);
  pid_t pid_;
  bool reaped_ = false;
  int status_ = 0;
};

// Absolute path of the running executable.
std::string SelfExecutable();

}  // namespace vmgrid
