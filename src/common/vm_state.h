// VmState: the one VM state machine of vmgrid. The controller (its records
// and REST API), the store (a CHECK constraint over the same names), the
// agent (VmRunner), the simulated hosts and the CLI all take states,
// operations and transitions from here; docs/vm-lifecycle.md shows the same
// table and vm_state_test checks that the two agree.
//
// States cross process boundaries (REST, the agent API, state.json, the
// database) as the strings of ToString; ParseVmState is their one decoder.
// Everything here is a pure function over constant tables: thread-safe.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace vmgrid {

enum class VmState {
  kCreating,       // placed; the agent prepares the disk and starts QEMU
  kRunning,        // QEMU runs and the guest agent answered ("ready")
  kStopping,       // guest sync, then QEMU quits
  kStopped,        // powered off; disk kept
  kCheckpointing,  // paused; memory and the disk's top layer being saved
  kSuspended,      // checkpoint saved and QEMU exited
  kResuming,       // QEMU starting from the checkpoint or booting the disk
  kDeleting,       // QEMU killed, files being removed
  kMigrating,      // live migration to another host (runs on the source until it switches)
  kError,          // a create failed or the VM vanished; holds no reservation
};

// Every state, in the order of docs/vm-lifecycle.md.
std::span<const VmState> AllVmStates();

// "creating", "running", ...: the names on the wire and in the database.
const char* ToString(VmState state);
// The inverse of ToString; anything else is kInvalidArgument naming the
// string and the valid states.
Result<VmState> ParseVmState(std::string_view name);

// While a VM is in a transitional state an operation runs on it (the
// controller's compare-and-set moved it there), so no other may start;
// callers that wait for an operation wait until the state is not one.
bool IsTransitional(VmState state);
// `name` parses and is transitional (unknown names are not).
bool IsTransitionalName(std::string_view name);
// Whether a VM in `state` holds its vCPUs and memory on its host (every
// state but kError).
bool HoldsReservation(VmState state);

// The operations a user (or the controller for them) starts on a VM.
enum class VmOp {
  kCreate,
  kStop,
  kCheckpoint,              // the VM is suspended afterwards
  kCheckpointLeaveRunning,  // checkpoint with leave_running: it keeps running
  kResume,
  kDelete,
  kExec,         // runs a command in the guest; the VM's state does not change
  kMigrate,      // live migration to another host (docs/migration.md)
  kColdMigrate,  // a stopped VM's disks move to another host; it stays stopped
};

std::span<const VmOp> AllVmOps();
// "create", "stop", "checkpoint", "checkpoint_leave_running", "resume",
// "delete", "exec", "migrate", "cold_migrate".
const char* ToString(VmOp op);
Result<VmOp> ParseVmOp(std::string_view name);

// One row of the transition table: `op` started on a VM in `from`.
//
// While it runs the VM is `transitional` (none for exec, which leaves the
// state alone). On success it is `success` (none: the record and the VM are
// gone). On failure the controller records `failure`, except that for stop,
// checkpoint and resume the state the agent then reports wins when the
// controller can ask (e.g. a checkpoint whose QEMU died leaves `error`).
// docs/vm-lifecycle.md says what else each failure leaves behind.
struct VmTransition {
  std::optional<VmState> from;  // none: create (there is no VM yet)
  VmOp op;
  std::optional<VmState> transitional;
  std::optional<VmState> success;
  VmState failure;

  bool operator==(const VmTransition&) const = default;
};

// The whole table, in the order of docs/vm-lifecycle.md.
std::span<const VmTransition> VmTransitions();

// The row for `op` from `from` (nullopt for create). A missing row is
// kFailedPrecondition: "VM is <from>; <op> needs it to be <a> or <b>".
Result<VmTransition> LookupTransition(std::optional<VmState> from, VmOp op);
// Whether a row exists, without the message.
bool Allows(VmState from, VmOp op);
// The state `op` ends in on success, whatever it started from (none for
// delete: the VM is gone). What a client waits for after starting `op`.
std::optional<VmState> SuccessOf(VmOp op);
// The states `op` may start from, in table order (empty for create).
std::vector<VmState> FromStates(VmOp op);
// "running", "stopped or suspended": FromStates as a message fragment.
std::string DescribeFromStates(VmOp op);

}  // namespace vmgrid
