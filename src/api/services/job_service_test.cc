#include "api/services/job_service.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <thread>

#include "api/services/service_test_fixture.h"

namespace vmgrid {
namespace {

using nlohmann::json;

// Makes task VMs as records on the fixture's host (so its room is real:
// 8 vCPUs), runs "programs" from a script, deletes records.
class FakeRunner : public TaskRunner {
 public:
  FakeRunner(Store& store, std::string host_id) : store_(store), host_id_(std::move(host_id)) {}

  Result<Vm> CreateTaskVm(const Job& job, const JobSpec& spec, int64_t, const std::string& vm_name,
                          const std::string& avoid_host) override {
    {
      std::lock_guard<std::mutex> l(mu);
      avoided.push_back(avoid_host);
    }
    Vm v;
    v.id = NewId("vm");
    v.name = vm_name;
    v.owner_id = job.owner_id;
    v.image_id = job.image_id;
    v.state = "creating";
    v.vcpus = static_cast<int>(spec.vcpus > 0 ? spec.vcpus : 1);
    v.memory_mb = 256;
    v.disk = "clone";
    v.start = "boot";
    v.created_ms = v.updated_ms = NowMs();
    return store_.PlaceAndInsertVm(v, {host_id_});
  }
  Result<TaskOutcome> RunTask(const Vm& vm, const JobSpec& spec, int64_t index) override {
    {
      std::unique_lock<std::mutex> l(mu);
      ran.push_back(vm.name);
      gate_cv.wait(l, [&] { return open; });
      if (!run_answer.ok()) return run_answer.error();
    }
    TaskOutcome out;
    out.exit_code = index % 2;
    out.out = ExpandTaskIndex(spec.argv.back(), index) + "\n";
    out.err = "err " + std::to_string(index);
    return out;
  }
  Status CommitTaskOutput(const Vm&, const Job&, const JobSpec&, int64_t) override {
    return MakeError(ErrorCode::kFailedPrecondition, "not in this build");
  }
  Status DeleteTaskVm(const std::string& vm_id) override {
    {
      std::lock_guard<std::mutex> l(mu);
      deleted.push_back(vm_id);
    }
    return store_.DeleteVm(vm_id);
  }
  void Open(bool o) {
    std::lock_guard<std::mutex> l(mu);
    open = o;
    gate_cv.notify_all();
  }

  std::mutex mu;
  std::condition_variable gate_cv;
  bool open = true;                  // guarded by mu
  Status run_answer;                 // guarded by mu
  std::vector<std::string> ran;      // guarded by mu
  std::vector<std::string> deleted;  // guarded by mu
  std::vector<std::string> avoided;  // guarded by mu: each create's avoid_host

 private:
  Store& store_;
  std::string host_id_;
};

class JobServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    runner_ = std::make_unique<FakeRunner>(*store_, host_.id);
    jobs_ = NewService(*store_, *runner_);
    auto b = store_->CreateUser("bob", "user");
    ASSERT_TRUE(b.ok());
    bob_ = b->first;
  }
  void TearDown() override {
    if (runner_) runner_->Open(true);
    jobs_.reset();
  }
  std::unique_ptr<JobService> NewService(Store& store, TaskRunner& runner) {
    return std::make_unique<JobService>(
        store, runner, clock_,
        [&store](const Caller&, const std::string& ref) { return store.GetImage(ref, ""); });
  }
  static JobRequest Request(int64_t count, const std::string& arg = "task {i}") {
    JobRequest r;
    r.image = "img-1";
    r.count = count;
    r.spec.argv = {"sh", "-c", arg};
    return r;
  }
  Caller As(const User& u) { return Caller{u}; }
  std::string Submit(const User& u, const JobRequest& r) {
    auto j = jobs_->Submit(As(u), r);
    EXPECT_TRUE(j.ok()) << j.error().message;
    return j.ok() ? (*j)["id"].get<std::string>() : "";
  }
  std::vector<JobTask> Tasks(const std::string& job) { return *store_->ListJobTasks(job); }
  // Every task VM that exists is marked running (its guest came up).
  void BootAll() {
    auto vms = store_->ListVms("");
    ASSERT_TRUE(vms.ok());
    for (const Vm& v : *vms) {
      if (v.state != "creating") continue;
      ASSERT_TRUE(store_->ModifyVm(v.id, [](Vm& vm) { vm.state = "running"; }).ok());
    }
  }
  // Waits until no program runs (no timing is asserted: the bound is only
  // there so that a bug fails instead of hanging).
  void Drain(JobService& s) {
    for (int i = 0; i < 3000 && s.running_here() > 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_EQ(s.running_here(), 0u);
  }

  std::unique_ptr<FakeRunner> runner_;
  std::unique_ptr<JobService> jobs_;
  User bob_;
};

JobTask Queued(const std::string& job, int64_t index, const std::string& owner, int64_t at) {
  JobTask t;
  t.job_id = job;
  t.index = index;
  t.owner_id = owner;
  t.state = "queued";
  t.queued_ms = at;
  return t;
}

TEST(FairShareTest, TheUserWithFewerRunningGoesFirstAndTiesGoToTheOldest) {
  std::vector<JobTask> heads;
  for (int i = 0; i < 1000; ++i) heads.push_back(Queued("job-a", i, "A", 1));
  heads.push_back(Queued("job-b", 0, "B", 5));
  heads.push_back(Queued("job-b", 1, "B", 5));
  FairShare share({}, heads);
  std::vector<std::string> order;
  for (int i = 0; i < 5; ++i) {
    auto t = share.Next();
    ASSERT_TRUE(t);
    order.push_back(t->owner_id + std::to_string(t->index));
    share.Started(t->owner_id);
  }
  EXPECT_EQ(order, (std::vector<std::string>{"A0", "B0", "A1", "B1", "A2"}));
  // A user already running many waits for the others.
  FairShare busy({{"A", 5}}, heads);
  EXPECT_EQ(busy.Next()->owner_id, "B");
  busy.Block("B");
  EXPECT_EQ(busy.Next()->owner_id, "A");
}

json Data(const std::string& mount) {
  return json::array({json::object({{"name", "in"}, {"dataset", "d"}, {"mount", mount}})});
}

TEST(JobSpecTest, ParsesStrictlyAndExpandsTheIndex) {
  auto r = ParseJobRequest(json{{"image", "tiny"}, {"argv", {"echo", "{i}"}}, {"count", 3}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->count, 3);
  EXPECT_EQ(r->spec.retries, 2);
  EXPECT_EQ(ExpandTaskIndex("out-{i}-{i}", 7), "out-7-7");
  auto back = ParseJobSpec(JobSpecJson(r->spec));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->argv, r->spec.argv);
  struct Bad {
    json body;
    std::string says;
  };
  for (const Bad& b : std::vector<Bad>{
           {{{"image", "tiny"}, {"argv", {"x"}}, {"zz", 1}}, "unknown field 'zz'"},
           {{{"image", "tiny"}}, "argv"},
           {{{"image", "tiny"}, {"argv", json::array()}}, "argv must name a program"},
           {{{"image", "tiny"}, {"argv", {"x"}}, {"retries", 11}}, "retries"},
           {{{"image", "tiny"}, {"argv", {"x"}}, {"timeout_s", 3601}}, "timeout_s"},
           {{{"image", "tiny"}, {"argv", {std::string(5000, 'a')}}}, "longer than"},
           {{{"image", "tiny"}, {"argv", {"x"}}, {"data", Data("/in/../etc")}}, "'..' component"},
           {{{"image", "tiny"}, {"argv", {"x"}}, {"data", Data("/etc/x")}}, "system directory"},
           {{{"image", "tiny"}, {"argv", {"x"}}, {"data", Data("in")}}, "absolute"},
           {{{"image", "tiny"}, {"argv", {"x"}}, {"output", {{"dataset", "o"}, {"zz", 1}}}},
            "unknown field 'zz'"},
       }) {
    auto p = ParseJobRequest(b.body);
    ASSERT_FALSE(p.ok()) << b.body;
    EXPECT_EQ(p.error().code, ErrorCode::kInvalidArgument) << b.body;
    EXPECT_NE(p.error().message.find(b.says), std::string::npos) << p.error().message;
  }
  auto name = ParseTaskVmName(TaskVmName("job-0a1b2c3d4e", 12, 3));
  ASSERT_TRUE(name);
  EXPECT_EQ(name->job_id, "job-0a1b2c3d4e");
  EXPECT_EQ(name->index, 12);
  EXPECT_EQ(name->attempt, 3);
  EXPECT_FALSE(ParseTaskVmName("web-1"));
  EXPECT_FALSE(ParseTaskVmName("job-x-y-az"));
}

TEST_P(JobServiceTest, RunsEveryTaskInItsOwnVmAndKeepsExitCodesAndLogs) {
  const std::string id = Submit(alice_, Request(5));
  jobs_->Tick();  // 5 VMs created
  for (const auto& t : Tasks(id)) {
    EXPECT_EQ(t.state, "starting");
    EXPECT_EQ(t.attempts, 1);
    EXPECT_FALSE(t.vm_id.empty());
  }
  BootAll();
  jobs_->Tick();  // the programs start
  Drain(*jobs_);
  jobs_->Tick();  // the job ends
  auto job = jobs_->Get(As(alice_), id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ((*job)["state"], "failed");
  EXPECT_EQ((*job)["exit_code"], 1);  // task 1 is the first that failed
  for (const auto& t : (*job)["tasks"]) {
    const int64_t i = t["index"];
    EXPECT_EQ(t["exit_code"], i % 2);
    EXPECT_EQ(t["state"], i % 2 ? "failed" : "succeeded");
  }
  auto out = jobs_->Logs(As(alice_), id, 3, "stdout");
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*out)["data"], "task 3\n");
  EXPECT_EQ((*out)["truncated"], false);
  auto err = jobs_->Logs(As(alice_), id, 3, "stderr");
  ASSERT_TRUE(err.ok());
  EXPECT_EQ((*err)["data"], "err 3");
  // Every VM went with its task; events tell the story.
  EXPECT_TRUE(store_->ListVms("")->empty());
  auto events = store_->ListEvents(EventQuery{0, "", alice_.id, 1000});
  int succeeded = 0;
  bool job_failed = false;
  for (const auto& e : *events) {
    succeeded += e.kind == "job.task.succeeded";
    job_failed = job_failed || e.kind == "job.failed";
  }
  EXPECT_EQ(succeeded, 3);
  EXPECT_TRUE(job_failed);
}

TEST_P(JobServiceTest, AUserWithABacklogDoesNotStarveOneWithTwoTasks) {
  const std::string big = Submit(alice_, Request(1000));
  clock_.Advance(1000);
  const std::string small = Submit(bob_, Request(2));
  jobs_->Tick();  // the host holds 8 tasks of 1 vCPU
  int alice = 0;
  for (const auto& t : Tasks(big)) alice += t.state == "starting";
  for (const auto& t : Tasks(small)) EXPECT_EQ(t.state, "starting") << t.index;
  EXPECT_EQ(alice, 6);
  // The rest waits for room rather than failing.
  EXPECT_EQ(Tasks(big)[999].state, "queued");
}

TEST_P(JobServiceTest, QueuedTasksStartWhenRoomAppears) {
  Vm hog = AddVm("hog", "running");
  JobRequest r = Request(1);
  r.spec.vcpus = 8;  // the whole host, which the hog holds part of
  const std::string id = Submit(alice_, r);
  jobs_->Tick();
  EXPECT_EQ(Tasks(id)[0].state, "queued");
  ASSERT_TRUE(store_->DeleteVm(hog.id).ok());
  jobs_->Tick();
  EXPECT_EQ(Tasks(id)[0].state, "starting");
}

TEST_P(JobServiceTest, TheQueueSurvivesARestartAndAnInterruptedRunIsRerun) {
  const std::string id = Submit(alice_, Request(2));
  jobs_->Tick();
  BootAll();
  runner_->Open(false);  // the programs hang: the "controller" dies during them
  jobs_->Tick();
  for (const auto& t : Tasks(id)) EXPECT_EQ(t.state, "running");
  const std::string first_vm = Tasks(id)[0].vm_id;

  // A new controller on the same database (the old one is stuck in its runs).
  auto store2 = Store::Open(db_->target());
  ASSERT_TRUE(store2.ok()) << store2.error().message;
  FakeRunner runner2(**store2, host_.id);
  auto jobs2 = NewService(**store2, runner2);
  jobs2->Tick();  // its runs are lost with it: re-run in fresh VMs
  for (const auto& t : Tasks(id)) {
    EXPECT_EQ(t.state, "starting") << t.error;
    EXPECT_EQ(t.attempts, 2);  // a fresh VM name; the task did not fail for it
    EXPECT_NE(t.vm_id, first_vm);
  }
  EXPECT_EQ(store_->GetVm(first_vm, "").error().code, ErrorCode::kNotFound);
  // The old controller's runs end now: their answers no longer count.
  runner_->Open(true);
  Drain(*jobs_);
  for (const auto& t : Tasks(id)) EXPECT_EQ(t.state, "starting");
  BootAll();
  jobs2->Tick();
  Drain(*jobs2);
  jobs2->Tick();
  EXPECT_EQ(store_->GetJob(id, "")->state, "failed");
  EXPECT_EQ(store_->GetJob(id, "")->exit_code, 1);
}

TEST_P(JobServiceTest, ALostVmIsRetriedAndThenFailsWithoutAnExitCode) {
  JobRequest r = Request(1);
  r.spec.retries = 1;
  const std::string id = Submit(alice_, r);
  jobs_->Tick();
  ASSERT_TRUE(store_->DeleteVm(Tasks(id)[0].vm_id).ok());  // its host lost it
  jobs_->Tick();                                           // retried: queued again, backing off
  JobTask t = Tasks(id)[0];
  EXPECT_EQ(t.state, "queued");
  EXPECT_EQ(t.attempts, 1);
  EXPECT_EQ(t.not_before_ms, clock_.NowMs() + 2000);
  EXPECT_EQ(t.last_host_id, host_.id);
  EXPECT_NE(t.error.find("vanished"), std::string::npos) << t.error;
  EXPECT_NE(t.error.find("retried in 2 s"), std::string::npos) << t.error;
  clock_.Advance(1999);
  jobs_->Tick();
  EXPECT_EQ(Tasks(id)[0].state, "queued");
  clock_.Advance(1);
  jobs_->Tick();  // started, placed away from the host it was lost on
  t = Tasks(id)[0];
  EXPECT_EQ(t.state, "starting");
  EXPECT_EQ(t.attempts, 2);
  {
    std::lock_guard<std::mutex> l(runner_->mu);
    EXPECT_EQ(runner_->avoided, (std::vector<std::string>{"", host_.id}));
  }
  BootAll();
  {
    std::lock_guard<std::mutex> l(runner_->mu);
    runner_->run_answer = MakeError(ErrorCode::kUnavailable, "host h1 is unreachable");
  }
  jobs_->Tick();
  Drain(*jobs_);
  t = Tasks(id)[0];
  EXPECT_EQ(t.state, "failed");
  EXPECT_EQ(t.exit_code, -1);
  EXPECT_NE(t.error.find("no retries left"), std::string::npos) << t.error;
  jobs_->Tick();
  EXPECT_EQ(store_->GetJob(id, "")->exit_code, kJobExitNoExitCode);
}

TEST(JobRetryTest, TheBackoffDoublesPerLostAttemptUpToItsBound) {
  JobLimits l;
  l.retry_backoff_ms = 2000;
  l.retry_backoff_max_ms = 60000;
  EXPECT_EQ(RetryBackoffMs(l, 1), 2000);
  EXPECT_EQ(RetryBackoffMs(l, 2), 4000);
  EXPECT_EQ(RetryBackoffMs(l, 5), 32000);
  EXPECT_EQ(RetryBackoffMs(l, 6), 60000);
  EXPECT_EQ(RetryBackoffMs(l, 1000), 60000);  // no overflow
  l.retry_backoff_ms = 0;
  EXPECT_EQ(RetryBackoffMs(l, 3), 0);
}

TEST_P(JobServiceTest, ABackingOffTaskDoesNotHoldUpItsOwnersNextOne) {
  JobRequest r = Request(2);
  r.spec.retries = 3;
  const std::string id = Submit(alice_, r);
  jobs_->Tick();
  ASSERT_EQ(Tasks(id)[0].state, "starting");
  ASSERT_EQ(Tasks(id)[1].state, "starting");
  ASSERT_TRUE(store_->DeleteVm(Tasks(id)[0].vm_id).ok());
  jobs_->Tick();
  EXPECT_EQ(Tasks(id)[0].state, "queued");
  // A third task of the same owner's, queued later, starts meanwhile.
  const std::string later = Submit(alice_, Request(1));
  jobs_->Tick();
  EXPECT_EQ(Tasks(later)[0].state, "starting");
  EXPECT_EQ(Tasks(id)[0].state, "queued");
  clock_.Advance(2000);
  jobs_->Tick();
  EXPECT_EQ(Tasks(id)[0].state, "starting");
}

TEST_P(JobServiceTest, CancelStopsQueuedAndRunningTasks) {
  JobRequest r = Request(10);
  r.spec.vcpus = 4;  // 2 fit; 8 wait
  const std::string id = Submit(alice_, r);
  jobs_->Tick();
  auto c = jobs_->Cancel(As(alice_), id);
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ((*c)["state"], "cancelled");
  EXPECT_EQ((*c)["exit_code"], kJobExitCancelled);
  for (const auto& t : Tasks(id)) EXPECT_EQ(t.state, "cancelled");
  EXPECT_TRUE(store_->ListVms("")->empty());
  jobs_->Tick();
  EXPECT_TRUE(store_->ListVms("")->empty());
  EXPECT_EQ(jobs_->Cancel(As(alice_), id).error().code, ErrorCode::kFailedPrecondition);
}

TEST_P(JobServiceTest, AnotherUsersJobIsNotFoundAndTheAdminSeesAll) {
  const std::string id = Submit(alice_, Request(1));
  EXPECT_EQ(jobs_->Get(As(bob_), id).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(jobs_->Logs(As(bob_), id, 0, "stdout").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(jobs_->Cancel(As(bob_), id).error().code, ErrorCode::kNotFound);
  EXPECT_TRUE((*jobs_->List(As(bob_), {}))["jobs"].empty());
  auto admin = store_->CreateUser("root", "admin");
  ASSERT_TRUE(admin.ok());
  EXPECT_TRUE(jobs_->Get(As(admin->first), id).ok());
  EXPECT_EQ((*jobs_->List(As(admin->first), {}))["jobs"].size(), 1u);
}

// A job's input may be another user's dataset shared with its owner
// (OWNER/NAME, docs/datasets.md "Sharing"); not shared, it is not found.
TEST_P(JobServiceTest, AnInputSharedWithTheOwnerIsTakenOthersAreNotFound) {
  auto genome = store_->CreateDataset(bob_.id, "genome");
  ASSERT_TRUE(genome.ok());
  JobRequest r = Request(1);
  r.spec.data = {JobDataInput{"in", "bob/genome", 0, "/in"}};
  auto refused = jobs_->Submit(As(alice_), r);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kNotFound);
  ASSERT_TRUE(store_->ShareDataset(genome->id, alice_.id).ok());
  EXPECT_FALSE(Submit(alice_, r).empty());
  EXPECT_EQ(ParseJobRequest(
                json{{"image", "tiny"},
                     {"argv", {"x"}},
                     {"data", json::array({json::object(
                                  {{"name", "in"}, {"dataset", "a/b/c"}, {"mount", "/in"}})})}})
                .error()
                .code,
            ErrorCode::kInvalidArgument);
}

TEST_P(JobServiceTest, BadJobsAreRefusedAndNothingIsStored) {
  ASSERT_TRUE(store_->CreateDataset(alice_.id, "result-3").ok());
  JobRequest too_many = Request(1001);
  EXPECT_EQ(jobs_->Submit(As(alice_), too_many).error().code, ErrorCode::kInvalidArgument);
  JobRequest no_image = Request(1);
  no_image.image = "nope";
  EXPECT_EQ(jobs_->Submit(As(alice_), no_image).error().code, ErrorCode::kNotFound);
  JobRequest resume = Request(1);
  resume.spec.resume = true;  // the image has no post-boot checkpoint
  EXPECT_EQ(jobs_->Submit(As(alice_), resume).error().code, ErrorCode::kInvalidArgument);
  JobRequest exists = Request(5);
  exists.spec.output = JobDataOutput{"result-{i}", "/out", 64};
  auto e = jobs_->Submit(As(alice_), exists);
  EXPECT_EQ(e.error().code, ErrorCode::kAlreadyExists);
  EXPECT_NE(e.error().message.find("result-3"), std::string::npos) << e.error().message;
  JobRequest missing = Request(1);
  missing.spec.data = {JobDataInput{"in", "nosuch", 0, "/in"}};
  EXPECT_EQ(jobs_->Submit(As(alice_), missing).error().code, ErrorCode::kNotFound);
  User small = alice_;
  small.quota.vcpus = 2;
  JobRequest big = Request(1);
  big.spec.vcpus = 4;
  EXPECT_EQ(jobs_->Submit(As(small), big).error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(store_->ListJobs("", false)->empty());
  EXPECT_TRUE(store_->ListJobTasksInState("queued")->empty());
  // Inputs and a new output are taken (attached when each task's VM is made).
  JobRequest data = Request(2);
  data.spec.data = {JobDataInput{"in", "result-3", 0, "/in"}};
  data.spec.output = JobDataOutput{"out-{i}", "/out", 64};
  auto d = jobs_->Submit(As(alice_), data);
  EXPECT_TRUE(d.ok()) << d.error().message;
}

TEST_P(JobServiceTest, UnfinishedTasksPerUserAreBounded) {
  JobLimits limits;
  limits.max_unfinished_per_user = 1500;
  JobService jobs(
      *store_, *runner_, clock_,
      [this](const Caller&, const std::string& ref) { return store_->GetImage(ref, ""); }, limits);
  ASSERT_TRUE(jobs.Submit(As(alice_), Request(1000)).ok());
  auto over = jobs.Submit(As(alice_), Request(600));
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.error().code, ErrorCode::kResourceExhausted);
  EXPECT_NE(over.error().message.find("at most 1500"), std::string::npos);
  EXPECT_TRUE(jobs.Submit(As(bob_), Request(600)).ok());  // per user
}

TEST_P(JobServiceTest, AVmThatOutlivedItsTaskIsDeleted) {
  const std::string id = Submit(alice_, Request(1));
  ASSERT_TRUE(jobs_->Cancel(As(alice_), id).ok());
  // A crash between a VM's create and its record: a VM of attempt 1.
  Vm left = AddVm(TaskVmName(id, 0, 1), "running");
  Vm mine = AddVm("job-mine-0-a1", "running");  // no such job: a user's own
  auto fresh = NewService(*store_, *runner_);
  fresh->Tick();
  EXPECT_EQ(store_->GetVm(left.id, "").error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(store_->GetVm(mine.id, "").ok());
}

INSTANTIATE_TEST_SUITE_P(Backends, JobServiceTest, testing_db::Backends(), testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
