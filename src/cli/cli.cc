#include "cli/cli.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <exception>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/exit_codes.h"
#include "common/version.h"

namespace vmgrid {
namespace cli {

// Parses the arguments with every command registered (cmd_*.cc, roles.cc)
// and runs the chosen one.
int Run(const std::vector<std::string>& args, const CliIo& io, const RoleEntryPoints& roles) {
  Ctx ctx{Globals{}, io, "", false, {}};

  CLI::App app{"vmgrid: run QEMU VMs on a grid of hosts.", "vmgrid"};
  app.footer(kExitCodeFooter);
  app.fallthrough();
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("vmgrid ") + kVersion);
  app.add_option("--url", ctx.g.url,
                 "Controller base URL, or several separated by commas (failover: docs/ha.md)")
      ->envname("VMGRID_URL")
      ->capture_default_str();
  app.add_option("--token", ctx.g.token, "Bearer token")->envname("VMGRID_TOKEN");
  app.add_option("--token-file", ctx.g.token_file,
                 "File holding the token (default: first existing of " +
                     std::string(kDevAdminToken) + ", ~/.config/vmgrid/token)")
      ->envname("VMGRID_TOKEN_FILE");
  app.add_option("--ca", ctx.g.ca,
                 "CA certificate the controller's must chain to (default: first existing of " +
                     std::string(kDevCa) + ", ~/.config/vmgrid/ca.pem; else the system's)")
      ->envname("VMGRID_CA");
  app.add_flag("--json", ctx.g.json, "Print the API's JSON instead of tables");
  app.add_option("--wait-timeout", ctx.g.wait_timeout_s,
                 "Seconds to wait for long operations before giving up")
      ->envname("VMGRID_WAIT_TIMEOUT")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();

  CommandTree t{app, ctx, {}, {}, {}};
  AddRoleCommands(t, roles);
  AddTlsCommands(t);
  AddHostCommands(t);
  AddImageCommands(t);
  AddDataCommands(t);
  AddVmCommands(t);
  AddJobCommands(t);
  AddNetCommands(t);
  AddUserCommands(t);
  AddQueryCommands(t);
  AddEventsCommand(t);
  AddWhoamiCommand(t);

  std::vector<char*> argv;
  std::vector<std::string> owned = args;
  if (owned.empty()) owned.push_back("vmgrid");
  for (auto& a : owned) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (owned.size() == 1) {
    io.out << app.help() << std::flush;
    return kExitUsage;
  }
  try {
    app.parse(static_cast<int>(owned.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e, io.out, io.err);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  if (!t.action) {
    for (CLI::App* g : t.groups) {
      if (!g->parsed()) continue;
      std::string names;
      for (const CLI::App* sub : g->get_subcommands({})) {
        names += (names.empty() ? "" : ", ") + sub->get_name();
      }
      io.err << "error: `vmgrid " << g->get_name() << "` needs a subcommand: " << names
             << "\n  see `vmgrid " << g->get_name() << " --help`" << std::endl;
      return kExitUsage;
    }
    io.err << "error: no command given; see `vmgrid --help`" << std::endl;
    return kExitUsage;
  }
  return t.action();
}

}  // namespace cli

int RunCliArgs(const std::vector<std::string>& args, CliIo io, const RoleEntryPoints& roles) {
  try {
    return cli::Run(args, io, roles);
  } catch (const std::exception& e) {
    io.err << "error: internal error: " << e.what() << std::endl;
    return kExitFailure;
  } catch (...) {
    io.err << "error: internal error" << std::endl;
    return kExitFailure;
  }
}

int RunCli(int argc, char** argv, const RoleEntryPoints& roles) {
  std::vector<std::string> args(argv, argv + argc);
  return RunCliArgs(args, CliIo{std::cout, std::cerr, ::isatty(STDERR_FILENO) == 1}, roles);
}

}  // namespace vmgrid
