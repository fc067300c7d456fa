// VmCreateService on a fresh store (both databases) with a fake agent: a
// create places and records the VM and asks the agent in the background; a
// refusal says why and leaves nothing behind; a gang is placed whole or not
// at all; another user's private image cannot be used; a failed create gives
// its new workspace back.
#include "api/services/vm_create_service.h"

#include <algorithm>

#include "api/admission.h"
#include "api/services/api_views.h"
#include "api/services/image_service.h"
#include "api/services/network_service.h"
#include "api/services/service_test_fixture.h"
#include "api/services/vm_service.h"
#include "api/services/workspace_service.h"

namespace vmgrid {
namespace {

class VmCreateServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    vms_ = std::make_unique<VmService>(*store_, agent_, ops_, clock_, execs_);
    images_ = std::make_unique<ImageService>(*store_, index_, agent_, ops_, clock_, long_ops_,
                                             ImageStorage{"/nonexistent", nullptr, ""}, stopping_);
    networks_ = std::make_unique<NetworkService>(*store_);
    workspaces_ = std::make_unique<WorkspaceService>(*store_, agent_, ops_, long_ops_);
    views_ = std::make_unique<ApiViews>(*store_);
    creates_ = std::make_unique<VmCreateService>(*store_, index_, agent_, ops_, clock_, admitted_,
                                                 long_ops_, *vms_, *images_, *networks_,
                                                 *workspaces_, *views_, /*image_server=*/false);
    VmStatus running;
    running.state = "running";
    agent_.action_answer = running;
  }
  void Settle() { ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10))); }
  static CreateVmRequest Boot(const std::string& image = "tiny") {
    CreateVmRequest r;
    r.image = image;
    return r;
  }
  size_t VmCount() {
    auto all = store_->ListVms("");
    EXPECT_TRUE(all.ok());
    return all.ok() ? all->size() : 0;
  }
  std::vector<std::string> Calls() {
    std::lock_guard<std::mutex> l(agent_.mu);
    return agent_.calls;
  }

  Admission execs_{"exec operations", 1, 0, 5};
  Admission admitted_{"VM creates in flight", 8, 0, 10};
  Admission long_ops_{"long operations", 2, 0, 5};
  std::atomic<bool> stopping_{false};
  std::unique_ptr<VmService> vms_;
  std::unique_ptr<ImageService> images_;
  std::unique_ptr<NetworkService> networks_;
  std::unique_ptr<WorkspaceService> workspaces_;
  std::unique_ptr<ApiViews> views_;
  std::unique_ptr<VmCreateService> creates_;
  // Last, so destroyed first: its work holds slots of the admissions above.
  OpQueue ops_;
};

// A create accepted by a controller that died before the agent call
// (docs/ha.md) is made again on its host with the room it holds; an agent
// that got the first call refuses the second and its report settles the
// record; a create that cannot be redone is refused (the caller marks it).
TEST_P(VmCreateServiceTest, RelaunchCreatesAnInterruptedCreateAgainOnItsHost) {
  auto made = creates_->Create(Caller{alice_}, Boot());
  ASSERT_TRUE(made.ok()) << made.error().message;
  Settle();
  const std::string id = (*made)["id"];
  // As the dead controller left it: creating, with its room.
  ASSERT_TRUE(store_->ModifyVm(id, [](Vm& v) { v.state = "creating"; }).ok());
  Vm vm = *store_->GetVm(id, "");
  ASSERT_TRUE(creates_->Relaunch(vm).ok());
  Settle();
  EXPECT_EQ(store_->GetVm(id, "")->state, "running");
  EXPECT_EQ(store_->GetVm(id, "")->host_id, vm.host_id);
  auto calls = Calls();
  EXPECT_EQ(std::count(calls.begin(), calls.end(), "create " + id), 2) << "the first and again";
  EXPECT_EQ(store_->GetHost("h1")->reserved_vcpus, 1);

  // The agent has it already: the record is left for its report.
  ASSERT_TRUE(store_->ModifyVm(id, [](Vm& v) { v.state = "creating"; }).ok());
  agent_.action_answer = MakeError(ErrorCode::kAlreadyExists, "VM exists");
  ASSERT_TRUE(creates_->Relaunch(*store_->GetVm(id, "")).ok());
  Settle();
  EXPECT_EQ(store_->GetVm(id, "")->state, "creating");
  EXPECT_EQ(store_->GetHost("h1")->reserved_vcpus, 1);

  // Only a clone booted from its image.
  Vm resumed = *store_->GetVm(id, "");
  resumed.start = "resume";
  EXPECT_EQ(creates_->Relaunch(resumed).error().code, ErrorCode::kFailedPrecondition);
  Vm persistent = *store_->GetVm(id, "");
  persistent.disk = "persistent";
  EXPECT_EQ(creates_->Relaunch(persistent).error().code, ErrorCode::kFailedPrecondition);
}

TEST_P(VmCreateServiceTest, CreatePlacesAndRecordsTheVmAndAsksTheAgent) {
  CreateVmRequest r = Boot();
  r.name = "web";
  auto made = creates_->Create(Caller{alice_}, r);
  ASSERT_TRUE(made.ok()) << made.error().message;
  const std::string id = (*made)["id"];
  EXPECT_EQ((*made)["name"], "web");
  EXPECT_EQ((*made)["state"], "creating");
  EXPECT_EQ((*made)["host"], "h1");
  EXPECT_EQ((*made)["image"], "tiny");
  EXPECT_EQ((*made)["owner"], "alice");
  EXPECT_EQ((*made)["vcpus"], 1);
  EXPECT_EQ((*made)["memory_mb"], 256);
  EXPECT_FALSE(made->contains("operation"));
  Settle();
  auto vm = store_->GetVm(id, alice_.id);
  ASSERT_TRUE(vm.ok()) << vm.error().message;
  EXPECT_EQ(vm->host_id, host_.id);
  EXPECT_EQ(vm->state, "running") << vm->error;
  EXPECT_EQ(Calls(), (std::vector<std::string>{"create " + id}));
  EXPECT_TRUE(index_.IsCached("img-1", host_.id)) << "a booted image is cached on its host";
  EXPECT_EQ(admitted_.held(alice_.id), 0) << "the create's slot is released after the answer";
  EXPECT_EQ(creates_->failed_writes(), 0);
  // It is listed, and the reservation counts on its host.
  auto listed = vms_->List(alice_.id, {});
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->items.size(), 1u);
  EXPECT_EQ(store_->GetHost(host_.id)->reserved_vcpus, 1);
  // Its history: placed (on which host and why), then running.
  auto events = store_->ListEvents(EventQuery{0, id, alice_.id, 100});
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ(events->at(0).kind, "vm.placed");
  EXPECT_EQ(events->at(0).host_id, host_.id);
  auto placed = nlohmann::json::parse(events->at(0).data);
  EXPECT_EQ(placed["host"], "h1");
  EXPECT_EQ(placed["policy"], "spread");
  EXPECT_EQ(placed["rank"], 0);
  EXPECT_NE(placed["reason"].get<std::string>().find("ranked 1 of 1"), std::string::npos)
      << placed["reason"];
  EXPECT_EQ(events->at(1).kind, "vm.state");
  EXPECT_EQ(nlohmann::json::parse(events->at(1).data)["to"], "running");
}

TEST_P(VmCreateServiceTest, NothingFitsIsRefusedWithTheReasonAndLeavesNothing) {
  CreateVmRequest r = Boot();
  r.vcpus = 16;  // h1 has 8
  auto refused = creates_->Create(Caller{alice_}, r);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kResourceExhausted);
  EXPECT_NE(refused.error().message.find("no host can run 16 vCPU(s) with 256 MB"),
            std::string::npos)
      << refused.error().message;
  EXPECT_NE(
      refused.error().message.find("of 1 host(s) checked, 0 are down, 1 lack 16 free vCPU(s), "
                                   "0 lack 256 MB of free memory"),
      std::string::npos)
      << refused.error().message;
  // A site no host is in is named in the explanation.
  r = Boot();
  r.site = "mars";
  refused = creates_->Create(Caller{alice_}, r);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find(", 1 are not in site mars"), std::string::npos)
      << refused.error().message;
  Settle();
  EXPECT_EQ(VmCount(), 0u);
  EXPECT_TRUE(Calls().empty());
  EXPECT_EQ(admitted_.held(alice_.id), 0);
}

TEST_P(VmCreateServiceTest, AGangIsPlacedWholeOrNotAtAll) {
  // h1 has 8192 MB: two VMs of 4096 MB fit, three do not.
  CreateVmRequest r = Boot();
  r.name = "g";
  r.count = 3;
  r.memory_mb = 4096;
  r.memory_named = true;
  auto refused = creates_->Create(Caller{alice_}, r);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kResourceExhausted);
  EXPECT_NE(refused.error().message.find("no set of hosts has room for all 3 VMs"),
            std::string::npos)
      << refused.error().message;
  EXPECT_NE(refused.error().message.find("none was created"), std::string::npos);
  Settle();
  EXPECT_EQ(VmCount(), 0u);
  EXPECT_TRUE(Calls().empty());

  // A gang's total memory bound splits evenly when no size is named.
  r.count = 2;
  r.memory_mb = 0;
  r.memory_named = false;
  r.total_memory = TotalMemory{6000, 8192};
  auto made = creates_->Create(Caller{alice_}, r);
  ASSERT_TRUE(made.ok()) << made.error().message;
  ASSERT_EQ((*made)["vms"].size(), 2u);
  EXPECT_EQ((*made)["vms"][0]["name"], "g-1");
  EXPECT_EQ((*made)["vms"][1]["name"], "g-2");
  EXPECT_EQ((*made)["vms"][0]["memory_mb"], 3000);
  Settle();
  EXPECT_EQ(VmCount(), 2u);
  EXPECT_EQ(Calls().size(), 2u);

  // Out of the bound: refused before anything is placed.
  r.total_memory = TotalMemory{0, 100};
  r.memory_mb = 256;
  r.memory_named = true;
  auto out = creates_->Create(Caller{alice_}, r);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(out.error().message.find("outside total_memory_mb [0, 100]"), std::string::npos)
      << out.error().message;
  // A gang takes no workspace.
  CreateVmRequest ws = Boot();
  ws.count = 2;
  ws.disk = "persistent";
  auto persistent = creates_->Create(Caller{alice_}, ws);
  ASSERT_FALSE(persistent.ok());
  EXPECT_EQ(persistent.error().code, ErrorCode::kInvalidArgument);
  Settle();
  EXPECT_EQ(VmCount(), 2u);
  EXPECT_EQ(admitted_.held(alice_.id), 0);
}

TEST_P(VmCreateServiceTest, AUserCannotCreateFromAnotherUsersPrivateImage) {
  auto bob = store_->CreateUser("bob", "user");
  ASSERT_TRUE(bob.ok());
  for (const std::string ref : {"tiny", "img-1"}) {
    auto refused = creates_->Create(Caller{bob->first}, Boot(ref));
    ASSERT_FALSE(refused.ok()) << ref;
    EXPECT_EQ(refused.error().code, ErrorCode::kNotFound) << ref;
    EXPECT_EQ(refused.error().message, "image '" + ref + "' not found");
  }
  // Nor from a checkpoint of another user's VM.
  Vm alices = AddVm("a", "stopped");
  CreateVmRequest from;
  from.from_checkpoint = alices.id;
  from.start = "resume";
  EXPECT_EQ(creates_->Create(Caller{bob->first}, from).error().code, ErrorCode::kNotFound);
  Settle();
  EXPECT_EQ(VmCount(), 1u);
  EXPECT_TRUE(Calls().empty());
}

// The record says what a clone's disk lies on, for a later live migration
// (docs/migration.md): the image when booted, the image checkpoint's blob
// versions when resumed from it.
TEST_P(VmCreateServiceTest, TheRecordSaysWhatTheDiskLiesOn) {
  Image image = *store_->GetImage("img-1", "");
  const nlohmann::json ref = {
      {"name", "img-1-ckpt"}, {"version", 2}, {"digest", std::string(64, 'e')}, {"size", 10}};
  image.ckpt_state = "ready";
  image.ckpt_vcpus = 1;
  image.ckpt_memory_mb = 256;
  image.blobs = nlohmann::json{{"disk", ref}, {"ckpt_memory", ref}, {"ckpt_disk", ref}}.dump();
  ASSERT_TRUE(store_->UpdateImage(image).ok());
  auto booted = creates_->Create(Caller{alice_}, Boot());
  ASSERT_TRUE(booted.ok()) << booted.error().message;
  CreateVmRequest r = Boot();
  r.start = "resume";
  auto resumed = creates_->Create(Caller{alice_}, r);
  ASSERT_TRUE(resumed.ok()) << resumed.error().message;
  r.disk = "persistent";
  r.start = "boot";
  auto persistent = creates_->Create(Caller{alice_}, r);
  ASSERT_TRUE(persistent.ok()) << persistent.error().message;
  Settle();
  EXPECT_EQ(store_->GetVm((*booted)["id"].get<std::string>(), "")->disk_base, "image");
  auto base = nlohmann::json::parse(
      store_->GetVm((*resumed)["id"].get<std::string>(), "")->disk_base, nullptr, false);
  EXPECT_EQ(base, (nlohmann::json{{"ckpt_memory", ref}, {"ckpt_disk", ref}}));
  EXPECT_EQ(store_->GetVm((*persistent)["id"].get<std::string>(), "")->disk_base, "");
}

TEST_P(VmCreateServiceTest, AFailedCreateGivesItsNewWorkspaceBack) {
  agent_.action_answer = MakeError(ErrorCode::kInternal, "qemu-img failed");
  CreateVmRequest r = Boot();
  r.name = "db";
  r.disk = "persistent";
  auto made = creates_->Create(Caller{alice_}, r);
  ASSERT_TRUE(made.ok()) << made.error().message;
  EXPECT_EQ((*made)["workspace"], "db");
  Settle();
  auto vm = store_->GetVm((*made)["id"].get<std::string>(), "");
  ASSERT_TRUE(vm.ok());
  EXPECT_EQ(vm->state, "error");
  EXPECT_EQ(vm->error, "qemu-img failed");
  auto ws = store_->FindWorkspaceByName(alice_.id, "db");
  ASSERT_TRUE(ws.ok());
  EXPECT_FALSE(ws->has_value()) << "the new workspace's record is removed";
  EXPECT_EQ(creates_->failed_writes(), 0);
  // A clone VM cannot name a workspace.
  CreateVmRequest clone = Boot();
  clone.workspace = "db";
  EXPECT_EQ(creates_->Create(Caller{alice_}, clone).error().message,
            "workspace needs disk=persistent");
}

INSTANTIATE_TEST_SUITE_P(Backends, VmCreateServiceTest, testing_db::Backends(),
                         testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
