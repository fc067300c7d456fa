// VmService on a SQLite store with a fake agent: each operation moves the
// record at once, asks the agent in the background and records its answer.
#include "api/services/vm_service.h"

#include <future>

#include "api/admission.h"
#include "api/services/service_test_fixture.h"

namespace vmgrid {
namespace {

class VmServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    vms_ = std::make_unique<VmService>(*store_, agent_, ops_, clock_, execs_);
  }
  void Settle() { ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10))); }
  static VmStatus Answer(const std::string& id, const std::string& state) {
    VmStatus s;
    s.id = id;
    s.state = state;
    return s;
  }

  OpQueue ops_;
  Admission execs_{"exec operations", 1, 0, 5};
  std::unique_ptr<VmService> vms_;
};

TEST_P(VmServiceTest, StopMovesTheRecordAndRecordsTheAgentsAnswer) {
  Vm vm = AddVm("a", "running");
  agent_.action_answer = Answer(vm.id, "stopped");
  auto moved = vms_->Act(vm.id, alice_.id, VmOp::kStop);
  ASSERT_TRUE(moved.ok()) << moved.error().message;
  EXPECT_EQ(moved->state, "stopping");
  Settle();
  EXPECT_EQ(store_->GetVm(vm.id, "")->state, "stopped");
  ASSERT_EQ(agent_.calls.size(), 1u);
  EXPECT_EQ(agent_.calls[0], "stop " + vm.id);
}

TEST_P(VmServiceTest, RefusedOperationsChangeNothingAndCallNoAgent) {
  Vm vm = AddVm("a", "stopped");
  auto r = vms_->Act(vm.id, alice_.id, VmOp::kStop);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(vms_->Act(vm.id, "someone-else", VmOp::kResume).error().code, ErrorCode::kNotFound);
  Settle();
  EXPECT_EQ(store_->GetVm(vm.id, "")->state, "stopped");
  EXPECT_TRUE(agent_.calls.empty());
}

TEST_P(VmServiceTest, AFailedCheckpointTakesTheStateTheAgentReports) {
  Vm vm = AddVm("a", "running");
  agent_.action_answer = MakeError(ErrorCode::kInternal, "disk full");
  HostReport report;
  report.vms = {Answer(vm.id, "stopped")};  // QEMU died during the checkpoint
  agent_.status_answer = report;
  auto moved = vms_->Act(vm.id, alice_.id, VmOp::kCheckpointLeaveRunning);
  ASSERT_TRUE(moved.ok()) << moved.error().message;
  EXPECT_EQ(moved->state, "checkpointing");
  Settle();
  auto after = store_->GetVm(vm.id, "");
  EXPECT_EQ(after->state, "stopped");
  EXPECT_EQ(after->error, "disk full");
  EXPECT_EQ(agent_.calls, (std::vector<std::string>{"checkpoint+leave " + vm.id, "status"}));
}

TEST_P(VmServiceTest, AnUnknownStateFromTheHostIsNotRecorded) {
  Vm vm = AddVm("a", "stopped");
  agent_.action_answer = Answer(vm.id, "levitating");
  ASSERT_TRUE(vms_->Act(vm.id, alice_.id, VmOp::kResume).ok());
  Settle();
  auto after = store_->GetVm(vm.id, "");
  EXPECT_EQ(after->state, "stopped") << "the state it started from";
  EXPECT_NE(after->error.find("unknown state 'levitating'"), std::string::npos) << after->error;
}

TEST_P(VmServiceTest, ResumeRecordsHowLongItTook) {
  Vm vm = AddVm("a", "suspended");
  agent_.action_answer = Answer(vm.id, "running");
  ASSERT_TRUE(vms_->Act(vm.id, alice_.id, VmOp::kResume).ok());
  Settle();
  auto after = store_->GetVm(vm.id, "");
  EXPECT_EQ(after->state, "running");
  EXPECT_GE(after->create_ms, 0);
}

TEST_P(VmServiceTest, DeleteRemovesTheRecordOnceTheHostHasAndKeepsItWhenItFails) {
  Vm gone = AddVm("a", "running");
  auto moved = vms_->Delete(gone.id, alice_.id, false);
  ASSERT_TRUE(moved.ok()) << moved.error().message;
  EXPECT_EQ(moved->state, "deleting");
  Settle();
  EXPECT_FALSE(store_->GetVm(gone.id, "").ok());

  Vm kept = AddVm("b", "running");
  agent_.delete_answer = MakeError(ErrorCode::kUnavailable, "host unreachable");
  ASSERT_TRUE(vms_->Delete(kept.id, alice_.id, false).ok());
  Settle();
  auto after = store_->GetVm(kept.id, "");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state, "error");
  EXPECT_EQ(vms_->failed_writes(), 0);
}

TEST_P(VmServiceTest, ExecRunsInARunningVmOfTheCallerOnly) {
  Vm vm = AddVm("a", "running");
  ExecRequest r;
  r.argv = {"true"};
  auto op = vms_->Exec(Caller{alice_}, vm.id, r);
  ASSERT_TRUE(op.ok()) << op.error().message;
  EXPECT_EQ((*op)["kind"], "exec");
  Settle();
  EXPECT_EQ(agent_.calls, (std::vector<std::string>{"exec " + vm.id}));

  User bob = store_->CreateUser("bob", "user")->first;
  EXPECT_EQ(vms_->Exec(Caller{bob}, vm.id, r).error().code, ErrorCode::kNotFound);
  Vm stopped = AddVm("b", "stopped");
  EXPECT_EQ(vms_->Exec(Caller{alice_}, stopped.id, r).error().code, ErrorCode::kFailedPrecondition);
  r.argv = {""};
  auto bad = vms_->Exec(Caller{alice_}, vm.id, r);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.error().message.find("argv"), std::string::npos) << bad.error().message;
  Settle();
  EXPECT_EQ(agent_.calls.size(), 1u) << "refused execs call no agent";
}

TEST_P(VmServiceTest, ExecBeyondTheCallersLimitIsRefusedWithARetryTime) {
  Vm vm = AddVm("a", "running");
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  agent_.on_exec = [released] { released.wait(); };
  ExecRequest r;
  r.argv = {"sleep", "1"};
  ASSERT_TRUE(vms_->Exec(Caller{alice_}, vm.id, r).ok());
  auto second = vms_->Exec(Caller{alice_}, vm.id, r);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, ErrorCode::kTooManyRequests);
  EXPECT_EQ(second.error().retry_after_s, 5);
  release.set_value();
  Settle();
  EXPECT_TRUE(vms_->Exec(Caller{alice_}, vm.id, r).ok()) << "the slot is free once it ended";
  Settle();
}

TEST_P(VmServiceTest, ForwardsAreTheOwnersAndNeedARunningVm) {
  Vm vm = AddVm("a", "running");
  ForwardRequest req;
  req.guest_port = 8080;
  auto theirs = vms_->Forward(vm.id, "someone-else", req);
  ASSERT_FALSE(theirs.ok());
  EXPECT_EQ(theirs.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(vms_->Unforward(vm.id, "someone-else", 40000).error().code, ErrorCode::kNotFound);
  auto f = vms_->Forward(vm.id, alice_.id, req);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ((*f)["vm_id"], vm.id);
  EXPECT_EQ((*f)["listen_port"], 40000);
  EXPECT_TRUE((*f).contains("host"));
  EXPECT_TRUE(vms_->Unforward(vm.id, alice_.id, 40000).ok());
  Vm stopped = AddVm("b", "stopped");
  EXPECT_EQ(vms_->Forward(stopped.id, alice_.id, req).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(agent_.calls, (std::vector<std::string>{"forward " + vm.id + " 8080",
                                                    "unforward " + vm.id + " 40000"}));
}

INSTANTIATE_TEST_SUITE_P(Backends, VmServiceTest, testing_db::Backends(), testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
