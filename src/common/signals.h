// Waiting for SIGINT/SIGTERM without doing work in a signal handler: the
// handler only writes to a self-pipe. Unlike blocking the signals, this
// leaves the signal mask of spawned processes (QEMU) untouched.
#pragma once

namespace vmgrid {

// Installs the handlers. Call once, early in main.
void InstallTerminationHandlers();
// Blocks until SIGINT or SIGTERM arrives (or RequestTermination is called);
// returns the signal number (0 for a request).
int WaitForTermination();
// Wakes WaitForTermination from any thread.
void RequestTermination();

}  // namespace vmgrid
