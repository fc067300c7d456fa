// bench/listing: how fast the controller answers list requests (issue 15
// §3): a user with --vms VMs (default 500) among --others VMs of other users,
// on a real controller (the built `vmgrid` binary, SQLite) whose hosts are
// SimHosts heartbeating every 2 s like agents.
//
// Rows, each measured --runs times for --seconds with --clients threads on
// keep-alive connections, all runs of all rows in one random order (--seed):
//   - GET /v1/health: the HTTP floor (same server, same connections);
//   - GET /v1/vms?limit=VMS: the user's whole list as one page;
//   - GET /v1/vms?limit=100, following `next` until the last page: the
//     same list in pages (full lists per second, and pages per second);
//   - GET /v1/vms?limit=VMS as admin (the first page of everybody's VMs);
//   - in-process Store::ListVmsPage (this process, the same database file,
//     no HTTP and no JSON): the database's floor.
// Each run gives one rate (completed requests per second, all threads); the
// table shows the median and IQR over runs and the load average seen.
//
// Usage: listing [--vms N] [--others N] [--hosts N] [--runs N] [--seconds S]
//                [--clients N] [--seed N] [--no-write] [--docs PATH]

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "client/api_client.h"
#include "common/util.h"
#include "die.h"
#include "grid_bench.h"
#include "machine.h"
#include "sim/controller_process.h"
#include "sim/sim_hosts.h"
#include "stats.h"
#include "store/store.h"

using namespace vmgrid;
using namespace vmgrid::bench;
using nlohmann::json;

namespace {

struct Flags {
  int vms = 500;
  int others = 4500;
  int hosts = 20;
  int runs = 10;
  double seconds = 2;
  int clients = 4;
  uint64_t seed = 1;
  bool write = true;
  std::string docs = std::string(VMGRID_SOURCE_DIR) + "/docs/benchmarks.md";
  std::string state_dir = "/tmp/vmgrid-bench-listing";
};

// The first page of at most `limit` items.
PageRequest FirstPage(int64_t limit) {
  PageRequest p;
  p.limit = limit;
  return p;
}

// One request of a row, on the thread's own connection; false on a wrong
// answer (the run is then void).
using Request = std::function<bool(httplib::Client&, int64_t& items)>;

struct Row {
  std::string name;
  std::string token;  // "" for the in-process row
  Request request;
  std::function<bool(int64_t&)> local;  // the in-process row
  Samples rate, items_rate, cpu_ms;     // cpu_ms: controller CPU per request (HTTP rows)
};

// GET `path` with `token`; the answer must be 200.
bool GetOk(httplib::Client& c, const std::string& path, const std::string& token) {
  auto res = c.Get(path, {{"Authorization", "Bearer " + token}});
  return res && res->status == 200;
}

// GET `path` with `token` without parsing the answer (the client's JSON
// parsing would compete with the controller for the same two cores): it
// must be 200 and name `owner` (if not "") as the owner of every VM in it,
// the VM objects being the only place "owner" appears; `count` grows by
// their number. `next` (if set) gets the answer's next cursor ("" on the
// last page).
bool GetVmsRaw(httplib::Client& c, const std::string& path, const std::string& token,
               const std::string& owner, int64_t& count, std::string* next) {
  auto res = c.Get(path, {{"Authorization", "Bearer " + token}});
  if (!res || res->status != 200) return false;
  const std::string& b = res->body;
  const std::string any = "\"owner\":", mine = "\"owner\":\"" + owner + "\"";
  int64_t all = 0, own = 0;
  for (size_t p = b.find(any); p != std::string::npos; p = b.find(any, p + 1)) {
    ++all;
    own += b.compare(p, mine.size(), mine) == 0;
  }
  if (!owner.empty() && own != all) return false;
  count += all;
  if (next != nullptr) {
    next->clear();
    const std::string key = "\"next\":\"";
    if (size_t p = b.rfind(key); p != std::string::npos) {
      size_t end = b.find('"', p + key.size());
      if (end == std::string::npos) return false;
      *next = b.substr(p + key.size(), end - p - key.size());
    }
  }
  return true;
}

struct RunResult {
  double rate = 0, items_rate = 0, cpu_ms_per_request = 0;
};

// Runs `row` with `clients` threads for `seconds`; returns requests/s,
// items/s and the CPU time process `server` spent per request, or nothing
// when an answer was wrong.
std::optional<RunResult> RunOnce(Row& row, const std::string& url, int clients, double seconds,
                                 pid_t server) {
  std::atomic<int64_t> done{0}, items{0};
  const double cpu0 = ProcessCpuMs(server);
  std::atomic<bool> bad{false}, stop{false};
  std::vector<std::thread> threads;
  auto t0 = Clock::now();
  for (int i = 0; i < clients; ++i)
    threads.emplace_back([&] {
      std::unique_ptr<httplib::Client> c;
      if (row.request) {
        c = std::make_unique<httplib::Client>(url);
        c->set_keep_alive(true);
        c->set_read_timeout(30, 0);
      }
      while (!stop.load()) {
        int64_t n = 0;
        bool ok = row.request ? row.request(*c, n) : row.local(n);
        if (!ok) {
          bad = true;
          return;
        }
        done.fetch_add(1);
        items.fetch_add(n);
      }
    });
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  double s = Since(t0);
  const double cpu = ProcessCpuMs(server) - cpu0;
  if (bad.load()) return std::nullopt;
  const double n = static_cast<double>(done.load());
  return RunResult{n / s, static_cast<double>(items.load()) / s, n > 0 ? cpu / n : 0};
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"vmgrid list-endpoint benchmark"};
  app.add_option("--vms", f.vms, "VMs of the listing user")->check(CLI::Range(1, 100000));
  app.add_option("--others", f.others, "VMs of other users")->check(CLI::Range(0, 1000000));
  app.add_option("--hosts", f.hosts, "simulated hosts")->check(CLI::Range(1, 10000));
  app.add_option("--runs", f.runs, "runs per row")->check(CLI::Range(1, 1000));
  app.add_option("--seconds", f.seconds, "seconds per run")->check(CLI::Range(0.2, 600.0));
  app.add_option("--clients", f.clients, "client threads")->check(CLI::Range(1, 64));
  app.add_option("--seed", f.seed, "order of the runs");
  app.add_flag("!--no-write", f.write, "do not update docs/benchmarks.md");
  app.add_option("--docs", f.docs, "the markdown file to update");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  (void)RemoveTree(f.state_dir);
  if (!MakeDirs(f.state_dir).ok()) Die("mkdir " + f.state_dir);
  ControllerProcessOptions co;
  co.vmgrid_binary = getenv("VMGRID_BINARY") ? getenv("VMGRID_BINARY") : VMGRID_BINARY;
  co.state_dir = f.state_dir + "/controller";
  co.log_path = f.state_dir + "/controller.log";
  auto controller = Must(ControllerProcess::Start(co), "start controller");
  ApiClient admin(controller->url(), controller->admin_token());
  json lister = Must(admin.Post("/v1/users", {{"name", "lister"}}), "create user");
  json other = Must(admin.Post("/v1/users", {{"name", "other"}}), "create user");
  const std::string lister_token = lister["token"], lister_id = lister["user"]["id"];
  const std::string other_id = other["user"]["id"];

  SimHostsOptions so;
  so.controller_url = controller->url();
  so.token = controller->agent_token();
  so.count = f.hosts;
  so.vcpus = 1024;
  so.memory_mb = 1 << 22;
  so.heartbeat_interval_s = 2;
  SimHosts sim(so);
  if (auto st = sim.Start(); !st.ok()) Die(st.error().message);
  while (sim.stats().registered < f.hosts)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));

  // The VM records, written directly while the controller is down (as
  // bench/infosvc does), and adopted by the simulated hosts.
  controller->Stop();
  {
    auto store = Must(Store::Open(controller->db_path()), "open store");
    auto hosts = Must(store->ListHosts(), "list hosts");
    std::map<std::string, std::string> id_by_name;
    for (const auto& h : hosts) id_by_name[h.name] = h.id;
    // The image they were made from (a record only: simulated hosts boot nothing).
    Image image;
    image.id = "img-listing";
    image.name = "listing";
    image.owner_id = lister_id;
    image.state = "ready";
    image.format = "raw";
    image.dir = f.state_dir;
    if (auto s = store->InsertImage(image); !s.ok()) Die("insert image: " + s.error().message);
    std::mt19937_64 rng(42);
    int64_t now = NowMs();
    for (int i = 0; i < f.vms + f.others; ++i) {
      int hi = i % f.hosts;
      Vm vm;
      char id[32];
      std::snprintf(id, sizeof id, "vm-%010llx",
                    static_cast<unsigned long long>(rng() & 0xffffffffffULL));
      vm.id = vm.name = id;
      vm.owner_id = i < f.vms ? lister_id : other_id;
      vm.image_id = image.id;
      vm.host_id = id_by_name.at(sim.HostName(hi));
      vm.state = "running";
      vm.vcpus = 1;
      vm.memory_mb = 256;
      vm.disk = "clone";
      vm.start = "boot";
      vm.network = "default";
      vm.created_ms = vm.updated_ms = now + i;
      VmStatus st;
      st.id = vm.id;
      st.owner_id = vm.owner_id;
      st.name = vm.name;
      st.state = "running";
      st.vcpus = vm.vcpus;
      st.memory_mb = vm.memory_mb;
      if (!sim.host(hi).Adopt(st).ok()) continue;  // an id drawn twice
      if (auto s = store->InsertVmRecord(vm); !s.ok()) Die("insert VM: " + s.error().message);
    }
  }
  if (auto st = controller->Restart(); !st.ok()) Die(st.error().message);
  admin = ApiClient(controller->url(), controller->admin_token());
  const std::string admin_token = controller->admin_token();

  // What the user sees must be exactly their VMs, in pages or not.
  {
    ApiClient user(controller->url(), lister_token);
    json page = Must(user.Get("/v1/vms?limit=" + std::to_string(f.vms)), "list");
    if (page["vms"].size() != static_cast<size_t>(f.vms))
      Die("the user's list has " + std::to_string(page["vms"].size()) + " VMs, not " +
          std::to_string(f.vms));
    for (const auto& v : page["vms"])
      if (v["owner"] != "lister") Die("another user's VM in the list");
  }

  auto store = Must(Store::Open(controller->db_path()), "open store");
  const std::string page_all = "/v1/vms?limit=" + std::to_string(f.vms);
  std::vector<Row> rows;
  rows.push_back(
      {"GET /v1/health (HTTP floor)",
       lister_token,
       [&](httplib::Client& c, int64_t&) { return GetOk(c, "/v1/health", lister_token); },
       nullptr,
       {},
       {},
       {}});
  rows.push_back({"GET /v1/vms?limit=" + std::to_string(f.vms) + " (the whole list, one page)",
                  lister_token,
                  [&](httplib::Client& c, int64_t& n) {
                    return GetVmsRaw(c, page_all, lister_token, "lister", n, nullptr) && n == f.vms;
                  },
                  nullptr,
                  {},
                  {},
                  {}});
  rows.push_back({"GET /v1/vms?limit=100, following next (one whole list)",
                  lister_token,
                  [&](httplib::Client& c, int64_t& n) {
                    std::string path = "/v1/vms?limit=100", next;
                    for (int pages = 0; pages <= f.vms / 100; ++pages) {
                      if (!GetVmsRaw(c, path, lister_token, "lister", n, &next)) return false;
                      if (next.empty()) break;
                      path = "/v1/vms?limit=100&cursor=" + next;
                    }
                    return n == f.vms && next.empty();
                  },
                  nullptr,
                  {},
                  {},
                  {}});
  rows.push_back({"GET /v1/vms?limit=" + std::to_string(f.vms) + " as admin (first page of all)",
                  admin_token,
                  [&](httplib::Client& c, int64_t& n) {
                    return GetVmsRaw(c, page_all, admin_token, "", n, nullptr) && n == f.vms;
                  },
                  nullptr,
                  {},
                  {},
                  {}});
  rows.push_back({"in process: Store::ListVmsPage (database floor)",
                  "",
                  nullptr,
                  [&](int64_t& n) {
                    auto page = store->ListVmsPage(lister_id, FirstPage(f.vms));
                    if (!page.ok()) return false;
                    n = static_cast<int64_t>(page->items.size());
                    return n == f.vms;
                  },
                  {},
                  {},
                  {}});

  // Warm-up, then every run of every row in one random order.
  for (auto& r : rows)
    if (!RunOnce(r, controller->url(), f.clients, 0.5, controller->pid()))
      Die("warm-up failed: " + r.name);
  std::vector<size_t> order;
  for (size_t i = 0; i < rows.size(); ++i)
    for (int k = 0; k < f.runs; ++k) order.push_back(i);
  std::mt19937_64 rng(f.seed);
  std::shuffle(order.begin(), order.end(), rng);
  Samples load;
  for (size_t k = 0; k < order.size(); ++k) {
    Row& r = rows[order[k]];
    auto got = RunOnce(r, controller->url(), f.clients, f.seconds, controller->pid());
    if (!got) Die("a wrong answer in " + r.name);
    r.rate.v.push_back(got->rate);
    r.items_rate.v.push_back(got->items_rate);
    r.cpu_ms.v.push_back(got->cpu_ms_per_request);
    load.v.push_back(LoadAverage1());
    std::fprintf(stderr, "[%zu/%zu] %s: %.0f/s\n", k + 1, order.size(), r.name.c_str(), got->rate);
  }

  std::string md;
  md += "`bench/listing --vms " + std::to_string(f.vms) + " --others " + std::to_string(f.others) +
        " --runs " + std::to_string(f.runs) + " --seconds " + Fmt("%g", f.seconds) + " --clients " +
        std::to_string(f.clients) + "`, " + Today() + ", commit " + GitCommit(VMGRID_SOURCE_DIR) +
        ", " + MachineLine() + "; load average (1 min) during the " + "runs " +
        load.MedianIqr("%.1f") + ". Requests per second with " + std::to_string(f.clients) +
        " client threads on keep-alive connections, median (IQR) " + "of " +
        std::to_string(f.runs) + " runs, all rows interleaved in random order.\n\n";
  md +=
      "| row | requests/s | VMs listed/s | controller CPU ms per request |\n|---|---:|---:|---:|\n";
  for (const auto& r : rows)
    md += "| " + r.name + " | " + r.rate.MedianIqr("%.0f") + " | " +
          (r.name.rfind("GET /v1/health", 0) == 0 ? "–" : r.items_rate.MedianIqr("%.0f")) + " | " +
          (r.request ? r.cpu_ms.MedianIqr("%.2f") : "–") + " |\n";
  const Row& one_page = rows[1];
  md += "\nGoal (issue 15): a 500-VM page answered at least 1,000 times a second: " +
        std::string(one_page.rate.Quantile(0.25) >= 1000 ? "**met**" : "**missed**") +
        " (the whole IQR must be at or above 1,000).\n";
  std::printf("%s", md.c_str());
  if (f.write)
    if (auto st = WriteDocsSection(f.docs, "bench-listing", "## Listing (bench/listing)", md);
        !st.ok())
      Die(st.error().message);
  controller->Stop();
  return 0;
}
