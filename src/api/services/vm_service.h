// VmService: the lifecycle operations on existing VMs — stop, checkpoint,
// resume and delete (their creation is VmCreateService's) — and the
// recording of what a host's agent answered.
// Each operation moves the record at once (Store::TransitionVm, the table of
// common/vm_state.h, compare-and-set) and asks the agent in the background
// (OpQueue); the answer, or the failure and the state the agent reports
// after it, is recorded when it comes (docs/vm-lifecycle.md).
//
// Dependencies are passed in (store, agent client, operation queue, clock),
// so the service runs in unit tests with a SQLite store and a fake agent.
// Thread-safe: every method.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "api/routes/route.h"
#include "api/services/failed_writes.h"
#include "common/clock.h"
#include "common/result.h"
#include "common/vm_state.h"
#include "proto/console_log.h"
#include "proto/guest_file.h"
#include "proto/network_plan.h"
#include "proto/vm_status.h"
#include "store/store.h"

namespace vmgrid {

class Admission;
class AgentClient;
class OpQueue;

// A command to run in a VM's guest (POST /v1/vms/ID/exec).
struct ExecRequest {
  std::vector<std::string> argv;  // argv[0] names the program
  std::string input;              // its standard input
  int64_t timeout_s = 60;
};

class VmService {
 public:
  // `execs` bounds each user's exec operations.
  VmService(Store& store, AgentClient& agents, OpQueue& ops, const Clock& clock, Admission& execs);

  // VM `id` of `owner` moves by `op` (kStop, kCheckpoint,
  // kCheckpointLeaveRunning or kResume); returns the record as moved. On
  // failure (not found, or the table forbids it from the VM's state):
  // nothing changed.
  Result<Vm> Act(const std::string& id, const OwnerFilter& owner, VmOp op);
  // Deletes VM `id` of `owner` (its persistent workspace too when
  // `purge_workspace`); the record is `deleting` until the host has
  // removed it. kFailedPrecondition while another operation runs.
  Result<Vm> Delete(const std::string& id, const OwnerFilter& owner, bool purge_workspace);
  // `vm forward`: a TCP port on the running VM's host reaching a guest port
  // (its network needs egress). The answer adds the host's name.
  Result<nlohmann::json> Forward(const std::string& id, const OwnerFilter& owner,
                                 const ForwardRequest& request);
  Status Unforward(const std::string& id, const OwnerFilter& owner, int listen_port);

  // VM `ref` (id or name) of `owner`; kNotFound for another user's.
  Result<Vm> Get(const std::string& ref, const OwnerFilter& owner);
  // The VMs of `owner` ("": everyone's).
  // One page (common/paging.h), oldest first.
  Result<Page<Vm>> List(const OwnerFilter& owner, const PageRequest& page);
  // Starts `request` in VM `ref` of the caller (it must be running);
  // answers the operation, whose result is the agent's (exit code and
  // output). kInvalidArgument without a program, kTooManyRequests over the
  // caller's exec operations; nothing runs on failure.
  Result<nlohmann::json> Exec(const Caller& c, const std::string& ref, const ExecRequest& request);
  // `vm cp`: one chunk of a file inside the guest of VM `ref` of the caller,
  // relayed to its host's agent and from there to the guest agent (no host
  // file is ever named). Checked in this order, nothing reaching the guest
  // on failure: another user's VM -> kNotFound (as exec); a bad guest path
  // (relative, NUL, too long) or chunk -> kInvalidArgument; a VM not running
  // -> kFailedPrecondition; over the caller's exec operations ->
  // kTooManyRequests. The guest's errors come back as the agent maps them
  // (no such file: kNotFound, denied: kPermissionDenied).
  Result<GuestFileChunk> ReadFile(const Caller& c, const std::string& ref,
                                  const GuestFileRead& request);
  Result<GuestFileWritten> WriteFile(const Caller& c, const std::string& ref,
                                     const GuestFileWrite& request);
  // The serial console log of VM `ref` of the caller (proto/console_log.h),
  // from `offset` (< 0: its last max_bytes), in any state once its host has
  // it: another user's VM -> kNotFound; max_bytes outside
  // 1..kConsoleReadMaxBytes -> kInvalidArgument; a VM not on a host (yet)
  // -> kFailedPrecondition; over the caller's exec operations ->
  // kTooManyRequests.
  Result<ConsoleLog> Console(const Caller& c, const std::string& ref, int64_t offset,
                             int64_t max_bytes);

  // Records the agent's answer for an operation on VM `vm_id` started at
  // `started_ms`: its state (and, with `timing`, how long it took), or
  // `state_on_error` and the error.
  void RecordOutcome(const std::string& vm_id, const Result<VmStatus>& answer,
                     const std::string& state_on_error, int64_t started_ms, bool timing);

  // Store writes that failed after the agent had acted (each is logged).
  int64_t failed_writes() const { return failed_writes_.total(); }

  // A start (kResume) of a VM that host-failure recovery moved stopped
  // (host_failure_service.h StartsFromDurable) is not the agent's resume:
  // its new host never had it. `fn` (VmCreateService::StartFromDurable)
  // creates it from its workspace's durable version. Set before serving.
  using StartFromDurableFn = std::function<Status(const Vm& vm, int64_t started)>;
  void SetStartFromDurable(StartFromDurableFn fn) { start_from_durable_ = std::move(fn); }

 private:
  // The running VM of the caller a copy reaches, and its host.
  Result<std::pair<Vm, Host>> CopyTarget(const Caller& c, const std::string& ref,
                                         const std::string& path);

  Store& store_;
  AgentClient& agents_;
  OpQueue& ops_;
  const Clock& clock_;
  Admission& execs_;
  FailedWrites failed_writes_;
  StartFromDurableFn start_from_durable_;
};

}  // namespace vmgrid
