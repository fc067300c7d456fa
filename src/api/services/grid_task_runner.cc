#include "api/services/grid_task_runner.h"

#include "api/agent_client.h"
#include "api/services/dataset_service.h"
#include "api/services/vm_create_service.h"
#include "api/services/vm_service.h"

namespace vmgrid {

using nlohmann::json;

GridTaskRunner::GridTaskRunner(Store& store, VmCreateService& creates, VmService& vms,
                               AgentClient& agents, DatasetService& datasets)
    : store_(store), creates_(creates), vms_(vms), agents_(agents), datasets_(datasets) {}

// ---- THE task VM create: one place for everything a task's VM is made with.
Result<Vm> GridTaskRunner::CreateTaskVm(const Job& job, const JobSpec& spec, int64_t index,
                                        const std::string& vm_name, const std::string& avoid_host) {
  VMG_ASSIGN_OR_RETURN(User owner, store_.GetUserById(job.owner_id));
  CreateVmRequest r;
  r.image = job.image_id;
  r.name = vm_name;
  r.disk = "clone";
  r.start = spec.resume ? "resume" : "boot";
  r.vcpus = spec.vcpus;
  r.memory_mb = spec.memory_mb;
  r.memory_named = spec.memory_mb > 0;
  if (!avoid_host.empty()) r.avoid_hosts = {avoid_host};
  // The inputs, read-only; the output, a new dataset (docs/datasets.md).
  for (const JobDataInput& d : spec.data) {
    DataRequest q;
    q.dataset = d.dataset;
    q.version = d.version;
    q.mount = d.mount;
    r.data.push_back(q);
  }
  if (spec.output) {
    DataRequest q;
    q.dataset = ExpandTaskIndex(spec.output->dataset, index);
    q.mount = spec.output->mount;
    q.rw = q.create = true;
    q.size_mb = spec.output->size_mb;
    // An earlier attempt of this task (its VM lost) left the dataset empty:
    // it is this task's, made again with the new VM.
    VMG_ASSIGN_OR_RETURN(auto left, store_.FindDatasetByName(job.owner_id, q.dataset));
    if (left) {
      VMG_ASSIGN_OR_RETURN(auto versions, store_.ListDatasetVersions(left->id));
      if (versions.empty() && left->created_ms >= job.created_ms)
        VMG_RETURN_IF_ERROR(store_.DeleteDataset(left->id));
    }
    r.data.push_back(q);
  }
  VMG_ASSIGN_OR_RETURN(json answer, creates_.Create(Caller{owner}, r));
  if (!answer.is_object() || !answer.contains("id") || !answer["id"].is_string())
    return MakeError(ErrorCode::kInternal, "the VM create answered no id");
  return store_.GetVm(answer["id"].get<std::string>(), "");
}

Result<TaskOutcome> GridTaskRunner::RunTask(const Vm& vm, const JobSpec& spec, int64_t index) {
  VMG_ASSIGN_OR_RETURN(Host host, store_.GetHost(vm.host_id));
  std::vector<std::string> argv;
  for (const auto& a : spec.argv) argv.push_back(ExpandTaskIndex(a, index));
  json body = {{"argv", argv}, {"input", ""}, {"timeout_s", spec.timeout_s}};
  VMG_ASSIGN_OR_RETURN(json r,
                       agents_.Exec(host, vm.id, body, static_cast<int>(spec.timeout_s) + 30));
  if (!r.is_object() || !r.contains("exit_code") || !r["exit_code"].is_number_integer())
    return MakeError(ErrorCode::kInternal, "the agent's exec answer has no exit_code");
  TaskOutcome out;
  out.exit_code = r["exit_code"].get<int64_t>();
  if (r.contains("stdout") && r["stdout"].is_string()) out.out = r["stdout"].get<std::string>();
  if (r.contains("stderr") && r["stderr"].is_string()) out.err = r["stderr"].get<std::string>();
  out.out_truncated = CapLog(out.out);
  out.err_truncated = CapLog(out.err);
  return out;
}

// ---- THE output commit: after the program exited, before the VM goes.
Status GridTaskRunner::CommitTaskOutput(const Vm& vm, const Job& /*job*/, const JobSpec& spec,
                                        int64_t index) {
  if (!spec.output) return Status::Ok();
  // The program has exited: the guest flushes and the output is pushed.
  VMG_ASSIGN_OR_RETURN(Vm now, store_.GetVm(vm.id, ""));
  auto r = datasets_.CommitNow(now, ExpandTaskIndex(spec.output->dataset, index));
  if (!r.ok()) return r.error();
  return Status::Ok();
}

Status GridTaskRunner::DeleteTaskVm(const std::string& vm_id) {
  auto r = vms_.Delete(vm_id, "", false);
  if (!r.ok()) return r.error();
  return Status::Ok();
}

}  // namespace vmgrid
