#include "sim/sim_vm_table.h"

#include "common/vm_state.h"

namespace vmgrid {

namespace {

// The transition table decides, as for VmRunner; every operation here
// completes at once, so a VM goes straight to the op's success state.
bool Allowed(const VmStatus& s, VmOp op) {
  auto state = ParseVmState(s.state);
  return state.ok() && Allows(*state, op);
}

std::string After(VmOp op) { return ToString(*SuccessOf(op)); }

bool Holds(const VmStatus& s) {
  auto state = ParseVmState(s.state);
  return !state.ok() || HoldsReservation(*state);
}

}  // namespace

SimVmTable::Entry SimVmTable::NewEntry(const VmSpec& spec, const std::string& state) {
  Entry e;
  e.status.id = spec.id;
  e.status.owner_id = spec.owner_id;
  e.status.restart = spec.restart;
  e.status.name = spec.name;
  e.status.state = state;
  e.status.vcpus = spec.vcpus;
  e.status.memory_mb = spec.memory_mb;
  if (spec.disk_mode == "persistent") e.workspace_path = spec.workspace_path;
  return e;
}

Result<SimVmTable::Entry*> SimVmTable::FindLocked(const std::string& id) {
  auto it = vms_.find(id);
  if (it == vms_.end()) return MakeError(ErrorCode::kNotFound, "VM " + id + " is not on this host");
  return &it->second;
}

Result<SimVmTable::Entry*> SimVmTable::FindIdleLocked(const std::string& id) {
  VMG_ASSIGN_OR_RETURN(Entry * e, FindLocked(id));
  if (e->incoming || e->migrated_out)
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " is migrating");
  return e;
}

Result<VmStatus> SimVmTable::Create(const VmSpec& spec) {
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  if (vms_.count(spec.id))
    return MakeError(ErrorCode::kAlreadyExists, "VM " + spec.id + " already exists on this host");
  Entry e = NewEntry(spec, After(VmOp::kCreate));
  VmStatus out = e.status;
  vms_.emplace(spec.id, std::move(e));
  return out;
}

Result<VmStatus> SimVmTable::Stop(const std::string& id) {
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(Entry * e, FindIdleLocked(id));
  if (!Allowed(e->status, VmOp::kStop))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + e->status.state + ", not running");
  e->status.state = After(VmOp::kStop);
  return e->status;
}

Result<VmStatus> SimVmTable::Checkpoint(const std::string& id, bool leave_running) {
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(Entry * e, FindIdleLocked(id));
  const VmOp op = leave_running ? VmOp::kCheckpointLeaveRunning : VmOp::kCheckpoint;
  if (!Allowed(e->status, op))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + e->status.state + ", not running");
  e->status.has_checkpoint = true;
  e->status.state = After(op);
  return e->status;
}

Result<VmStatus> SimVmTable::Resume(const std::string& id) {
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(Entry * e, FindIdleLocked(id));
  if (!Allowed(e->status, VmOp::kResume))
    return MakeError(
        ErrorCode::kFailedPrecondition,
        "VM " + id + " is " + e->status.state + "; only a stopped or suspended VM can be resumed");
  e->status.state = After(VmOp::kResume);
  return e->status;
}

Status SimVmTable::Destroy(const std::string& id, bool /*purge_workspace*/) {
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  VMG_RETURN_IF_ERROR(FindLocked(id));
  vms_.erase(id);
  return Status::Ok();
}

Result<ExecResult> SimVmTable::Exec(const std::string& id, const std::vector<std::string>& argv,
                                    const std::string& /*input*/,
                                    std::chrono::milliseconds /*timeout*/) {
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(Entry * e, FindIdleLocked(id));
  if (!Allowed(e->status, VmOp::kExec))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + e->status.state + ", not running");
  ExecResult r;
  r.out = "simulated host " + host_name_ + ", VM " + id + ":";
  for (const auto& a : argv) r.out += " " + a;
  r.out += "\n";
  return r;
}

Result<GuestFileChunk> SimVmTable::ReadGuestFile(const std::string& id,
                                                 const GuestFileRead& request) {
  VMG_RETURN_IF_ERROR(CheckGuestPath(request.path));
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(Entry * e, FindIdleLocked(id));
  if (!Allowed(e->status, VmOp::kExec))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + e->status.state + ", not running");
  auto it = e->files.find(request.path);
  if (it == e->files.end())
    return MakeError(ErrorCode::kNotFound,
                     "guest file " + request.path + ": No such file or directory");
  const std::string& f = it->second;
  GuestFileChunk c{request.path, request.offset, "", static_cast<int64_t>(f.size()), true};
  if (request.offset < c.size) {
    c.data = f.substr(static_cast<size_t>(request.offset), static_cast<size_t>(request.length));
    c.eof = request.offset + static_cast<int64_t>(c.data.size()) >= c.size;
  }
  return c;
}

Result<GuestFileWritten> SimVmTable::WriteGuestFile(const std::string& id,
                                                    const GuestFileWrite& request) {
  VMG_RETURN_IF_ERROR(CheckGuestPath(request.path));
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(Entry * e, FindIdleLocked(id));
  if (!Allowed(e->status, VmOp::kExec))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + e->status.state + ", not running");
  std::string& f = e->files[request.path];
  if (request.offset == 0) f.clear();
  if (static_cast<int64_t>(f.size()) != request.offset)
    return MakeError(ErrorCode::kFailedPrecondition, "guest file " + request.path + " is " +
                                                         std::to_string(f.size()) + " bytes, not " +
                                                         std::to_string(request.offset));
  f += request.data;
  return GuestFileWritten{request.path, static_cast<int64_t>(f.size())};
}

Result<std::string> SimVmTable::CheckpointDir(const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(Entry * e, FindLocked(id));
  if (!e->status.has_checkpoint)
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " has no checkpoint");
  return "/sim/" + host_name_ + "/vms/" + id + "/checkpoint";
}

Result<ConsoleLog> SimVmTable::ReadConsole(const std::string& id, int64_t, int64_t) {
  std::lock_guard<std::mutex> l(mu_);
  VMG_RETURN_IF_ERROR(FindLocked(id));
  return MakeError(ErrorCode::kFailedPrecondition,
                   "VM " + id + " is on a simulated host, which has no serial console");
}

Result<ForwardInfo> SimVmTable::AddForward(const std::string& id, const ForwardRequest&) {
  return MakeError(ErrorCode::kFailedPrecondition,
                   "VM " + id + " is on a simulated host, which has no virtual networks");
}

Status SimVmTable::RemoveForward(const std::string& id, int) {
  return MakeError(ErrorCode::kNotFound, "VM " + id + " has no forwards (simulated host)");
}

Status SimVmTable::DeleteWorkspace(const std::string& path) {
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [id, e] : vms_)
    if (!e.workspace_path.empty() && e.workspace_path == path)
      return MakeError(ErrorCode::kFailedPrecondition, "workspace is in use by VM " + id);
  return Status::Ok();
}

Result<CheckpointRef> SimVmTable::PublishCheckpoint(const std::string& id) {
  VMG_ASSIGN_OR_RETURN(std::string dir, CheckpointDir(id));
  return MakeError(
      ErrorCode::kFailedPrecondition,
      "simulated host " + host_name_ + " has no image server to publish " + dir + " to");
}

Result<DurableVersion> SimVmTable::CommitData(const std::string& id, size_t, const std::string&) {
  return MakeError(ErrorCode::kFailedPrecondition,
                   "simulated host " + host_name_ + " has no datasets to commit (VM " + id + ")");
}

Status SimVmTable::MakeImageCheckpoint(const ImageFiles&, const std::map<std::string, BlobRef>&,
                                       int, int64_t, const std::string&) {
  Operate();  // pretends: nothing is written
  return Status::Ok();
}

void SimVmTable::Operate() {
  if (on_operation_) on_operation_();
}

Status SimVmTable::Adopt(const VmStatus& status) {
  std::lock_guard<std::mutex> l(mu_);
  if (status.id.empty()) return MakeError(ErrorCode::kInvalidArgument, "a VM needs an id");
  VMG_RETURN_IF_ERROR(ParseVmState(status.state));
  if (!vms_.emplace(status.id, Entry{status, ""}).second)
    return MakeError(ErrorCode::kAlreadyExists, "VM " + status.id + " already exists on this host");
  return Status::Ok();
}

std::vector<VmStatus> SimVmTable::List() {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<VmStatus> out;
  out.reserve(vms_.size());
  for (const auto& [id, e] : vms_) out.push_back(e.status);
  return out;
}

size_t SimVmTable::size() const {
  std::lock_guard<std::mutex> l(mu_);
  return vms_.size();
}

int SimVmTable::used_vcpus() const {
  std::lock_guard<std::mutex> l(mu_);
  int n = 0;
  for (const auto& [id, e] : vms_)
    if (Holds(e.status)) n += e.status.vcpus;
  return n;
}

int64_t SimVmTable::used_memory_mb() const {
  std::lock_guard<std::mutex> l(mu_);
  int64_t n = 0;
  for (const auto& [id, e] : vms_)
    if (Holds(e.status)) n += e.status.memory_mb;
  return n;
}

Result<IncomingInfo> SimVmTable::PrepareIncoming(const IncomingRequest& request) {
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  const VmSpec& spec = request.spec;
  if (vms_.count(spec.id))
    return MakeError(ErrorCode::kAlreadyExists, "VM " + spec.id + " already exists on this host");
  Entry e = NewEntry(spec, ToString(VmState::kCreating));
  e.incoming = true;
  vms_.emplace(spec.id, std::move(e));
  return IncomingInfo{request.listen_host, 1, 2, {"disk0"}};
}

Result<MigrationResult> SimVmTable::MigrateOut(const std::string& id, const MigrateOutRequest&) {
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(Entry * e, FindIdleLocked(id));
  if (e->status.state != ToString(VmState::kRunning))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + e->status.state + ", not running");
  e->migrated_out = true;
  return MigrationResult{};
}

Result<VmStatus> SimVmTable::FinishIncoming(const std::string& id) {
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(Entry * e, FindLocked(id));
  if (!e->incoming)
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " is not an incoming migration");
  e->incoming = false;
  e->status.state = ToString(VmState::kRunning);
  return e->status;
}

Status SimVmTable::AbortIncoming(const std::string& id) {
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(Entry * e, FindLocked(id));
  if (!e->incoming)
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " is not an incoming migration");
  vms_.erase(id);
  return Status::Ok();
}

Status SimVmTable::ConfirmMigrateOut(const std::string& id, bool migrated) {
  Operate();
  std::lock_guard<std::mutex> l(mu_);
  VMG_ASSIGN_OR_RETURN(Entry * e, FindLocked(id));
  if (!e->migrated_out)
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " has not migrated out");
  if (migrated) {
    vms_.erase(id);
  } else {
    e->migrated_out = false;
  }
  return Status::Ok();
}

}  // namespace vmgrid
