// Entry point of the single `vmgrid` binary: the command line with every
// server role registered (the vmgrid_cli library itself links no role).
#include "cli/cli.h"
#include "cli/options.h"
#include "sim/sim_hosts.h"

int main(int argc, char** argv) {
  vmgrid::RoleEntryPoints roles;
  roles.controller = vmgrid::RunController;
  roles.agent = vmgrid::RunAgent;
  roles.image_server = vmgrid::RunImageServer;
  roles.sim_hosts = vmgrid::RunSimHosts;
  roles.dev = vmgrid::RunDev;
  return vmgrid::RunCli(argc, argv, roles);
}
