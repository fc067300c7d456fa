// Exit codes of the `vmgrid` client commands, a stable interface for
// scripts (also listed in the `vmgrid --help` footer):
//   0  success
//   1  generic failure (internal error, VM ended in state `error`, ...)
//   2  usage error: bad flags or arguments (CLI parse errors, and requests
//      the controller rejected as invalid_argument / payload_too_large)
//   3  not found (no such object, or not visible to the caller)
//   4  authentication or permission (unauthenticated, permission_denied)
//   5  conflict or wrong state (already_exists, failed_precondition,
//      resource_exhausted)
//   6  unavailable or timeout (controller/agent unreachable, deadline passed)
// `vmgrid vm exec` exits with the guest command's exit code instead, and
// with 6 (unavailable/timeout) or 1 (anything else) when the command could
// not be run.
#pragma once

#include "common/result.h"

namespace vmgrid {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNotFound = 3;
inline constexpr int kExitAuth = 4;
inline constexpr int kExitConflict = 5;
inline constexpr int kExitUnavailable = 6;

// Exit code for a failed client command.
int ExitCodeForError(ErrorCode code);

// Exit code for a failed `vm exec` transport (6 or 1).
int ExecTransportExitCode(ErrorCode code);

}  // namespace vmgrid
