// bench/infosvc: the information service and placement at grid scale, with a
// real controller (the built `vmgrid` binary) and simulated hosts (SimHosts,
// in this process) that heartbeat like agents and answer VM operations at once.
//
// Query phase: SimHosts registers --hosts hosts through heartbeats; the
// controller is stopped, --vms VM records are inserted directly with the
// Store API (and seeded into the simulated hosts, which then report them in
// their heartbeats), and the controller is started again. Then, interleaved
// run by run, the latency of a single-resource query, two join queries and
// the set (co-allocation) query, both through QueryService in this process and
// through POST /v1/query; then the set query written as a naive 4-way SQL
// self-join, with a timeout.
//
// Placement phase: a fresh controller, --placement-hosts simulated hosts, and
// --clients threads POSTing /v1/vms until --placements creates were accepted
// (default 4 per host, so that the hosts' heartbeats run through it).
//
// Prints a markdown table and writes it into docs/benchmarks.md.
//
// Usage: infosvc [--backend sqlite|postgres] [--pg-url URL]
//                [--hosts N] [--vms N] [--placement-hosts N] [--placements N]
//                [--runs N] [--clients N] [--heartbeat-interval S]
//                [--naive-timeout S] [--query-budget S] [--skip-queries] [--skip-placement]
//                [--no-write] [--docs PATH]
// VMGRID_BINARY in the environment overrides the `vmgrid` binary to run.
// --backend postgres runs the controller on PostgreSQL: --pg-url (default
// $VMGRID_TEST_PG_URL, e.g. from scripts/pg-test-server.sh) names a database
// whose role may CREATE DATABASE; each phase gets a fresh database of its own,
// dropped afterwards.

#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "client/api_client.h"
#include "common/util.h"
#include "dev/local_grid.h"
#include "die.h"
#include "infosvc/query_service.h"
#include "machine.h"
#include "sim/controller_process.h"
#include "sim/sim_hosts.h"
#include "store/store.h"

using namespace vmgrid;
using nlohmann::json;
using vmgrid::bench::Die;
using vmgrid::bench::Must;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

struct Flags {
  std::string backend = "sqlite";
  std::string pg_url = getenv("VMGRID_TEST_PG_URL") ? getenv("VMGRID_TEST_PG_URL") : "";
  int hosts = 10'000;
  int vms = 100'000;
  int placement_hosts = 5'000;
  // 0 = 4 per host: long enough (~10 s) that the hosts' heartbeats run
  // through the measurement (a 5,000-create run ends before the first round).
  int placements = 0;
  int runs = 200;
  int clients = 8;
  double heartbeat_interval_s = 5;
  int naive_timeout_s = 60;
  // Wall-time budget of the query runs, half live and half quiet: they stop
  // early (after at least 10 live / 20 quiet runs) once it is spent.
  double query_budget_s = 150;
  bool queries = true;
  bool placement = true;
  bool write = true;
  std::string docs = std::string(VMGRID_SOURCE_DIR) + "/docs/benchmarks.md";
  std::string state_dir = "/tmp/vmgrid-bench-infosvc";
};

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }
double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Samples {
  std::vector<double> v;  // ms
  // Nearest-rank percentile.
  double P(double p) const {
    if (v.empty()) return NAN;
    auto s = v;
    std::sort(s.begin(), s.end());
    size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(s.size())));
    return s[std::min(s.size() - 1, rank == 0 ? 0 : rank - 1)];
  }
};

std::string Fmt(double ms) {
  char b[64];
  if (std::isnan(ms)) return "–";
  if (ms >= 100)
    std::snprintf(b, sizeof b, "%.0f", ms);
  else if (ms >= 10)
    std::snprintf(b, sizeof b, "%.1f", ms);
  else
    std::snprintf(b, sizeof b, "%.2f", ms);
  return b;
}

std::string Thousands(int64_t n) {
  std::string s = std::to_string(n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

using bench::MachineLine;

// A 1 MiB raw disk with an MBR boot signature: passes the controller's image
// checks; simulated hosts never boot it.
std::string WriteBootableDisk(const std::string& path) {
  std::string data(1 << 20, '\0');
  data[510] = static_cast<char>(0x55);
  data[511] = static_cast<char>(0xAA);
  std::ofstream(path, std::ios::binary) << data;
  return path;
}

std::string CreateImage(const ApiClient& api, const std::string& name, const std::string& disk) {
  json created = Must(api.Post("/v1/images", {{"name", name}, {"format", "raw"}}), "create image");
  std::string id = created["id"];
  Must(api.PutFile("/v1/images/" + id + "/files/disk", disk), "upload disk");
  Must(AwaitOperation(api, api.Post("/v1/images/" + id + "/finalize")), "finalize image");
  return id;
}

int64_t QueryCount(const ApiClient& api, const std::string& sql) {
  auto r = api.Post("/v1/query", {{"sql", sql}});
  if (!r.ok()) return -1;
  return (*r)["rows"][0][0].get<int64_t>();
}

// Waits until `n` simulated hosts registered and the controller lists them up.
void WaitHostsUp(const SimHosts& sim, const ApiClient& api, int n, const char* what) {
  auto t0 = Clock::now();
  while (QueryCount(api, "SELECT COUNT(*) FROM hosts WHERE state = 'up'") < n) {
    if (Since(t0) > 300) Die(std::string("hosts did not come up: ") + what);
    std::this_thread::sleep_for(milliseconds(200));
  }
  (void)sim;
}

// Occurrences of `needle` in a file (the controller's log).
int CountInFile(const std::string& path, const std::string& needle) {
  auto text = ReadFile(path, size_t{1} << 30);
  if (!text.ok()) return -1;
  int n = 0;
  for (size_t p = text->find(needle); p != std::string::npos; p = text->find(needle, p + 1)) ++n;
  return n;
}

// `url` with its database replaced by `db` (libpq URI: scheme://auth/db?params).
std::string WithDatabase(const std::string& url, const std::string& db) {
  size_t auth = url.find("://") + 3;
  size_t path = url.find_first_of("/?", auth);
  if (path == std::string::npos) return url + "/" + db;
  size_t query = url.find('?', path);
  return url.substr(0, path) + "/" + db + (query == std::string::npos ? "" : url.substr(query));
}

// The controller's database for one phase: "" (SQLite in its state
// directory) or a fresh PostgreSQL database, dropped by the destructor.
class PhaseDatabase {
 public:
  PhaseDatabase(const Flags& f, const std::string& phase) {
    if (f.backend != "postgres") return;
    if (f.pg_url.empty()) Die("--backend postgres needs --pg-url or VMGRID_TEST_PG_URL");
    admin_url_ = f.pg_url;
    name_ = "vmgrid_bench_" + phase + "_" + std::to_string(getpid());
    auto admin = Must(OpenSqlBackend(admin_url_), "connect to " + RedactTarget(admin_url_));
    if (auto st = admin->ExecScript("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)"); !st.ok())
      Die(st.error().message);
    if (auto st = admin->ExecScript("CREATE DATABASE " + name_); !st.ok()) Die(st.error().message);
    target_ = WithDatabase(admin_url_, name_);
  }
  ~PhaseDatabase() {
    if (name_.empty()) return;
    auto admin = OpenSqlBackend(admin_url_);
    if (admin.ok())
      (void)(*admin)->ExecScript("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  }
  const std::string& target() const { return target_; }

 private:
  std::string admin_url_, name_, target_;
};

std::unique_ptr<ControllerProcess> StartController(const std::string& dir,
                                                   const std::string& database) {
  ControllerProcessOptions o;
  o.database = database;
  o.vmgrid_binary = getenv("VMGRID_BINARY") ? getenv("VMGRID_BINARY") : VMGRID_BINARY;
  o.state_dir = dir + "/controller";
  o.log_path = dir + "/controller.log";
  return Must(ControllerProcess::Start(o), "start controller");
}

SimHostsOptions SimOptions(const ControllerProcess& c, const Flags& f, int count, int vcpus,
                           int64_t memory_mb) {
  SimHostsOptions o;
  o.controller_url = c.url();
  o.token = c.agent_token();
  o.count = count;
  o.vcpus = vcpus;
  o.memory_mb = memory_mb;
  o.sites = 10;
  o.networks = 50;
  o.heartbeat_interval_s = f.heartbeat_interval_s;
  return o;
}

struct QueryRow {
  std::string name;
  int64_t rows = 0;
  Samples quiet, live, api;  // QueryService quiet, QueryService and POST /v1/query on the live grid
  std::string note;          // instead of the quiet numbers (e.g. "> 60 s")
  std::string target;
};

std::string PercentileCells(const Samples& s) {
  if (s.v.empty()) return "– | –";
  return Fmt(s.P(50)) + " | " + Fmt(s.P(99));
}

std::string RowLine(const QueryRow& r) {
  std::string quiet = r.note.empty() ? PercentileCells(r.quiet) : r.note + " | –";
  return "| " + r.name + " | " + Thousands(r.rows) + " | " + quiet + " | " +
         PercentileCells(r.live) + " | " + PercentileCells(r.api) + " | " + r.target + " |\n";
}

std::string Verdict(bool met) { return met ? "met" : "**missed**"; }

// --- query phase ---------------------------------------------------------------------

struct QueryPhaseResult {
  std::vector<QueryRow> rows;
  std::string notes;
};

QueryPhaseResult RunQueries(const Flags& f) {
  std::string dir = f.state_dir + "/query";
  (void)RemoveTree(dir);
  if (!MakeDirs(dir).ok()) Die("mkdir " + dir);
  PhaseDatabase database(f, "query");
  auto controller = StartController(dir, database.target());
  ApiClient admin(controller->url(), controller->admin_token());

  std::vector<std::string> user_ids;
  for (const char* name : {"alice", "bob", "carol", "dave", "erin"}) {
    json u = Must(admin.Post("/v1/users", {{"name", name}}), "create user");
    user_ids.push_back(u["user"]["id"]);
  }
  std::string disk = WriteBootableDisk(dir + "/disk.raw");
  std::vector<std::string> image_ids;
  for (const char* name : {"debian", "alpine", "ubuntu", "fedora"})
    image_ids.push_back(CreateImage(admin, name, disk));

  // Room for the VMs below on every host: 64 vCPUs, 256 GiB.
  SimHosts sim(SimOptions(*controller, f, f.hosts, 64, 256 * 1024));
  auto t_reg = Clock::now();
  if (auto st = sim.Start(); !st.ok()) Die(st.error().message);
  while (sim.stats().registered < f.hosts) {
    if (Since(t_reg) > 600)
      Die("registration stalled at " + std::to_string(sim.stats().registered));
    std::this_thread::sleep_for(milliseconds(100));
  }
  double reg_s = Since(t_reg);
  std::fprintf(stderr, "%d hosts registered in %.1f s\n", f.hosts, reg_s);

  // Direct path: stop the controller, write the VM records, start it again.
  controller->Stop();
  auto t_ins = Clock::now();
  {
    auto store = Must(Store::Open(controller->db_path()), "open store");
    auto hosts = Must(store->ListHosts(), "list hosts");
    std::map<std::string, std::string> id_by_name;
    for (const auto& h : hosts) id_by_name[h.name] = h.id;
    std::mt19937_64 rng(42);
    std::set<std::pair<std::string, std::string>> cached;
    int64_t now = NowMs();
    for (int i = 0; i < f.vms; ++i) {
      int hi = static_cast<int>(rng() % static_cast<uint64_t>(f.hosts));
      Vm vm;
      char id[32];
      std::snprintf(id, sizeof id, "vm-%010llx",
                    static_cast<unsigned long long>(rng() & 0xffffffffffULL));
      vm.id = vm.name = id;
      vm.owner_id = user_ids[rng() % user_ids.size()];
      vm.image_id = image_ids[rng() % image_ids.size()];
      vm.host_id = id_by_name.at(sim.HostName(hi));
      vm.state = "running";
      vm.vcpus = 1;
      vm.memory_mb = int64_t{64} << (rng() % 6);  // 64 MB .. 2 GB
      vm.disk = "clone";
      vm.start = "boot";
      vm.network = "vnet-" + std::to_string(rng() % 1000);
      vm.created_ms = vm.updated_ms = now;
      VmStatus st;
      st.id = vm.id;
      st.owner_id = vm.owner_id;
      st.name = vm.name;
      st.state = "running";
      st.vcpus = vm.vcpus;
      st.memory_mb = vm.memory_mb;
      if (!sim.host(hi).Adopt(st).ok()) continue;  // an id drawn twice
      if (auto s = store->InsertVmRecord(vm); !s.ok()) Die("insert VM: " + s.error().message);
      if (cached.insert({vm.image_id, vm.host_id}).second)
        if (auto s = store->NoteImageCached(vm.image_id, vm.host_id); !s.ok())
          Die(s.error().message);
      if (i % 20000 == 19999) std::fprintf(stderr, "%d VMs inserted\n", i + 1);
    }
  }
  double ins_s = Since(t_ins);
  if (auto st = controller->Restart(); !st.ok()) Die(st.error().message);
  admin = ApiClient(controller->url(), controller->admin_token());
  WaitHostsUp(sim, admin, f.hosts, "after restart");
  // One full round of heartbeats, so every host has reconciled its VMs.
  int64_t ok_before = sim.stats().heartbeats_ok;
  while (sim.stats().heartbeats_ok < ok_before + f.hosts)
    std::this_thread::sleep_for(milliseconds(100));
  int64_t vms_total = QueryCount(admin, "SELECT COUNT(*) FROM vms");
  int64_t vms_bad = QueryCount(admin, "SELECT COUNT(*) FROM vms WHERE state != 'running'");
  std::fprintf(stderr, "%lld VMs (%lld not running) in %.1f s; hosts up\n",
               static_cast<long long>(vms_total), static_cast<long long>(vms_bad), ins_s);

  auto svc = Must(QueryService::Open(controller->db_path()), "open query service");
  json me = Must(admin.Get("/v1/whoami"), "whoami");
  QueryCaller caller{me["id"].get<std::string>(), true};
  auto hosts = Must(svc->Sql(caller, "SELECT id FROM hosts", {}), "list hosts");
  std::mt19937_64 rng(7);

  // The co-allocation question of the paper, and the same question with a
  // window no 4 VMs reach (4 x 2 GB = 8192 MB): there the naive join has to
  // enumerate every 4-tuple of every network before it can say "none".
  auto make_set = [](int64_t lo, int64_t hi) {
    SetQuery q;
    q.from = "vms";
    q.size = 4;
    q.same = "network";
    q.sum = "memory_mb";
    q.min = lo;
    q.max = hi;
    q.max_sets = 1;
    return q;
  };
  const SetQuery set_found = make_set(512, 1024), set_none = make_set(8200, 9000);
  auto set_json = [](const SetQuery& q) {
    return json{{"from", q.from}, {"size", q.size}, {"same", q.same},        {"sum", q.sum},
                {"min", q.min},   {"max", q.max},   {"max_sets", q.max_sets}};
  };
  auto naive_sql = [](const SetQuery& q) {
    return "SELECT a.id, b.id, c.id, d.id FROM vms a "
           "JOIN vms b ON b.network = a.network AND b.id > a.id "
           "JOIN vms c ON c.network = a.network AND c.id > b.id "
           "JOIN vms d ON d.network = a.network AND d.id > c.id "
           "WHERE a.memory_mb + b.memory_mb + c.memory_mb + d.memory_mb BETWEEN " +
           std::to_string(q.min) + " AND " + std::to_string(q.max) + " LIMIT 1";
  };

  struct Q {
    std::string name;
    std::function<std::string()> sql;  // null for a set query
    const SetQuery* set = nullptr;
    double target_p50_ms = 0;  // 0: no target
  };
  auto host_id = [&] { return hosts.rows[rng() % hosts.rows.size()][0].get<std::string>(); };
  auto site = [&] { return "site-" + std::to_string(rng() % 10 + 1); };
  auto image = [&] { return image_ids[rng() % image_ids.size()]; };
  const std::vector<Q> qs = {
      {"single: one host by id",
       [&] { return "SELECT * FROM hosts WHERE id = '" + host_id() + "'"; }, nullptr, 0},
      {"join: hosts of a site with room for 1 GB and the image cached",
       [&] {
         return "SELECT h.name, h.free_memory_mb FROM hosts h JOIN image_cache c ON c.host_id = "
                "h.id "
                "WHERE c.image_id = '" +
                image() + "' AND h.site = '" + site() +
                "' AND h.state = 'up' AND h.free_vcpus >= 1 AND h.free_memory_mb >= 1024";
       },
       nullptr, 10},
      {"join: VMs per host of a site with room for 1 GB (virtualization)",
       [&] {
         return "SELECT h.name, COUNT(*) AS vms FROM hosts h JOIN virtualization v ON "
                "v.physical_id = h.id "
                "AND v.physical_kind = 'host' WHERE h.site = '" +
                site() +
                "' AND h.free_memory_mb >= 1024 GROUP BY h.name ORDER BY vms DESC LIMIT 10";
       },
       nullptr, 10},
      {"set: 4 VMs on one network, 512..1024 MB in total", nullptr, &set_found, 20},
      {"set, no answer: 4 VMs on one network, 8200..9000 MB", nullptr, &set_none, 0},
  };

  std::vector<QueryRow> rows(qs.size());
  for (size_t i = 0; i < qs.size(); ++i) rows[i].name = qs[i].name;
  QueryLimits limits;
  limits.timeout_ms = 10'000;
  // Runs every query once per run, interleaved, until `max_runs` or (after
  // `min_runs`) the budget; through the API too when `api` is set.
  auto measure = [&](bool live, int min_runs, double budget_s) {
    auto t_meas = Clock::now();
    int done = 0;
    for (; done < f.runs && (done < min_runs || Since(t_meas) < budget_s); ++done) {
      for (size_t i = 0; i < qs.size(); ++i) {
        const Q& q = qs[i];
        std::string sql = q.sql ? q.sql() : "";
        auto t0 = Clock::now();
        int64_t n =
            q.sql
                ? static_cast<int64_t>(Must(svc->Sql(caller, sql, limits), q.name).rows.size())
                : static_cast<int64_t>(Must(svc->Set(caller, *q.set, limits), q.name).sets.size());
        (live ? rows[i].live : rows[i].quiet).v.push_back(Ms(Clock::now() - t0));
        rows[i].rows = n;
        if (!live) continue;
        json body = q.sql ? json{{"sql", sql}, {"timeout_ms", 10'000}}
                          : json{{"set", set_json(*q.set)}, {"timeout_ms", 10'000}};
        t0 = Clock::now();
        json answer = Must(admin.Post("/v1/query", body), q.name + " via the API");
        rows[i].api.v.push_back(Ms(Clock::now() - t0));
      }
      if ((done + 1) % 20 == 0)
        std::fprintf(stderr, "%s run %d\n", live ? "live" : "quiet", done + 1);
    }
    return done;
  };

  // Live grid: the controller serves heartbeats of every host meanwhile.
  auto hb0 = sim.stats();
  int down_before = CountInFile(dir + "/controller.log", "missed its heartbeats");
  auto t_live = Clock::now();
  int live_runs = measure(true, 10, f.query_budget_s / 2);
  double live_s = Since(t_live);
  auto hb1 = sim.stats();
  int64_t up_at_end = QueryCount(admin, "SELECT COUNT(*) FROM hosts WHERE state = 'up'");
  int down_events = CountInFile(dir + "/controller.log", "missed its heartbeats") - down_before;
  double hb_rate = static_cast<double>(hb1.heartbeats_ok - hb0.heartbeats_ok) / live_s;
  double hb_rtt = hb1.heartbeats_ok > hb0.heartbeats_ok
                      ? static_cast<double>(hb1.heartbeat_us_total - hb0.heartbeat_us_total) /
                            1000.0 / static_cast<double>(hb1.heartbeats_ok - hb0.heartbeats_ok)
                      : NAN;

  // Quiet: hosts and controller stopped (the database keeps every host up),
  // so the numbers are the information service's own cost.
  sim.Shutdown();
  sim.Wait();
  controller->Stop();
  int quiet_runs = measure(false, 20, f.query_budget_s / 2);
  auto example = Must(svc->Set(caller, set_found, limits), "set");

  // The set questions as plain SQL: a 4-way self-join, up to 20 runs or the
  // timeout, whichever comes first (quiet).
  auto run_naive = [&](const SetQuery& q, const std::string& name) {
    QueryRow row;
    row.name = name;
    QueryLimits nl;
    nl.timeout_ms = int64_t{f.naive_timeout_s} * 1000;
    auto t_naive = Clock::now();
    for (int r = 0; r < std::min(f.runs, 20) && Since(t_naive) < f.naive_timeout_s; ++r) {
      auto t0 = Clock::now();
      auto res = svc->Sql(caller, naive_sql(q), nl);
      if (!res.ok()) {
        row.note = "> " + std::to_string(f.naive_timeout_s) + " s";
        std::fprintf(stderr, "%s: %s\n", name.c_str(), res.error().message.c_str());
        break;
      }
      row.quiet.v.push_back(Ms(Clock::now() - t0));
      row.rows = static_cast<int64_t>(res->rows.size());
    }
    return row;
  };
  std::vector<QueryRow> naive = {
      run_naive(set_found, "naive SQL 4-way self-join, 512..1024 MB"),
      run_naive(set_none, "naive SQL 4-way self-join, no answer (8200..9000 MB)")};

  QueryPhaseResult out;
  for (size_t i = 0; i < qs.size(); ++i) {
    if (qs[i].target_p50_ms > 0) {
      double t = qs[i].target_p50_ms;
      rows[i].target = "p50 ≤ " + std::to_string(static_cast<int>(t)) +
                       " ms: " + Verdict(rows[i].quiet.P(50) <= t) + " quiet, " +
                       Verdict(rows[i].api.P(50) <= t) + " live API";
    }
    out.rows.push_back(rows[i]);
  }
  // Speed-up of the set operator over the naive join (both quiet, QueryService).
  for (size_t k = 0; k < naive.size(); ++k) {
    QueryRow& row = naive[k];
    const QueryRow& set_row = rows[qs.size() - 2 + k];
    double naive_p50 = row.note.empty() ? row.quiet.P(50) : f.naive_timeout_s * 1000.0;
    double speedup = naive_p50 / set_row.quiet.P(50);
    char sp[160];
    std::snprintf(sp, sizeof sp, "set operator %s%.0fx faster%s", row.note.empty() ? "" : "> ",
                  speedup, k == 0 ? (" (≥ 100x: " + Verdict(speedup >= 100) + ")").c_str() : "");
    row.target = sp;
    out.rows.push_back(row);
  }

  std::ostringstream notes;
  char line[2048];
  std::snprintf(
      line, sizeof line,
      "Setup: %s simulated hosts (10 sites, 50 network segments, 64 vCPUs and 256 GiB each) "
      "registered through heartbeats in %.1f s (%.0f hosts/s); the controller was then stopped, "
      "%s VM records were inserted with the Store API in %.1f s (direct path: memory 64 MB..2 GB, "
      "powers of two; 1,000 virtual networks; 5 users; 4 images) and seeded into the simulated "
      "hosts, and the controller was restarted. During the measurements every host heartbeats "
      "every %.0f s. Queries run as the admin; latency is wall time per call, queries interleaved "
      "run by run. *Live grid*: controller running and every host heartbeating (%.0f heartbeats/s "
      "of %.0f scheduled, mean round trip %.1f ms; %lld of %s hosts up at the end, %d host-down "
      "events meanwhile), %d runs; QueryService in this process on its own read-only connection "
      "to the controller's database, POST /v1/query including HTTP and a new connection per call. "
      "*Quiet*: hosts and controller stopped, QueryService only, %d runs. Example set: %s.\n",
      Thousands(f.hosts).c_str(), reg_s, f.hosts / reg_s, Thousands(vms_total).c_str(), ins_s,
      f.heartbeat_interval_s, hb_rate, f.hosts / f.heartbeat_interval_s, hb_rtt,
      static_cast<long long>(up_at_end), Thousands(f.hosts).c_str(), down_events, live_runs,
      quiet_runs,
      example.sets.empty() ? "none found"
                           : (example.sets[0].group.dump() + " total " +
                              std::to_string(example.sets[0].total) + " MB")
                                 .c_str());
  notes << line;
  out.notes = notes.str();
  return out;
}

// --- placement phase ---------------------------------------------------------------------

struct PlacementResult {
  int hosts = 0, accepted = 0, refused = 0, failed = 0;
  double seconds = 0, rate = 0, running_after_s = NAN;
  int down_events = 0;
  double heartbeat_rate = 0, heartbeat_rtt_ms = NAN;
  Samples latency;
  std::string first_error;
};

PlacementResult RunPlacement(const Flags& f) {
  std::string dir = f.state_dir + "/placement";
  (void)RemoveTree(dir);
  if (!MakeDirs(dir).ok()) Die("mkdir " + dir);
  PhaseDatabase database(f, "placement");
  auto controller = StartController(dir, database.target());
  ApiClient admin(controller->url(), controller->admin_token());
  CreateImage(admin, "debian", WriteBootableDisk(dir + "/disk.raw"));
  ApiClient::Options keep;
  keep.keep_alive = true;  // the creates reuse their connections
  ApiClient creator(controller->url(), controller->admin_token(), keep);
  SimHosts sim(SimOptions(*controller, f, f.placement_hosts, 16, 64 * 1024));
  if (auto st = sim.Start(); !st.ok()) Die(st.error().message);
  WaitHostsUp(sim, admin, f.placement_hosts, "placement");
  std::fprintf(stderr, "%d hosts up; placing\n", f.placement_hosts);

  PlacementResult out;
  out.hosts = f.placement_hosts;
  int target = f.placements > 0 ? f.placements : 4 * f.placement_hosts;
  std::atomic<int> issued{0}, accepted{0}, refused{0}, failed{0};
  std::mutex mu;
  std::vector<std::thread> threads;
  auto hb0 = sim.stats();
  auto t0 = Clock::now();
  for (int c = 0; c < f.clients; ++c) {
    threads.emplace_back([&] {
      std::vector<double> mine;
      while (issued.fetch_add(1) < target) {
        auto s = Clock::now();
        auto r = creator.Post("/v1/vms", {{"image", "debian"}, {"vcpus", 1}, {"memory_mb", 256}});
        mine.push_back(Ms(Clock::now() - s));
        if (r.ok()) {
          ++accepted;
        } else {
          (r.error().code == ErrorCode::kResourceExhausted ? refused : failed)++;
          std::lock_guard<std::mutex> l(mu);
          if (out.first_error.empty()) out.first_error = r.error().message;
        }
      }
      std::lock_guard<std::mutex> l(mu);
      out.latency.v.insert(out.latency.v.end(), mine.begin(), mine.end());
    });
  }
  for (auto& t : threads) t.join();
  out.seconds = Since(t0);
  auto hb1 = sim.stats();
  out.heartbeat_rate = static_cast<double>(hb1.heartbeats_ok - hb0.heartbeats_ok) / out.seconds;
  if (hb1.heartbeats_ok > hb0.heartbeats_ok)
    out.heartbeat_rtt_ms = static_cast<double>(hb1.heartbeat_us_total - hb0.heartbeat_us_total) /
                           1000.0 / static_cast<double>(hb1.heartbeats_ok - hb0.heartbeats_ok);
  out.accepted = accepted;
  out.refused = refused;
  out.failed = failed;
  out.rate = out.accepted / out.seconds;
  // The creates run on the controller's background threads; the hosts answer at once.
  while (Since(t0) < out.seconds + 120) {
    if (QueryCount(admin, "SELECT COUNT(*) FROM vms WHERE state = 'running'") >= out.accepted) {
      out.running_after_s = Since(t0);
      break;
    }
    std::this_thread::sleep_for(milliseconds(200));
  }
  sim.Shutdown();
  sim.Wait();
  out.down_events = CountInFile(dir + "/controller.log", "missed its heartbeats");
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  const char* kUsage =
      "usage: infosvc [--backend sqlite|postgres] [--pg-url URL] [--hosts N] [--vms N] "
      "[--placement-hosts N] [--placements N] [--runs N] "
      "[--clients N] [--heartbeat-interval S] [--naive-timeout S] [--query-budget S] "
      "[--skip-queries] [--skip-placement] [--no-write] [--docs PATH]";
  auto usage = [&] { Die(kUsage); };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    bool has = i + 1 < argc;
    if (a == "--help" || a == "-h") {
      std::printf("%s\n", kUsage);
      return 0;
    } else if (a == "--backend" && has) {
      f.backend = argv[++i];
      if (f.backend != "sqlite" && f.backend != "postgres") usage();
    } else if (a == "--pg-url" && has)
      f.pg_url = argv[++i];
    else if (a == "--hosts" && has)
      f.hosts = std::max(1, std::atoi(argv[++i]));
    else if (a == "--vms" && has)
      f.vms = std::max(0, std::atoi(argv[++i]));
    else if (a == "--placement-hosts" && has)
      f.placement_hosts = std::max(1, std::atoi(argv[++i]));
    else if (a == "--placements" && has)
      f.placements = std::max(1, std::atoi(argv[++i]));
    else if (a == "--runs" && has)
      f.runs = std::max(1, std::atoi(argv[++i]));
    else if (a == "--clients" && has)
      f.clients = std::max(1, std::atoi(argv[++i]));
    else if (a == "--heartbeat-interval" && has)
      f.heartbeat_interval_s = std::max(0.1, std::atof(argv[++i]));
    else if (a == "--naive-timeout" && has)
      f.naive_timeout_s = std::max(1, std::atoi(argv[++i]));
    else if (a == "--query-budget" && has)
      f.query_budget_s = std::max(1.0, std::atof(argv[++i]));
    else if (a == "--skip-queries")
      f.queries = false;
    else if (a == "--skip-placement")
      f.placement = false;
    else if (a == "--no-write")
      f.write = false;
    else if (a == "--docs" && has)
      f.docs = argv[++i];
    else
      usage();
  }
  signal(SIGPIPE, SIG_IGN);
  spdlog::set_default_logger(spdlog::stderr_color_mt("infosvc"));  // stdout is the table
  auto t_all = Clock::now();

  std::ostringstream md;
  md << "Date: " << FormatTimeMs(NowMs()).substr(0, 10) << ". Machine: " << MachineLine()
     << ". Controller: the built `vmgrid controller` ("
     << (f.backend == "postgres" ? "PostgreSQL 15 store, local server, fsync off" : "SQLite store")
     << "); hosts: SimHosts in the "
        "benchmark "
        "process (agent API and heartbeats, VM operations answered at once).\n\n";
  if (f.queries) {
    QueryPhaseResult q = RunQueries(f);
    md << q.notes << "\n"
       << "| query | rows/sets | quiet p50 (ms) | quiet p99 | live p50 | live p99 | live API p50 | "
          "live API p99 | target |\n"
       << "|---|---|---|---|---|---|---|---|---|\n";
    for (const auto& r : q.rows) md << RowLine(r);
    md << "\n";
  }
  if (f.placement) {
    PlacementResult p = RunPlacement(f);
    char running[32] = "–";
    if (!std::isnan(p.running_after_s))
      std::snprintf(running, sizeof running, "%.1f", p.running_after_s);
    char line[2048];
    std::snprintf(
        line, sizeof line,
        "Placement: %s simulated hosts (16 vCPUs, 64 GiB each), %d client threads POSTing "
        "/v1/vms (1 vCPU, 256 MB) with keep-alive connections until %s creates were "
        "accepted (202). Meanwhile the hosts heartbeat every %.0f s: %.0f heartbeats/s of %.0f "
        "scheduled, mean round trip %s ms, %d host-down events in the controller's log.%s\n\n"
        "| hosts | accepted | refused | failed | seconds | placements/s | create p50 (ms) | "
        "create p99 (ms) | all running after (s) | target |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        "| %s | %d | %d | %d | %.1f | %.0f | %s | %s | %s | ≥ 2,000/s: %s |\n",
        Thousands(p.hosts).c_str(), f.clients,
        Thousands(f.placements > 0 ? f.placements : 4 * f.placement_hosts).c_str(),
        f.heartbeat_interval_s, p.heartbeat_rate, p.hosts / f.heartbeat_interval_s,
        Fmt(p.heartbeat_rtt_ms).c_str(), p.down_events,
        p.first_error.empty() ? "" : (" First error: " + p.first_error + ".").c_str(),
        Thousands(p.hosts).c_str(), p.accepted, p.refused, p.failed, p.seconds, p.rate,
        Fmt(p.latency.P(50)).c_str(), Fmt(p.latency.P(99)).c_str(), running,
        Verdict(p.rate >= 2000).c_str());
    md << line;
  }
  char tail[128];
  std::snprintf(tail, sizeof tail, "\nWhole run: %.0f s.\n", Since(t_all));
  md << tail;
  std::printf("%s", md.str().c_str());

  if (f.write) {
    std::string begin = "<!-- infosvc-" + f.backend + ":begin -->",
                end = "<!-- infosvc-" + f.backend + ":end -->";
    auto old = ReadFile(f.docs);
    std::string text = old.ok() ? *old : "# Benchmarks\n\n";
    std::string block = begin + "\n" + md.str() + end;
    auto b = text.find(begin), e = text.find(end);
    if (b != std::string::npos && e != std::string::npos)
      text.replace(b, e + end.size() - b, block);
    else
      text += "\n## Information service (bench/infosvc), " + f.backend + "\n\n" + block + "\n";
    if (!WriteFileAtomic(f.docs, text).ok()) Die("cannot write " + f.docs);
    std::fprintf(stderr, "wrote %s\n", f.docs.c_str());
  }
  return 0;
}
