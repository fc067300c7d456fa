// A controller's dependencies without a grid, for the services' unit tests:
// a fresh store (the suites are parameterized over testing_db::Backends():
// SQLite, and PostgreSQL when VMGRID_TEST_PG_URL names a server) with one
// user, one image and one host, the placement index observing it, host
// credentials, a fake clock, an operation queue and a fake agent that
// answers from a script.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "api/agent_client.h"
#include "api/host_credentials.h"
#include "api/op_queue.h"
#include "api/placement.h"
#include "common/clock.h"
#include "common/util.h"
#include "store/store.h"
#include "store/test_database.h"

namespace vmgrid {

// Answers what the test put in its fields; records every call.
class FakeAgent : public AgentClient {
 public:
  std::mutex mu;
  std::vector<std::string> calls;  // "action vm-id" / "status" / "delete vm-id"
  Result<VmStatus> action_answer = VmStatus{};
  Result<HostReport> status_answer = HostReport{};
  std::map<std::string, Result<HostReport>> status_by_host;  // by host name; else status_answer
  Status delete_answer;
  // Called (outside the lock) by Exec and DeleteWorkspace before they
  // answer, e.g. to hold an operation running.
  std::function<void()> on_exec, on_delete_workspace;
  Status delete_workspace_answer;

  std::vector<VmSpec> specs;  // every CreateVm's spec, in order (guarded by mu)
  Result<VmStatus> CreateVm(const Host&, const VmSpec& spec) override {
    {
      std::lock_guard<std::mutex> l(mu);
      specs.push_back(spec);
    }
    Note("create " + spec.id);
    return action_answer;
  }
  Result<VmStatus> VmAction(const Host&, const std::string& vm_id, const std::string& action,
                            bool leave_running) override {
    Note(action + (leave_running ? "+leave " : " ") + vm_id);
    return action_answer;
  }
  vmgrid::Status DeleteVm(const Host&, const std::string& vm_id, bool purge) override {
    Note(std::string(purge ? "purge " : "delete ") + vm_id);
    return delete_answer;
  }
  Result<nlohmann::json> Exec(const Host&, const std::string& vm_id, const nlohmann::json&,
                              int) override {
    Note("exec " + vm_id);
    if (on_exec) on_exec();
    return nlohmann::json::object();
  }
  // Console logs by VM id, read as the agent would (tail or from an offset).
  std::map<std::string, std::string> consoles;
  Result<ConsoleLog> ReadConsole(const Host&, const std::string& vm_id, int64_t offset,
                                 int64_t max_bytes) override {
    Note("console " + vm_id);
    std::lock_guard<std::mutex> l(mu);
    auto it = consoles.find(vm_id);
    if (it == consoles.end()) return MakeError(ErrorCode::kNotFound, "no VM " + vm_id + " here");
    const auto size = static_cast<int64_t>(it->second.size());
    ConsoleLog log;
    log.size = size;
    log.offset = offset < 0 ? std::max<int64_t>(0, size - max_bytes) : std::min(offset, size);
    log.text = it->second.substr(static_cast<size_t>(log.offset), static_cast<size_t>(max_bytes));
    log.next_offset = log.offset + static_cast<int64_t>(log.text.size());
    return log;
  }
  // `vm cp`: files by "VM-ID PATH", in memory; "read VM PATH OFFSET" /
  // "write VM PATH OFFSET" calls.
  std::map<std::string, std::string> guest_files;
  Result<GuestFileChunk> ReadGuestFile(const Host&, const std::string& vm_id,
                                       const GuestFileRead& r) override {
    Note("read " + vm_id + " " + r.path + " " + std::to_string(r.offset));
    std::lock_guard<std::mutex> l(mu);
    auto it = guest_files.find(vm_id + " " + r.path);
    if (it == guest_files.end())
      return MakeError(ErrorCode::kNotFound,
                       "guest file " + r.path + ": No such file or directory");
    const std::string& f = it->second;
    GuestFileChunk c{r.path, r.offset, "", static_cast<int64_t>(f.size()), true};
    if (r.offset < c.size) c.data = f.substr(r.offset, r.length);
    c.eof = r.offset + static_cast<int64_t>(c.data.size()) >= c.size;
    return c;
  }
  Result<GuestFileWritten> WriteGuestFile(const Host&, const std::string& vm_id,
                                          const GuestFileWrite& w) override {
    Note("write " + vm_id + " " + w.path + " " + std::to_string(w.offset));
    std::lock_guard<std::mutex> l(mu);
    std::string& f = guest_files[vm_id + " " + w.path];
    if (w.offset == 0) f.clear();
    f += w.data;
    return GuestFileWritten{w.path, static_cast<int64_t>(f.size())};
  }
  Result<HostReport> HostStatus(const Host& h) override {
    Note("status");
    std::lock_guard<std::mutex> l(mu);
    auto it = status_by_host.find(h.name);
    return it != status_by_host.end() ? it->second : status_answer;
  }
  Result<CheckpointRef> Checkpoint(const Host&, const std::string& vm_id, bool, int) override {
    Note("checkpoint-ref " + vm_id);
    return CheckpointRef{};
  }
  Result<ImageCheckpointResult> MakeImageCheckpoint(const Host&,
                                                    const ImageCheckpointRequest&) override {
    Note("image-checkpoint");
    return ImageCheckpointResult{};
  }
  vmgrid::Status DeleteWorkspace(const Host&, const std::string& path) override {
    Note("delete-workspace " + path);
    if (on_delete_workspace) on_delete_workspace();
    return delete_workspace_answer;
  }
  // Live migration: "prepare-incoming HOST VM", "migrate-out HOST VM",
  // "finish-incoming HOST VM", "abort-incoming HOST VM",
  // "confirm-migrate-out HOST VM true|false" (HOST: the host's name).
  Result<IncomingInfo> incoming_answer = IncomingInfo{"127.0.0.1", 10809, 4444, {"disk"}};
  Result<MigrationResult> migrate_out_answer =
      MigrationResult{3000, 200, 2700, 150, 1 << 20, 4096, {}};
  Result<VmStatus> finish_answer = VmStatus{};
  vmgrid::Status abort_answer, confirm_answer;
  std::function<void()> on_migrate_out;  // called before MigrateOut answers
  IncomingRequest last_incoming;

  Result<IncomingInfo> PrepareIncoming(const Host& target, const IncomingRequest& r) override {
    Note("prepare-incoming " + target.name + " " + r.spec.id);
    std::lock_guard<std::mutex> l(mu);
    last_incoming = r;
    return incoming_answer;
  }
  Result<MigrationResult> MigrateOut(const Host& source, const std::string& vm_id,
                                     const MigrateOutRequest&) override {
    Note("migrate-out " + source.name + " " + vm_id);
    if (on_migrate_out) on_migrate_out();
    return migrate_out_answer;
  }
  Result<VmStatus> FinishIncoming(const Host& target, const std::string& vm_id) override {
    Note("finish-incoming " + target.name + " " + vm_id);
    return finish_answer;
  }
  vmgrid::Status AbortIncoming(const Host& target, const std::string& vm_id) override {
    Note("abort-incoming " + target.name + " " + vm_id);
    return abort_answer;
  }
  vmgrid::Status ConfirmMigrateOut(const Host& source, const std::string& vm_id,
                                   bool migrated) override {
    Note("confirm-migrate-out " + source.name + " " + vm_id + (migrated ? " true" : " false"));
    return confirm_answer;
  }
  Result<ForwardInfo> AddForward(const Host&, const std::string& vm_id,
                                 const ForwardRequest& r) override {
    Note("forward " + vm_id + " " + std::to_string(r.guest_port));
    return ForwardInfo{r.nic, "10.20.0.10", r.guest_port, r.listen_ip, 40000};
  }
  vmgrid::Status RemoveForward(const Host&, const std::string& vm_id, int port) override {
    Note("unforward " + vm_id + " " + std::to_string(port));
    return vmgrid::Status::Ok();
  }

 private:
  void Note(const std::string& call) {
    std::lock_guard<std::mutex> l(mu);
    calls.push_back(call);
  }
};

class ServiceTest : public ::testing::TestWithParam<std::string> {
 protected:
  ~ServiceTest() override {
    if (!creds_file_.empty()) unlink(creds_file_.c_str());
  }
  void SetUp() override {
    db_ = std::make_unique<testing_db::TestDatabase>(GetParam());
    VMGRID_REQUIRE_TEST_DATABASE(*db_);
    auto s = Store::Open(db_->target());
    ASSERT_TRUE(s.ok()) << s.error().message;
    store_ = std::move(s).value();
    ASSERT_TRUE(store_->SetObserver(&index_).ok());
    creds_file_ = ::testing::TempDir() + "/" + NewId("key");
    auto creds = HostCredentials::Open(creds_file_);
    ASSERT_TRUE(creds.ok()) << creds.error().message;
    creds_.emplace(std::move(creds).value());
    auto u = store_->CreateUser("alice", "user");
    ASSERT_TRUE(u.ok());
    alice_ = u->first;
    Image img;
    img.id = "img-1";
    img.name = "tiny";
    img.owner_id = alice_.id;
    img.state = "ready";
    img.format = "raw";
    img.dir = "/nonexistent";
    ASSERT_TRUE(store_->InsertImage(img).ok());
    auto h = store_->HeartbeatHost("h1", "http://127.0.0.1:1", HostCapacity{8, 8192, 10000, false});
    ASSERT_TRUE(h.ok()) << h.error().message;
    host_ = *h;
  }

  // A new record of alice's (1 vCPU, 256 MiB, a clone booting img-1),
  // creating, not yet placed.
  Vm NewVmRecord(const std::string& name) {
    Vm v;
    v.id = NewId("vm");
    v.name = name;
    v.owner_id = alice_.id;
    v.image_id = "img-1";
    v.state = "creating";
    v.vcpus = 1;
    v.memory_mb = 256;
    v.disk = "clone";
    v.start = "boot";
    v.created_ms = v.updated_ms = clock_.NowMs();
    return v;
  }

  // A VM of alice's on h1 in `state` (the store stamps its changes with the
  // real time, which the fake clock starts at).
  Vm AddVm(const std::string& name, const std::string& state) {
    auto placed = store_->PlaceAndInsertVm(NewVmRecord(name), {host_.id});
    EXPECT_TRUE(placed.ok()) << placed.error().message;
    EXPECT_TRUE(store_->ModifyVm(placed->id, [&](Vm& vm) { vm.state = state; }).ok());
    return *store_->GetVm(placed->id, "");
  }

  std::unique_ptr<testing_db::TestDatabase> db_;
  CapacityIndex index_;  // outlives store_
  std::unique_ptr<Store> store_;
  std::optional<HostCredentials> creds_;
  std::string creds_file_;  // one per test, removed by the destructor
  FakeClock clock_{NowMs()};
  FakeAgent agent_;
  User alice_;
  Host host_;
};

}  // namespace vmgrid
