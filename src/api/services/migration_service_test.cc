// MigrationService on both databases with a fake agent: the record moves to
// `migrating`, the target's room is reserved while the agents work, and the
// outcome (new host, or back on the source) is recorded with the right
// reservations.
#include "api/services/migration_service.h"

#include "api/services/migration_test_fixture.h"

namespace vmgrid {
namespace {

class MigrationServiceTest : public MigrationTestBase {
 protected:
  nlohmann::json Operation(const nlohmann::json& started) {
    auto op = ops_.Get(started["id"], alice_.id, false);
    EXPECT_TRUE(op.ok());
    return op.ok() ? *op : nlohmann::json();
  }
};

TEST_P(MigrationServiceTest, SuccessMovesTheHostAndTheReservations) {
  Vm vm = AddVm("a", "running");
  EXPECT_EQ(HostNow(host_.id).reserved_vcpus, 1);
  // The source reports the guest's generation id; the target must continue it.
  HostReport source_report;
  VmStatus running{vm.id, vm.owner_id, "a", "running", "", 4242, 1, 256, false, 100, "never"};
  running.vmgenid = "0f8fad5b-d9cb-469f-a165-70867728950e";
  source_report.vms = {running};
  agent_.status_by_host.insert_or_assign("h1", source_report);
  // While the source sends, the VM is migrating and holds room on both hosts.
  Vm during;
  Host target_during;
  agent_.on_migrate_out = [&] {
    during = *store_->GetVm(vm.id, "");
    target_during = HostNow(h2_.id);
  };
  auto op = migrations_->Migrate(Caller{alice_}, "a", "");  // placement's choice: h2
  ASSERT_TRUE(op.ok()) << op.error().message;
  EXPECT_EQ((*op)["kind"], "migrate");
  EXPECT_EQ((*op)["to"], "h2");
  Settle();
  EXPECT_EQ(during.state, "migrating");
  EXPECT_EQ(during.host_id, host_.id);
  EXPECT_EQ(target_during.reserved_vcpus, 1);
  EXPECT_EQ(target_during.reserved_memory_mb, 256);

  Vm after = *store_->GetVm(vm.id, "");
  EXPECT_EQ(after.state, "running");
  EXPECT_EQ(after.host_id, h2_.id);
  EXPECT_EQ(after.error, "");
  EXPECT_EQ(HostNow(host_.id).reserved_vcpus, 0);
  EXPECT_EQ(HostNow(host_.id).reserved_memory_mb, 0);
  EXPECT_EQ(HostNow(host_.id).reserved_disk_bytes, 0);
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 1);
  EXPECT_EQ(HostNow(h2_.id).reserved_memory_mb, 256);
  EXPECT_EQ(HostNow(h2_.id).reserved_disk_bytes, vm.disk_bytes);
  EXPECT_EQ(*store_->MigrationTarget(vm.id), "");
  EXPECT_EQ(agent_.calls,
            (std::vector<std::string>{"status", "prepare-incoming h2 " + vm.id,
                                      "migrate-out h1 " + vm.id, "finish-incoming h2 " + vm.id,
                                      "confirm-migrate-out h1 " + vm.id + " true"}));
  // The target got the VM's spec, a one-time key, its own address and the
  // guest's generation id.
  EXPECT_EQ(agent_.last_incoming.vmgenid, "0f8fad5b-d9cb-469f-a165-70867728950e");
  EXPECT_EQ(agent_.last_incoming.spec.id, vm.id);
  EXPECT_EQ(agent_.last_incoming.spec.memory_mb, 256);
  EXPECT_EQ(agent_.last_incoming.listen_host, "10.9.8.7");
  EXPECT_EQ(agent_.last_incoming.credential.key_hex.size(), 64u);
  auto done = Operation(*op);
  EXPECT_EQ(done["state"], "succeeded") << done.dump();
  EXPECT_EQ(done["result"]["downtime_ms"], 150);
  EXPECT_EQ(done["result"]["ram_bytes"], 1 << 20);
  EXPECT_EQ(done["result"]["from"], "h1");
  EXPECT_EQ(done["result"]["to"], "h2");
  EXPECT_EQ(migrations_->failed_writes(), 0);
  // The stream: migrating, running on h2 (the store's), then vm.migrated.
  auto events = store_->ListEvents(EventQuery{0, vm.id, alice_.id, 100});
  ASSERT_TRUE(events.ok());
  ASSERT_GE(events->size(), 3u);
  const auto n = events->size();
  EXPECT_EQ(nlohmann::json::parse(events->at(n - 3).data)["to"], "migrating");
  EXPECT_EQ(nlohmann::json::parse(events->at(n - 2).data)["host"], h2_.id);
  EXPECT_EQ(events->at(n - 1).kind, "vm.migrated");
  EXPECT_EQ(nlohmann::json::parse(events->at(n - 1).data)["downtime_ms"], 150);
  // And back, naming the host.
  ASSERT_TRUE(migrations_->Migrate(Caller{alice_}, vm.id, "h1").ok());
  Settle();
  EXPECT_EQ(store_->GetVm(vm.id, "")->host_id, host_.id);
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 0);
  EXPECT_EQ(HostNow(host_.id).reserved_vcpus, 1);
}

TEST_P(MigrationServiceTest, AFailedMigrateOutLeavesTheVmRunningOnItsSource) {
  Vm vm = AddVm("a", "running");
  agent_.migrate_out_answer = MakeError(ErrorCode::kUnavailable, "target unreachable");
  auto op = migrations_->Migrate(Caller{alice_}, vm.id, "h2");
  ASSERT_TRUE(op.ok()) << op.error().message;
  Settle();
  Vm after = *store_->GetVm(vm.id, "");
  EXPECT_EQ(after.state, "running");
  EXPECT_EQ(after.host_id, host_.id);
  EXPECT_NE(after.error.find("target unreachable"), std::string::npos) << after.error;
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 0) << "the target's room is released";
  EXPECT_EQ(HostNow(h2_.id).reserved_disk_bytes, 0);
  EXPECT_EQ(HostNow(host_.id).reserved_vcpus, 1);
  EXPECT_EQ(*store_->MigrationTarget(vm.id), "");
  EXPECT_EQ(agent_.calls,
            (std::vector<std::string>{"status", "prepare-incoming h2 " + vm.id,
                                      "migrate-out h1 " + vm.id, "abort-incoming h2 " + vm.id,
                                      "confirm-migrate-out h1 " + vm.id + " false", "status"}));
  auto done = Operation(*op);
  EXPECT_EQ(done["state"], "failed");
  EXPECT_NE(done["error"]["message"].get<std::string>().find("target unreachable"),
            std::string::npos);
  auto events = store_->ListEvents(EventQuery{0, vm.id, alice_.id, 100, /*newest=*/true});
  ASSERT_TRUE(events.ok());
  ASSERT_FALSE(events->empty());
  EXPECT_EQ(events->back().kind, "vm.migration_failed");
  // It may be migrated again.
  agent_.migrate_out_answer = MigrationResult{};
  ASSERT_TRUE(migrations_->Migrate(Caller{alice_}, vm.id, "h2").ok());
  Settle();
  EXPECT_EQ(store_->GetVm(vm.id, "")->host_id, h2_.id);
}

TEST_P(MigrationServiceTest, AFailedFinishResumesTheSource) {
  Vm vm = AddVm("a", "running");
  agent_.finish_answer = MakeError(ErrorCode::kInternal, "guest agent silent");
  ASSERT_TRUE(migrations_->Migrate(Caller{alice_}, vm.id, "").ok());
  Settle();
  Vm after = *store_->GetVm(vm.id, "");
  EXPECT_EQ(after.state, "running");
  EXPECT_EQ(after.host_id, host_.id);
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 0);
  ASSERT_GE(agent_.calls.size(), 6u);
  EXPECT_EQ(agent_.calls[4], "abort-incoming h2 " + vm.id);  // after status, prepare, out, finish
  EXPECT_EQ(agent_.calls[5], "confirm-migrate-out h1 " + vm.id + " false");
}

TEST_P(MigrationServiceTest, RefusalsChangeNothingAndCallNoAgent) {
  Vm vm = AddVm("a", "running");
  User bob = store_->CreateUser("bob", "user")->first;
  EXPECT_EQ(migrations_->Migrate(Caller{bob}, vm.id, "").error().code, ErrorCode::kNotFound);
  Vm suspended = AddVm("b", "suspended");
  auto refused = migrations_->Migrate(Caller{alice_}, suspended.id, "");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(refused.error().message,
            "VM b is suspended; migrate needs it to be running (live) or stopped (its disks move)");
  auto same = migrations_->Migrate(Caller{alice_}, vm.id, "h1");
  ASSERT_FALSE(same.ok());
  EXPECT_EQ(same.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(same.error().message.find("already on host h1"), std::string::npos);
  EXPECT_EQ(migrations_->Migrate(Caller{alice_}, vm.id, "nowhere").error().code,
            ErrorCode::kNotFound);
  // A target without room.
  ASSERT_TRUE(
      store_->HeartbeatHost("small", "https://10.0.0.3:1", HostCapacity{1, 128, 10000, false})
          .ok());
  EXPECT_EQ(migrations_->Migrate(Caller{alice_}, vm.id, "small").error().code,
            ErrorCode::kResourceExhausted);
  Settle();
  EXPECT_TRUE(agent_.calls.empty());
  Vm after = *store_->GetVm(vm.id, "");
  EXPECT_EQ(after.state, "running");
  EXPECT_EQ(after.host_id, host_.id);
  auto hosts = store_->ListHosts();
  ASSERT_TRUE(hosts.ok());
  for (const Host& h : *hosts) {
    if (h.id != host_.id) {
      EXPECT_EQ(h.reserved_vcpus, 0) << h.name;
    }
  }
  // The admin may migrate anyone's VM.
  User admin = store_->CreateUser("root", "admin")->first;
  ASSERT_TRUE(migrations_->Migrate(Caller{admin}, vm.id, "h2").ok());
  Settle();
  EXPECT_EQ(store_->GetVm(vm.id, "")->host_id, h2_.id);
}

// The target lays its new top layer over what the source's lies on (the
// record's disk_base): a clone resumed from the image's post-boot checkpoint
// gets those checkpoint versions, a clone of another VM's checkpoint (whose
// disk was copied into its top layer) the image only; a resumed clone
// recorded before the base was (disk_base "") is refused.
TEST_P(MigrationServiceTest, ResumedClonesMigrateOntoTheSameBase) {
  const std::string d1(64, 'a'), d2(64, 'b');
  const nlohmann::json ckpt = {
      {"ckpt_memory",
       {{"name", "img-1-ckpt-memory"}, {"version", 3}, {"digest", d1}, {"size", 1000}}},
      {"ckpt_disk", {{"name", "img-1-ckpt-disk"}, {"version", 3}, {"digest", d2}, {"size", 2000}}}};
  // The image's own versions on the image server.
  Image image = *store_->GetImage("img-1", "");
  image.blobs =
      nlohmann::json{
          {"disk",
           {{"name", "img-1"}, {"version", 1}, {"digest", std::string(64, 'c')}, {"size", 4096}}}}
          .dump();
  ASSERT_TRUE(store_->UpdateImage(image).ok());
  // A running resumed clone whose record says it lies on `base`.
  auto resumed = [&](const std::string& name, const std::string& base) {
    Vm record = NewVmRecord(name);
    record.start = "resume";
    record.disk_base = base;
    auto placed = store_->PlaceAndInsertVm(record, {host_.id});
    EXPECT_TRUE(placed.ok()) << placed.error().message;
    EXPECT_TRUE(store_->ModifyVm(placed->id, [](Vm& v) { v.state = "running"; }).ok());
    return *store_->GetVm(placed->id, "");
  };
  Vm on_ckpt = resumed("on-ckpt", ckpt.dump());
  ASSERT_EQ(on_ckpt.disk_base, ckpt.dump());
  ASSERT_EQ(on_ckpt.start, "resume");
  ASSERT_TRUE(migrations_->Migrate(Caller{alice_}, "on-ckpt", "h2").ok());
  Settle();
  EXPECT_EQ(store_->GetVm(on_ckpt.id, "")->host_id, h2_.id);
  const VmSpec& spec = agent_.last_incoming.spec;
  EXPECT_EQ(spec.start, "resume");
  ASSERT_TRUE(spec.blobs.count("ckpt_disk"));
  EXPECT_EQ(spec.blobs.at("ckpt_disk").digest, d2);
  EXPECT_EQ(spec.blobs.at("ckpt_memory").version, 3u);

  Vm cloned = resumed("cloned", "image");
  ASSERT_TRUE(migrations_->Migrate(Caller{alice_}, "cloned", "h2").ok());
  Settle();
  EXPECT_EQ(store_->GetVm(cloned.id, "")->host_id, h2_.id);
  EXPECT_EQ(agent_.last_incoming.spec.start, "boot");
  EXPECT_FALSE(agent_.last_incoming.spec.blobs.count("ckpt_disk"));

  Vm legacy = resumed("legacy", "");
  agent_.calls.clear();
  auto refused = migrations_->Migrate(Caller{alice_}, "legacy", "h2");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(refused.error().message.find("cannot migrate"), std::string::npos)
      << refused.error().message;
  Settle();
  EXPECT_TRUE(agent_.calls.empty());
  EXPECT_EQ(store_->GetVm(legacy.id, "")->state, "running");
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 2);  // the two that moved, nothing more
}

// A stopped VM moves cold: the target is told so, the record goes
// stopped -> migrating -> stopped on the target with the reservations moved;
// a failure leaves it stopped on its source. A controller restart mid-way is
// settled by what the target reports (stopped there: it moved).
TEST_P(MigrationServiceTest, AStoppedVmMovesColdAndStaysStopped) {
  Vm vm = AddVm("a", "stopped");
  Vm during;
  agent_.on_migrate_out = [&] { during = *store_->GetVm(vm.id, ""); };
  auto op = migrations_->Migrate(Caller{alice_}, "a", "h2");
  ASSERT_TRUE(op.ok()) << op.error().message;
  Settle();
  EXPECT_EQ(during.state, "migrating");
  EXPECT_TRUE(agent_.last_incoming.cold);
  Vm after = *store_->GetVm(vm.id, "");
  EXPECT_EQ(after.state, "stopped");
  EXPECT_EQ(after.host_id, h2_.id);
  EXPECT_EQ(HostNow(host_.id).reserved_vcpus, 0);
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 1);
  auto result = Operation(*op);
  EXPECT_EQ(result["result"]["cold"], true) << result.dump();

  // A failed cold migration: stopped on its source, nothing held on the target.
  agent_.migrate_out_answer = MakeError(ErrorCode::kUnavailable, "target unreachable");
  ASSERT_TRUE(migrations_->Migrate(Caller{alice_}, "a", "h1").ok());
  Settle();
  after = *store_->GetVm(vm.id, "");
  EXPECT_EQ(after.state, "stopped");
  EXPECT_EQ(after.host_id, h2_.id);
  EXPECT_NE(after.error.find("target unreachable"), std::string::npos) << after.error;
  EXPECT_EQ(HostNow(host_.id).reserved_vcpus, 0);
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 1);
}

// The source's port forwards are made again on the target once the source's
// copy is gone; one that cannot be made is a warning, not a failure.
TEST_P(MigrationServiceTest, ForwardsFollowTheVmToItsNewHost) {
  Vm vm = AddVm("a", "running");
  MigrationResult answer{3000, 200, 2700, 150, 1 << 20, 4096, {}};
  answer.forwards = {ForwardInfo{0, "10.20.0.10", 80, "127.0.0.1", 40080},
                     ForwardInfo{0, "10.20.0.10", 22, "127.0.0.1", 40022}};
  agent_.migrate_out_answer = answer;
  auto op = migrations_->Migrate(Caller{alice_}, "a", "h2");
  ASSERT_TRUE(op.ok()) << op.error().message;
  Settle();
  auto done = Operation(*op);
  ASSERT_EQ(done["state"], "succeeded") << done.dump();
  const auto& calls = agent_.calls;
  ASSERT_GE(calls.size(), 6u);
  // After the source's copy went (its listeners with it).
  EXPECT_EQ(calls[calls.size() - 3], "confirm-migrate-out h1 " + vm.id + " true");
  EXPECT_EQ(calls[calls.size() - 2], "forward " + vm.id + " 80");
  EXPECT_EQ(calls[calls.size() - 1], "forward " + vm.id + " 22");
  EXPECT_EQ(done["result"]["forwards"].size(), 2u) << done.dump();
  EXPECT_FALSE(done["result"].contains("warning")) << done.dump();
}

// Datasets attached migrate with the VM: the target gets the attachments in
// its spec (the agents mirror the writable ones, docs/migration.md).
TEST_P(MigrationServiceTest, AVmWithDatasetsAttachedMigrates) {
  Vm record = NewVmRecord("a");
  record.data = nlohmann::json::array({{{"dataset_id", "ds-1"},
                                        {"dataset", "results"},
                                        {"version", 0},
                                        {"mount", "/data/results"},
                                        {"rw", true},
                                        {"blank_mb", 64}}})
                    .dump();
  auto placed = store_->PlaceAndInsertVm(record, {host_.id});
  ASSERT_TRUE(placed.ok()) << placed.error().message;
  ASSERT_TRUE(store_->ModifyVm(placed->id, [](Vm& v) { v.state = "running"; }).ok());
  Vm vm = *store_->GetVm(placed->id, "");
  auto op = migrations_->Migrate(Caller{alice_}, "a", "h2");
  ASSERT_TRUE(op.ok()) << op.error().message;
  Settle();
  EXPECT_EQ(store_->GetVm(vm.id, "")->host_id, h2_.id);
  ASSERT_EQ(agent_.last_incoming.spec.data.size(), 1u);
  EXPECT_TRUE(agent_.last_incoming.spec.data[0].rw);
  EXPECT_EQ(agent_.last_incoming.spec.data[0].blank_mb, 64);
}

TEST_P(MigrationServiceTest, AMigratingVmTakesNoOtherOperationAndADeleteReleasesBothHosts) {
  Vm vm = AddVm("a", "running");
  auto begun = store_->BeginMigration(vm.id, {host_.id, h2_.id});
  ASSERT_TRUE(begun.ok()) << begun.error().message;
  EXPECT_EQ(begun->second, h2_.id) << "never the VM's own host";
  EXPECT_FALSE(store_->TransitionVm(vm.id, VmOp::kStop).ok());
  EXPECT_EQ(migrations_->Migrate(Caller{alice_}, vm.id, "").error().code,
            ErrorCode::kFailedPrecondition);
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 1);
  ASSERT_TRUE(store_->DeleteVm(vm.id).ok());
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 0);
  EXPECT_EQ(HostNow(host_.id).reserved_vcpus, 0);
  // Reconciliation writing another state over `migrating` releases the target too.
  Vm other = AddVm("b", "running");
  ASSERT_TRUE(store_->BeginMigration(other.id, {h2_.id}).ok());
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 1);
  Vm v = *store_->GetVm(other.id, "");
  v.state = "running";
  ASSERT_TRUE(store_->UpdateVm(v).ok());
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 0);
  EXPECT_EQ(*store_->MigrationTarget(other.id), "");
}

// A controller that died mid-migration left the record `migrating` with
// room taken on the target; the next one settles it by what the hosts say.
HostReport Reporting(const std::string& vm_id, const std::string& state) {
  HostReport r;
  VmStatus v;
  v.id = vm_id;
  v.state = state;
  r.vms.push_back(v);
  return r;
}

TEST_P(MigrationServiceTest, AnInterruptedMigrationTheTargetFinishedStaysThere) {
  Vm vm = AddVm("a", "running");
  ASSERT_TRUE(store_->BeginMigration(vm.id, {h2_.id}).ok());
  agent_.status_by_host.insert_or_assign("h2", Reporting(vm.id, "running"));
  agent_.status_by_host.insert_or_assign("h1",
                                         Reporting(vm.id, "running"));  // paused, migrated out
  EXPECT_EQ(migrations_->RecoverInterrupted(NowMs() + 1, 60'000), 1);
  Vm after = *store_->GetVm(vm.id, "");
  EXPECT_EQ(after.state, "running");
  EXPECT_EQ(after.host_id, h2_.id);
  EXPECT_EQ(HostNow(host_.id).reserved_vcpus, 0);
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 1);
  EXPECT_EQ(*store_->MigrationTarget(vm.id), "");
  EXPECT_EQ(agent_.calls,
            (std::vector<std::string>{"status", "confirm-migrate-out h1 " + vm.id + " true"}));
  // Nothing left to settle.
  EXPECT_EQ(migrations_->RecoverInterrupted(NowMs() + 1, 60'000), 0);
}

TEST_P(MigrationServiceTest, AnInterruptedMigrationNotStartedOnTheTargetGoesBackToTheSource) {
  Vm vm = AddVm("a", "running");
  ASSERT_TRUE(store_->BeginMigration(vm.id, {h2_.id}).ok());
  agent_.status_by_host.insert_or_assign("h2",
                                         Reporting(vm.id, "creating"));  // incoming, not finished
  agent_.status_by_host.insert_or_assign("h1", Reporting(vm.id, "running"));
  EXPECT_EQ(migrations_->RecoverInterrupted(NowMs() + 1, 60'000), 1);
  Vm after = *store_->GetVm(vm.id, "");
  EXPECT_EQ(after.state, "running");
  EXPECT_EQ(after.host_id, host_.id);
  EXPECT_NE(after.error.find("interrupted"), std::string::npos) << after.error;
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 0) << "the target's room is released";
  EXPECT_EQ(HostNow(h2_.id).reserved_disk_bytes, 0);
  EXPECT_EQ(HostNow(host_.id).reserved_vcpus, 1);
  EXPECT_EQ(agent_.calls,
            (std::vector<std::string>{"status", "abort-incoming h2 " + vm.id,
                                      "confirm-migrate-out h1 " + vm.id + " false", "status"}));
  // A target that never got the VM is not asked to abort it; a source
  // whose VM stopped meanwhile records that.
  agent_.calls.clear();
  Vm b = AddVm("b", "running");
  ASSERT_TRUE(store_->BeginMigration(b.id, {h2_.id}).ok());
  agent_.status_by_host.insert_or_assign("h2", HostReport{});
  agent_.status_by_host.insert_or_assign("h1", Reporting(b.id, "stopped"));
  EXPECT_EQ(migrations_->RecoverInterrupted(NowMs() + 1, 60'000), 1);
  EXPECT_EQ(store_->GetVm(b.id, "")->state, "stopped");
  EXPECT_EQ(agent_.calls, (std::vector<std::string>{
                              "status", "confirm-migrate-out h1 " + b.id + " false", "status"}));
}

// The next controller settles an interrupted cold migration by what the
// target reports: stopped there means the disks arrived (FinishIncoming
// ran); still arriving means it stays stopped on its source.
TEST_P(MigrationServiceTest, AnInterruptedColdMigrationIsSettledByTheTargetsReport) {
  Vm moved = AddVm("a", "stopped");
  ASSERT_TRUE(store_->BeginMigration(moved.id, {h2_.id}).ok());
  agent_.status_by_host.insert_or_assign("h2", Reporting(moved.id, "stopped"));
  agent_.status_by_host.insert_or_assign("h1", Reporting(moved.id, "stopped"));
  EXPECT_EQ(migrations_->RecoverInterrupted(NowMs() + 1, 60'000), 1);
  Vm after = *store_->GetVm(moved.id, "");
  EXPECT_EQ(after.state, "stopped");
  EXPECT_EQ(after.host_id, h2_.id);
  EXPECT_EQ(agent_.calls,
            (std::vector<std::string>{"status", "confirm-migrate-out h1 " + moved.id + " true"}));
  agent_.calls.clear();
  Vm stays = AddVm("b", "stopped");
  ASSERT_TRUE(store_->BeginMigration(stays.id, {h2_.id}).ok());
  agent_.status_by_host.insert_or_assign("h2", Reporting(stays.id, "creating"));
  agent_.status_by_host.insert_or_assign("h1", Reporting(stays.id, "stopped"));
  EXPECT_EQ(migrations_->RecoverInterrupted(NowMs() + 1, 60'000), 1);
  after = *store_->GetVm(stays.id, "");
  EXPECT_EQ(after.state, "stopped");
  EXPECT_EQ(after.host_id, host_.id);
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 1) << "only a's room on the target";
}

TEST_P(MigrationServiceTest, AnInterruptedMigrationWaitsForAnUnreachableTargetAndSparesLiveOnes) {
  Vm vm = AddVm("a", "running");
  ASSERT_TRUE(store_->BeginMigration(vm.id, {h2_.id}).ok());
  // The target may run the VM already: resuming the source could run it twice.
  agent_.status_by_host.insert_or_assign("h2",
                                         MakeError(ErrorCode::kUnavailable, "connection refused"));
  EXPECT_EQ(migrations_->RecoverInterrupted(NowMs() + 1, 60'000), 0);
  EXPECT_EQ(store_->GetVm(vm.id, "")->state, "migrating");
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 1);
  EXPECT_EQ(agent_.calls, (std::vector<std::string>{"status"}));
  // A migration this controller began (after its start) and that is still
  // young is somebody's operation about to run: not touched.
  agent_.calls.clear();
  agent_.status_by_host.insert_or_assign("h2", HostReport{});
  EXPECT_EQ(migrations_->RecoverInterrupted(NowMs() - 3'600'000, 60'000), 0);
  EXPECT_TRUE(agent_.calls.empty());
  // Once stale, it is settled.
  clock_.Advance(120'000);
  EXPECT_EQ(migrations_->RecoverInterrupted(NowMs() - 3'600'000, 60'000), 1);
  EXPECT_EQ(store_->GetVm(vm.id, "")->host_id, host_.id);
  EXPECT_EQ(HostNow(h2_.id).reserved_vcpus, 0);
}

TEST(HostOfUrlTest, TakesTheHostPart) {
  EXPECT_EQ(HostOfUrl("https://10.0.0.2:7001"), "10.0.0.2");
  EXPECT_EQ(HostOfUrl("http://127.0.0.1:1/x"), "127.0.0.1");
  EXPECT_EQ(HostOfUrl("https://[::1]:5"), "::1");
  EXPECT_EQ(HostOfUrl("host.example"), "host.example");
}

INSTANTIATE_TEST_SUITE_P(Backends, MigrationServiceTest, testing_db::Backends(),
                         testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
