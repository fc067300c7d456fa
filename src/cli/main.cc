// Entry point of the single `vmgrid` binary (client commands and the
// controller/agent/dev server roles).
#include "cli/cli.h"

int main(int argc, char** argv) { return vmgrid::RunCli(argc, argv); }
