#include "cli/exit_codes.h"

namespace vmgrid {

int ExitCodeForError(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return kExitUsage;
    case ErrorCode::kNotFound:
      return kExitNotFound;
    case ErrorCode::kUnauthenticated:
    case ErrorCode::kPermissionDenied:
      return kExitAuth;
    case ErrorCode::kAlreadyExists:
    case ErrorCode::kFailedPrecondition:
    case ErrorCode::kResourceExhausted:
      return kExitConflict;
    case ErrorCode::kUnavailable:
    case ErrorCode::kTimeout:
    case ErrorCode::kTooManyRequests:
      return kExitUnavailable;
    case ErrorCode::kInternal:
      return kExitFailure;
  }
  return kExitFailure;
}

int ExecTransportExitCode(ErrorCode code) {
  return (code == ErrorCode::kUnavailable || code == ErrorCode::kTimeout) ? kExitUnavailable
                                                                          : kExitFailure;
}

}  // namespace vmgrid
