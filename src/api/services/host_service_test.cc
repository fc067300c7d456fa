// HostService on a SQLite store, without a grid: heartbeats and
// reconciliation of the VM records with what a host reports.
#include "api/services/host_service.h"

#include <chrono>
#include <set>
#include <thread>

#include "api/services/service_test_fixture.h"

namespace vmgrid {
namespace {

constexpr char kPeer[] = "127.0.0.1";  // where the tests' heartbeats come from

class HostServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    hosts_ = std::make_unique<HostService>(
        *store_, index_, *creds_, clock_,
        [this](const std::string& id) { return in_flight_.count(id) > 0; }, /*tls=*/false);
  }

  HostReport Report(std::vector<VmStatus> vms) {
    HostReport r;
    r.name = "h1";
    r.url = "http://127.0.0.1:1";
    r.capacity.vcpus = 8;
    r.capacity.memory_mb = 8192;
    r.vms = std::move(vms);
    return r;
  }
  static VmStatus Status(const std::string& id, const std::string& state) {
    VmStatus s;
    s.id = id;
    s.state = state;
    return s;
  }
  std::string StateOf(const std::string& id) {
    auto vm = store_->GetVm(id, "");
    return vm.ok() ? vm->state : "(gone)";
  }

  std::set<std::string> in_flight_;
  std::unique_ptr<HostService> hosts_;
};

TEST_P(HostServiceTest, AHostSpeaksOnlyForItself) {
  auto r = hosts_->Heartbeat("h2", Report({}), kPeer);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
  auto ok = hosts_->Heartbeat("h1", Report({}), kPeer);
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok->host_id, host_.id);
}

TEST_P(HostServiceTest, HeartbeatRecordsCapacityAndTheImagesTheHostCaches) {
  HostReport r = Report({});
  r.capacity.vcpus = 16;
  r.capacity.site = "site-2";
  r.images = {{"exports", {{{"name", "img-1-disk"}}, {{"name", "vm-9-ckpt-disk"}}}}};
  ASSERT_TRUE(hosts_->Heartbeat("h1", r, kPeer).ok());
  auto h = store_->GetHost(host_.id);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->vcpus, 16);
  EXPECT_EQ(h->site, "site-2");
  EXPECT_TRUE(index_.IsCached("img-1", host_.id));
  auto shown = hosts_->Get(host_.id, /*admin=*/true);
  ASSERT_TRUE(shown.ok());
  EXPECT_EQ((*shown)["images"], r.images) << "the admin sees the cache statistics";
  EXPECT_FALSE(hosts_->Get(host_.id, false)->contains("url")) << "users do not see agent URLs";
}

TEST_P(HostServiceTest, HeartbeatRecordsTheDatasetVersionsTheHostExported) {
  auto ds = store_->CreateDataset(alice_.id, "genome");
  ASSERT_TRUE(ds.ok());
  HostReport r = Report({});
  r.images = {{"exports",
               {{{"name", ds->id}, {"version", 2}},
                {{"name", "ds-nosuch"}, {"version", 1}},  // not a dataset: ignored
                {{"name", ds->id}, {"version", -1}},      // bad versions: ignored
                {{"name", ds->id}, {"version", "3"}},
                {{"name", "ds-../x"}, {"version", 1}}}}};
  ASSERT_TRUE(hosts_->Heartbeat("h1", r, kPeer).ok());
  auto rows = store_->ListDatasetCache(ds->id);
  ASSERT_TRUE(rows.ok()) << rows.error().message;
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].version, 2);
  EXPECT_EQ((*rows)[0].host_id, host_.id);
  EXPECT_TRUE(index_.IsCached(DatasetCacheKey(ds->id), host_.id));
  ASSERT_TRUE(hosts_->Heartbeat("h1", r, kPeer).ok());  // reported again: still one row
  EXPECT_EQ(store_->ListDatasetCache(ds->id)->size(), 1u);
}

// A stolen host credential must not point the tunnels of the host's
// networks at a third party: the endpoint counts only from its own address.
TEST_P(HostServiceTest, ATunnelEndpointCountsOnlyFromTheAddressTheHostSpeaksFrom) {
  HostReport r = Report({});
  r.tunnel = TunnelEndpointReport{"127.0.0.2", 4789};
  ASSERT_TRUE(hosts_->Heartbeat("h1", r, kPeer).ok());
  auto h = store_->GetHost(host_.id);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->tunnel_ip, "") << "an endpoint elsewhere than the heartbeat's source was taken";
  EXPECT_EQ(h->tunnel_port, 0);
  r.tunnel = TunnelEndpointReport{"127.0.0.1", 4789};
  ASSERT_TRUE(hosts_->Heartbeat("h1", r, "::ffff:127.0.0.1").ok());
  h = store_->GetHost(host_.id);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->tunnel_ip, "127.0.0.1");
  EXPECT_EQ(h->tunnel_port, 4789);
  // Moving it elsewhere later is refused too: the endpoint is cleared (the
  // host's networks stop until it reports its own address again).
  r.tunnel = TunnelEndpointReport{"127.0.0.2", 4789};
  ASSERT_TRUE(hosts_->Heartbeat("h1", r, kPeer).ok());
  h = store_->GetHost(host_.id);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->tunnel_ip, "");
}

TEST_P(HostServiceTest, AgentUrlsAreCheckedAndTlsNeedsHttpsOffLoopback) {
  EXPECT_TRUE(hosts_->CheckAgentUrl("http://127.0.0.1:7000/sim/h1").ok());
  EXPECT_FALSE(hosts_->CheckAgentUrl("ftp://127.0.0.1:7000").ok());
  EXPECT_FALSE(hosts_->CheckAgentUrl("http://127.0.0.1").ok());
  HostService tls(
      *store_, index_, *creds_, clock_, [](const std::string&) { return false; }, true);
  EXPECT_TRUE(tls.CheckAgentUrl("http://127.0.0.1:7000").ok());
  EXPECT_FALSE(tls.CheckAgentUrl("http://10.0.0.5:7000").ok());
  EXPECT_TRUE(tls.CheckAgentUrl("https://10.0.0.5:7000").ok());
}

TEST_P(HostServiceTest, ReconcileFollowsTheAgent) {
  Vm running = AddVm("a", "running");
  Vm stopped = AddVm("b", "running");
  Vm missing = AddVm("c", "running");
  Vm deleting = AddVm("d", "deleting");
  Vm busy = AddVm("e", "running");
  in_flight_.insert(busy.id);
  // The store stamps records with the real time; the report comes later.
  clock_.Advance(10'000);
  bool clean = hosts_->Reconcile(
      host_,
      {Status(running.id, "running"), Status(stopped.id, "stopped"), Status(busy.id, "stopped")},
      clock_.NowMs());
  EXPECT_FALSE(clean);
  EXPECT_EQ(StateOf(running.id), "running");
  EXPECT_EQ(StateOf(stopped.id), "stopped") << "the agent is the authority on what runs";
  EXPECT_EQ(StateOf(missing.id), "error");
  EXPECT_NE(store_->GetVm(missing.id, "")->error.find("not on host h1"), std::string::npos);
  EXPECT_EQ(StateOf(deleting.id), "(gone)") << "the delete finished while we were away";
  EXPECT_EQ(StateOf(busy.id), "running") << "an operation in flight is left alone";
  EXPECT_EQ(hosts_->failed_writes(), 0);
}

// A delete that did not reach the host leaves the record `deleting`
// (VmService::Delete): the host that still reports the VM is told to destroy
// it, and the record goes once it no longer does.
TEST_P(HostServiceTest, ReconcileFinishesADeleteTheHostMissed) {
  Vm vm = AddVm("a", "deleting");
  clock_.Advance(10'000);
  std::vector<std::string> destroy;
  EXPECT_FALSE(hosts_->Reconcile(host_, {Status(vm.id, "running")}, clock_.NowMs(), &destroy));
  EXPECT_EQ(destroy, std::vector<std::string>{vm.id});
  EXPECT_EQ(StateOf(vm.id), "deleting") << "kept (holding its room) until the host has it no more";
  destroy.clear();
  hosts_->Reconcile(host_, {}, clock_.NowMs(), &destroy);
  EXPECT_TRUE(destroy.empty());
  EXPECT_EQ(StateOf(vm.id), "(gone)");
  EXPECT_EQ(hosts_->failed_writes(), 0);
}

TEST_P(HostServiceTest, ARecordNewerThanTheReportIsLeftAlone) {
  Vm a = AddVm("a", "running");
  // Received before the record's last change (plus the 5 s margin).
  EXPECT_FALSE(hosts_->Reconcile(host_, {}, clock_.NowMs()));
  EXPECT_EQ(StateOf(a.id), "running");
}

// A migrating VM's outcome is the migration's to record: whatever its
// hosts report meanwhile, reconciliation leaves the record (and the room
// held on the target) alone.
TEST_P(HostServiceTest, ReconcileLeavesAMigratingRecordAlone) {
  auto h2 = store_->HeartbeatHost("h2", "http://127.0.0.2:1", HostCapacity{8, 8192, 10000, false});
  ASSERT_TRUE(h2.ok()) << h2.error().message;
  Vm a = AddVm("a", "running");
  ASSERT_TRUE(store_->BeginMigration(a.id, {h2->id}).ok());
  EXPECT_FALSE(hosts_->Reconcile(host_, {Status(a.id, "running")}, clock_.NowMs() + 60'000));
  hosts_->Reconcile(*h2, {Status(a.id, "running")}, clock_.NowMs() + 60'000);  // not its record
  EXPECT_FALSE(hosts_->Reconcile(host_, {}, clock_.NowMs() + 60'000));
  EXPECT_EQ(StateOf(a.id), "migrating");
  EXPECT_EQ(store_->GetHost(h2->id)->reserved_vcpus, 1);
}

TEST_P(HostServiceTest, ReconcileWaitsWhileTheAgentIsBusyAndIsCleanWhenAllMatch) {
  Vm a = AddVm("a", "running");
  clock_.Advance(10'000);
  EXPECT_FALSE(hosts_->Reconcile(host_, {Status(a.id, "stopping")}, clock_.NowMs()));
  EXPECT_EQ(StateOf(a.id), "running") << "a transitional state on the agent: wait";
  EXPECT_FALSE(hosts_->Reconcile(host_, {Status(a.id, "exploded")}, clock_.NowMs()));
  EXPECT_EQ(StateOf(a.id), "running") << "a state that is none of ours: wait";
  EXPECT_TRUE(hosts_->Reconcile(host_, {Status(a.id, "running")}, clock_.NowMs()));
}

// A VM the host runs with no record at all (deleted while the host was cut
// off) would hold memory outside any reservation forever: after a minute
// without a record, the heartbeat answer tells the host to destroy it. A VM
// whose record is on another host, or whose operation is in flight, is not
// touched, so a host cannot get another host's VM destroyed by reporting it.
TEST_P(HostServiceTest, AVmWithoutRecordIsDestroyedAfterAGracePeriod) {
  auto h2 = store_->HeartbeatHost("h2", "http://127.0.0.2:1", HostCapacity{8, 8192, 10000, false});
  ASSERT_TRUE(h2.ok()) << h2.error().message;
  Vm mine = AddVm("mine", "running");
  clock_.Advance(10'000);
  const std::vector<VmStatus> report = {Status(mine.id, "running"), Status("vm-ghost", "running"),
                                        Status("vm-busy", "running")};
  in_flight_.insert("vm-busy");
  std::vector<std::string> destroy;
  EXPECT_FALSE(hosts_->Reconcile(host_, report, clock_.NowMs(), &destroy))
      << "looked at again at the next heartbeat";
  EXPECT_TRUE(destroy.empty()) << "not before the grace period";
  clock_.Advance(HostService::kUnrecordedGraceMs - 1000);
  EXPECT_FALSE(hosts_->Reconcile(host_, report, clock_.NowMs(), &destroy));
  EXPECT_TRUE(destroy.empty());
  clock_.Advance(1000);
  EXPECT_FALSE(hosts_->Reconcile(host_, report, clock_.NowMs(), &destroy));
  EXPECT_EQ(destroy, std::vector<std::string>{"vm-ghost"});
  EXPECT_EQ(StateOf(mine.id), "running");

  // Gone from the report: forgotten; reported again, the grace starts over.
  destroy.clear();
  EXPECT_TRUE(hosts_->Reconcile(host_, {Status(mine.id, "running")}, clock_.NowMs(), &destroy));
  EXPECT_FALSE(hosts_->Reconcile(host_, report, clock_.NowMs(), &destroy));
  EXPECT_TRUE(destroy.empty());

  // Another host reports our VM: its record is here, so it is not destroyed.
  clock_.Advance(HostService::kUnrecordedGraceMs);
  hosts_->Reconcile(*h2, {Status(mine.id, "running")}, clock_.NowMs(), &destroy);
  clock_.Advance(HostService::kUnrecordedGraceMs);
  hosts_->Reconcile(*h2, {Status(mine.id, "running")}, clock_.NowMs(), &destroy);
  EXPECT_TRUE(destroy.empty());
  EXPECT_EQ(StateOf(mine.id), "running");
}

// A VM in `error` gave its room back; when its host reports it running again
// it takes the room back only if it is still free: never an oversubscribed
// host. Otherwise that copy is destroyed and the record says why.
TEST_P(HostServiceTest, AVmBackFromErrorTakesItsRoomOnlyIfItIsStillThere) {
  Vm a = AddVm("a", "running");
  Vm b = AddVm("b", "running");
  for (const Vm* v : {&a, &b})
    ASSERT_TRUE(store_
                    ->ModifyVm(v->id,
                               [](Vm& m) {
                                 m.state = "error";
                                 m.error = "the VM is not on host h1 any more";
                               })
                    .ok());
  const auto used = [&] { return store_->GetHost(host_.id)->reserved_memory_mb; };
  EXPECT_EQ(used(), 0) << "an error VM holds no room";
  // Another VM takes all the memory but 256 MiB: room for one of the two.
  Vm big = NewVmRecord("big");
  big.memory_mb = 8192 - 256;
  auto placed = store_->PlaceAndInsertVm(big, {host_.id});
  ASSERT_TRUE(placed.ok()) << placed.error().message;
  ASSERT_TRUE(store_->ModifyVm(placed->id, [](Vm& v) { v.state = "running"; }).ok());
  clock_.Advance(10'000);
  std::vector<std::string> destroy;
  hosts_->Reconcile(
      host_, {Status(a.id, "running"), Status(b.id, "running"), Status(placed->id, "running")},
      clock_.NowMs(), &destroy);
  const bool a_back = StateOf(a.id) == "running", b_back = StateOf(b.id) == "running";
  EXPECT_NE(a_back, b_back) << "exactly one fits";
  const Vm& left = a_back ? b : a;
  EXPECT_EQ(StateOf(left.id), "error");
  EXPECT_NE(store_->GetVm(left.id, "")->error.find("room there had been given to other VMs"),
            std::string::npos)
      << store_->GetVm(left.id, "")->error;
  EXPECT_EQ(destroy, std::vector<std::string>{left.id}) << "its copy is stopped";
  EXPECT_EQ(used(), 8192) << "never more than the host has";
  EXPECT_EQ(hosts_->failed_writes(), 0);
}

// Through the heartbeat: the answer's stale_vms carries it.
TEST_P(HostServiceTest, TheHeartbeatAnswerNamesAnUnrecordedVmAfterTheGrace) {
  auto first = hosts_->Heartbeat("h1", Report({Status("vm-ghost", "running")}), kPeer);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_TRUE(first->stale_vms.empty());
  clock_.Advance(HostService::kUnrecordedGraceMs);
  auto later = hosts_->Heartbeat("h1", Report({Status("vm-ghost", "running")}), kPeer);
  ASSERT_TRUE(later.ok()) << later.error().message;
  EXPECT_EQ(later->stale_vms, std::vector<std::string>{"vm-ghost"});
}

// A heartbeat may name its VM list by the digest the last answer gave
// (docs/infosvc.md, "Heartbeats"): the list is then the one kept with it.
TEST_P(HostServiceTest, AHeartbeatNamesItsVmListByTheAcknowledgedDigest) {
  auto full = hosts_->Heartbeat("h1", Report({Status("vm-ghost", "running")}), kPeer);
  ASSERT_TRUE(full.ok()) << full.error().message;
  ASSERT_FALSE(full->vms_digest.empty());
  EXPECT_TRUE(full->stale_vms.empty());
  clock_.Advance(HostService::kUnrecordedGraceMs);
  HostReport same = Report({});
  same.vms_same_as = full->vms_digest;
  auto later = hosts_->Heartbeat("h1", same, kPeer);
  ASSERT_TRUE(later.ok()) << later.error().message;
  EXPECT_EQ(later->stale_vms, std::vector<std::string>{"vm-ghost"})
      << "the kept list was reconciled: the ghost it holds is named";
  EXPECT_EQ(later->vms_digest, full->vms_digest);
  // Another list has another digest.
  auto other = hosts_->Heartbeat("h1", Report({Status("vm-other", "running")}), kPeer);
  ASSERT_TRUE(other.ok()) << other.error().message;
  EXPECT_NE(other->vms_digest, full->vms_digest);
  // The old digest names nothing now; neither does a made-up one, nor
  // another host's: refused, and nothing is written.
  ASSERT_TRUE(store_->FlushHeartbeats().ok());
  const int64_t heard = store_->GetHost("h1")->last_heartbeat_ms;
  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // the store's times are real
  for (const std::string& d : {full->vms_digest, std::string("0123abcd")}) {
    HostReport stale = Report({});
    stale.vms_same_as = d;
    auto refused = hosts_->Heartbeat("h1", stale, kPeer);
    ASSERT_FALSE(refused.ok()) << d;
    EXPECT_EQ(refused.error().code, ErrorCode::kFailedPrecondition);
    EXPECT_NE(refused.error().message.find("send the list in full"), std::string::npos);
  }
  ASSERT_TRUE(store_->FlushHeartbeats().ok());
  EXPECT_EQ(store_->GetHost("h1")->last_heartbeat_ms, heard) << "a refused heartbeat counts not";
  HostReport h2 = Report({});
  h2.name = "h2";
  h2.vms_same_as = other->vms_digest;
  auto foreign = hosts_->Heartbeat("h2", h2, kPeer);
  ASSERT_FALSE(foreign.ok());
  EXPECT_EQ(foreign.error().code, ErrorCode::kFailedPrecondition) << "digests are per host";
  const auto counts = hosts_->heartbeat_counts();
  EXPECT_EQ(counts.full, 2);
  EXPECT_EQ(counts.same_as, 1);
  EXPECT_EQ(counts.unknown_digest, 3);
}

INSTANTIATE_TEST_SUITE_P(Backends, HostServiceTest, testing_db::Backends(),
                         testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
