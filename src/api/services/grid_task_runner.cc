#include "api/services/grid_task_runner.h"

#include "api/agent_client.h"
#include "api/services/vm_create_service.h"
#include "api/services/vm_service.h"

namespace vmgrid {

using nlohmann::json;

GridTaskRunner::GridTaskRunner(Store& store, VmCreateService& creates, VmService& vms,
                               AgentClient& agents)
    : store_(store), creates_(creates), vms_(vms), agents_(agents) {}

// ---- THE task VM create: one place for everything a task's VM is made with.
Result<Vm> GridTaskRunner::CreateTaskVm(const Job& job, const JobSpec& spec, int64_t /*index*/,
                                        const std::string& vm_name) {
  VMG_ASSIGN_OR_RETURN(User owner, store_.GetUserById(job.owner_id));
  CreateVmRequest r;
  r.image = job.image_id;
  r.name = vm_name;
  r.disk = "clone";
  r.start = spec.resume ? "resume" : "boot";
  r.vcpus = spec.vcpus;
  r.memory_mb = spec.memory_mb;
  r.memory_named = spec.memory_mb > 0;
  // DATA (not in this build; JobService::Submit refuses jobs with data):
  // each of spec.data becomes {"dataset": d.dataset, "version": d.version,
  // "mount": d.mount, "mode": "ro"} of the create request's `data`, and
  // spec.output {"dataset": ExpandTaskIndex(output.dataset, index),
  // "mount": output.mount, "mode": "rw", "new": true, "size_mb":
  // output.size_mb}.
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
Status GridTaskRunner::CommitTaskOutput(const Vm& /*vm*/, const Job& /*job*/,
                                        const JobSpec& /*spec*/, int64_t /*index*/) {
  // DATA: DatasetService's commit of the VM's rw attachment
  // ExpandTaskIndex(spec.output->dataset, index) as that dataset's next
  // version (POST /v1/vms/{ref}/data/{name}/commit in process).
  return MakeError(ErrorCode::kFailedPrecondition,
                   "dataset attachments are not available in this build");
}

Status GridTaskRunner::DeleteTaskVm(const std::string& vm_id) {
  auto r = vms_.Delete(vm_id, "", false);
  if (!r.ok()) return r.error();
  return Status::Ok();
}

}  // namespace vmgrid
