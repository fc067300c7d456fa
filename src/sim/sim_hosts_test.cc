// SimHosts over loopback HTTP (port 0): the agent API routed per host by
// path prefix, the agent-token check, and heartbeats to a fake controller.
#include "sim/sim_hosts.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <map>
#include <thread>

#include "client/api_client.h"
#include "common/http_json.h"
#include "common/util.h"
#include "proto/migration.h"
#include "proto/vm_status.h"

namespace vmgrid {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kToken = "vmg_test_agent_token";  // the join token
// What the fake controller hands host NAME for its agent API.
std::string ApiToken(const std::string& name) { return "api-tok-" + name; }

// Records heartbeats by host name and answers like the controller.
class FakeController {
 public:
  FakeController() {
    server_.Post("/v1/agent/register", [](const httplib::Request& req, httplib::Response& res) {
      if (BearerToken(req) != kToken)
        return SendError(res, MakeError(ErrorCode::kUnauthenticated, "join token"));
      std::string name = json::parse(req.body)["name"];
      SendJson(res, 200, {{"host_token", "host-tok-" + name}, {"agent_api_token", ApiToken(name)}});
    });
    server_.Post("/v1/agent/heartbeat",
                 [this](const httplib::Request& req, httplib::Response& res) {
                   json j = json::parse(req.body);
                   std::string name = j["name"];
                   if (BearerToken(req) != "host-tok-" + name)
                     return SendError(res, MakeError(ErrorCode::kUnauthenticated, "token"));
                   {
                     std::lock_guard<std::mutex> l(mu_);
                     last_[name] = j;
                     ++count_[name];
                   }
                   SendJson(res, 200, {{"host_id", "host-of-" + name}});
                 });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~FakeController() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  json Last(const std::string& name) {
    std::lock_guard<std::mutex> l(mu_);
    return last_.count(name) ? last_[name] : json();
  }
  int Count(const std::string& name) {
    std::lock_guard<std::mutex> l(mu_);
    return count_[name];
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::map<std::string, json> last_;
  std::map<std::string, int> count_;
};

// Polls `cond` for up to 10 s.
bool Eventually(const std::function<bool()>& cond) {
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return cond();
}

json VmSpecJson(const std::string& id) {
  return {{"id", id},
          {"name", id},
          {"owner_id", "usr-1"},
          {"vcpus", 2},
          {"memory_mb", 512},
          {"disk_mode", "clone"},
          {"image", {{"id", "img-1"}, {"disk", "/images/img-1/disk.raw"}}}};
}

class SimHostsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SimHostsOptions o;
    o.controller_url = controller_.url();
    o.token = kToken;
    o.count = 5;
    o.vcpus = 4;
    o.memory_mb = 8192;
    o.sites = 2;
    o.networks = 3;
    o.heartbeat_interval_s = 0.2;
    o.heartbeat_threads = 2;
    sim_ = std::make_unique<SimHosts>(o);
    ASSERT_TRUE(sim_->Start().ok());
  }
  // Calls host `index` with its credential, once it has registered.
  ApiClient Agent(int index) const {
    EXPECT_TRUE(Eventually([&] { return !sim_->HostId(index).empty(); }));
    return ApiClient(sim_->HostUrl(index), ApiToken(sim_->HostName(index)));
  }

  FakeController controller_;
  std::unique_ptr<SimHosts> sim_;
};

TEST_F(SimHostsTest, EachHostHasItsOwnUrlUnderOnePort) {
  EXPECT_EQ(sim_->HostName(0), "sim-1");
  EXPECT_EQ(sim_->HostUrl(4), sim_->url() + "/sim/sim-5");
  EXPECT_EQ(sim_->IndexOf("sim-3"), 2);
  EXPECT_EQ(sim_->IndexOf("sim-6"), -1);
  auto st = Agent(2).Get("/agent/v1/status");
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ((*st)["name"], "sim-3");
  EXPECT_EQ((*st)["url"], sim_->HostUrl(2));
  EXPECT_EQ((*st)["capacity"]["vcpus"], 4);
  EXPECT_EQ((*st)["capacity"]["kvm"], false);
  EXPECT_EQ((*st)["capacity"]["site"], "site-1");    // 2 % 2 + 1
  EXPECT_EQ((*st)["capacity"]["network"], "net-3");  // 2 % 3 + 1
}

TEST_F(SimHostsTest, RefusesCallsWithoutTheAgentToken) {
  auto r = ApiClient(sim_->HostUrl(0), "").Get("/agent/v1/status");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnauthenticated);
  auto w = ApiClient(sim_->HostUrl(0), "vmg_wrong").Post("/agent/v1/vms", VmSpecJson("vm-x"));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code, ErrorCode::kUnauthenticated);
  // Neither the join token nor another host's credential opens a host.
  (void)Agent(0);
  auto join = ApiClient(sim_->HostUrl(0), kToken).Get("/agent/v1/status");
  EXPECT_EQ(join.error().code, ErrorCode::kUnauthenticated);
  auto other = ApiClient(sim_->HostUrl(0), ApiToken(sim_->HostName(1))).Get("/agent/v1/status");
  EXPECT_EQ(other.error().code, ErrorCode::kUnauthenticated);
  EXPECT_EQ(sim_->host(0).size(), 0u);
}

TEST_F(SimHostsTest, UnknownHostsAndPathsAreNotFound) {
  auto r = ApiClient(sim_->url() + "/sim/sim-99", kToken).Get("/agent/v1/status");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  auto p = Agent(0).Get("/agent/v1/nonsense");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kNotFound);
}

TEST_F(SimHostsTest, VmOperationsAreRoutedToTheirHost) {
  auto created = Agent(3).Post("/agent/v1/vms", VmSpecJson("vm-a"));
  ASSERT_TRUE(created.ok()) << created.error().message;
  EXPECT_EQ((*created)["state"], "running");
  EXPECT_EQ((*created)["vcpus"], 2);
  for (int i = 0; i < sim_->count(); ++i) EXPECT_EQ(sim_->host(i).size(), i == 3 ? 1u : 0u) << i;

  // The VM is not on another host.
  auto elsewhere = Agent(1).Post("/agent/v1/vms/vm-a/stop", json::object());
  ASSERT_FALSE(elsewhere.ok());
  EXPECT_EQ(elsewhere.error().code, ErrorCode::kNotFound);

  auto exec =
      Agent(3).Post("/agent/v1/vms/vm-a/exec", {{"argv", {"uname", "-a"}}, {"timeout_s", 5}});
  ASSERT_TRUE(exec.ok()) << exec.error().message;
  EXPECT_EQ((*exec)["exit_code"], 0);
  EXPECT_NE((*exec)["stdout"].get<std::string>().find("uname -a"), std::string::npos);

  auto ckpt = Agent(3).Post("/agent/v1/vms/vm-a/checkpoint", {{"leave_running", false}});
  ASSERT_TRUE(ckpt.ok());
  EXPECT_EQ((*ckpt)["state"], "suspended");
  auto dir = Agent(3).Get("/agent/v1/vms/vm-a/checkpoint");
  ASSERT_TRUE(dir.ok());
  EXPECT_EQ((*dir)["dir"], "/sim/sim-4/vms/vm-a/checkpoint");
  EXPECT_EQ((*Agent(3).Post("/agent/v1/vms/vm-a/resume", json::object()))["state"], "running");
  EXPECT_EQ((*Agent(3).Post("/agent/v1/vms/vm-a/stop", json::object()))["state"], "stopped");
  auto bad = Agent(3).Post("/agent/v1/vms/vm-a/stop", json::object());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kFailedPrecondition);

  ASSERT_TRUE(Agent(3).Delete("/agent/v1/vms/vm-a").ok());
  EXPECT_EQ(sim_->host(3).size(), 0u);
  auto gone = Agent(3).Delete("/agent/v1/vms/vm-a");
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code, ErrorCode::kNotFound);
  EXPECT_GE(sim_->stats().vm_operations, 6);
}

TEST_F(SimHostsTest, MigrationRoutesMoveAVmBetweenHosts) {
  ASSERT_TRUE(Agent(1).Post("/agent/v1/vms", VmSpecJson("vm-m")).ok());
  MigrationCredential cred{"vmgrid-mig-1", std::string(64, 'e')};
  auto spec = VmSpecFromJson(VmSpecJson("vm-m"));
  ASSERT_TRUE(spec.ok());
  json request = ToJson(IncomingRequest{*spec, cred, "127.0.0.1"});
  auto info = Agent(2).Post("/agent/v1/migrations/incoming", request);
  ASSERT_TRUE(info.ok()) << info.error().message;
  auto parsed = IncomingInfoFromJson(*info);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  // Strict parsing on the agent: an unknown field or a bad key is refused.
  json bad = request;
  bad["credential"]["key_hex"] = "00";
  EXPECT_EQ(Agent(3).Post("/agent/v1/migrations/incoming", bad).error().code,
            ErrorCode::kInvalidArgument);
  auto result =
      Agent(1).Post("/agent/v1/vms/vm-m/migrate-out", ToJson(MigrateOutRequest{*parsed, cred, 0}));
  ASSERT_TRUE(result.ok()) << result.error().message;
  ASSERT_TRUE(MigrationResultFromJson(*result).ok());
  auto finished = Agent(2).Post("/agent/v1/vms/vm-m/finish-incoming", json::object());
  ASSERT_TRUE(finished.ok()) << finished.error().message;
  EXPECT_EQ((*finished)["state"], "running");
  EXPECT_EQ(Agent(1).Post("/agent/v1/vms/vm-m/confirm-migrate-out", json::object()).error().code,
            ErrorCode::kInvalidArgument);  // "migrated" is required
  ASSERT_TRUE(Agent(1).Post("/agent/v1/vms/vm-m/confirm-migrate-out", {{"migrated", true}}).ok());
  EXPECT_EQ(sim_->host(1).size(), 0u);
  EXPECT_EQ(sim_->host(2).size(), 1u);
  // Abort: nothing stays on the target.
  ASSERT_TRUE(Agent(4).Post("/agent/v1/migrations/incoming", request).ok());
  ASSERT_TRUE(Agent(4).Post("/agent/v1/vms/vm-m/abort-incoming", json::object()).ok());
  EXPECT_EQ(sim_->host(4).size(), 0u);
}

TEST_F(SimHostsTest, RejectsBadSpecsLikeTheAgent) {
  json spec = VmSpecJson("vm-a");
  spec["vcpus"] = 0;
  auto r = Agent(0).Post("/agent/v1/vms", spec);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  json ws = VmSpecJson("vm-b");
  ws["disk_mode"] = "persistent";
  ws["workspace_path"] = "../escape.qcow2";
  auto w = Agent(0).Post("/agent/v1/vms", ws);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(sim_->host(0).size(), 0u);
}

TEST_F(SimHostsTest, WorkspacesAndImageCheckpoints) {
  json spec = VmSpecJson("vm-a");
  spec["disk_mode"] = "persistent";
  spec["workspace_path"] = "usr-1/ws-1.qcow2";
  ASSERT_TRUE(Agent(0).Post("/agent/v1/vms", spec).ok());
  auto busy = Agent(0).Delete("/agent/v1/workspaces?path=usr-1%2Fws-1.qcow2");
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.error().code, ErrorCode::kFailedPrecondition);
  ASSERT_TRUE(Agent(0).Delete("/agent/v1/vms/vm-a").ok());
  EXPECT_TRUE(Agent(0).Delete("/agent/v1/workspaces?path=usr-1%2Fws-1.qcow2").ok());

  auto ic = Agent(1).Post("/agent/v1/image-checkpoints",
                          {{"image", {{"id", "img-1"}, {"disk", "/images/img-1/disk.raw"}}},
                           {"vcpus", 1},
                           {"memory_mb", 256},
                           {"target_dir", "/images/img-1/checkpoint"}});
  ASSERT_TRUE(ic.ok()) << ic.error().message;
  EXPECT_EQ((*ic)["dir"], "/images/img-1/checkpoint");
  auto rel = Agent(1).Post("/agent/v1/image-checkpoints",
                           {{"image", {{"disk", "/d"}}}, {"target_dir", "relative"}});
  ASSERT_FALSE(rel.ok());
  EXPECT_EQ(rel.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(SimHostsTest, HeartbeatsRegisterEveryHostAndReportItsVms) {
  ASSERT_TRUE(Eventually([&] { return sim_->stats().registered == 5; }));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(sim_->HostId(i), "host-of-sim-" + std::to_string(i + 1));
  ASSERT_TRUE(Agent(1).Post("/agent/v1/vms", VmSpecJson("vm-a")).ok());
  ASSERT_TRUE(Eventually([&] {
    json hb = controller_.Last("sim-2");
    return hb.is_object() && hb["vms"].size() == 1;
  }));
  json hb = controller_.Last("sim-2");
  EXPECT_EQ(hb["url"], sim_->HostUrl(1));
  EXPECT_EQ(hb["vms"][0]["id"], "vm-a");
  EXPECT_EQ(hb["vms"][0]["state"], "running");
  EXPECT_EQ(hb["vms"][0]["memory_mb"], 512);
  EXPECT_EQ(hb["capacity"]["memory_mb"], 8192);
  EXPECT_EQ(hb["capacity"]["site"], "site-2");
  EXPECT_EQ(hb["capacity"]["network"], "net-2");
  EXPECT_TRUE(controller_.Last("sim-1")["vms"].empty());
  // Every host keeps heartbeating (interval 0.2 s).
  ASSERT_TRUE(Eventually([&] {
    for (int i = 1; i <= 5; ++i)
      if (controller_.Count("sim-" + std::to_string(i)) < 3) return false;
    return true;
  }));
  EXPECT_EQ(sim_->stats().heartbeats_failed, 0);
}

// The controller opens one connection per call and runs creates on parallel
// threads: a burst of connections must not overflow the listen queue (cpp-
// httplib listens with a backlog of 5 and the kernel then resets connections).
TEST_F(SimHostsTest, AcceptsABurstOfConnections) {
  constexpr int kClients = 64;
  std::atomic<bool> go{false};
  std::atomic<int> ok{0};
  std::vector<std::string> errors(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i)
    threads.emplace_back([&, i] {
      while (!go) std::this_thread::yield();
      auto r = Agent(i % 5).Post("/agent/v1/vms", VmSpecJson("vm-" + std::to_string(i)));
      if (r.ok())
        ++ok;
      else
        errors[static_cast<size_t>(i)] = r.error().message;
    });
  go = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, kClients);
  for (const auto& e : errors)
    if (!e.empty()) ADD_FAILURE() << e;
}

// The control API (sim_hosts.h): the join token's holder reads the counters
// and seeds VMs that the hosts then report in their heartbeats.
TEST_F(SimHostsTest, ControlApiReportsStatsAndAdoptsVms) {
  ApiClient control(sim_->url(), kToken);
  ASSERT_TRUE(Eventually([&] { return sim_->stats().registered == 5; }));
  const int64_t since = NowMs();
  ASSERT_TRUE(Eventually([&] {
    auto st = control.Get("/control/v1/stats?since_ms=" + std::to_string(since));
    return st.ok() && (*st)["hosts_heartbeated_since"] == 5;
  }));
  auto st = control.Get("/control/v1/stats");
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ((*st)["count"], 5);
  EXPECT_EQ((*st)["registered"], 5);
  EXPECT_FALSE(st->contains("hosts_heartbeated_since"));
  // Round 0 (5) and at least one more round (interval 0.2 s) are due by now,
  // and the fake controller keeps up with them.
  EXPECT_GE((*st)["heartbeats_due"].get<int64_t>(), 10);
  EXPECT_GE((*st)["heartbeats_ok"].get<int64_t>(), 5);
  EXPECT_LE((*st)["heartbeats_ok"].get<int64_t>(), (*st)["heartbeats_due"].get<int64_t>() + 5);

  VmStatus vm;
  vm.id = vm.name = "vm-seeded";
  vm.owner_id = "usr-1";
  vm.state = "running";
  vm.vcpus = 1;
  vm.memory_mb = 2048;
  auto adopted =
      control.Post("/control/v1/adopt", {{"vms", {{{"host", "sim-4"}, {"status", ToJson(vm)}}}}});
  ASSERT_TRUE(adopted.ok()) << adopted.error().message;
  EXPECT_EQ((*adopted)["adopted"], 1);
  EXPECT_EQ(sim_->host(3).size(), 1u);
  ASSERT_TRUE(Eventually([&] {
    json hb = controller_.Last("sim-4");
    return hb.is_object() && hb["vms"].size() == 1 && hb["vms"][0]["id"] == "vm-seeded";
  }));
  // The same id again, and an unknown host: refused, naming the entry.
  auto again =
      control.Post("/control/v1/adopt", {{"vms", {{{"host", "sim-4"}, {"status", ToJson(vm)}}}}});
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.error().message.find("vms[0]"), std::string::npos);
  auto unknown =
      control.Post("/control/v1/adopt", {{"vms", {{{"host", "sim-9"}, {"status", ToJson(vm)}}}}});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::kNotFound);
  // Only with the join token: not anonymously, not with a host's credential.
  EXPECT_EQ(ApiClient(sim_->url(), "").Get("/control/v1/stats").error().code,
            ErrorCode::kUnauthenticated);
  EXPECT_EQ(ApiClient(sim_->url(), ApiToken("sim-1")).Get("/control/v1/stats").error().code,
            ErrorCode::kUnauthenticated);
}

TEST(SimHostsStart, FailsWithoutAToken) {
  SimHostsOptions o;
  o.token_file = "/nonexistent/agent.token";
  SimHosts sim(o);
  Status st = sim.Start();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kUnauthenticated);
}

TEST(SimHostsStart, HeartbeatFailuresAreCountedNotFatal) {
  SimHostsOptions o;
  o.controller_url = "http://127.0.0.1:1";  // nothing listens on port 1
  o.token = kToken;
  o.count = 3;
  o.heartbeat_interval_s = 0.05;
  SimHosts sim(o);
  ASSERT_TRUE(sim.Start().ok());
  ASSERT_TRUE(Eventually([&] { return sim.stats().heartbeats_failed >= 3; }));
  EXPECT_EQ(sim.stats().registered, 0);
  // Still serving, though to nobody: no host has credentials yet.
  EXPECT_EQ(ApiClient(sim.HostUrl(0), kToken).Get("/agent/v1/status").error().code,
            ErrorCode::kUnauthenticated);
}

}  // namespace
}  // namespace vmgrid
