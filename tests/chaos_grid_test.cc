// Chaos (issue 12, sections 6 and 7; docs/vm-lifecycle.md, "After a crash"):
// a real grid (image server, controller(s), three agents, tiny QEMU guests)
// under a bounded, seeded random loop that creates, checkpoints, resumes,
// migrates and deletes VMs while it kills the controller, agents and the
// image server with SIGKILL and starts them again. Afterwards, once every
// role is back, the grid must converge to:
//   1. no accepted VM lost: every create the API accepted (2xx with an id)
//      and that no accepted delete removed still has a record, and every
//      record settles (running, stopped, suspended, or error with a reason);
//      a VM whose delete was accepted is gone, or `error` if its agent refused
//      the delete (one that did not reach the agent stays `deleting` until
//      the host is back, then finishes);
//   2. every QEMU of the grid belongs to exactly one record, on its host, that
//      says `running`, and every `running` record has exactly one QEMU;
//   3. every host's reservation equals the sum over the VMs recorded on it
//      that hold room (every state but `error`: HoldsReservation);
//   4. `vm exec` works in a surviving running VM.
//
// Bounded for CI: a loop of at most ChaosTime() and kMaxSteps, then at
// most kConvergeTime to converge.
// The seed is printed; VMGRID_CHAOS_SEED=N replays it (the faults' timing
// against the guests' still varies, so a replay is close, not identical).
// With VMGRID_TEST_PG_URL the same runs with two controllers on PostgreSQL.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "store/test_database.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace vmgrid::testing_support;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr int kHosts = 3;
// The loop's bound: with PostgreSQL configured both runs share the budget
// (a few minutes in all, so that CI stays well under its 30).
seconds ChaosTime() {
  const char* pg = getenv(testing_db::kPgUrlEnv);
  return pg && *pg ? seconds(75) : seconds(110);
}
constexpr int kMaxSteps = 120;
constexpr auto kConvergeTime = seconds(150);
// Live VMs at most (TCG guests on two shared cores).
constexpr int kMaxLiveVms = 6;

// Short host-failure settings (as host_failure_grid_test): an agent down for
// more than 9 s has its host declared failed and its VMs recovered by policy,
// so recovery, fencing and the returning host's clean-up are in the mix.
const std::vector<std::string> kFailureArgs = {
    "--host-suspect-after-ms", "3000", "--host-failed-after-ms", "9000",
    "--host-lease-ms",         "5000", "--host-lease-grace-ms",  "3000"};

bool Settled(const std::string& state) {
  return state == "running" || state == "stopped" || state == "suspended" || state == "error";
}

// A QEMU process of the grid: which host's state directory it runs in and
// the VM it belongs to (from its -pidfile, STATE/vms/ID/run/qemu.pid).
struct Qemu {
  int pid = 0;
  int host = -1;  // agent index; -1: under the grid, but no agent's VM
  std::string vm;
  char state = 0;  // /proc/PID/stat: 'T' stopped (fenced), ...
  std::string pidfile;
};

char ProcState(const std::string& proc_dir) {
  std::ifstream f(proc_dir + "/stat");
  std::string line;
  if (!std::getline(f, line)) return 0;
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() ? line[close + 2] : 0;
}

std::vector<Qemu> GridQemus(const LocalGrid& grid, const std::string& state_dir) {
  std::vector<Qemu> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string pid = e.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    auto cmdline = ReadFile(e.path().string() + "/cmdline", 1 << 20);
    if (!cmdline.ok() || cmdline->find("qemu-system") == std::string::npos) continue;
    if (cmdline->find(state_dir + "/") == std::string::npos) continue;
    Qemu q;
    q.pid = std::stoi(pid);
    q.state = ProcState(e.path().string());
    if (q.state == 'Z' || q.state == 0) continue;  // exited (not reaped yet)
    std::vector<std::string> argv;
    std::stringstream ss(*cmdline);
    for (std::string a; std::getline(ss, a, '\0');) argv.push_back(a);
    for (size_t i = 0; i + 1 < argv.size(); ++i)
      if (argv[i] == "-pidfile") q.pidfile = argv[i + 1];
    for (int h = 0; h < grid.hosts(); ++h) {
      const std::string prefix =
          std::filesystem::absolute(grid.agent_state_dir(h)).string() + "/vms/";
      if (q.pidfile.rfind(prefix, 0) != 0) continue;
      q.host = h;
      q.vm = q.pidfile.substr(prefix.size(), q.pidfile.find('/', prefix.size()) - prefix.size());
    }
    out.push_back(q);
  }
  return out;
}

std::string HostName(int index) { return "host-" + std::to_string(index + 1); }

struct ChaosConfig {
  std::string name;
  int controllers = 1;
  std::string database;  // "" = SQLite
};

class ChaosRun {
 public:
  explicit ChaosRun(ChaosConfig config) : config_(std::move(config)) {}
  ~ChaosRun() {
    Report();  // also after a fatal failure (an ASSERT returned from Run)
    StopGrid(grid_);
  }

  void Run() {
    seed_ = static_cast<uint64_t>(std::random_device{}());
    if (const char* s = getenv("VMGRID_CHAOS_SEED"); s && *s) seed_ = std::stoull(s);
    std::cout << "[chaos] " << config_.name << " seed " << seed_
              << " (replay: VMGRID_CHAOS_SEED=" << seed_ << ")\n";
    rng_.seed(seed_);
    ASSERT_NO_FATAL_FAILURE(StartGrid());
    start_ = Clock::now();
    ChaosLoop();
    RestartEverything();
    Converge();
    CheckExec();
  }

 private:
  void Report() {
    if (!grid_) return;
    std::cout << "[chaos] " << config_.name << " seed " << seed_ << ": " << steps_ << " steps, "
              << accepted_.size() << " creates and " << deleted_.size()
              << " deletes accepted, done in " << Elapsed() << " s\n";
    std::cout << "[chaos] action log:\n";
    for (const auto& l : log_) std::cout << "  " << l << "\n";
    std::cout << "[chaos] accepted of each kind:";
    for (const auto& [what, n] : accepted_kinds_) std::cout << " " << what << " " << n;
    std::cout << "\n";
    if (::testing::Test::HasFailure()) DumpForDebugging();
  }

  ChaosConfig config_;
  std::unique_ptr<LocalGrid> grid_;
  std::unique_ptr<ApiClient> user_, admin_;
  std::string image_, state_dir_;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  Clock::time_point start_;
  int steps_ = 0;
  std::vector<std::string> log_;
  std::map<std::string, std::string> accepted_;  // id -> name (accepted creates)
  std::set<std::string> deleted_;                // ids of accepted deletes
  std::map<std::string, int> accepted_kinds_;    // requests answered 2xx, by kind
  // Roles that are down, with when to start them again.
  std::map<int, Clock::time_point> controllers_down_, agents_down_;
  std::optional<Clock::time_point> image_server_down_;

  double Elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  void Log(const std::string& what) {
    std::ostringstream line;
    line.precision(1);
    line << std::fixed << "t=" << Elapsed() << "s " << what;
    log_.push_back(line.str());
  }
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  std::string ResultText(const Result<json>& r) {
    if (!r.ok()) return "failed: " + r.error().message.substr(0, 160);
    return "ok";
  }
  void Count(const std::string& kind, const Result<json>& r) {
    if (r.ok()) ++accepted_kinds_[kind];
  }

  void StartGrid() {
    signal(SIGPIPE, SIG_IGN);
    LocalGridOptions o;
    o.vmgrid_binary = VMGRID_BINARY;
    o.state_dir = "/tmp/vmgrid-test-chaos-" + config_.name + "-" + std::to_string(getpid());
    (void)RemoveTree(o.state_dir);
    o.hosts = kHosts;
    o.host_vcpus = 8;
    o.host_memory_mb = 4096;
    o.controller_args = kFailureArgs;
    o.controllers = config_.controllers;
    o.database = config_.database;
    state_dir_ = o.state_dir;
    grid_ = std::make_unique<LocalGrid>(o);
    Status st = grid_->Start();
    ASSERT_TRUE(st.ok()) << st.error().message;
    admin_ = std::make_unique<ApiClient>(grid_->Admin());
    image_ = ImportTiny(*admin_, "tiny", false)["id"];
    ASSERT_FALSE(image_.empty());
    auto made = admin_->Post("/v1/users", {{"name", "alice"}});
    ASSERT_TRUE(made.ok()) << made.error().message;
    ApiClient::Options opts;
    opts.read_timeout_s = 30;  // a request to a controller being killed ends with it anyway
    user_ = std::make_unique<ApiClient>(grid_->urls(), (*made)["token"].get<std::string>(), opts);
  }

  // The VMs that were accepted and not deleted by an accepted delete.
  std::vector<std::string> Live() const {
    std::vector<std::string> ids;
    for (const auto& [id, name] : accepted_)
      if (!deleted_.contains(id)) ids.push_back(id);
    return ids;
  }
  std::string AnyLive() {
    auto ids = Live();
    return ids.empty() ? ""
                       : ids[static_cast<size_t>(Uniform(0, static_cast<int>(ids.size()) - 1))];
  }

  // --- The loop.

  void ChaosLoop() {
    const auto end = start_ + ChaosTime();
    while (steps_ < kMaxSteps && Clock::now() < end) {
      ++steps_;
      RestartDue(/*all=*/false);
      const int roll = Uniform(0, 99);
      if (roll < 22) {
        Create(/*restart=*/false);
      } else if (roll < 32) {
        Create(/*restart=*/true);
      } else if (roll < 42) {
        VmAction("checkpoint");
      } else if (roll < 50) {
        VmAction("resume");
      } else if (roll < 60) {
        VmAction("migrate");
      } else if (roll < 69) {
        Delete();
      } else if (roll < 77) {
        KillController();
      } else if (roll < 88) {
        KillAgent();
      } else if (roll < 93) {
        KillImageServer();
      }  // else: let things run
      std::this_thread::sleep_for(milliseconds(Uniform(200, 2000)));
    }
    Log("chaos loop ends after " + std::to_string(steps_) + " steps");
  }

  void Create(bool restart) {
    if (static_cast<int>(Live().size()) >= kMaxLiveVms) return Delete();
    const std::string name = "c" + std::to_string(steps_);
    json body = {{"image", image_}, {"name", name}};
    if (restart) body["restart"] = "on-host-failure";
    auto r = user_->Post("/v1/vms", body);
    Count(restart ? "create-restartable" : "create", r);
    if (r.ok() && r->contains("id")) {
      accepted_[(*r)["id"].get<std::string>()] = name;
      Log("create " + name + (restart ? " (on-host-failure)" : "") + ": accepted " +
          (*r)["id"].get<std::string>());
    } else {
      Log("create " + name + ": " + ResultText(r));
    }
  }

  // Runs `action` on a VM in a state that allows it, if one is listed as
  // such (else on any: the API refuses, which is fine too), so that most
  // actions are accepted and run while the faults strike.
  void VmAction(const std::string& action) {
    const std::string wanted = action == "resume" ? "suspended" : "running";
    std::vector<std::string> fit;
    if (auto list = user_->Get("/v1/vms"); list.ok())
      for (const auto& v : (*list)["vms"])
        if (v.value("state", "") == wanted && accepted_.contains(v.value("id", "")) &&
            !deleted_.contains(v.value("id", "")))
          fit.push_back(v["id"]);
    const std::string id =
        fit.empty() ? AnyLive()
                    : fit[static_cast<size_t>(Uniform(0, static_cast<int>(fit.size()) - 1))];
    if (id.empty()) return;
    auto r = user_->Post("/v1/vms/" + id + "/" + action, json::object());
    Count(action, r);
    Log(action + " " + accepted_[id] + ": " + ResultText(r));
  }

  void Delete() {
    const std::string id = AnyLive();
    if (id.empty()) return;
    auto r = user_->Delete("/v1/vms/" + id);
    Count("delete", r);
    if (r.ok()) deleted_.insert(id);
    Log("delete " + accepted_[id] + ": " + ResultText(r));
  }

  void KillController() {
    // Two controllers: never both down (one of them must serve the loop).
    if (static_cast<int>(controllers_down_.size()) >= std::max(1, config_.controllers - 1)) return;
    int i;
    do i = Uniform(0, config_.controllers - 1);
    while (controllers_down_.contains(i));
    grid_->StopControllerAt(i, /*hard=*/true);
    ++accepted_kinds_["kill-controller"];
    controllers_down_[i] = Clock::now() + milliseconds(Uniform(0, 6000));
    Log("kill -9 controller " + std::to_string(i));
  }

  void KillAgent() {
    if (static_cast<int>(agents_down_.size()) >= kHosts - 1) return;
    int i;
    do i = Uniform(0, kHosts - 1);
    while (agents_down_.contains(i));
    grid_->StopAgent(i, /*hard=*/true);  // its QEMUs run on, by design
    ++accepted_kinds_["kill-agent"];
    // Up to 15 s: beyond 9 s the host is declared failed.
    agents_down_[i] = Clock::now() + milliseconds(Uniform(0, 15000));
    Log("kill -9 agent " + HostName(i));
  }

  void KillImageServer() {
    if (image_server_down_) return;
    grid_->StopImageServer(/*hard=*/true);
    ++accepted_kinds_["kill-image-server"];
    image_server_down_ = Clock::now() + milliseconds(Uniform(0, 8000));
    Log("kill -9 image server");
  }

  // Starts the roles whose downtime is over (all: every one that is down).
  void RestartDue(bool all) {
    const auto now = Clock::now();
    for (auto it = controllers_down_.begin(); it != controllers_down_.end();) {
      if (!all && it->second > now) {
        ++it;
        continue;
      }
      // StartController starts every controller that is not running.
      Status st = grid_->StartController();
      Log("start controller " + std::to_string(it->first) + ": " +
          (st.ok() ? "ok" : st.error().message));
      EXPECT_TRUE(st.ok()) << st.error().message;
      it = controllers_down_.erase(it);
    }
    for (auto it = agents_down_.begin(); it != agents_down_.end();) {
      if (!all && it->second > now) {
        ++it;
        continue;
      }
      Status st = grid_->StartAgent(it->first);
      Log("start agent " + HostName(it->first) + ": " + (st.ok() ? "ok" : st.error().message));
      EXPECT_TRUE(st.ok()) << st.error().message;
      it = agents_down_.erase(it);
    }
    if (image_server_down_ && (all || *image_server_down_ <= now)) {
      Status st = grid_->StartImageServer();
      Log(std::string("start image server: ") + (st.ok() ? "ok" : st.error().message));
      EXPECT_TRUE(st.ok()) << st.error().message;
      image_server_down_.reset();
    }
  }

  void RestartEverything() {
    RestartDue(/*all=*/true);
    Status up = grid_->WaitHostsUp(kHosts, seconds(90));
    EXPECT_TRUE(up.ok()) << up.error().message;
    Log("every role runs again");
  }

  // --- The invariants.

  // Everything that does not hold now (empty: converged). `vms` and `hosts`
  // are what was looked at, for the report.
  std::vector<std::string> Violations(json& vms, json& hosts) {
    std::vector<std::string> bad;
    auto list = user_->Get("/v1/vms");
    auto host_list = admin_->Get("/v1/hosts");
    if (!list.ok() || !host_list.ok())
      return {"cannot list: " + ResultText(list) + " / " + ResultText(host_list)};
    vms = (*list)["vms"];
    hosts = (*host_list)["hosts"];
    std::map<std::string, json> by_id;
    for (const auto& v : vms) by_id[v["id"].get<std::string>()] = v;

    // 1. No accepted VM lost; deleted ones gone; every record settled.
    for (const auto& [id, name] : accepted_) {
      const bool recorded = by_id.contains(id);
      // A delete is an operation: the agent may refuse it, and then the
      // record says so, `error` with the reason. One that did not reach the
      // agent stays `deleting` (not settled) until the host is back.
      if (deleted_.contains(id) && recorded && by_id[id].value("state", "") != "error")
        bad.push_back("VM " + name + " (" + id +
                      ") was deleted (accepted) but has a record: " + by_id[id].dump());
      if (!deleted_.contains(id) && !recorded)
        bad.push_back("VM " + name + " (" + id + ") was accepted and never deleted: no record");
    }
    for (const auto& [id, v] : by_id) {
      const std::string state = v.value("state", "");
      if (!Settled(state)) bad.push_back("VM " + id + " not settled: " + v.dump());
      if (state == "error" && v.value("error", "").empty())
        bad.push_back("VM " + id + " in error without a reason: " + v.dump());
    }

    // 2. QEMUs and records agree, one to one.
    std::map<std::string, int> qemus_of;
    for (const Qemu& q : GridQemus(*grid_, state_dir_)) {
      const std::string what = "QEMU " + std::to_string(q.pid) + " (state " +
                               std::string(1, q.state) + ", pidfile " + q.pidfile + ")";
      if (q.host < 0) {
        bad.push_back(what + " belongs to no agent's VM");
        continue;
      }
      ++qemus_of[q.vm];
      auto it = by_id.find(q.vm);
      if (it == by_id.end()) {
        bad.push_back(what + " on " + HostName(q.host) + ": VM " + q.vm + " has no record");
      } else if (it->second.value("state", "") != "running" ||
                 it->second.value("host", "") != HostName(q.host)) {
        bad.push_back(what + " on " + HostName(q.host) +
                      ": its record does not say it runs there: " + it->second.dump());
      } else if (q.state == 'T' || q.state == 't') {
        bad.push_back(what + ": the running VM's QEMU is stopped (fenced)");
      }
    }
    for (const auto& [id, v] : by_id)
      if (v.value("state", "") == "running" && qemus_of[id] != 1)
        bad.push_back("VM " + id + " is running on " + v.value("host", "") + " with " +
                      std::to_string(qemus_of[id]) + " QEMU processes");

    // 3. Reservations: every VM but an `error` one holds its room on its host
    // (store: HoldsReservation). Nothing is migrating once all have settled,
    // so no VM holds room on a second host.
    for (const auto& h : hosts) {
      const std::string name = h.value("name", "");
      int64_t vcpus = 0, memory = 0, disk = 0;
      for (const auto& v : vms)
        if (v.value("host", "") == name && v.value("state", "") != "error") {
          vcpus += v.value("vcpus", 0);
          memory += v.value("memory_mb", 0);
          disk += v.value("disk_bytes", int64_t{0});
        }
      // The API reports free = total - reserved (at least 0); our few VMs
      // never fill a host, so free is exact.
      const int64_t used_vcpus = h.value("vcpus", 0) - h.value("free_vcpus", 0);
      const int64_t used_memory =
          h.value("memory_mb", int64_t{0}) - h.value("free_memory_mb", int64_t{0});
      const int64_t used_disk = h.value("reserved_disk_bytes", int64_t{0});
      if (used_vcpus != vcpus || used_memory != memory || used_disk != disk)
        bad.push_back("host " + name + " reserves " + std::to_string(used_vcpus) + " vCPUs, " +
                      std::to_string(used_memory) + " MB, " + std::to_string(used_disk) +
                      " disk bytes, but its VMs that hold room sum to " + std::to_string(vcpus) +
                      ", " + std::to_string(memory) + ", " + std::to_string(disk) + ": " +
                      h.dump());
    }
    return bad;
  }

  void Converge() {
    const auto end = Clock::now() + kConvergeTime;
    std::vector<std::string> bad;
    json vms, hosts;
    while (true) {
      bad = Violations(vms, hosts);
      if (bad.empty() || Clock::now() >= end) break;
      std::this_thread::sleep_for(seconds(1));
    }
    Log(bad.empty() ? "converged" : "did not converge");
    std::cout << "[chaos] " << (bad.empty() ? "converged" : "NOT converged")
              << " at t=" << Elapsed() << " s; " << vms.size() << " VM records, "
              << GridQemus(*grid_, state_dir_).size() << " QEMUs\n";
    for (const auto& v : vms)
      std::cout << "[chaos]   VM " << v.value("name", "") << " " << v.value("id", "") << " "
                << v.value("state", "") << " on " << v.value("host", "") << " "
                << v.value("error", "") << "\n";
    std::string all;
    for (const auto& b : bad) all += "\n  " + b;
    EXPECT_TRUE(bad.empty()) << "seed " << seed_ << ": after " << kConvergeTime.count()
                             << " s the grid has not converged:" << all;
  }

  // 4. A surviving running VM answers `vm exec` (the grid still works).
  void CheckExec() {
    json vms, hosts;
    (void)Violations(vms, hosts);
    std::vector<std::string> running;
    for (const auto& v : vms)
      if (v.value("state", "") == "running") running.push_back(v["id"]);
    if (running.empty()) {
      // A run whose every VM ended deleted or in error: make one now.
      json vm = CreateVm(*user_, {{"image", image_}, {"name", "after"}});
      ASSERT_EQ(vm.value("state", ""), "running") << vm.dump();
      running.push_back(vm["id"]);
    }
    std::string why;
    for (const auto& id : running) {
      auto op =
          ExecOperation(*user_, id, {{"argv", {"/bin/sh", "-c", "echo alive"}}, {"timeout_s", 60}});
      if (op.ok() && (*op)["result"].is_object() &&
          (*op)["result"].value("stdout", "") == "alive\n") {
        std::cout << "[chaos] vm exec answers in " << id << "\n";
        return;
      }
      why += "\n  " + id + ": " + (op.ok() ? op->dump() : op.error().message);
    }
    ADD_FAILURE() << "seed " << seed_ << ": vm exec works in none of the running VMs:" << why;
  }

  void DumpForDebugging() {
    std::cerr << "[chaos] FAILED with seed " << seed_ << " (replay: VMGRID_CHAOS_SEED=" << seed_
              << "); the action log is above\n";
    std::cerr << "[chaos] QEMUs:\n";
    for (const Qemu& q : GridQemus(*grid_, state_dir_))
      std::cerr << "  pid " << q.pid << " state " << q.state << " host "
                << (q.host >= 0 ? HostName(q.host) : "?") << " vm " << q.vm << "\n";
    std::cerr << "[chaos] logs: " << grid_->log_dir() << "\n";
  }
};

TEST(ChaosGridTest, SqliteOneController) {
  ChaosRun run({"sqlite", 1, ""});
  run.Run();
}

TEST(ChaosGridTest, PostgresTwoControllers) {
  testing_db::TestDatabase db(testing_db::kPostgres);
  VMGRID_REQUIRE_TEST_DATABASE(db);
  ChaosRun run({"pg", 2, db.target()});
  run.Run();
}

}  // namespace
}  // namespace vmgrid
