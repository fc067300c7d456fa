// GridTaskRunner: how the controller runs a job's task on the grid
// (JobService's TaskRunner): the VM through VmCreateService (placed,
// reserved and within the owner's quota like any VM create), the program
// through the host's agent (the guest agent's exec, the same call as
// `vm exec`), the VM's delete through VmService. A job's --data inputs are
// read-only attachments of each task's VM and its --output a new dataset
// attached read-write, committed by DatasetService once the program has
// exited (docs/jobs.md). Thread-safe: every method.
#pragma once

#include <string>

#include "api/services/job_service.h"

namespace vmgrid {

class AgentClient;
class DatasetService;
class VmCreateService;
class VmService;

class GridTaskRunner : public TaskRunner {
 public:
  GridTaskRunner(Store& store, VmCreateService& creates, VmService& vms, AgentClient& agents,
                 DatasetService& datasets);

  Result<Vm> CreateTaskVm(const Job& job, const JobSpec& spec, int64_t index,
                          const std::string& vm_name, const std::string& avoid_host) override;
  Result<TaskOutcome> RunTask(const Vm& vm, const JobSpec& spec, int64_t index) override;
  Status CommitTaskOutput(const Vm& vm, const Job& job, const JobSpec& spec,
                          int64_t index) override;
  Status DeleteTaskVm(const std::string& vm_id) override;

 private:
  Store& store_;
  VmCreateService& creates_;
  VmService& vms_;
  AgentClient& agents_;
  DatasetService& datasets_;
};

}  // namespace vmgrid
