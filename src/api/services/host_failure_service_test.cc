// HostFailureService on a fresh store (both databases) with a fake agent and a
// fake clock: a silent host becomes suspect, then failed, at the configured
// intervals; nothing is recovered before lease + grace; VMs are recovered by
// their restart policy (on-host-failure: placed and created on another host,
// same id and name; never / persistent: error with a message), reservations
// on the failed host are released, and a returning host is told which of its
// VMs are stale until it has destroyed them.
#include "api/services/host_failure_service.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <thread>

#include "api/admission.h"
#include "api/services/agent_spec.h"
#include "api/services/api_views.h"
#include "api/services/host_service.h"
#include "api/services/image_service.h"
#include "api/services/network_service.h"
#include "api/services/service_test_fixture.h"
#include "api/services/vm_create_service.h"
#include "api/services/vm_service.h"
#include "api/services/workspace_service.h"
#include "chunks/workspace_grant.h"

namespace vmgrid {
namespace {

constexpr char kPeer[] = "127.0.0.1";

class HostFailureServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto h2 =
        store_->HeartbeatHost("h2", "http://127.0.0.1:2", HostCapacity{8, 8192, 10000, false});
    ASSERT_TRUE(h2.ok());
    host2_ = *h2;
    vms_ = std::make_unique<VmService>(*store_, agent_, ops_, clock_, execs_);
    images_ = std::make_unique<ImageService>(*store_, index_, agent_, ops_, clock_, long_ops_,
                                             ImageStorage{"/nonexistent", nullptr, ""}, stopping_);
    networks_ = std::make_unique<NetworkService>(*store_);
    workspaces_ = std::make_unique<WorkspaceService>(*store_, agent_, ops_, long_ops_);
    views_ = std::make_unique<ApiViews>(*store_);
    creates_ = std::make_unique<VmCreateService>(*store_, index_, agent_, ops_, clock_, admitted_,
                                                 long_ops_, *vms_, *images_, *networks_,
                                                 *workspaces_, *views_, /*image_server=*/false);
    vms_->SetStartFromDurable(
        [this](const Vm& vm, int64_t started) { return creates_->StartFromDurable(vm, started); });
    failures_ = std::make_unique<HostFailureService>(
        *store_, clock_, options_, [](const std::string&) { return false; },
        [this](const Vm& vm, const std::string& note, bool keep_stopped) {
          return creates_->Recover(vm, note, keep_stopped);
        });
    hosts_ = std::make_unique<HostService>(
        *store_, index_, *creds_, clock_, [](const std::string&) { return false; },
        /*tls=*/false);
    hosts_->SetFailureDetector(failures_.get());
    VmStatus running;
    running.state = "running";
    agent_.action_answer = running;
  }

  // Recoveries run on the operation queue: let them end before the services go.
  void TearDown() override { (void)ops_.WaitIdle(std::chrono::seconds(10)); }

  Vm AddVmWith(const std::string& name, const std::string& restart, const std::string& disk) {
    Vm v;
    v.id = NewId("vm");
    v.name = name;
    v.owner_id = alice_.id;
    v.image_id = "img-1";
    v.state = "creating";
    v.disk = disk;
    v.start = "boot";
    v.restart = restart;
    v.created_ms = v.updated_ms = clock_.NowMs();
    auto placed = store_->PlaceAndInsertVm(v, {host_.id});
    EXPECT_TRUE(placed.ok()) << placed.error().message;
    EXPECT_TRUE(store_->ModifyVm(placed->id, [&](Vm& vm) { vm.state = "running"; }).ok());
    return *store_->GetVm(placed->id, "");
  }
  Result<HeartbeatReply> Beat(const std::string& name, std::vector<VmStatus> vms = {}) {
    HostReport r;
    r.name = name;
    r.url = name == "h1" ? "http://127.0.0.1:1" : "http://127.0.0.1:2";
    r.capacity.vcpus = 8;
    r.capacity.memory_mb = 8192;
    r.capacity.disk_mb = 10000;
    r.vms = std::move(vms);
    return hosts_->Heartbeat(name, r, kPeer);
  }
  // Time passes in 2 s steps; h2 heartbeats throughout, h1 is silent.
  void Silence(int64_t ms) {
    for (int64_t t = 0; t < ms; t += 2000) {
      clock_.Advance(2000);
      ASSERT_TRUE(Beat("h2", h2_vms_).ok());
      failures_->Check();
    }
  }
  std::string HostState(const std::string& name) {
    auto h = store_->GetHost(name);
    return h.ok() ? hosts_->HostJson(*h, false)["state"].get<std::string>() : "?";
  }
  Vm Get(const std::string& id) { return *store_->GetVm(id, ""); }
  // h2 full (its 8 vCPUs taken by a running VM it reports); the VM.
  Vm FillHost2() {
    Vm big = NewVmRecord("big");
    big.state = "running";
    big.vcpus = 8;
    auto placed = store_->PlaceAndInsertVm(big, {host2_.id});
    EXPECT_TRUE(placed.ok()) << placed.error().message;
    h2_vms_ = {Running(placed->id)};
    return *placed;
  }
  static VmStatus Running(const std::string& id) {
    VmStatus s;
    s.id = id;
    s.state = "running";
    return s;
  }

  HostFailureOptions options_{10'000, 30'000, 10'000, 5'000};
  std::vector<VmStatus> h2_vms_;  // what h2's heartbeats report
  Host host2_;
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
  std::unique_ptr<HostFailureService> failures_;
  std::unique_ptr<HostService> hosts_;
  OpQueue ops_;  // last: destroyed first
};

TEST_P(HostFailureServiceTest, OptionsMustLeaveRoomForTheLease) {
  EXPECT_TRUE(CheckHostFailureOptions(HostFailureOptions{}).ok());
  EXPECT_FALSE(CheckHostFailureOptions({10'000, 12'000, 10'000, 5'000}).ok())
      << "failed_after < lease + grace";
  EXPECT_FALSE(CheckHostFailureOptions({30'000, 30'000, 10'000, 5'000}).ok());
  EXPECT_FALSE(CheckHostFailureOptions({10'000, 30'000, 1'000, 5'000}).ok());
}

// Durable workspaces: a running persistent VM whose workspace has a durable
// version restarts on another host from that version; the workspace moves
// with it (a new grant generation) and the record says what was lost. A
// stopped one is moved to another host stopped (its room there, not
// created); its next start creates it there from that version.
TEST_P(HostFailureServiceTest, PersistentVmRestartsFromItsDurableVersion) {
  const std::string key = "grant-key";
  creates_->set_durable(DurableOptions{key, 600});
  Vm ws_vm = AddVmWith("wsvm", "on-host-failure", "persistent");
  Vm stopped = AddVmWith("wsstopped", "on-host-failure", "persistent");
  ASSERT_TRUE(store_->ModifyVm(stopped.id, [](Vm& v) { v.state = "stopped"; }).ok());
  for (const Vm* v : {&ws_vm, &stopped}) {
    Workspace w{NewId("ws"), v->name, alice_.id,     "img-1", host_.id, alice_.id + "/x.qcow2",
                1 << 20,     v->id,   clock_.NowMs()};
    ASSERT_TRUE(store_->InsertWorkspace(w).ok());
    ASSERT_TRUE(store_->ModifyVm(v->id, [&](Vm& m) { m.workspace_id = w.id; }).ok());
    // h1 pushed version 3 of it; a report from another host is ignored.
    DurableVersion d{
        BlobRef{w.id, 3, std::string(64, 'b'), 1 << 20}, 1700000000000, 20, 2, 1 << 19, "stop"};
    EXPECT_FALSE(*store_->RecordDurableVersion(DurableRecord(host2_.id, d)));
    EXPECT_TRUE(*store_->RecordDurableVersion(DurableRecord(host_.id, d)));
    d.ref.version = 2;  // older: ignored
    EXPECT_FALSE(*store_->RecordDurableVersion(DurableRecord(host_.id, d)));
  }
  VmStatus off = Running(stopped.id);
  off.state = "stopped";
  ASSERT_TRUE(Beat("h1", {Running(ws_vm.id), off}).ok());
  Silence(30000);
  EXPECT_EQ(HostState("h1"), "failed");
  ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10)));

  Vm v = Get(ws_vm.id);
  EXPECT_EQ(v.host_id, host2_.id);
  EXPECT_EQ(v.state, "running");
  EXPECT_NE(v.error.find("durable version 3"), std::string::npos) << v.error;
  EXPECT_NE(v.error.find("writes since then on h1 are lost"), std::string::npos) << v.error;
  auto w = store_->GetWorkspace(v.workspace_id, "");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->host_id, host2_.id) << "the workspace moved with the VM";
  EXPECT_EQ(w->generation, 2);
  EXPECT_EQ(w->durable_version, 3);
  {
    std::lock_guard<std::mutex> l(agent_.mu);
    ASSERT_EQ(agent_.specs.size(), 1u) << "only the running VM is started";
    const VmSpec& spec = agent_.specs[0];
    EXPECT_EQ(spec.id, ws_vm.id);
    ASSERT_TRUE(spec.blobs.count("workspace"));
    EXPECT_EQ(spec.blobs.at("workspace").version, 3u);
    EXPECT_EQ(spec.durable.name, w->id);
    EXPECT_EQ(spec.durable.push_interval_s, 600);
    auto grant = VerifyWorkspaceGrant(key, spec.durable.grant, w->id);
    ASSERT_TRUE(grant.ok()) << grant.error().message;
    EXPECT_EQ(grant->host, "h2") << "a grant for the new host only";
    EXPECT_EQ(grant->generation, 2u);
  }
  Vm s = Get(stopped.id);
  EXPECT_EQ(s.state, "stopped") << s.error;
  EXPECT_EQ(s.host_id, host2_.id);
  EXPECT_TRUE(StartsFromDurable(s)) << s.error;
  EXPECT_NE(s.error.find("while the VM was stopped"), std::string::npos) << s.error;
  EXPECT_NE(s.error.find("durable version 3"), std::string::npos) << s.error;
  auto sw = store_->GetWorkspace(s.workspace_id, "");
  ASSERT_TRUE(sw.ok());
  EXPECT_EQ(sw->host_id, host2_.id) << "the stopped VM's workspace moved with it";
  EXPECT_EQ(sw->generation, 2);
  EXPECT_EQ(sw->vm_id, s.id);
  // Both hold their room on h2 (a stopped VM holds its room), none on h1.
  EXPECT_EQ(store_->GetHost("h2")->reserved_vcpus, 2);
  EXPECT_EQ(store_->GetHost("h1")->reserved_vcpus, 0);
  // h2 does not report the stopped VM (it never had it): still stopped.
  clock_.Advance(6000);
  ASSERT_TRUE(Beat("h2", {Running(ws_vm.id)}).ok());
  EXPECT_EQ(Get(stopped.id).state, "stopped") << Get(stopped.id).error;
  // The failed host's later reports of the workspace no longer count.
  DurableVersion late{
      BlobRef{w->id, 4, std::string(64, 'c'), 1 << 20}, 1700000001000, 20, 1, 1 << 19, "interval"};
  EXPECT_FALSE(*store_->RecordDurableVersion(DurableRecord(host_.id, late)));
  Workspace late_stopped = DurableRecord(host_.id, late);
  late_stopped.id = sw->id;
  EXPECT_FALSE(*store_->RecordDurableVersion(late_stopped));

  // `vm start` while h2's agent fails the create: stopped again, still
  // marked, so it can be started again.
  agent_.action_answer = MakeError(ErrorCode::kUnavailable, "h2 unreachable");
  ASSERT_TRUE(vms_->Act(stopped.id, "", VmOp::kResume).ok());
  ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10)));
  s = Get(stopped.id);
  EXPECT_EQ(s.state, "stopped");
  EXPECT_TRUE(StartsFromDurable(s)) << s.error;
  EXPECT_NE(s.error.find("h2 unreachable"), std::string::npos) << s.error;
  VmStatus running;
  running.state = "running";
  agent_.action_answer = running;

  // `vm start`: created on h2 from the durable version, not resumed by an agent.
  auto started = vms_->Act(stopped.id, "", VmOp::kResume);
  ASSERT_TRUE(started.ok()) << started.error().message;
  ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10)));
  s = Get(stopped.id);
  EXPECT_EQ(s.state, "running") << s.error;
  EXPECT_EQ(s.host_id, host2_.id);
  EXPECT_FALSE(StartsFromDurable(s));
  std::lock_guard<std::mutex> l(agent_.mu);
  ASSERT_EQ(agent_.specs.size(), 3u);
  const VmSpec& spec = agent_.specs[2];
  EXPECT_EQ(spec.id, stopped.id);
  EXPECT_EQ(spec.start, "boot");
  ASSERT_TRUE(spec.blobs.count("workspace"));
  EXPECT_EQ(spec.blobs.at("workspace").name, sw->id);
  EXPECT_EQ(spec.blobs.at("workspace").version, 3u);
  auto grant = VerifyWorkspaceGrant(key, spec.durable.grant, sw->id);
  ASSERT_TRUE(grant.ok()) << grant.error().message;
  EXPECT_EQ(grant->host, "h2");
  EXPECT_EQ(grant->generation, 2u);
}

// Several controllers (docs/ha.md): a heartbeat another controller received
// reaches this one (the leader) only through the database; it counts as heard
// when this controller sees it, and a controller taking over the leadership
// counts every host from then.
TEST_P(HostFailureServiceTest, HeartbeatsHeardByAnotherControllerKeepTheHost) {
  Vm keep = AddVmWith("keep", "on-host-failure", "clone");
  ASSERT_TRUE(Beat("h1", {Running(keep.id)}).ok());
  failures_->Check();
  auto other = Store::Open(db_->target());  // the other controller's store
  ASSERT_TRUE(other.ok()) << other.error().message;
  for (int i = 0; i < 4; ++i) {
    Silence(8000);  // this controller hears nothing from h1
    // ... but the other one does, and writes it.
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a new wall-clock ms
    ASSERT_TRUE((*other)
                    ->HeartbeatHost("h1", "http://127.0.0.1:1", HostCapacity{8, 8192, 10000, false})
                    .ok());
    ASSERT_TRUE((*other)->FlushHeartbeats().ok());  // as its reconcile loop does
  }
  Silence(2000);
  EXPECT_EQ(HostState("h1"), "up") << "34 s without a heartbeat here, but heard elsewhere";
  EXPECT_EQ(Get(keep.id).state, "running");
  // Silent everywhere: suspect 10 s after the last one was seen (not before).
  Silence(6000);
  EXPECT_EQ(HostState("h1"), "up");
  Silence(4000);
  EXPECT_EQ(HostState("h1"), "suspect");
  // A new leader counts from its takeover.
  failures_->CountFromNow();
  Silence(28000);
  EXPECT_EQ(HostState("h1"), "suspect") << "failed only 30 s after the takeover";
  EXPECT_EQ(Get(keep.id).host_id, host_.id);
  Silence(2000);
  EXPECT_EQ(HostState("h1"), "failed");
}

TEST_P(HostFailureServiceTest, HeartbeatGrantsTheLease) {
  auto reply = Beat("h1");
  ASSERT_TRUE(reply.ok()) << reply.error().message;
  EXPECT_EQ(reply->lease_ms, 10'000);
  EXPECT_TRUE(reply->stale_vms.empty());
}

TEST_P(HostFailureServiceTest, SuspectThenFailedThenRecoveredByPolicy) {
  Vm keep = AddVmWith("keep", "on-host-failure", "clone");
  Vm lose = AddVmWith("lose", "never", "clone");
  Vm ws = AddVmWith("ws", "on-host-failure", "persistent");
  ASSERT_TRUE(Beat("h1", {Running(keep.id), Running(lose.id), Running(ws.id)}).ok());
  EXPECT_EQ(HostState("h1"), "up");
  EXPECT_EQ(store_->GetHost("h1")->reserved_vcpus, 3);

  Silence(8000);
  EXPECT_EQ(HostState("h1"), "up") << "8 s of silence: not yet suspect";
  Silence(2000);
  EXPECT_EQ(HostState("h1"), "suspect");
  EXPECT_EQ(Get(keep.id).state, "running") << "suspect: nothing recovered";
  Silence(18000);  // 28 s: past lease + grace, but not yet failed_after
  EXPECT_EQ(HostState("h1"), "suspect");
  EXPECT_EQ(Get(keep.id).host_id, host_.id);
  EXPECT_EQ(Get(lose.id).state, "running");
  {
    std::lock_guard<std::mutex> l(agent_.mu);
    EXPECT_TRUE(agent_.calls.empty()) << "no create anywhere before the host is failed";
  }
  Silence(2000);  // 30 s
  EXPECT_EQ(HostState("h1"), "failed");
  ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10)));

  Vm k = Get(keep.id);
  EXPECT_EQ(k.host_id, host2_.id) << "recovered on the other host";
  EXPECT_EQ(k.name, "keep");
  EXPECT_EQ(k.state, "running");
  EXPECT_NE(k.error.find("host h1 failed"), std::string::npos) << k.error;
  EXPECT_NE(k.error.find("now running on h2"), std::string::npos) << k.error;
  Vm l = Get(lose.id);
  EXPECT_EQ(l.state, "error");
  EXPECT_NE(l.error.find("restart policy never"), std::string::npos) << l.error;
  Vm w = Get(ws.id);
  EXPECT_EQ(w.state, "error");
  EXPECT_NE(w.error.find("workspace"), std::string::npos) << w.error;
  // Reservations on the failed host are released; the recovered VM holds room on h2.
  EXPECT_EQ(store_->GetHost("h1")->reserved_vcpus, 0);
  EXPECT_EQ(store_->GetHost("h2")->reserved_vcpus, 1);
  {
    std::lock_guard<std::mutex> l2(agent_.mu);
    EXPECT_EQ(agent_.calls, std::vector<std::string>{"create " + keep.id});
  }

  // h1 returns, still running all three: every one is stale, and it takes no
  // new VM until it has destroyed them.
  auto reply = Beat("h1", {Running(keep.id), Running(lose.id), Running(ws.id)});
  ASSERT_TRUE(reply.ok()) << reply.error().message;
  std::set<std::string> stale(reply->stale_vms.begin(), reply->stale_vms.end());
  EXPECT_EQ(stale, (std::set<std::string>{keep.id, lose.id, ws.id}));
  EXPECT_EQ(HostState("h1"), "returning");
  EXPECT_EQ(Get(lose.id).state, "error") << "a stale copy does not bring its record back";
  EXPECT_EQ(Get(keep.id).host_id, host2_.id);
  auto none = index_.Rank({"img-1", 1, 256, 0, "spread", "", "", {}});
  EXPECT_EQ(std::count(none.begin(), none.end(), host_.id), 0);
  // Destroyed: the host is cleared.
  reply = Beat("h1", {});
  ASSERT_TRUE(reply.ok());
  EXPECT_TRUE(reply->stale_vms.empty());
  EXPECT_EQ(HostState("h1"), "up");
  auto again = index_.Rank({"img-1", 1, 256, 0, "spread", "", "", {}});
  EXPECT_EQ(std::count(again.begin(), again.end(), host_.id), 1);

  // The event stream tells the story: suspect, failed, the recovery (for
  // its owner too), the lost VMs, the return.
  EventQuery all;
  all.limit = 1000;
  auto events = store_->ListEvents(all);
  ASSERT_TRUE(events.ok()) << events.error().message;
  std::vector<std::string> host_story;
  std::set<std::string> failed_vms;
  std::string all_kinds;
  for (const Event& e : *events) {
    all_kinds += e.kind + "@" + e.host_id + " ";
    if (e.host_id == host_.id && e.kind.rfind("host.", 0) == 0) host_story.push_back(e.kind);
    if (e.kind == "vm.failed") failed_vms.insert(e.vm_id);
  }
  EXPECT_EQ(host_story, (std::vector<std::string>{"host.up", "host.down", "host.failed", "host.up",
                                                  "host.returned"}))
      << all_kinds;
  EXPECT_EQ(failed_vms, (std::set<std::string>{keep.id, lose.id, ws.id}));
  EventQuery of_keep;
  of_keep.vm_id = keep.id;
  of_keep.owner = alice_.id;
  of_keep.limit = 1000;
  auto mine = store_->ListEvents(of_keep);
  ASSERT_TRUE(mine.ok());
  const Event* recovered = nullptr;
  for (const Event& e : *mine)
    if (e.kind == "vm.recovered") recovered = &e;
  ASSERT_NE(recovered, nullptr) << "the owner sees the recovery";
  EXPECT_EQ(recovered->host_id, host2_.id);
  EXPECT_NE(recovered->message.find("host h1 failed"), std::string::npos) << recovered->message;
}

TEST_P(HostFailureServiceTest, AHeartbeatBeforeFailedAfterKeepsTheHost) {
  Vm keep = AddVmWith("keep", "on-host-failure", "clone");
  Silence(24000);
  EXPECT_EQ(HostState("h1"), "suspect");
  auto reply = Beat("h1", {Running(keep.id)});
  ASSERT_TRUE(reply.ok());
  EXPECT_TRUE(reply->stale_vms.empty());
  EXPECT_EQ(HostState("h1"), "up");
  Silence(24000);  // counted again from that heartbeat
  EXPECT_EQ(HostState("h1"), "suspect");
  EXPECT_EQ(Get(keep.id).host_id, host_.id);
  EXPECT_EQ(Get(keep.id).state, "running");
}

TEST_P(HostFailureServiceTest, ARestartedControllerCountsFromItsOwnStart) {
  Vm keep = AddVmWith("keep", "on-host-failure", "clone");
  clock_.Advance(60'000);  // the host was silent long before this controller started
  failures_ = std::make_unique<HostFailureService>(
      *store_, clock_, options_, [](const std::string&) { return false; },
      [this](const Vm& vm, const std::string& note, bool keep_stopped) {
        return creates_->Recover(vm, note, keep_stopped);
      });
  hosts_->SetFailureDetector(failures_.get());
  ASSERT_TRUE(Beat("h2").ok());
  failures_->Check();
  EXPECT_EQ(HostState("h1"), "up");
  Silence(28000);
  EXPECT_EQ(Get(keep.id).host_id, host_.id) << "no recovery before failed_after from the start";
  Silence(2000);
  EXPECT_EQ(HostState("h1"), "failed");
}

TEST_P(HostFailureServiceTest, NoRoomElsewhereWaitsAndRetries) {
  Vm keep = AddVmWith("keep", "on-host-failure", "clone");
  const Vm big = FillHost2();
  Silence(30000);
  EXPECT_EQ(HostState("h1"), "failed");
  Vm k = Get(keep.id);
  EXPECT_EQ(k.state, "error");
  EXPECT_NE(k.error.find("waiting for a host with room"), std::string::npos) << k.error;
  EXPECT_EQ(store_->GetHost("h1")->reserved_vcpus, 0);
  ASSERT_TRUE(store_->DeleteVm(big.id).ok());
  h2_vms_.clear();
  Silence(2000);
  ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10)));
  k = Get(keep.id);
  EXPECT_EQ(k.host_id, host2_.id);
  EXPECT_EQ(k.state, "running");
}

// The wait for room is in the record, not only in the memory of the
// controller that declared the host failed: one that restarted, or another
// one taking over the leadership (CountFromNow forgets what it knew), still
// restarts the VM once room appears.
TEST_P(HostFailureServiceTest, AVmWaitingForRoomIsNotForgottenByANewLeader) {
  Vm keep = AddVmWith("keep", "on-host-failure", "clone");
  const Vm big = FillHost2();
  Silence(30000);
  ASSERT_EQ(HostState("h1"), "failed");
  ASSERT_NE(Get(keep.id).error.find("waiting for a host with room"), std::string::npos);
  failures_->CountFromNow();  // what a new leader knows: nothing in memory
  ASSERT_TRUE(store_->DeleteVm(big.id).ok());
  h2_vms_.clear();
  // A new leader recovers nothing before lease + grace from its own start;
  // once restarted on h2, h2's heartbeats report it.
  for (int64_t t = 0; t < options_.lease_ms + options_.grace_ms + 2000; t += 2000) {
    Silence(2000);
    ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10)));
    if (Get(keep.id).host_id == host2_.id) h2_vms_ = {Running(keep.id)};
  }
  ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10)));
  Vm k = Get(keep.id);
  EXPECT_EQ(k.host_id, host2_.id);
  EXPECT_EQ(k.state, "running") << k.error;
  EXPECT_EQ(k.error.find("waiting for a host with room"), std::string::npos) << k.error;
}

INSTANTIATE_TEST_SUITE_P(Backends, HostFailureServiceTest, testing_db::Backends(),
                         testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
