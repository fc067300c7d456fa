// JobService: grid jobs (docs/jobs.md). A job runs an unmodified program in
// a fresh clone VM per task; unlike a VM create, which is refused when the
// grid is full, a job's tasks queue in the store and the scheduler starts
// them as room appears, fair-sharing the grid between users (FairShare),
// within each user's quota. A task whose VM is lost (host failure, VM gone)
// is retried up to the job's `retries`; a program that exits non-zero is
// not (that is its answer).
//
// The queue is the store's: a controller restart, or another controller
// taking the lead (docs/ha.md), picks it up where it was (Tick settles what
// the previous leader left: running tasks are re-run, VMs of no task are
// deleted). Only the leader calls Tick; every controller serves the routes.
//
// How a task touches the grid (its VM's create, the program's run, the
// output commit and the delete) is a TaskRunner: the controller's drives
// VmCreateService, the agents and VmService (api/services/grid_task_runner.h);
// unit tests a fake. Thread-safe: every method.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "api/op_queue.h"
#include "api/routes/route.h"
#include "common/clock.h"
#include "common/result.h"
#include "store/store.h"

namespace vmgrid {

// A dataset mounted into every task's VM (`--data NAME=DATASET[:VERSION]:/MOUNT`).
struct JobDataInput {
  std::string name;     // the attachment's label
  std::string dataset;  // one of the owner's datasets
  int64_t version = 0;  // 0: the latest at the task's start
  std::string mount;    // absolute guest path
};

// Where a task's output goes (`--output DATASET:/MOUNT`): an empty file
// system mounted read-write, committed as a new dataset after the program
// exits. `{i}` in `dataset` is the task's index.
struct JobDataOutput {
  std::string dataset;
  std::string mount;
  int64_t size_mb = 1024;
};

// What each task of a job runs; stored with the job (Job::spec) as JSON.
struct JobSpec {
  std::vector<std::string> argv;  // `{i}` in any argument is the task's index
  bool resume = false;            // from the image's post-boot checkpoint
  int64_t vcpus = 0;              // 0: 1, or the checkpoint's with resume
  int64_t memory_mb = 0;          // 0: the image's default, or the checkpoint's
  int64_t retries = 2;            // lost VMs retried this many times per task
  int64_t timeout_s = 3600;       // the program's run time limit (the guest agent's bound)
  std::vector<JobDataInput> data;
  std::optional<JobDataOutput> output;
};

nlohmann::json JobSpecJson(const JobSpec& spec);
// Strict: unknown fields, bad types and out-of-range values are
// kInvalidArgument naming the field (the route's body parser and the
// stored spec's reader).
Result<JobSpec> ParseJobSpec(const nlohmann::json& j);

// POST /v1/jobs as parsed.
struct JobRequest {
  std::string image;  // id or name, visible to the caller
  int64_t count = 1;
  JobSpec spec;
};
// Parses POST /v1/jobs's body (api/routes.h kSubmitJob and its nested lists).
Result<JobRequest> ParseJobRequest(const nlohmann::json& body);

// `{i}` in `s` replaced by `index`.
std::string ExpandTaskIndex(const std::string& s, int64_t index);
// The name of a task attempt's VM, and its parse (the orphan sweep's).
std::string TaskVmName(const std::string& job_id, int64_t index, int64_t attempt);
struct TaskVmRef {
  std::string job_id;
  int64_t index = 0, attempt = 0;
};
std::optional<TaskVmRef> ParseTaskVmName(const std::string& name);

// What a task's program answered.
struct TaskOutcome {
  int64_t exit_code = 0;
  std::string out, err;
  bool out_truncated = false, err_truncated = false;
};

// Keeps at most JobTask::kMaxLogBytes of `s` (true if it cut).
bool CapLog(std::string& s);

// How tasks touch the grid. Each method is one step of a task's life.
class TaskRunner {
 public:
  virtual ~TaskRunner() = default;
  // Creates the VM `vm_name` of task `index` for the job's owner (placed
  // like any VM create); answers its record (`creating`). No room
  // (kResourceExhausted), over the owner's quota (kPermissionDenied) or
  // creates in flight (kTooManyRequests): the task stays queued.
  // `avoid_host` ("" = none): the host the task's last attempt was lost on;
  // any other host that fits goes first.
  virtual Result<Vm> CreateTaskVm(const Job& job, const JobSpec& spec, int64_t index,
                                  const std::string& vm_name, const std::string& avoid_host) = 0;
  // Runs the task's program in its running VM to its end (blocks up to
  // spec.timeout_s). kUnavailable / kNotFound / kFailedPrecondition: the VM
  // or its host was lost (the task is retried).
  virtual Result<TaskOutcome> RunTask(const Vm& vm, const JobSpec& spec, int64_t index) = 0;
  // After the program exited: its output attachment becomes a new version
  // of the output dataset. Called only for jobs with an output.
  virtual Status CommitTaskOutput(const Vm& vm, const Job& job, const JobSpec& spec,
                                  int64_t index) = 0;
  // Deletes the task's VM (kNotFound: already gone).
  virtual Status DeleteTaskVm(const std::string& vm_id) = 0;
};

// The scheduler's choice among queued tasks: the next task is the head of
// the owner with the fewest tasks starting or running (ties: the owner
// whose head was queued first), so a user with 1,000 queued tasks does not
// starve one with 2. Built from Store::ActiveJobTasksByOwner and
// Store::QueuedTaskHeads. Not thread-safe (one scheduler pass).
class FairShare {
 public:
  FairShare(std::map<std::string, int64_t> active, const std::vector<JobTask>& heads);
  // The next task to try (nullopt: none left this pass).
  std::optional<JobTask> Next() const;
  // The task Next() gave started: its owner has one more active task.
  void Started(const std::string& owner);
  // The task Next() gave is gone (taken or cancelled meanwhile).
  void Drop(const std::string& owner);
  // The owner cannot start more this pass (no room for its size, quota).
  void Block(const std::string& owner);

 private:
  std::map<std::string, int64_t> active_;
  std::map<std::string, std::vector<JobTask>> heads_;  // per owner, queue order
  std::map<std::string, size_t> next_;                 // per owner: index into heads_
};

struct JobLimits {
  int64_t max_count = 1000;                 // tasks per job
  int64_t max_unfinished_per_user = 10000;  // queued + starting + running tasks
  int64_t max_running = 256;                // tasks this controller runs at once
  int64_t starts_per_tick = 32;             // VM creates per scheduler pass
  int64_t sweep_ms = 15'000;                // how often orphaned task VMs are looked for
  // A task whose VM or host was lost is retried after retry_backoff_ms,
  // doubled for each further lost attempt, at most retry_backoff_max_ms: a
  // host that just died has time to be found dead (docs/jobs.md, "Retries").
  int64_t retry_backoff_ms = 2'000;
  int64_t retry_backoff_max_ms = 60'000;
};

// How long a task waits before its next attempt after `lost_attempts`
// attempts of it were lost (1: the first).
int64_t RetryBackoffMs(const JobLimits& limits, int64_t lost_attempts);

// Exit codes of a job (`vmgrid job wait`, docs/jobs.md).
inline constexpr int64_t kJobExitNoExitCode = 125;  // a task failed without an exit code
inline constexpr int64_t kJobExitCancelled = 130;

class JobService {
 public:
  // `find_image`: the image `ref` as the caller may see it (kNotFound else).
  using ImageLookup = std::function<Result<Image>(const Caller&, const std::string&)>;
  JobService(Store& store, TaskRunner& runner, const Clock& clock, ImageLookup find_image,
             JobLimits limits = {});
  ~JobService();

  // Validates `r` and queues its tasks. Refused (nothing stored): bad input
  // (kInvalidArgument), an image the caller cannot see or an input dataset
  // that does not exist (kNotFound), an output dataset that exists
  // (kAlreadyExists), a task larger than the caller's quota
  // (kInvalidArgument), over the caller's unfinished tasks
  // (kResourceExhausted). Answers the job.
  Result<nlohmann::json> Submit(const Caller& c, const JobRequest& r);
  // One page (common/paging.h), oldest first: {"jobs": [...], "next"}.
  Result<nlohmann::json> List(const Caller& c, const PageRequest& page);
  // Another user's job is kNotFound.
  Result<nlohmann::json> Get(const Caller& c, const std::string& id);
  // stream: "stdout" or "stderr".
  Result<nlohmann::json> Logs(const Caller& c, const std::string& id, int64_t index,
                              const std::string& stream);
  // Cancels a queued or running job: queued tasks never start, running
  // ones' VMs are deleted. kFailedPrecondition when it already ended.
  Result<nlohmann::json> Cancel(const Caller& c, const std::string& id);

  // One scheduler pass (the leader's, every few hundred ms): settles tasks
  // whose VM came up (their program starts), was lost or outlived its task;
  // starts queued tasks by fair share; ends jobs whose tasks all ended.
  void Tick();
  // Tasks whose program runs on this controller now.
  size_t running_here() const;

 private:
  using TaskKey = std::pair<std::string, int64_t>;
  Result<std::pair<Job, JobSpec>> JobOf(const std::string& job_id);
  void SweepOrphanVms();
  void AdvanceStarting();
  void CheckRunning();
  void Schedule();
  void FinishJobs();
  // The task's VM is gone or failed: retried (queued again) or, past the
  // job's retries, failed. `t` is the task as read (its state and VM are
  // the compare-and-set's).
  void VmLost(const JobTask& t, const JobSpec& spec, const std::string& why);
  // The run of `t` in `vm` ended with `outcome`.
  void Finished(const JobTask& t, const Vm& vm, const Result<TaskOutcome>& outcome);
  // Writes `next` over `t` if unchanged; on success records an event.
  bool Move(const JobTask& t, const JobTask& next, const std::string& kind,
            const std::string& message);
  void DeleteVm(const std::string& vm_id);
  nlohmann::json JobJson(const Job& job, const JobSpec& spec, const std::vector<JobTask>* tasks);

  Store& store_;
  TaskRunner& runner_;
  const Clock& clock_;
  ImageLookup find_image_;
  const JobLimits limits_;
  int64_t swept_ms_ = 0;  // Tick's thread only

  mutable std::mutex mu_;
  std::set<TaskKey> creating_;   // claimed, VM being created here; guarded by mu_
  std::set<TaskKey> executing_;  // program running here; guarded by mu_
  std::map<std::string, std::pair<Job, JobSpec>> jobs_;  // specs are immutable; guarded by mu_
  // The programs' runs (each holds a worker for as long as it runs);
  // declared last: destroyed (its idle workers joined) first.
  std::unique_ptr<OpQueue> runs_;
};

}  // namespace vmgrid
