// The vmgrid CLI run in-process against a LocalGrid, as a user would run it
// (tests whose interface is the CLI's exit codes and output: vm_cp_test,
// dataset_test). Link vmgrid_cli.
#pragma once

#include <sstream>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "dev/local_grid.h"

namespace vmgrid::testing_support {

struct CliRun {
  int rc = -1;
  std::string out, err;
};

// `vmgrid --url URL --token TOKEN [--ca CA] ARGS...` against `grid`.
inline CliRun RunCli(const LocalGrid& grid, const std::string& token,
                     const std::vector<std::string>& args) {
  std::vector<std::string> all = {"vmgrid", "--url", grid.url(), "--token", token};
  if (!grid.ca_file().empty()) {
    all.push_back("--ca");
    all.push_back(grid.ca_file());
  }
  all.insert(all.end(), args.begin(), args.end());
  std::ostringstream out, err;
  CliRun r;
  r.rc = RunCliArgs(all, CliIo{out, err, false});
  r.out = out.str();
  r.err = err.str();
  return r;
}

}  // namespace vmgrid::testing_support
