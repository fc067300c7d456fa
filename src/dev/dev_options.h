// Options of `vmgrid dev` (a local grid of child processes).
// Filled by the CLI (src/cli/cli.cc, which gathers every role's options in
// cli/options.h); the role validates semantics (e.g. that a directory is
// writable), the CLI only syntax.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vmgrid {

// `vmgrid dev`: a controller plus N agents as child processes, for development
// and demos; state under one directory (admin token at
// STATE_DIR/controller/admin.token).
struct DevOptions {
  // Number of agents (each its own process, state dir and port), >= 1.
  int hosts = 1;
  // Controller port on 127.0.0.1.
  int port = 8470;
  std::string state_dir = "./state/dev";
  // Run the built-in demo (import an image, start VMs, exec) once up.
  bool demo = false;
  // Exit after the demo finishes (the CLI sets `demo` too when this is set).
  bool exit_after_demo = false;
  // Leave the demo's VMs running/existing at exit instead of deleting them.
  bool keep_vms = false;
  // --log-format of `vmgrid dev` itself and of every process it starts.
  std::string log_format = "text";
  // Controllers (docs/ha.md); more than one needs `database`.
  int controllers = 1;
  // The controllers' database, a PostgreSQL URI ("": SQLite in the state
  // directory, one controller only).
  std::string database;
};

// The role's entry point: runs until SIGTERM/SIGINT; returns the process
// exit code (0 success). Must not throw.
int RunDev(const DevOptions& options);

}  // namespace vmgrid
