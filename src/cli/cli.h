// The `vmgrid` command line: the server roles' flags (controller, agent,
// image-server, sim-hosts, dev) are parsed here and the role is run through
// the entry point main.cc registers (RoleEntryPoints); client commands (tls,
// host, image, vm, user, workspace, query, whoami; one file each, cmd_*.cc)
// talk to the controller's REST API. Exit codes: cli/exit_codes.h.
#pragma once

#include <functional>
#include <iostream>
#include <ostream>
#include <string>
#include <vector>

namespace vmgrid {

struct ControllerOptions;
struct AgentOptions;
struct ImageServerOptions;
struct SimHostsOptions;
struct DevOptions;

// The server roles' entry points (declared beside each role, gathered in
// cli/options.h). main.cc registers the real ones; a role left empty
// answers that this binary does not have it. Tests register stubs.
struct RoleEntryPoints {
  std::function<int(const ControllerOptions&)> controller;
  std::function<int(const AgentOptions&)> agent;
  std::function<int(const ImageServerOptions&)> image_server;
  std::function<int(const SimHostsOptions&)> sim_hosts;
  std::function<int(const DevOptions&)> dev;
};

// Runs the CLI on the process arguments with std::cout/std::cerr; returns the
// process exit code. Never throws.
int RunCli(int argc, char** argv, const RoleEntryPoints& roles);

// Where client commands write. err_is_tty enables in-place progress lines.
struct CliIo {
  std::ostream& out = std::cout;
  std::ostream& err = std::cerr;
  bool err_is_tty = false;
};

// Like RunCli, with explicit arguments (args[0] is the program name) and
// streams; for tests.
int RunCliArgs(const std::vector<std::string>& args, CliIo io, const RoleEntryPoints& roles = {});

}  // namespace vmgrid
