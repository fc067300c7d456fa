// The `vmgrid` command line: server roles (controller, agent, dev) are
// parsed here and dispatched to RunController/RunAgent/RunDev (declared in
// cli/options.h); client commands (host, image, vm, user, workspace,
// whoami) talk to the controller's REST API. Exit codes: cli/exit_codes.h.
#pragma once

#include <iostream>
#include <ostream>
#include <string>
#include <vector>

namespace vmgrid {

// Runs the CLI on the process arguments with std::cout/std::cerr; returns the
// process exit code. Never throws.
int RunCli(int argc, char** argv);

// Where client commands write. err_is_tty enables in-place progress lines.
struct CliIo {
  std::ostream& out = std::cout;
  std::ostream& err = std::cerr;
  bool err_is_tty = false;
};

// Like RunCli, with explicit arguments (args[0] is the program name) and
// streams; for tests.
int RunCliArgs(const std::vector<std::string>& args, CliIo io);

}  // namespace vmgrid
