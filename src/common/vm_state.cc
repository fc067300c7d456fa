#include "common/vm_state.h"

#include <array>

namespace vmgrid {

namespace {

using S = VmState;

constexpr std::array kStates = {S::kCreating,      S::kRunning,   S::kStopping, S::kStopped,
                                S::kCheckpointing, S::kSuspended, S::kResuming, S::kDeleting,
                                S::kMigrating,     S::kError};

constexpr std::array kOps = {
    VmOp::kCreate,     VmOp::kStop,   VmOp::kCheckpoint, VmOp::kCheckpointLeaveRunning,
    VmOp::kResume,     VmOp::kDelete, VmOp::kExec,       VmOp::kMigrate,
    VmOp::kColdMigrate};

// The table. Rows of one operation are in the order their from-states are
// named in messages ("stopped or suspended"); docs/vm-lifecycle.md lists
// the same rows in the same order.
const VmTransition kTable[] = {
    {std::nullopt, VmOp::kCreate, S::kCreating, S::kRunning, S::kError},
    {S::kRunning, VmOp::kStop, S::kStopping, S::kStopped, S::kRunning},
    {S::kRunning, VmOp::kCheckpoint, S::kCheckpointing, S::kSuspended, S::kRunning},
    {S::kRunning, VmOp::kCheckpointLeaveRunning, S::kCheckpointing, S::kRunning, S::kRunning},
    {S::kStopped, VmOp::kResume, S::kResuming, S::kRunning, S::kStopped},
    {S::kSuspended, VmOp::kResume, S::kResuming, S::kRunning, S::kSuspended},
    {S::kRunning, VmOp::kDelete, S::kDeleting, std::nullopt, S::kError},
    {S::kStopped, VmOp::kDelete, S::kDeleting, std::nullopt, S::kError},
    {S::kSuspended, VmOp::kDelete, S::kDeleting, std::nullopt, S::kError},
    {S::kError, VmOp::kDelete, S::kDeleting, std::nullopt, S::kError},
    // A delete that failed or was interrupted may be started again.
    {S::kDeleting, VmOp::kDelete, S::kDeleting, std::nullopt, S::kError},
    {S::kRunning, VmOp::kExec, std::nullopt, S::kRunning, S::kRunning},
    // Success: running on the target host; failure: running on the source.
    {S::kRunning, VmOp::kMigrate, S::kMigrating, S::kRunning, S::kRunning},
    // A cold migration: the stopped VM's disks move; it stays stopped.
    {S::kStopped, VmOp::kColdMigrate, S::kMigrating, S::kStopped, S::kStopped},
};

std::string StateList() {
  std::string s;
  for (VmState v : kStates) s += std::string(s.empty() ? "" : ", ") + ToString(v);
  return s;
}

}  // namespace

std::span<const VmState> AllVmStates() { return kStates; }
std::span<const VmOp> AllVmOps() { return kOps; }
std::span<const VmTransition> VmTransitions() { return kTable; }

const char* ToString(VmState state) {
  switch (state) {
    case S::kCreating:
      return "creating";
    case S::kRunning:
      return "running";
    case S::kStopping:
      return "stopping";
    case S::kStopped:
      return "stopped";
    case S::kCheckpointing:
      return "checkpointing";
    case S::kSuspended:
      return "suspended";
    case S::kResuming:
      return "resuming";
    case S::kDeleting:
      return "deleting";
    case S::kMigrating:
      return "migrating";
    case S::kError:
      return "error";
  }
  return "?";  // not reached: every enumerator is handled above (-Wswitch)
}

Result<VmState> ParseVmState(std::string_view name) {
  for (VmState v : kStates)
    if (name == ToString(v)) return v;
  return MakeError(ErrorCode::kInvalidArgument,
                   "'" + std::string(name) + "' is not a VM state (one of " + StateList() + ")");
}

bool IsTransitional(VmState state) {
  switch (state) {
    case S::kCreating:
    case S::kStopping:
    case S::kCheckpointing:
    case S::kResuming:
    case S::kDeleting:
    case S::kMigrating:
      return true;
    case S::kRunning:
    case S::kStopped:
    case S::kSuspended:
    case S::kError:
      return false;
  }
  return false;
}

bool IsTransitionalName(std::string_view name) {
  auto s = ParseVmState(name);
  return s.ok() && IsTransitional(*s);
}

bool HoldsReservation(VmState state) { return state != S::kError; }

const char* ToString(VmOp op) {
  switch (op) {
    case VmOp::kCreate:
      return "create";
    case VmOp::kStop:
      return "stop";
    case VmOp::kCheckpoint:
      return "checkpoint";
    case VmOp::kCheckpointLeaveRunning:
      return "checkpoint_leave_running";
    case VmOp::kResume:
      return "resume";
    case VmOp::kDelete:
      return "delete";
    case VmOp::kExec:
      return "exec";
    case VmOp::kMigrate:
      return "migrate";
    case VmOp::kColdMigrate:
      return "cold_migrate";
  }
  return "?";
}

Result<VmOp> ParseVmOp(std::string_view name) {
  for (VmOp op : kOps)
    if (name == ToString(op)) return op;
  std::string ops;
  for (VmOp op : kOps) ops += std::string(ops.empty() ? "" : ", ") + ToString(op);
  return MakeError(ErrorCode::kInvalidArgument,
                   "'" + std::string(name) + "' is not a VM operation (one of " + ops + ")");
}

std::vector<VmState> FromStates(VmOp op) {
  std::vector<VmState> out;
  for (const auto& t : kTable)
    if (t.op == op && t.from) out.push_back(*t.from);
  return out;
}

std::optional<VmState> SuccessOf(VmOp op) {
  for (const auto& t : kTable)
    if (t.op == op) return t.success;
  return std::nullopt;
}

std::string DescribeFromStates(VmOp op) {
  std::string s;
  for (VmState v : FromStates(op)) s += std::string(s.empty() ? "" : " or ") + ToString(v);
  return s;
}

Result<VmTransition> LookupTransition(std::optional<VmState> from, VmOp op) {
  for (const auto& t : kTable)
    if (t.op == op && t.from == from) return t;
  if (!from)
    return MakeError(ErrorCode::kFailedPrecondition,
                     std::string(ToString(op)) + " needs an existing VM");
  if (op == VmOp::kCreate)
    return MakeError(ErrorCode::kFailedPrecondition,
                     std::string("VM is ") + ToString(*from) + "; create makes a new VM");
  return MakeError(ErrorCode::kFailedPrecondition, std::string("VM is ") + ToString(*from) + "; " +
                                                       ToString(op) + " needs it to be " +
                                                       DescribeFromStates(op));
}

bool Allows(VmState from, VmOp op) {
  for (const auto& t : kTable)
    if (t.op == op && t.from == from) return true;
  return false;
}

}  // namespace vmgrid
