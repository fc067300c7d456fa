// bench/flood: does one user flooding the controller slow down what must stay
// fast? A real grid (image server, controller, one agent, one tiny VM under
// QEMU) is probed twice in the same run: first idle, then while one user's
// threads flood it with long execs (`sleep 40`) and information-service
// queries. The probe measures GET /v1/health (a new connection each time)
// and heartbeats (POST /v1/agent/heartbeat with the agent credential, as a
// host with no capacity). Prints markdown tables: probe latency p50/p99/max
// per phase, and the flood's answers (accepted, 429, other) and rate.
//
// Usage: flood [--seconds S=20] [--exec-threads N=32] [--query-threads N=8]
// (VMGRID_BENCH_BINARY=PATH runs the grid from another `vmgrid` build.)

#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "client/api_client.h"
#include "common/tls.h"
#include "common/util.h"
#include "dev/local_grid.h"
#include "die.h"
#include "machine.h"

using namespace vmgrid;
using nlohmann::json;
using vmgrid::bench::Die;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

struct Latencies {
  std::vector<double> ms;
  int failed = 0;
  double Pct(double p) const {
    if (ms.empty()) return 0;
    auto s = ms;
    std::sort(s.begin(), s.end());
    return s[std::min(s.size() - 1, static_cast<size_t>(p * static_cast<double>(s.size())))];
  }
};

struct Probe {
  Latencies health, heartbeat, agent_heartbeat;
};

// Probes health and heartbeats alternately, every 50 ms, until `stop`.
// `agent_url`: the controller's agents' listener ("" = none).
// `host_token`: the probe host's own credential (heartbeats as "flood-probe").
Probe RunProbe(const std::string& url, const std::string& agent_url, const std::string& host_token,
               const std::atomic<bool>& stop) {
  Probe p;
  const std::string beat = json{
      {"name", "flood-probe"},
      {"url", "http://127.0.0.1:9"},
      {"capacity", {{"vcpus", 0}, {"memory_mb", 0}, {"disk_mb", 0}, {"kvm", false}}},
      {"vms", json::array()}}.dump();
  while (!stop) {
    {
      auto cli_owner = NewHttpClient(url);
      auto& cli = *cli_owner;
      cli.set_read_timeout(30, 0);
      auto t0 = Clock::now();
      auto r = cli.Get("/v1/health");
      double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (r && r->status == 200)
        p.health.ms.push_back(ms);
      else
        ++p.health.failed;
    }
    // One heartbeat on a new connection, timed into `into`.
    auto heartbeat = [&](const std::string& to, Latencies& into) {
      auto cli_owner = NewHttpClient(to);
      auto& cli = *cli_owner;
      cli.set_read_timeout(30, 0);
      auto t0 = Clock::now();
      auto r = cli.Post("/v1/agent/heartbeat", {{"Authorization", "Bearer " + host_token}}, beat,
                        "application/json");
      double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (r && r->status == 200)
        into.ms.push_back(ms);
      else
        ++into.failed;
    };
    heartbeat(url, p.heartbeat);
    if (!agent_url.empty()) heartbeat(agent_url, p.agent_heartbeat);
    std::this_thread::sleep_for(milliseconds(50));
  }
  return p;
}

struct FloodCounts {
  std::atomic<int64_t> accepted{0}, limited{0}, other{0};
};

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  int secs = 20, exec_threads = 32, query_threads = 8;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] {
      if (i + 1 >= argc) Die(a + " needs a value");
      return std::atoi(argv[++i]);
    };
    if (a == "--seconds")
      secs = next();
    else if (a == "--exec-threads")
      exec_threads = next();
    else if (a == "--query-threads")
      query_threads = next();
    else
      Die("usage: flood [--seconds S] [--exec-threads N] [--query-threads N]");
  }

  LocalGridOptions o;
  // VMGRID_BENCH_BINARY: measure another build (e.g. the code before a change).
  const char* other = getenv("VMGRID_BENCH_BINARY");
  o.vmgrid_binary = other && *other ? other : VMGRID_BINARY;
  o.agent_listener = !(other && *other);  // older builds lack --agent-listen
  o.state_dir = "/tmp/vmgrid-bench-flood-" + std::to_string(getpid());
  (void)RemoveTree(o.state_dir);
  o.hosts = 1;
  o.host_vcpus = 4;
  o.host_memory_mb = 2048;
  LocalGrid grid(o);
  if (auto st = grid.Start(); !st.ok()) Die(st.error().message);
  ApiClient admin = grid.Admin();

  // The tiny image and one user's VM.
  const std::string dir = VMGRID_TINY_IMAGE_DIR;
  auto manifest = ReadFile(dir + "/manifest.json");
  if (!manifest.ok())
    Die("build the tiny image first (guest/build-tiny.sh): " + manifest.error().message);
  json m = json::parse(*manifest);
  auto img = admin.Post("/v1/images", {{"name", "tiny"},
                                       {"format", m.value("disk_format", "raw")},
                                       {"has_kernel", true},
                                       {"has_initrd", true},
                                       {"append", m.value("append", "")}});
  if (!img.ok()) Die(img.error().message);
  const std::string img_id = (*img)["id"];
  for (auto [kind, key] : {std::pair{"disk", "disk"}, {"kernel", "kernel"}, {"initrd", "initrd"}})
    if (auto r = admin.PutFile("/v1/images/" + img_id + "/files/" + kind,
                               dir + "/" + m[key].get<std::string>());
        !r.ok())
      Die(std::string(kind) + ": " + r.error().message);
  if (auto r = AwaitOperation(admin, admin.Post("/v1/images/" + img_id + "/finalize")); !r.ok())
    Die(r.error().message);
  auto user = admin.Post("/v1/users", {{"name", "flooder"}});
  if (!user.ok()) Die(user.error().message);
  const std::string token = (*user)["token"];
  ApiClient flooder(grid.url(), token);
  auto vm = flooder.Post("/v1/vms", {{"image", "tiny"}, {"name", "busy"}});
  if (!vm.ok()) Die(vm.error().message);
  const std::string vm_id = (*vm)["id"];
  auto running = PollUntil(
      flooder, "/v1/vms/" + vm_id, [](const json& j) { return j.value("state", "") != "creating"; },
      seconds(300));
  if (!running.ok() || (*running)["state"] != "running") Die("the VM did not start");
  // The probe is a host of its own: it registers with the join token.
  auto join = ReadTokenFile(grid.controller_state_dir() + "/agent.token");
  if (!join.ok()) Die(join.error().message);
  auto registered =
      ApiClient(grid.url(), *join).Post("/v1/agent/register", {{"name", "flood-probe"}});
  if (!registered.ok()) Die("registering the probe host: " + registered.error().message);
  const std::string agent = (*registered)["host_token"];

  auto probe_for = [&](int s) {
    std::atomic<bool> stop{false};
    Probe p;
    std::thread t([&] { p = RunProbe(grid.url(), grid.agent_controller_url(), agent, stop); });
    std::this_thread::sleep_for(seconds(s));
    stop = true;
    t.join();
    return p;
  };

  std::fprintf(stderr, "flood: idle baseline, %d s\n", secs);
  Probe idle = probe_for(secs);

  std::fprintf(stderr, "flood: %d exec + %d query threads of one user, %d s\n", exec_threads,
               query_threads, secs);
  FloodCounts execs, queries;
  std::atomic<bool> flood_stop{false};
  std::vector<std::thread> flood;
  const std::string exec_body = json{{"argv", {"/bin/sleep", "40"}}, {"timeout_s", 120}}.dump();
  const std::string query_body = json{{"sql", "SELECT id, state, memory_mb FROM vms"}}.dump();
  auto flood_loop = [&](const std::string& path, const std::string& body, FloodCounts& c,
                        int ok_status) {
    auto cli_owner = NewHttpClient(grid.url());
    auto& cli = *cli_owner;
    cli.set_keep_alive(true);
    cli.set_read_timeout(120, 0);
    while (!flood_stop) {
      auto r =
          cli.Post(path.c_str(), {{"Authorization", "Bearer " + token}}, body, "application/json");
      if (r && r->status == ok_status)
        ++c.accepted;
      else if (r && r->status == 429)
        ++c.limited;
      else
        ++c.other;
    }
  };
  auto t0 = Clock::now();
  for (int i = 0; i < exec_threads; ++i)
    flood.emplace_back([&] { flood_loop("/v1/vms/" + vm_id + "/exec", exec_body, execs, 202); });
  for (int i = 0; i < query_threads; ++i)
    flood.emplace_back([&] { flood_loop("/v1/query", query_body, queries, 200); });
  std::this_thread::sleep_for(seconds(1));  // the flood in full swing
  Probe busy = probe_for(secs);
  flood_stop = true;
  for (auto& t : flood) t.join();
  const double flood_s = std::chrono::duration<double>(Clock::now() - t0).count();
  auto hosts = admin.Get("/v1/hosts");
  std::string host_state = "?";
  if (hosts.ok())
    for (const auto& h : (*hosts)["hosts"])
      if (h["name"] == "host-1") host_state = h["state"];

  std::printf("\nflood benchmark, %s\n%s\n\n", FormatTimeMs(NowMs()).c_str(),
              bench::MachineLine().c_str());
  std::printf(
      "| phase | probe | answered | failed | p50 ms | p99 ms | max ms "
      "|\n|---|---|---|---|---|---|---|\n");
  for (auto [phase, p] : {std::pair{"idle", &idle}, {"flood", &busy}})
    for (auto [name, l] : {std::pair{"GET /v1/health", &p->health},
                           {"heartbeat, main listener", &p->heartbeat},
                           {"heartbeat, agents' listener", &p->agent_heartbeat}}) {
      if (l->ms.empty() && l->failed == 0) continue;  // no agents' listener (older build)
      std::printf("| %s | %s | %zu | %d | %.2f | %.2f | %.2f |\n", phase, name, l->ms.size(),
                  l->failed, l->Pct(0.5), l->Pct(0.99),
                  l->ms.empty() ? 0.0 : *std::max_element(l->ms.begin(), l->ms.end()));
    }
  std::printf(
      "\n| flood (one user, %.0f s) | threads | accepted | 429 | other | requests/s "
      "|\n|---|---|---|---|---|---|\n",
      flood_s);
  for (auto [name, n, c] : {std::tuple{"exec `sleep 40` (202)", exec_threads, &execs},
                            {"query (200)", query_threads, &queries}}) {
    int64_t total = c->accepted + c->limited + c->other;
    std::printf("| %s | %d | %lld | %lld | %lld | %.0f |\n", name, n,
                static_cast<long long>(c->accepted.load()),
                static_cast<long long>(c->limited.load()), static_cast<long long>(c->other.load()),
                static_cast<double>(total) / flood_s);
  }
  std::printf("\nhost-1 after the flood: %s\n", host_state.c_str());
  grid.KillVmProcesses();
  return 0;
}
