// The options of every server role of the single `vmgrid` binary, gathered
// for the CLI (src/cli/cli.cc), which fills them. Each role declares its own
// options and entry point beside its code; roles never include this file.
//   vmgrid controller   -> RunController  (src/api/controller_options.h)
//   vmgrid agent        -> RunAgent       (src/agent/agent_options.h)
//   vmgrid image-server -> RunImageServer (src/chunks/image_server_options.h)
//   vmgrid dev          -> RunDev         (src/dev/dev_options.h)
#pragma once

#include "agent/agent_options.h"
#include "api/controller_options.h"
#include "chunks/image_server_options.h"
#include "dev/dev_options.h"
