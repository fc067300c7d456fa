// DrainService on both databases with a fake agent: the draining flag
// persists and keeps placement (creates, gangs, migration targets) off the
// host, only the admin drains, and a drain moves what can move and reports
// the rest, which stays running where it was.
#include "api/services/drain_service.h"

#include <future>
#include <map>
#include <memory>
#include <mutex>

#include "api/services/migration_test_fixture.h"

namespace vmgrid {
namespace {

using nlohmann::json;

class DrainServiceTest : public MigrationTestBase {
 protected:
  void SetUp() override {
    MigrationTestBase::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    admin_ = store_->CreateUser("root", "admin")->first;
    drains_ = std::make_unique<DrainService>(*store_, *migrations_, ops_);
  }
  // Drains `host` and waits for the operation's end; its JSON.
  json DrainAndWait(const std::string& host, int parallel = 2) {
    auto started = drains_->Drain(Caller{admin_}, host, parallel);
    EXPECT_TRUE(started.ok()) << started.error().message;
    if (!started.ok()) return json();
    Settle();
    auto op = ops_.Get((*started)["id"], admin_.id, true);
    EXPECT_TRUE(op.ok());
    return op.ok() ? *op : json();
  }
  // A VM record placed by the store's placement among `candidates`.
  Result<Vm> Place(const std::string& name, const std::vector<std::string>& candidates) {
    return store_->PlaceAndInsertVm(NewVmRecord(name), candidates);
  }
  static PlacementRequest OneVcpu() {
    PlacementRequest r;
    r.image_id = "img-1";
    return r;
  }
  static std::map<std::string, json> ByName(const json& vms) {
    std::map<std::string, json> out;
    for (const auto& v : vms) out[v["name"]] = v;
    return out;
  }

  User admin_;
  std::unique_ptr<DrainService> drains_;
};

TEST_P(DrainServiceTest, ADrainedHostIsOfferedToNoPlacementUntilUndrained) {
  auto done = DrainAndWait("h1");
  EXPECT_EQ(done["state"], "succeeded") << done.dump();
  EXPECT_EQ(done["result"]["moved"], 0);
  EXPECT_TRUE(HostNow(host_.id).draining);
  // The capacity index offers only h2; the store's reservation refuses h1
  // even when it is named (a stale index, a future, a workspace's host).
  EXPECT_EQ(index_.Rank(OneVcpu()), std::vector<std::string>{h2_.id});
  auto pinned = Place("pinned", {host_.id});
  ASSERT_FALSE(pinned.ok());
  EXPECT_EQ(pinned.error().code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(Place("free", {host_.id, h2_.id})->host_id, h2_.id);
  EXPECT_EQ(store_->PlaceAndInsertGang({NewVmRecord("g")}, {{host_.id}}).error().code,
            ErrorCode::kResourceExhausted);
  auto groups = index_.Groups("", "spread");
  ASSERT_TRUE(groups.ok());
  EXPECT_EQ(*groups, std::vector<std::vector<std::string>>{{h2_.id}});
  // Nor is it a migration target.
  Vm on_h2 = *store_->GetVm("free", "");
  ASSERT_TRUE(store_->ModifyVm(on_h2.id, [](Vm& v) { v.state = "running"; }).ok());
  auto named = migrations_->Migrate(Caller{admin_}, on_h2.id, "h1");
  ASSERT_FALSE(named.ok());
  EXPECT_EQ(named.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(named.error().message.find("draining"), std::string::npos) << named.error().message;
  EXPECT_EQ(migrations_->Migrate(Caller{admin_}, on_h2.id, "").error().code,
            ErrorCode::kResourceExhausted);
  // The flag is in the database: a restarted controller sees it, and a
  // heartbeat does not clear it.
  ASSERT_TRUE(store_->HeartbeatHost("h1", host_.url, HostCapacity{8, 8192, 10000, false}).ok());
  auto reopened = Store::Open(db_->target());
  ASSERT_TRUE(reopened.ok()) << reopened.error().message;
  EXPECT_TRUE((*reopened)->GetHost("h1")->draining);
  reopened->reset();
  // Undrain (twice: idempotent) gives it back.
  auto back = drains_->Undrain(Caller{admin_}, "h1");
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_FALSE(back->draining);
  EXPECT_TRUE(drains_->Undrain(Caller{admin_}, host_.id).ok());
  EXPECT_FALSE(HostNow(host_.id).draining);
  EXPECT_EQ(index_.Rank(OneVcpu()).size(), 2u);
  EXPECT_EQ(Place("pinned", {host_.id})->host_id, host_.id);
}

TEST_P(DrainServiceTest, OnlyTheAdminDrainsAndUnknownHostsAreNotFound) {
  EXPECT_EQ(drains_->Drain(Caller{alice_}, "h1", 2).error().code, ErrorCode::kPermissionDenied);
  EXPECT_FALSE(HostNow(host_.id).draining);
  ASSERT_TRUE(drains_->Drain(Caller{admin_}, "h1", 2).ok());
  Settle();
  EXPECT_EQ(drains_->Undrain(Caller{alice_}, "h1").error().code, ErrorCode::kPermissionDenied);
  EXPECT_TRUE(HostNow(host_.id).draining);
  EXPECT_EQ(drains_->Drain(Caller{admin_}, "nowhere", 2).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(drains_->Undrain(Caller{admin_}, "nowhere").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(drains_->Drain(Caller{admin_}, "h2", 0).error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(HostNow(h2_.id).draining) << "a refused drain changes nothing";
}

TEST_P(DrainServiceTest, MovesTheRunningVmsAndReportsTheOthersWhichStay) {
  Vm a = AddVm("a", "running");
  Vm b = AddVm("b", "running");
  Vm c = AddVm("c", "suspended");
  Vm d = AddVm("d", "stopped");
  auto done = DrainAndWait("h1");
  ASSERT_EQ(done["state"], "succeeded") << done.dump();
  EXPECT_EQ(done["result"]["moved"], 3);
  EXPECT_EQ(done["result"]["not_moved"], 1);
  auto vms = ByName(done["result"]["vms"]);
  EXPECT_EQ(vms["a"]["state"], "moved");
  EXPECT_EQ(vms["a"]["to"], "h2");
  EXPECT_EQ(vms["b"]["state"], "moved");
  EXPECT_EQ(vms["c"]["state"], "not_moved");
  EXPECT_NE(vms["c"]["error"].get<std::string>().find("suspended"), std::string::npos)
      << vms["c"].dump();
  // The stopped VM moved cold and is stopped on its new host.
  EXPECT_EQ(vms["d"]["state"], "moved");
  EXPECT_EQ(store_->GetVm(d.id, "")->host_id, h2_.id);
  EXPECT_EQ(store_->GetVm(d.id, "")->state, "stopped");
  EXPECT_EQ(store_->GetVm(a.id, "")->host_id, h2_.id);
  EXPECT_EQ(store_->GetVm(b.id, "")->host_id, h2_.id);
  Vm stayed = *store_->GetVm(c.id, "");
  EXPECT_EQ(stayed.host_id, host_.id);
  EXPECT_EQ(stayed.state, "suspended");
  EXPECT_EQ(HostNow(host_.id).reserved_vcpus, 1) << "the suspended VM keeps its room";
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 3);
  // Drain again (idempotent): nothing new moves, the suspended VM is reported again.
  auto again = DrainAndWait("h1");
  EXPECT_EQ(again["result"]["moved"], 0);
  EXPECT_EQ(again["result"]["not_moved"], 1);
  EXPECT_TRUE(HostNow(host_.id).draining);
}

TEST_P(DrainServiceTest, AVmWithNoRoomElsewhereIsReportedAndKeepsRunning) {
  // h2 has room for one VM only.
  ASSERT_TRUE(
      store_->HeartbeatHost("h2", "https://10.9.8.7:7001", HostCapacity{1, 256, 10000, false})
          .ok());
  Vm a = AddVm("a", "running");
  Vm b = AddVm("b", "running");
  auto done = DrainAndWait("h1", 1);
  ASSERT_EQ(done["state"], "succeeded") << done.dump();
  EXPECT_EQ(done["result"]["moved"], 1);
  EXPECT_EQ(done["result"]["not_moved"], 1);
  auto vms = ByName(done["result"]["vms"]);
  EXPECT_EQ(vms["a"]["state"], "moved");
  EXPECT_EQ(vms["b"]["state"], "not_moved");
  EXPECT_NE(vms["b"]["error"].get<std::string>().find("room"), std::string::npos)
      << vms["b"].dump();
  Vm stayed = *store_->GetVm(b.id, "");
  EXPECT_EQ(stayed.host_id, host_.id);
  EXPECT_EQ(stayed.state, "running");
  EXPECT_EQ(stayed.error, "");
  EXPECT_EQ(store_->GetVm(a.id, "")->host_id, h2_.id);
}

TEST_P(DrainServiceTest, AFailedMigrationIsReportedAndTheVmRunsOnItsHost) {
  Vm a = AddVm("a", "running");
  agent_.migrate_out_answer = MakeError(ErrorCode::kUnavailable, "target unreachable");
  auto done = DrainAndWait("h1");
  auto vms = ByName(done["result"]["vms"]);
  EXPECT_EQ(vms["a"]["state"], "not_moved");
  EXPECT_NE(vms["a"]["error"].get<std::string>().find("target unreachable"), std::string::npos);
  Vm stayed = *store_->GetVm(a.id, "");
  EXPECT_EQ(stayed.host_id, host_.id);
  EXPECT_EQ(stayed.state, "running");
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 0);
}

TEST_P(DrainServiceTest, ARunningDrainIsAnsweredAgainAndUndrainStopsIt) {
  Vm a = AddVm("a", "running");
  Vm b = AddVm("b", "running");
  // The first migration holds until the test has drained again and undrained.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> reached;
  agent_.on_migrate_out = [&, once = std::make_shared<std::once_flag>()] {
    std::call_once(*once, [&] { reached.set_value(); });
    released.wait();
  };
  auto first = drains_->Drain(Caller{admin_}, "h1", 1);
  ASSERT_TRUE(first.ok()) << first.error().message;
  reached.get_future().wait();
  auto second = drains_->Drain(Caller{admin_}, "h1", 1);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ((*second)["id"], (*first)["id"]) << "one drain per host at a time";
  // The host view shows it (DrainService::Running), with each VM's state.
  json running = drains_->Running(host_.id);
  EXPECT_EQ(running["id"], (*first)["id"]);
  EXPECT_EQ(running["state"], "running");
  EXPECT_EQ(running["progress"]["vms"].size(), 2u) << running.dump();
  EXPECT_TRUE(drains_->Running(h2_.id).is_null());
  ASSERT_TRUE(drains_->Undrain(Caller{admin_}, "h1").ok());
  release.set_value();
  Settle();
  auto done = *ops_.Get((*first)["id"], admin_.id, true);
  auto vms = ByName(done["result"]["vms"]);
  EXPECT_EQ(vms["a"]["state"], "moved") << "the migration under way finishes";
  EXPECT_EQ(vms["b"]["state"], "not_moved");
  EXPECT_EQ(vms["b"]["error"], "the host was undrained");
  EXPECT_EQ(store_->GetVm(b.id, "")->host_id, host_.id);
  EXPECT_FALSE(HostNow(host_.id).draining);
  EXPECT_TRUE(drains_->Running(host_.id).is_null()) << "ended";
}

// A controller that dies mid-drain leaves the flag and no operation: the
// next leader (a new DrainService on the same database) resumes it once,
// moving what still runs there, and leaves alone a draining host with
// nothing running and a host that is not draining.
TEST_P(DrainServiceTest, TheNextLeaderResumesADrainItsPredecessorLeftUnfinished) {
  Vm a = AddVm("a", "running");
  Vm b = AddVm("b", "running");
  Vm c = AddVm("c", "suspended");
  ASSERT_TRUE(store_->SetHostDraining("h1", true).ok());
  DrainService next(*store_, *migrations_, ops_);
  auto resumed = next.ResumeInterrupted();
  ASSERT_EQ(resumed.size(), 1u);
  EXPECT_EQ(resumed[0]["host"], "h1");
  EXPECT_EQ(resumed[0]["parallel"], DrainService::kDefaultParallel);
  Settle();
  // The admin sees it as their own drain would be.
  auto op = ops_.Get(resumed[0]["id"], admin_.id, false);
  ASSERT_TRUE(op.ok()) << op.error().message;
  EXPECT_EQ((*op)["state"], "succeeded") << op->dump();
  EXPECT_EQ((*op)["result"]["moved"], 2);
  EXPECT_EQ((*op)["result"]["not_moved"], 1);
  EXPECT_EQ(store_->GetVm(a.id, "")->host_id, h2_.id);
  EXPECT_EQ(store_->GetVm(b.id, "")->host_id, h2_.id);
  EXPECT_EQ(store_->GetVm(c.id, "")->host_id, host_.id);
  EXPECT_TRUE(HostNow(host_.id).draining);
  // Nothing runs on h1 any more, and h2 (with a and b) is not draining.
  EXPECT_TRUE(next.ResumeInterrupted().empty());
  EXPECT_FALSE(HostNow(h2_.id).draining);
  EXPECT_EQ(store_->GetVm(a.id, "")->host_id, h2_.id);
}

INSTANTIATE_TEST_SUITE_P(Backends, DrainServiceTest, testing_db::Backends(),
                         testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
