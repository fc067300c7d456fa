#include "api/services/job_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <tuple>

#include "api/routes.h"
#include "api/services/data_attachments.h"
#include "common/http_json.h"
#include "common/util.h"
#include "proto/data_attachment.h"

namespace vmgrid {

using nlohmann::json;

namespace {

constexpr size_t kMaxArgs = 256;
constexpr size_t kMaxArgBytes = 4096;
constexpr size_t kMaxArgvBytes = 64 * 1024;
constexpr size_t kMaxDataInputs = kMaxDataAttachments - 1;  // and the output

bool Terminal(const std::string& state) {
  return state == "succeeded" || state == "failed" || state == "cancelled";
}

// A guest mount point: absolute, normalised (no '.', '..' or empty parts),
// not the root and not a directory the guest system needs.
// The same rules as every dataset attachment (proto/data_attachment.h).
Status CheckMount(const std::string& what, const std::string& m) {
  Status st = ValidateGuestMountPoint(m);
  if (!st.ok()) return st.error().Wrap(what);
  return Status::Ok();
}

// A dataset name, where `{i}` may stand for the task index.
Status CheckDatasetName(const std::string& what, const std::string& name, bool index_allowed) {
  std::string plain = index_allowed ? ExpandTaskIndex(name, 0) : name;
  return ValidateName(what, plain);
}

}  // namespace

// --- the spec ----------------------------------------------------------------------

std::string ExpandTaskIndex(const std::string& s, int64_t index) {
  std::string out;
  const std::string i = std::to_string(index);
  for (size_t p = 0; p < s.size();) {
    if (s.compare(p, 3, "{i}") == 0) {
      out += i;
      p += 3;
    } else {
      out += s[p++];
    }
  }
  return out;
}

std::string TaskVmName(const std::string& job_id, int64_t index, int64_t attempt) {
  return job_id + "-" + std::to_string(index) + "-a" + std::to_string(attempt);
}

std::optional<TaskVmRef> ParseTaskVmName(const std::string& name) {
  auto num = [](std::string_view s) -> std::optional<int64_t> {
    int64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v < 0) return std::nullopt;
    return v;
  };
  if (name.rfind("job-", 0) != 0) return std::nullopt;
  const size_t a = name.rfind("-a");
  if (a == std::string::npos) return std::nullopt;
  const size_t dash = name.rfind('-', a - 1);
  if (dash == std::string::npos || dash < 4) return std::nullopt;
  auto attempt = num(std::string_view(name).substr(a + 2));
  auto index = num(std::string_view(name).substr(dash + 1, a - dash - 1));
  if (!attempt || !index) return std::nullopt;
  return TaskVmRef{name.substr(0, dash), *index, *attempt};
}

bool CapLog(std::string& s) {
  if (s.size() <= JobTask::kMaxLogBytes) return false;
  s.resize(JobTask::kMaxLogBytes);
  return true;
}

json JobSpecJson(const JobSpec& spec) {
  json data = json::array();
  for (const auto& d : spec.data)
    data.push_back(
        {{"name", d.name}, {"dataset", d.dataset}, {"version", d.version}, {"mount", d.mount}});
  json j = {{"argv", spec.argv},
            {"resume", spec.resume},
            {"vcpus", spec.vcpus},
            {"memory_mb", spec.memory_mb},
            {"retries", spec.retries},
            {"timeout_s", spec.timeout_s},
            {"data", data}};
  if (spec.output)
    j["output"] = {{"dataset", spec.output->dataset},
                   {"mount", spec.output->mount},
                   {"size_mb", spec.output->size_mb}};
  return j;
}

namespace {

// The spec's fields of a body (JobSpecJson's, or POST /v1/jobs's).
Result<JobSpec> ParseSpecFields(const json& j, const JsonFields& f) {
  JobSpec s;
  VMG_ASSIGN_OR_RETURN(s.argv, f.StringList("argv", true, kMaxArgs));
  if (s.argv.empty() || s.argv[0].empty())
    return MakeError(ErrorCode::kInvalidArgument, "argv must name a program");
  size_t total = 0;
  for (const auto& a : s.argv) {
    if (a.size() > kMaxArgBytes)
      return MakeError(ErrorCode::kInvalidArgument, "an argument of argv is longer than " +
                                                        std::to_string(kMaxArgBytes) + " bytes");
    if (a.find('\0') != std::string::npos)
      return MakeError(ErrorCode::kInvalidArgument, "an argument of argv holds a NUL byte");
    total += a.size();
  }
  if (total > kMaxArgvBytes)
    return MakeError(ErrorCode::kInvalidArgument,
                     "argv is longer than " + std::to_string(kMaxArgvBytes) + " bytes in all");
  VMG_ASSIGN_OR_RETURN(s.resume, f.Bool("resume", false));
  VMG_ASSIGN_OR_RETURN(s.vcpus, f.Int("vcpus", 0, 0, 64));
  VMG_ASSIGN_OR_RETURN(s.memory_mb, f.Int("memory_mb", 0, 0, 1 << 20));
  VMG_ASSIGN_OR_RETURN(s.retries, f.Int("retries", 2, 0, 10));
  VMG_ASSIGN_OR_RETURN(s.timeout_s, f.Int("timeout_s", 3600, 1, 3600));
  if (j.contains("data") && !j["data"].is_null()) {
    if (!j["data"].is_array())
      return MakeError(ErrorCode::kInvalidArgument, "field 'data' must be an array");
    if (j["data"].size() > kMaxDataInputs)
      return MakeError(ErrorCode::kInvalidArgument,
                       "at most " + std::to_string(kMaxDataInputs) + " data attachments");
    std::set<std::string> names, mounts;
    for (const json& d : j["data"]) {
      if (!d.is_object())
        return MakeError(ErrorCode::kInvalidArgument, "each of 'data' must be an object");
      JsonFields df(d, request_fields::kJobData);
      VMG_RETURN_IF_ERROR(df.CheckUnknown());
      JobDataInput in;
      VMG_ASSIGN_OR_RETURN(in.name, df.String("name", true));
      VMG_ASSIGN_OR_RETURN(in.dataset, df.String("dataset", true));
      VMG_ASSIGN_OR_RETURN(in.version, df.Int("version", 0, 0, int64_t{1} << 53));
      VMG_ASSIGN_OR_RETURN(in.mount, df.String("mount", true));
      VMG_RETURN_IF_ERROR(ValidateName("data attachment name", in.name));
      // NAME, or OWNER/NAME of a dataset shared with the job's owner.
      VMG_RETURN_IF_ERROR(ParseDatasetRef(in.dataset));
      VMG_RETURN_IF_ERROR(CheckMount("data attachment '" + in.name + "'", in.mount));
      if (!names.insert(in.name).second || !mounts.insert(in.mount).second)
        return MakeError(ErrorCode::kInvalidArgument,
                         "data attachments need distinct names and mount points");
      s.data.push_back(std::move(in));
    }
  }
  if (j.contains("output") && !j["output"].is_null()) {
    if (!j["output"].is_object())
      return MakeError(ErrorCode::kInvalidArgument, "field 'output' must be an object");
    JsonFields of(j["output"], request_fields::kJobOutput);
    VMG_RETURN_IF_ERROR(of.CheckUnknown());
    JobDataOutput out;
    VMG_ASSIGN_OR_RETURN(out.dataset, of.String("dataset", true));
    VMG_ASSIGN_OR_RETURN(out.mount, of.String("mount", true));
    VMG_ASSIGN_OR_RETURN(out.size_mb, of.Int("size_mb", 1024, kMinBlankDataMb, kMaxBlankDataMb));
    VMG_RETURN_IF_ERROR(CheckDatasetName("output dataset name", out.dataset, true));
    VMG_RETURN_IF_ERROR(CheckMount("output", out.mount));
    for (const auto& d : s.data)
      if (d.mount == out.mount)
        return MakeError(ErrorCode::kInvalidArgument,
                         "the output's mount point is also a data attachment's");
    s.output = std::move(out);
  }
  return s;
}

}  // namespace

Result<JobSpec> ParseJobSpec(const json& j) {
  if (!j.is_object()) return MakeError(ErrorCode::kInvalidArgument, "a job spec is an object");
  static constexpr const char* kSpecFields[] = {"argv",    "resume",    "vcpus", "memory_mb",
                                                "retries", "timeout_s", "data",  "output"};
  JsonFields f(j, kSpecFields);
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  return ParseSpecFields(j, f);
}

Result<JobRequest> ParseJobRequest(const json& body) {
  JsonFields f(body, request_fields::kSubmitJob);
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  JobRequest r;
  VMG_ASSIGN_OR_RETURN(r.image, f.String("image", true));
  VMG_ASSIGN_OR_RETURN(r.count, f.Int("count", 1, 1, int64_t{1} << 31));
  VMG_ASSIGN_OR_RETURN(r.spec, ParseSpecFields(body, f));
  return r;
}

// --- fair share --------------------------------------------------------------------

FairShare::FairShare(std::map<std::string, int64_t> active, const std::vector<JobTask>& heads)
    : active_(std::move(active)) {
  for (const auto& t : heads) heads_[t.owner_id].push_back(t);
  for (auto& [owner, list] : heads_) {
    std::stable_sort(list.begin(), list.end(), [](const JobTask& a, const JobTask& b) {
      return std::tie(a.queued_ms, a.job_id, a.index) < std::tie(b.queued_ms, b.job_id, b.index);
    });
    next_[owner] = 0;
  }
}

std::optional<JobTask> FairShare::Next() const {
  const JobTask* best = nullptr;
  int64_t best_active = 0;
  for (const auto& [owner, list] : heads_) {
    const size_t i = next_.at(owner);
    if (i >= list.size()) continue;
    const JobTask& head = list[i];
    auto it = active_.find(owner);
    const int64_t a = it == active_.end() ? 0 : it->second;
    if (!best || a < best_active ||
        (a == best_active && std::tie(head.queued_ms, head.job_id, head.index) <
                                 std::tie(best->queued_ms, best->job_id, best->index))) {
      best = &head;
      best_active = a;
    }
  }
  if (!best) return std::nullopt;
  return *best;
}

void FairShare::Started(const std::string& owner) {
  ++active_[owner];
  Drop(owner);
}

void FairShare::Drop(const std::string& owner) {
  auto it = next_.find(owner);
  if (it != next_.end()) ++it->second;
}

void FairShare::Block(const std::string& owner) {
  auto it = next_.find(owner);
  if (it != next_.end()) it->second = heads_[owner].size();
}

// --- the service -------------------------------------------------------------------

JobService::JobService(Store& store, TaskRunner& runner, const Clock& clock, ImageLookup find_image,
                       JobLimits limits)
    : store_(store),
      runner_(runner),
      clock_(clock),
      find_image_(std::move(find_image)),
      limits_(limits),
      runs_(std::make_unique<OpQueue>(clock, static_cast<size_t>(limits.max_running))) {}

JobService::~JobService() { runs_.reset(); }

size_t JobService::running_here() const {
  std::lock_guard<std::mutex> l(mu_);
  return executing_.size();
}

Result<json> JobService::Submit(const Caller& c, const JobRequest& r) {
  if (r.count < 1 || r.count > limits_.max_count)
    return MakeError(ErrorCode::kInvalidArgument, "count is " + std::to_string(r.count) +
                                                      "; a job has 1 to " +
                                                      std::to_string(limits_.max_count) + " tasks");
  VMG_ASSIGN_OR_RETURN(Image image, find_image_(c, r.image));
  if (image.state != "ready")
    return MakeError(ErrorCode::kFailedPrecondition,
                     "image " + image.name + " is " + image.state + ", not ready");
  const JobSpec& s = r.spec;
  // The size of each task's VM, as the create will make it.
  int64_t vcpus = s.vcpus > 0 ? s.vcpus : 1;
  int64_t memory = s.memory_mb > 0 ? s.memory_mb : std::max<int64_t>(256, image.min_memory_mb);
  if (s.resume) {
    if (image.ckpt_state != "ready")
      return MakeError(ErrorCode::kInvalidArgument,
                       "image " + image.name +
                           " has no post-boot checkpoint for --resume; make one with `vmgrid "
                           "image checkpoint " +
                           image.name + "`");
    if ((s.vcpus > 0 && s.vcpus != image.ckpt_vcpus) ||
        (s.memory_mb > 0 && s.memory_mb != image.ckpt_memory_mb))
      return MakeError(ErrorCode::kInvalidArgument,
                       "a resumed task has its checkpoint's size (" +
                           std::to_string(image.ckpt_vcpus) + " vCPUs, " +
                           std::to_string(image.ckpt_memory_mb) + " MB); omit vcpus and memory_mb");
    vcpus = image.ckpt_vcpus;
    memory = image.ckpt_memory_mb;
  } else if (s.memory_mb > 0 && s.memory_mb < image.min_memory_mb) {
    return MakeError(ErrorCode::kInvalidArgument, "image " + image.name + " needs at least " +
                                                      std::to_string(image.min_memory_mb) +
                                                      " MB of memory");
  }
  // A task its owner's quota can never hold would wait forever.
  const UserQuota& q = c.user.quota;
  if ((q.vcpus > 0 && vcpus > q.vcpus) || (q.memory_mb > 0 && memory > q.memory_mb))
    return MakeError(ErrorCode::kInvalidArgument,
                     "each task needs " + std::to_string(vcpus) + " vCPUs and " +
                         std::to_string(memory) + " MB; your quota allows " +
                         (q.vcpus > 0 ? std::to_string(q.vcpus) : "any") + " vCPUs and " +
                         (q.memory_mb > 0 ? std::to_string(q.memory_mb) : "any") + " MB");
  // Data: the datasets must be there (inputs) or not yet (outputs).
  for (const auto& d : s.data) {
    auto ds = FindUsableDataset(store_, c.user.id, d.dataset);
    if (!ds.ok() && ds.error().code == ErrorCode::kNotFound)
      return MakeError(ErrorCode::kNotFound,
                       "data attachment '" + d.name + "': dataset '" + d.dataset + "' not found");
    if (!ds.ok()) return ds.error();
  }
  if (s.output) {
    for (int64_t i = 0; i < r.count; ++i) {
      const std::string name = ExpandTaskIndex(s.output->dataset, i);
      VMG_ASSIGN_OR_RETURN(auto ds, store_.FindDatasetByName(c.user.id, name));
      if (ds)
        return MakeError(ErrorCode::kAlreadyExists,
                         "output dataset '" + name + "' already exists" +
                             (r.count > 1 ? " (task " + std::to_string(i) + ")" : "") +
                             "; choose a new name (with {i} for one per task) or delete it");
      if (s.output->dataset.find("{i}") == std::string::npos && r.count > 1)
        return MakeError(ErrorCode::kInvalidArgument,
                         "the output dataset's name needs {i} when a job has several tasks");
    }
  }
  Job job;
  job.id = NewId("job");
  job.owner_id = c.user.id;
  job.image_id = image.id;
  job.spec = JobSpecJson(s).dump();
  job.count = r.count;
  job.state = "queued";
  job.created_ms = clock_.NowMs();
  VMG_RETURN_IF_ERROR(store_.InsertJob(job, limits_.max_unfinished_per_user));
  {
    std::lock_guard<std::mutex> l(mu_);
    jobs_[job.id] = {job, s};
  }
  VMG_ASSIGN_OR_RETURN(auto tasks, store_.ListJobTasks(job.id));
  return JobJson(job, s, &tasks);
}

Result<json> JobService::List(const Caller& c, const PageRequest& page) {
  VMG_ASSIGN_OR_RETURN(auto jobs, store_.ListJobsPage(c.owner(), page));
  json list = json::array();
  for (const auto& j : jobs.items) {
    VMG_ASSIGN_OR_RETURN(auto js, JobOf(j.id));
    VMG_ASSIGN_OR_RETURN(auto tasks, store_.ListJobTasks(j.id));
    json v = JobJson(j, js.second, &tasks);
    v.erase("tasks");
    list.push_back(std::move(v));
  }
  json answer{{"jobs", std::move(list)}};
  AddNext(answer, jobs.next);
  return answer;
}

Result<json> JobService::Get(const Caller& c, const std::string& id) {
  VMG_ASSIGN_OR_RETURN(Job job, store_.GetJob(id, c.owner()));
  VMG_ASSIGN_OR_RETURN(auto js, JobOf(job.id));
  VMG_ASSIGN_OR_RETURN(auto tasks, store_.ListJobTasks(job.id));
  return JobJson(job, js.second, &tasks);
}

Result<json> JobService::Logs(const Caller& c, const std::string& id, int64_t index,
                              const std::string& stream) {
  VMG_ASSIGN_OR_RETURN(Job job, store_.GetJob(id, c.owner()));
  if (stream != "stdout" && stream != "stderr")
    return MakeError(ErrorCode::kInvalidArgument, "stream must be stdout or stderr");
  if (index < 0 || index >= job.count)
    return MakeError(ErrorCode::kNotFound,
                     "job " + job.id + " has tasks 0 to " + std::to_string(job.count - 1));
  VMG_ASSIGN_OR_RETURN(JobTask t, store_.GetJobTaskLogs(job.id, index));
  const bool out = stream == "stdout";
  return json{{"job_id", job.id},
              {"task", index},
              {"state", t.state},
              {"stream", stream},
              {"data", out ? t.stdout_data : t.stderr_data},
              {"truncated", out ? t.stdout_truncated : t.stderr_truncated},
              {"limit_bytes", JobTask::kMaxLogBytes}};
}

Result<json> JobService::Cancel(const Caller& c, const std::string& id) {
  VMG_ASSIGN_OR_RETURN(Job job, store_.GetJob(id, c.owner()));
  const int64_t now = clock_.NowMs();
  VMG_ASSIGN_OR_RETURN(bool moved, store_.SetJobState(job.id, {"queued", "running"}, "cancelled",
                                                      kJobExitCancelled, now));
  if (!moved)
    return MakeError(ErrorCode::kFailedPrecondition, "job " + job.id + " is " + job.state +
                                                         "; only a queued or running job can "
                                                         "be cancelled");
  VMG_ASSIGN_OR_RETURN(auto tasks, store_.ListJobTasks(job.id));
  for (const auto& t : tasks) {
    if (Terminal(t.state)) continue;
    JobTask next = t;
    next.state = "cancelled";
    next.finished_ms = now;
    // The task's VM (if any) goes; a run on the leader ends with its VM and
    // its result no longer matches the record.
    if (Move(t, next, "job.task.cancelled", "cancelled") && !t.vm_id.empty()) DeleteVm(t.vm_id);
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    jobs_.erase(job.id);
  }
  (void)store_.AppendEvent(Event{0, now, "job.cancelled", "", "", job.owner_id,
                                 "job " + job.id + " cancelled", json{{"job", job.id}}.dump()});
  return Get(c, job.id);
}

// --- the scheduler -------------------------------------------------------------------

Result<std::pair<Job, JobSpec>> JobService::JobOf(const std::string& job_id) {
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = jobs_.find(job_id);
    if (it != jobs_.end()) return it->second;
  }
  VMG_ASSIGN_OR_RETURN(Job job, store_.GetJob(job_id, ""));
  json j = json::parse(job.spec, nullptr, false);
  auto spec = ParseJobSpec(j);
  if (!spec.ok())
    return MakeError(ErrorCode::kInternal,
                     "job " + job_id + ": stored spec unreadable: " + spec.error().message);
  std::lock_guard<std::mutex> l(mu_);
  jobs_[job_id] = {job, *spec};
  return jobs_[job_id];
}

void JobService::Tick() {
  const int64_t now = clock_.NowMs();
  if (swept_ms_ == 0 || now - swept_ms_ >= limits_.sweep_ms) {
    SweepOrphanVms();
    swept_ms_ = std::max<int64_t>(1, now);
  }
  AdvanceStarting();
  CheckRunning();
  Schedule();
  FinishJobs();
}

bool JobService::Move(const JobTask& t, const JobTask& next, const std::string& kind,
                      const std::string& message) {
  auto moved = store_.UpdateJobTask(next, t.state, t.vm_id);
  if (!moved.ok()) {
    spdlog::warn("job {} task {}: {}", t.job_id, t.index, moved.error().message);
    return false;
  }
  if (!*moved) return false;
  json data = {{"job", t.job_id},  {"task", t.index},          {"from", t.state},
               {"to", next.state}, {"attempt", next.attempts}, {"vm_id", next.vm_id}};
  if (next.exit_code >= 0) data["exit_code"] = next.exit_code;
  if (!next.error.empty()) data["error"] = next.error;
  (void)store_.AppendEvent(
      Event{0, 0, kind, next.vm_id, next.host_id, t.owner_id,
            "job " + t.job_id + " task " + std::to_string(t.index) + ": " + message, data.dump()});
  return true;
}

void JobService::DeleteVm(const std::string& vm_id) {
  if (vm_id.empty()) return;
  Status st = runner_.DeleteTaskVm(vm_id);
  // Left behind (e.g. still being created), the sweep deletes it later.
  if (!st.ok() && st.error().code != ErrorCode::kNotFound)
    spdlog::info("job task VM {}: delete: {} (the sweep retries)", vm_id, st.error().message);
}

int64_t RetryBackoffMs(const JobLimits& limits, int64_t lost_attempts) {
  int64_t ms = std::max<int64_t>(0, limits.retry_backoff_ms);
  for (int64_t i = 1; i < lost_attempts && ms < limits.retry_backoff_max_ms; ++i) ms *= 2;
  return std::min(ms, std::max<int64_t>(0, limits.retry_backoff_max_ms));
}

void JobService::VmLost(const JobTask& t, const JobSpec& spec, const std::string& why) {
  JobTask next = t;
  next.vm_id.clear();
  next.host_id.clear();
  if (t.attempts > spec.retries) {
    next.state = "failed";
    next.finished_ms = clock_.NowMs();
    next.error = why + " (attempt " + std::to_string(t.attempts) + " of " +
                 std::to_string(spec.retries + 1) + "; no retries left)";
    if (Move(t, next, "job.task.failed", next.error)) DeleteVm(t.vm_id);
    return;
  }
  next.state = "queued";
  next.started_ms = 0;
  // The next attempt waits (a dying host is not yet known dead: placement
  // would pick it again) and prefers another host.
  next.not_before_ms = clock_.NowMs() + RetryBackoffMs(limits_, t.attempts);
  if (!t.host_id.empty()) next.last_host_id = t.host_id;
  next.error = "attempt " + std::to_string(t.attempts) + ": " + why + "; retried in " +
               std::to_string((next.not_before_ms - clock_.NowMs() + 999) / 1000) + " s";
  // queued_ms stays: a retried task is ahead of its owner's later ones.
  if (Move(t, next, "job.task.retried", next.error)) DeleteVm(t.vm_id);
}

void JobService::SweepOrphanVms() {
  auto vms = store_.ListVms("");
  if (!vms.ok()) return;
  for (const Vm& vm : *vms) {
    auto ref = ParseTaskVmName(vm.name);
    if (!ref || vm.state == "deleting") continue;
    auto job = store_.GetJob(ref->job_id, vm.owner_id);
    if (!job.ok()) continue;  // not a job's (a VM its user named so)
    {
      std::lock_guard<std::mutex> l(mu_);
      if (creating_.count({ref->job_id, ref->index})) continue;
    }
    auto tasks = store_.ListJobTasks(ref->job_id);
    if (!tasks.ok() || ref->index >= static_cast<int64_t>(tasks->size())) continue;
    const JobTask& t = (*tasks)[static_cast<size_t>(ref->index)];
    const bool current = (t.state == "starting" || t.state == "running") &&
                         t.attempts == ref->attempt && (t.vm_id.empty() || t.vm_id == vm.id);
    if (current) continue;
    spdlog::info("job {} task {}: deleting VM {} (attempt {}), which outlived its attempt",
                 ref->job_id, ref->index, vm.name, ref->attempt);
    DeleteVm(vm.id);
  }
}

void JobService::AdvanceStarting() {
  auto tasks = store_.ListJobTasksInState("starting");
  if (!tasks.ok()) return;
  for (const JobTask& t : *tasks) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (creating_.count({t.job_id, t.index})) continue;
    }
    auto js = JobOf(t.job_id);
    if (!js.ok()) continue;
    const JobSpec& spec = js->second;
    if (t.vm_id.empty()) {
      // Claimed by a controller that stopped before it recorded the VM.
      JobTask next = t;
      auto vm = store_.GetVm(TaskVmName(t.job_id, t.index, t.attempts), t.owner_id);
      if (vm.ok()) {
        next.vm_id = vm->id;
        next.host_id = vm->host_id;
        Move(t, next, "job.task.starting", "adopted VM " + vm->name);
      } else {
        // Its attempt number stays taken (a VM of that name may still come
        // up: the sweep deletes it).
        next.state = "queued";
        Move(t, next, "job.task.requeued", "requeued: its VM was never recorded");
      }
      continue;
    }
    auto vm = store_.GetVm(t.vm_id, "");
    if (!vm.ok()) {
      if (vm.error().code == ErrorCode::kNotFound) VmLost(t, spec, "its VM vanished");
      continue;
    }
    if (vm->state == "running") {
      JobTask next = t;
      next.state = "running";
      next.host_id = vm->host_id;
      next.started_ms = clock_.NowMs();
      {
        std::lock_guard<std::mutex> l(mu_);
        executing_.insert({t.job_id, t.index});
      }
      if (!Move(t, next, "job.task.running", "running on host " + vm->host_id)) {
        std::lock_guard<std::mutex> l(mu_);
        executing_.erase({t.job_id, t.index});
        continue;
      }
      runs_->Run("", [this, next, v = *vm, spec] {
        Result<TaskOutcome> outcome = runner_.RunTask(v, spec, next.index);
        Finished(next, v, outcome);
        std::lock_guard<std::mutex> l(mu_);
        executing_.erase({next.job_id, next.index});
      });
    } else if (vm->state == "error" || vm->state == "stopped" || vm->state == "deleting") {
      VmLost(t, spec, "its VM is " + vm->state + (vm->error.empty() ? "" : " (" + vm->error + ")"));
    }
  }
}

void JobService::CheckRunning() {
  auto tasks = store_.ListJobTasksInState("running");
  if (!tasks.ok()) return;
  for (const JobTask& t : *tasks) {
    bool here;
    {
      std::lock_guard<std::mutex> l(mu_);
      here = executing_.count({t.job_id, t.index}) > 0;
    }
    auto js = JobOf(t.job_id);
    if (!js.ok()) continue;
    if (!here) {
      // Its program ran on a controller that stopped (or lost the lead): its
      // exit code is lost with that call, so it runs again in a fresh VM
      // (the next attempt: VM names stay unique while the old one is being
      // deleted). A controller change never fails a task by itself.
      JobTask next = t;
      next.state = "queued";
      next.vm_id.clear();
      next.host_id.clear();
      next.started_ms = 0;
      next.error = "re-run: the controller running it stopped";
      if (Move(t, next, "job.task.requeued", next.error)) DeleteVm(t.vm_id);
      continue;
    }
    auto vm = store_.GetVm(t.vm_id, "");
    if (!vm.ok() && vm.error().code == ErrorCode::kNotFound)
      VmLost(t, js->second, "its VM vanished while the program ran");
    else if (vm.ok() && vm->state == "error")
      VmLost(t, js->second,
             "its VM failed while the program ran" + (vm->error.empty() ? "" : ": " + vm->error));
  }
}

void JobService::Finished(const JobTask& t, const Vm& vm, const Result<TaskOutcome>& outcome) {
  auto js = JobOf(t.job_id);
  if (!js.ok()) return;
  const auto& [job, spec] = *js;
  JobTask next = t;
  next.finished_ms = clock_.NowMs();
  if (!outcome.ok()) {
    const ErrorCode code = outcome.error().code;
    if (code == ErrorCode::kUnavailable || code == ErrorCode::kNotFound ||
        code == ErrorCode::kFailedPrecondition) {
      VmLost(t, spec, "its VM or host was lost: " + outcome.error().message);
      return;
    }
    next.state = "failed";
    next.error = "the program could not run to its end: " + outcome.error().message;
  } else {
    next.exit_code = outcome->exit_code;
    next.stdout_data = outcome->out;
    next.stderr_data = outcome->err;
    next.stdout_truncated = outcome->out_truncated || CapLog(next.stdout_data);
    next.stderr_truncated = outcome->err_truncated || CapLog(next.stderr_data);
    next.state = outcome->exit_code == 0 ? "succeeded" : "failed";
    next.error.clear();
    if (spec.output) {
      Status committed = runner_.CommitTaskOutput(vm, job, spec, t.index);
      if (!committed.ok()) {
        next.state = "failed";
        next.error = "committing the output: " + committed.error().message;
      }
    }
  }
  const std::string msg = next.state == "succeeded" ? "succeeded"
                          : next.exit_code >= 0     ? "exited " + std::to_string(next.exit_code)
                                                    : next.error;
  if (Move(t, next, next.state == "succeeded" ? "job.task.succeeded" : "job.task.failed", msg))
    DeleteVm(vm.id);
}

void JobService::Schedule() {
  int64_t busy;
  {
    std::lock_guard<std::mutex> l(mu_);
    busy = static_cast<int64_t>(executing_.size() + creating_.size());
  }
  auto starting = store_.ListJobTasksInState("starting");
  if (starting.ok()) busy += static_cast<int64_t>(starting->size());
  if (busy >= limits_.max_running) return;
  auto heads = store_.QueuedTaskHeads(limits_.starts_per_tick, clock_.NowMs());
  auto active = store_.ActiveJobTasksByOwner();
  if (!heads.ok() || !active.ok()) return;
  FairShare share(*active, *heads);
  int64_t started = 0;
  while (started < limits_.starts_per_tick && busy < limits_.max_running) {
    auto t = share.Next();
    if (!t) break;
    auto js = JobOf(t->job_id);
    if (!js.ok()) {
      share.Drop(t->owner_id);
      continue;
    }
    const auto& [job, spec] = *js;
    JobTask claim = *t;
    claim.state = "starting";
    claim.attempts = t->attempts + 1;
    const TaskKey key{t->job_id, t->index};
    {
      std::lock_guard<std::mutex> l(mu_);
      creating_.insert(key);
    }
    auto done = [&] {
      std::lock_guard<std::mutex> l(mu_);
      creating_.erase(key);
    };
    auto claimed = store_.UpdateJobTask(claim, "queued", "");
    if (!claimed.ok() || !*claimed) {
      done();
      share.Drop(t->owner_id);
      continue;
    }
    const std::string name = TaskVmName(job.id, t->index, claim.attempts);
    auto vm = runner_.CreateTaskVm(job, spec, t->index, name, t->last_host_id);
    if (!vm.ok()) {
      const ErrorCode code = vm.error().code;
      JobTask back = claim;
      back.state = "queued";
      back.attempts = t->attempts;
      const bool wait = code == ErrorCode::kResourceExhausted ||
                        code == ErrorCode::kPermissionDenied ||
                        code == ErrorCode::kTooManyRequests || code == ErrorCode::kUnavailable;
      if (!wait) {
        // The create itself is wrong (the image went, ...): retrying
        // would fail the same way.
        back.state = "failed";
        back.finished_ms = clock_.NowMs();
        back.error = "its VM could not be created: " + vm.error().message;
      }
      if (wait)
        (void)store_.UpdateJobTask(back, "starting", "");  // waits for room, no event
      else
        Move(claim, back, "job.task.failed", back.error);
      done();
      share.Block(t->owner_id);
      continue;
    }
    JobTask next = claim;
    next.vm_id = vm->id;
    next.host_id = vm->host_id;
    const bool recorded = Move(claim, next, "job.task.starting",
                               "attempt " + std::to_string(next.attempts) + ": VM " + vm->name +
                                   " on host " + vm->host_id);
    done();
    if (!recorded) DeleteVm(vm->id);  // cancelled meanwhile
    share.Started(t->owner_id);
    ++started;
    ++busy;
  }
}

void JobService::FinishJobs() {
  auto jobs = store_.ListJobs("", true);
  if (!jobs.ok()) return;
  for (const Job& job : *jobs) {
    auto tasks = store_.ListJobTasks(job.id);
    if (!tasks.ok()) continue;
    bool all_done = true, any_started = false;
    for (const auto& t : *tasks) {
      all_done = all_done && Terminal(t.state);
      any_started = any_started || t.state != "queued";
    }
    const int64_t now = clock_.NowMs();
    if (!all_done) {
      if (job.state == "queued" && any_started)
        (void)store_.SetJobState(job.id, {"queued"}, "running", -1, 0);
      continue;
    }
    std::string state = "succeeded";
    int64_t code = 0;
    for (const auto& t : *tasks) {
      if (t.state == "succeeded") continue;
      state = "failed";
      code = t.exit_code > 0 ? std::min<int64_t>(t.exit_code, 255) : kJobExitNoExitCode;
      break;
    }
    auto moved = store_.SetJobState(job.id, {"queued", "running"}, state, code, now);
    if (moved.ok() && *moved) {
      (void)store_.AppendEvent(
          Event{0, now, "job." + state, "", "", job.owner_id,
                "job " + job.id + " " + state + " (exit code " + std::to_string(code) + ")",
                json{{"job", job.id}, {"exit_code", code}}.dump()});
      std::lock_guard<std::mutex> l(mu_);
      jobs_.erase(job.id);
    }
  }
}

json JobService::JobJson(const Job& job, const JobSpec& spec, const std::vector<JobTask>* tasks) {
  json j = JobSpecJson(spec);
  j["id"] = job.id;
  j["owner_id"] = job.owner_id;
  j["image_id"] = job.image_id;
  j["count"] = job.count;
  j["state"] = job.state;
  j["exit_code"] = job.exit_code >= 0 ? json(job.exit_code) : json(nullptr);
  j["created_at"] = FormatTimeMs(job.created_ms);
  j["finished_at"] = job.finished_ms ? json(FormatTimeMs(job.finished_ms)) : json(nullptr);
  if (!tasks) return j;
  // Hosts by name beside their ids, as VMs are shown.
  std::map<std::string, std::string> host_names;
  if (auto hosts = store_.ListHosts(); hosts.ok())
    for (const auto& h : *hosts) host_names[h.id] = h.name;
  json counts = json::object();
  json list = json::array();
  for (const auto& t : *tasks) {
    counts[t.state] = counts.value(t.state, 0) + 1;
    json v = {{"index", t.index},
              {"state", t.state},
              {"attempts", t.attempts},
              {"vm_id", t.vm_id},
              {"host_id", t.host_id},
              {"host", host_names.count(t.host_id) ? host_names[t.host_id] : ""},
              {"exit_code", t.exit_code >= 0 ? json(t.exit_code) : json(nullptr)},
              {"error", t.error},
              // A retry backing off: when it may start, and the host it avoids.
              {"retry_at", t.state == "queued" && t.not_before_ms > 0
                               ? json(FormatTimeMs(t.not_before_ms))
                               : json(nullptr)},
              {"last_host_id", t.last_host_id},
              {"started_at", t.started_ms ? json(FormatTimeMs(t.started_ms)) : json(nullptr)},
              {"finished_at", t.finished_ms ? json(FormatTimeMs(t.finished_ms)) : json(nullptr)}};
    list.push_back(std::move(v));
  }
  j["tasks_by_state"] = counts;
  j["tasks"] = list;
  return j;
}

}  // namespace vmgrid
