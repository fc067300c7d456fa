#include "api/services/vm_service.h"

#include <spdlog/spdlog.h>

#include "api/admission.h"
#include "api/agent_client.h"
#include "api/op_queue.h"
#include "api/services/agent_spec.h"
#include "api/services/host_failure_service.h"

namespace vmgrid {

namespace {

const char* AgentAction(VmOp op) {
  switch (op) {
    case VmOp::kStop:
      return "stop";
    case VmOp::kResume:
      return "resume";
    default:
      return "checkpoint";
  }
}

}  // namespace

VmService::VmService(Store& store, AgentClient& agents, OpQueue& ops, const Clock& clock,
                     Admission& execs)
    : store_(store), agents_(agents), ops_(ops), clock_(clock), execs_(execs) {}

Result<Vm> VmService::Act(const std::string& id, const OwnerFilter& owner, VmOp op) {
  if (op != VmOp::kStop && op != VmOp::kCheckpoint && op != VmOp::kCheckpointLeaveRunning &&
      op != VmOp::kResume)
    return MakeError(ErrorCode::kInternal, "VmService::Act: not a VM action");
  const int64_t started = clock_.NowMs();
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(id, owner));
  VMG_ASSIGN_OR_RETURN(Vm moved, store_.TransitionVm(vm.id, op));
  const std::string previous = vm.state;  // the table's state on failure for these operations
  if (op == VmOp::kResume && StartsFromDurable(vm) && start_from_durable_) {
    // The transition cleared the error text, whose mark a failed start
    // must keep (so that the start can be repeated).
    Vm marked = moved;
    marked.error = vm.error;
    if (Status st = start_from_durable_(marked, started); !st.ok()) {
      failed_writes_.Count(store_.ModifyVm(vm.id,
                                           [&](Vm& v) {
                                             if (v.state != "resuming") return;
                                             v.state = previous;
                                             v.error = vm.error;
                                           }),
                           "putting VM " + vm.id + " back to " + previous);
      return st.error();
    }
    return moved;
  }
  auto host = store_.GetHost(vm.host_id);
  Host h = host.ok() ? *host : Host{};
  const std::string action = AgentAction(op);
  const bool leave_running = op == VmOp::kCheckpointLeaveRunning;
  ops_.Run(vm.id, [this, h, action, leave_running, previous, id = vm.id, started] {
    auto r = agents_.VmAction(h, id, action, leave_running);
    if (!r.ok()) {
      // The agent says what state the VM is in after a failure.
      auto now = agents_.HostStatus(h);
      std::string state = previous;
      if (now.ok())
        for (const auto& v : now->vms)
          if (v.id == id && ParseVmState(v.state).ok()) state = v.state;
      RecordOutcome(id, r, state, started, false);
      return;
    }
    RecordOutcome(id, r, previous, started, action == "resume");
  });
  return moved;
}

Result<Vm> VmService::Delete(const std::string& id, const OwnerFilter& owner, bool purge) {
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(id, owner));
  auto moved = store_.TransitionVm(vm.id, VmOp::kDelete);
  if (!moved.ok())
    return MakeError(ErrorCode::kFailedPrecondition,
                     moved.error().message + "; wait until the current operation ends");
  auto host = store_.GetHost(vm.host_id);
  Host h = host.ok() ? *host : Host{};
  ops_.Run(vm.id, [this, h, purge, v = vm] {
    Status r = agents_.DeleteVm(h, v.id, purge);
    if (!r.ok() &&
        (r.error().code == ErrorCode::kUnavailable || r.error().code == ErrorCode::kTimeout)) {
      // The agent could not be reached, or went away before it answered:
      // the VM may still run there. The record stays `deleting` (holding
      // its room) and the host's next heartbeat finishes the delete
      // (HostService::Reconcile). Recorded `error`, it held no room while
      // its QEMU ran, and a heartbeat reporting it running revived it: an
      // accepted delete undone (found by tests/chaos_grid_test.cc).
      const std::string note = r.error().message + "; the delete finishes when the host is back";
      spdlog::warn("VM {}: delete: {}", v.id, note);
      Status noted = store_.ModifyVm(v.id, [&](Vm& vm) { vm.error = note; });
      failed_writes_.Count(noted, "VM " + v.id + ": recording the interrupted delete");
      return;
    }
    if (!r.ok() && r.error().code != ErrorCode::kNotFound) {
      RecordOutcome(v.id, r.error(), "error", 0, false);
      return;
    }
    if (!v.workspace_id.empty()) {
      auto ws = store_.GetWorkspace(v.workspace_id, "");
      if (ws.ok()) {
        if (purge) {
          // The file is gone; a record left behind shows a workspace that
          // cannot boot, which deleting it again clears.
          failed_writes_.Count(store_.DeleteWorkspace(ws->id), "deleting workspace " + ws->id);
        } else {
          ws->vm_id.clear();
          // Left behind, the workspace still names this VM and cannot be
          // taken by another until an admin clears it.
          failed_writes_.Count(store_.UpdateWorkspace(*ws), "releasing workspace " + ws->id);
        }
      }
    }
    // Left `deleting`: the next heartbeat's reconciliation deletes the
    // record once the host no longer reports the VM.
    failed_writes_.Count(store_.DeleteVm(v.id), "deleting the record of VM " + v.id);
  });
  return *moved;
}

Result<Vm> VmService::Get(const std::string& ref, const OwnerFilter& owner) {
  return store_.GetVm(ref, owner);
}

Result<Page<Vm>> VmService::List(const OwnerFilter& owner, const PageRequest& page) {
  return store_.ListVmsPage(owner, page);
}

Result<nlohmann::json> VmService::Exec(const Caller& c, const std::string& ref,
                                       const ExecRequest& request) {
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(ref, c.owner()));
  if (request.argv.empty() || request.argv[0].empty())
    return MakeError(ErrorCode::kInvalidArgument, "argv must name a program");
  if (request.timeout_s < 1 || request.timeout_s > 3600)
    return MakeError(ErrorCode::kInvalidArgument, "field 'timeout_s' is " +
                                                      std::to_string(request.timeout_s) +
                                                      "; it must be between 1 and 3600");
  if (auto s = ParseVmState(vm.state); !s.ok() || !Allows(*s, VmOp::kExec))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + vm.name + " is " + vm.state + "; exec needs it running");
  VMG_ASSIGN_OR_RETURN(Host host, store_.GetHost(vm.host_id));
  VMG_ASSIGN_OR_RETURN(auto slot, execs_.Acquire(c.user.id, 1, c.admin()));
  OpQueue::Operation op;
  op.kind = "exec";
  op.owner_id = c.user.id;
  op.vm_id = vm.id;
  nlohmann::json answer = ops_.Start(op);
  nlohmann::json body = {
      {"argv", request.argv}, {"input", request.input}, {"timeout_s", request.timeout_s}};
  const int read_timeout = static_cast<int>(request.timeout_s) + 30;
  ops_.Run("", [this, host, body, read_timeout, id = op.id, vm_id = vm.id,
                slot = std::move(slot)]() mutable {
    auto r = agents_.Exec(host, vm_id, body, read_timeout);
    slot.reset();  // whoever sees it ended may exec again
    ops_.Finish(id, r);
  });
  return answer;
}

Result<std::pair<Vm, Host>> VmService::CopyTarget(const Caller& c, const std::string& ref,
                                                  const std::string& path) {
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(ref, c.owner()));
  VMG_RETURN_IF_ERROR(CheckGuestPath(path));
  if (auto s = ParseVmState(vm.state); !s.ok() || !Allows(*s, VmOp::kExec))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + vm.name + " is " + vm.state + "; vm cp needs it running");
  VMG_ASSIGN_OR_RETURN(Host host, store_.GetHost(vm.host_id));
  return std::make_pair(std::move(vm), std::move(host));
}

Result<GuestFileChunk> VmService::ReadFile(const Caller& c, const std::string& ref,
                                           const GuestFileRead& request) {
  VMG_ASSIGN_OR_RETURN(auto target, CopyTarget(c, ref, request.path));
  if (request.offset < 0 || request.offset > kMaxGuestCopyBytes || request.length < 1 ||
      request.length > kMaxGuestFileChunk)
    return MakeError(ErrorCode::kInvalidArgument,
                     "a chunk is 1 to " + std::to_string(kMaxGuestFileChunk) +
                         " bytes within the first " + std::to_string(kMaxGuestCopyBytes));
  // A chunk counts as one of the caller's exec operations while it runs.
  VMG_ASSIGN_OR_RETURN(auto slot, execs_.Acquire(c.user.id, 1, c.admin()));
  return agents_.ReadGuestFile(target.second, target.first.id, request);
}

Result<GuestFileWritten> VmService::WriteFile(const Caller& c, const std::string& ref,
                                              const GuestFileWrite& request) {
  VMG_ASSIGN_OR_RETURN(auto target, CopyTarget(c, ref, request.path));
  if (request.offset < 0 || static_cast<int64_t>(request.data.size()) > kMaxGuestFileChunk)
    return MakeError(ErrorCode::kInvalidArgument,
                     "a chunk is at most " + std::to_string(kMaxGuestFileChunk) + " bytes");
  if (request.offset + static_cast<int64_t>(request.data.size()) > kMaxGuestCopyBytes)
    return MakeError(ErrorCode::kResourceExhausted,
                     "a copy moves at most " + std::to_string(kMaxGuestCopyBytes) + " bytes");
  VMG_ASSIGN_OR_RETURN(auto slot, execs_.Acquire(c.user.id, 1, c.admin()));
  return agents_.WriteGuestFile(target.second, target.first.id, request);
}

Result<ConsoleLog> VmService::Console(const Caller& c, const std::string& ref, int64_t offset,
                                      int64_t max_bytes) {
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(ref, c.owner()));
  if (max_bytes < 1 || max_bytes > kConsoleReadMaxBytes)
    return MakeError(ErrorCode::kInvalidArgument,
                     "max_bytes must be 1 to " + std::to_string(kConsoleReadMaxBytes));
  if (vm.host_id.empty())
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + vm.name + " is " + vm.state +
                                                         " and on no host: it has no console yet");
  VMG_ASSIGN_OR_RETURN(Host host, store_.GetHost(vm.host_id));
  VMG_ASSIGN_OR_RETURN(auto slot, execs_.Acquire(c.user.id, 1, c.admin()));
  auto log = agents_.ReadConsole(host, vm.id, offset, max_bytes);
  if (!log.ok() && log.error().code == ErrorCode::kNotFound)
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + vm.name + " is " + vm.state +
                                                         " and not on host " + host.name +
                                                         " (yet): it has no console there");
  return log;
}

void VmService::RecordOutcome(const std::string& vm_id, const Result<VmStatus>& answer,
                              const std::string& state_on_error, int64_t started_ms, bool timing) {
  if (!answer.ok()) spdlog::warn("VM {}: {}", vm_id, answer.error().message);
  std::string host_id, workspace_id;
  Status st = store_.ModifyVm(vm_id, [&](Vm& vm) {
    host_id = vm.host_id;
    workspace_id = vm.workspace_id;
    if (answer.ok() && !ParseVmState(answer->state).ok()) {
      // The database holds our states only (migration 8).
      vm.state = state_on_error;
      vm.error = "the host reported an unknown state '" + answer->state + "'";
    } else if (answer.ok()) {
      vm.state = answer->state;
      vm.error = answer->error;
      if (timing) vm.create_ms = clock_.NowMs() - started_ms;
    } else {
      vm.state = state_on_error;
      vm.error = answer.error().message;
    }
  });
  // The record stays transitional; reconciliation with the host's next
  // heartbeat settles it.
  failed_writes_.Count(st, "VM " + vm_id + ": recording the outcome");
  // A stop or checkpoint of a persistent VM pushed a durable version. Lost
  // here, the host's next heartbeat reports it again (HostService).
  if (st.ok() && answer.ok() && !answer->durable.empty() &&
      answer->durable.ref.name == workspace_id) {
    auto rec = store_.RecordDurableVersion(DurableRecord(host_id, answer->durable));
    failed_writes_.Count(rec.ok() ? Status::Ok() : Status(rec.error()),
                         "VM " + vm_id + ": recording its durable version");
  }
}

Result<nlohmann::json> VmService::Forward(const std::string& id, const OwnerFilter& owner,
                                          const ForwardRequest& request) {
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(id, owner));
  if (vm.state != "running")
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + vm.name + " is " + vm.state + ", not running");
  VMG_ASSIGN_OR_RETURN(Host host, store_.GetHost(vm.host_id));
  VMG_ASSIGN_OR_RETURN(ForwardInfo f, agents_.AddForward(host, vm.id, request));
  nlohmann::json j = ToJson(f);
  j["vm_id"] = vm.id;
  j["host"] = host.name;
  return j;
}

Status VmService::Unforward(const std::string& id, const OwnerFilter& owner, int listen_port) {
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(id, owner));
  VMG_ASSIGN_OR_RETURN(Host host, store_.GetHost(vm.host_id));
  return agents_.RemoveForward(host, vm.id, listen_port);
}

}  // namespace vmgrid
