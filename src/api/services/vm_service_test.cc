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

  // The agent refused: the delete failed, and the record says why.
  Vm kept = AddVm("b", "running");
  agent_.delete_answer = MakeError(ErrorCode::kInternal, "cannot remove the VM's files");
  ASSERT_TRUE(vms_->Delete(kept.id, alice_.id, false).ok());
  Settle();
  auto after = store_->GetVm(kept.id, "");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state, "error");
  EXPECT_EQ(vms_->failed_writes(), 0);
}

// The agent could not be reached (or went away mid-request): the VM may
// still run there, so the record stays `deleting`, holding its room, for
// the host's next heartbeat to finish (HostServiceTest). It used to become
// `error`: no room held while the QEMU ran, and a heartbeat reporting the
// VM running revived the record, undoing an accepted delete (found by
// tests/chaos_grid_test.cc).
TEST_P(VmServiceTest, ADeleteThatDidNotReachTheHostStaysDeleting) {
  for (ErrorCode code : {ErrorCode::kUnavailable, ErrorCode::kTimeout}) {
    Vm vm = AddVm(code == ErrorCode::kUnavailable ? "u" : "t", "running");
    agent_.delete_answer = MakeError(code, "cannot reach the agent");
    ASSERT_TRUE(vms_->Delete(vm.id, alice_.id, false).ok());
    Settle();
    auto after = store_->GetVm(vm.id, "");
    ASSERT_TRUE(after.ok());
    EXPECT_EQ(after->state, "deleting");
    EXPECT_NE(after->error.find("cannot reach the agent"), std::string::npos) << after->error;
  }
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

// `vm cp`: the attacks first. Another user's VM is 404 exactly as for exec,
// whatever the path; bad guest paths are 400 naming the problem; nothing of
// it reaches an agent.
TEST_P(VmServiceTest, CopyToOrFromAnotherUsersVmIsNotFoundAndReachesNoAgent) {
  Vm vm = AddVm("a", "running");
  User bob = store_->CreateUser("bob", "user")->first;
  GuestFileRead read{"/etc/hostname", 0, 16};
  GuestFileWrite write{"/tmp/x", 0, "owned"};
  auto exec_answer = vms_->Exec(Caller{bob}, vm.id, ExecRequest{{"true"}, "", 60});
  auto r = vms_->ReadFile(Caller{bob}, vm.id, read);
  auto w = vms_->WriteFile(Caller{bob}, vm.id, write);
  ASSERT_FALSE(r.ok());
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(w.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(r.error().message, exec_answer.error().message) << "indistinguishable from exec's";
  EXPECT_EQ(w.error().message, exec_answer.error().message);
  // By name too, and with a bad path: still 404 (no hint the VM exists).
  EXPECT_EQ(vms_->ReadFile(Caller{bob}, vm.name, read).error().code, ErrorCode::kNotFound);
  read.path = "relative";
  EXPECT_EQ(vms_->ReadFile(Caller{bob}, vm.id, read).error().code, ErrorCode::kNotFound);
  Settle();
  EXPECT_TRUE(agent_.calls.empty());
}

TEST_P(VmServiceTest, CopyRefusesRelativeNulAndOverlongGuestPaths) {
  Vm vm = AddVm("a", "running");
  struct Case {
    std::string path, words;
  };
  for (const Case& c : {Case{"tmp/x", "not absolute"}, Case{"../etc/passwd", "not absolute"},
                        Case{"", "not absolute"}, Case{std::string("/tmp/a\0b", 8), "NUL"},
                        Case{"/" + std::string(5000, 'a'), "at most 4096"}}) {
    auto r = vms_->ReadFile(Caller{alice_}, vm.id, GuestFileRead{c.path, 0, 16});
    auto w = vms_->WriteFile(Caller{alice_}, vm.id, GuestFileWrite{c.path, 0, "x"});
    ASSERT_FALSE(r.ok()) << c.words;
    ASSERT_FALSE(w.ok()) << c.words;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    EXPECT_EQ(w.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message.find(c.words), std::string::npos) << r.error().message;
  }
  // The wire codec refuses the same before a service sees them.
  auto nul = GuestFileWriteFromJson({{"path", std::string("/a\0", 3)}, {"data", ""}});
  ASSERT_FALSE(nul.ok());
  EXPECT_EQ(nul.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(GuestFileReadFromJson({{"path", "x"}}).ok());
  EXPECT_FALSE(GuestFileReadFromJson({{"path", "/x"}, {"length", kMaxGuestFileChunk + 1}}).ok());
  EXPECT_FALSE(GuestFileReadFromJson({{"path", "/x"}, {"host_path", "/etc"}}).ok());
  Settle();
  EXPECT_TRUE(agent_.calls.empty());
}

TEST_P(VmServiceTest, CopyNeedsARunningVmAndBoundsTheSize) {
  Vm stopped = AddVm("b", "stopped");
  auto r = vms_->ReadFile(Caller{alice_}, stopped.id, GuestFileRead{"/x", 0, 16});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(r.error().message.find("running"), std::string::npos) << r.error().message;
  Vm vm = AddVm("a", "running");
  auto big = vms_->WriteFile(Caller{alice_}, vm.id, GuestFileWrite{"/x", kMaxGuestCopyBytes, "x"});
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.error().code, ErrorCode::kResourceExhausted);
  Settle();
  EXPECT_TRUE(agent_.calls.empty());
}

TEST_P(VmServiceTest, CopyRelaysChunksToTheVmsAgentBothWays) {
  Vm vm = AddVm("a", "running");
  std::string bytes(kMaxGuestFileChunk + 10, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7);
  auto w1 = vms_->WriteFile(Caller{alice_}, vm.id,
                            GuestFileWrite{"/tmp/f", 0, bytes.substr(0, kMaxGuestFileChunk)});
  ASSERT_TRUE(w1.ok()) << w1.error().message;
  auto w2 = vms_->WriteFile(
      Caller{alice_}, vm.name,
      GuestFileWrite{"/tmp/f", kMaxGuestFileChunk, bytes.substr(kMaxGuestFileChunk)});
  ASSERT_TRUE(w2.ok()) << w2.error().message;
  EXPECT_EQ(w2->size, static_cast<int64_t>(bytes.size()));
  auto r1 = vms_->ReadFile(Caller{alice_}, vm.id, GuestFileRead{"/tmp/f", 0, kMaxGuestFileChunk});
  ASSERT_TRUE(r1.ok()) << r1.error().message;
  EXPECT_FALSE(r1->eof);
  EXPECT_EQ(r1->size, static_cast<int64_t>(bytes.size()));
  auto r2 = vms_->ReadFile(Caller{alice_}, vm.id,
                           GuestFileRead{"/tmp/f", kMaxGuestFileChunk, kMaxGuestFileChunk});
  ASSERT_TRUE(r2.ok()) << r2.error().message;
  EXPECT_TRUE(r2->eof);
  EXPECT_EQ(r1->data + r2->data, bytes);
  // The guest's "no such file" comes back as not found, naming the path.
  auto missing = vms_->ReadFile(Caller{alice_}, vm.id, GuestFileRead{"/nope", 0, 16});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_NE(missing.error().message.find("/nope"), std::string::npos);
  EXPECT_EQ(agent_.calls.front(), "write " + vm.id + " /tmp/f 0");
  EXPECT_EQ(execs_.held(alice_.id), 0) << "no exec slot is kept after a chunk";
}

TEST_P(VmServiceTest, ConsoleIsTheOwnersInAnyStateOnItsHost) {
  Vm vm = AddVm("a", "stopped");
  agent_.consoles[vm.id] = "boot\nlogin:\n";
  User bob = store_->CreateUser("bob", "user")->first;
  // Another user's VM: as not found as exec's answer, and no agent call.
  auto theirs = vms_->Console(Caller{bob}, vm.id, -1, 100);
  ASSERT_FALSE(theirs.ok());
  EXPECT_EQ(theirs.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(theirs.error().message,
            vms_->Exec(Caller{bob}, vm.id, ExecRequest{{"true"}, "", 60}).error().message);
  EXPECT_TRUE(agent_.calls.empty());
  // The owner reads the tail, then follows from an offset (a stopped VM too).
  auto tail = vms_->Console(Caller{alice_}, vm.name, -1, 7);
  ASSERT_TRUE(tail.ok()) << tail.error().message;
  EXPECT_EQ(tail->text, "login:\n");
  EXPECT_EQ(tail->next_offset, 12);
  auto from = vms_->Console(Caller{alice_}, vm.id, 0, 5);
  ASSERT_TRUE(from.ok());
  EXPECT_EQ(from->text, "boot\n");
  EXPECT_EQ(vms_->Console(Caller{alice_}, vm.id, 0, 0).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(vms_->Console(Caller{alice_}, vm.id, 0, kConsoleReadMaxBytes + 1).error().code,
            ErrorCode::kInvalidArgument);
  // Not on its host (yet): a clear precondition, not "not found".
  Vm fresh = AddVm("b", "creating");
  auto none = vms_->Console(Caller{alice_}, fresh.id, -1, 100);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::kFailedPrecondition) << none.error().message;
  EXPECT_EQ(execs_.held(alice_.id), 0) << "no exec slot is kept after a read";
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
