// bench/infosvc: the information service and placement at grid scale, as
// users load it (issue 15): a real controller (the built `vmgrid` binary) and
// simulated hosts in child processes (`vmgrid sim-hosts`, src/sim) that
// heartbeat every 2 s like agents and answer VM operations at once.
//
// Query phase: the hosts register through heartbeats; the controller is
// stopped, --vms VM records are inserted directly with the Store API and
// seeded into the simulated hosts (through their control API, sim_hosts.h),
// which then report them in their heartbeats; the controller is started
// again and timed until its API answers and until every host heartbeated
// and no VM record is in error. A window with heartbeats only measures the
// controller's CPU per heartbeat. Then an ordinary user (not the admin: the
// visibility filter applies) runs a single-resource query, two joins and the
// set (co-allocation) query with and without an answer, in a new random
// order every run, through QueryService in this process and through POST
// /v1/query with the user's token, while every host heartbeats (live); then
// with hosts and controller stopped (quiet); then the set questions as a
// naive 4-way SQL self-join and as pruned SQL, with a timeout.
//
// Placement phase: a fresh controller, --placement-hosts simulated hosts, a
// heartbeats-only window, then --clients threads POSTing /v1/vms until
// --placements creates were accepted, and until every accepted VM is
// running. On PostgreSQL twice: durable commits (fsync and synchronous_commit
// on, the headline), then relaxed (both off); the settings in effect are read
// back from the server and printed.
//
// In every measured window the heartbeats the schedule called for are
// counted against those the controller answered; the run is REJECTED (said
// in the tables, exit status 3) if fewer than 90% arrived in any of them.
//
// Prints markdown and, unless --no-write, writes it into docs/benchmarks.md
// (markers infosvc-sqlite / infosvc-postgres).
//
// Usage: infosvc [--backend sqlite|postgres] [--pg-url URL] [--pg-admin-url URL]
//                [--hosts N] [--vms N] [--placement-hosts N] [--placements N]
//                [--runs N] [--clients N] [--heartbeat-interval S] [--sim-processes N]
//                [--idle-window S] [--seed N] [--naive-timeout S] [--query-budget S]
//                [--skip-queries] [--skip-placement] [--no-write] [--full-vm-lists]
//                [--docs PATH]
// VMGRID_BINARY in the environment overrides the `vmgrid` binary to run.
// --backend postgres runs the controller on PostgreSQL: --pg-url (default
// $VMGRID_TEST_PG_URL, e.g. from scripts/pg-test-server.sh) names a database
// whose role may CREATE DATABASE; each phase gets a fresh database of its own,
// dropped afterwards. fsync is switched with ALTER SYSTEM on --pg-admin-url
// (a superuser; default --pg-url), synchronous_commit per phase database.

#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "client/api_client.h"
#include "common/child_process.h"
#include "common/util.h"
#include "dev/local_grid.h"
#include "die.h"
#include "docs_section.h"
#include "infosvc/query_service.h"
#include "machine.h"
#include "proto/vm_status.h"
#include "sim/controller_process.h"
#include "stats.h"
#include "store/sql_backend.h"
#include "store/store.h"

using namespace vmgrid;
using nlohmann::json;
using std::chrono::milliseconds;
using vmgrid::bench::Clock;
using vmgrid::bench::Die;
using vmgrid::bench::Must;
using vmgrid::bench::Samples;
using vmgrid::bench::Since;

namespace {

struct Flags {
  std::string backend = "sqlite";
  std::string pg_url = getenv("VMGRID_TEST_PG_URL") ? getenv("VMGRID_TEST_PG_URL") : "";
  std::string pg_admin_url;  // "" = pg_url
  int hosts = 10'000;
  int vms = 100'000;
  int placement_hosts = 10'000;
  int placements = 0;  // 0 = 4 per host
  int runs = 200;
  int clients = 8;
  double heartbeat_interval_s = 2;
  int sim_processes = 1;
  double idle_window_s = 10;
  uint64_t seed = 0;  // 0 = drawn at start (printed)
  int naive_timeout_s = 60;
  // Wall-time budget of the query runs, half live and half quiet: they stop
  // early (after at least 10 live / 20 quiet runs) once it is spent.
  double query_budget_s = 150;
  bool queries = true;
  bool placement = true;
  bool write = true;
  // The simulated hosts send every VM list in full (agents before
  // HostReport::vms_same_as): the baseline of the heartbeat cost.
  bool full_vm_lists = false;
  std::string docs = std::string(VMGRID_SOURCE_DIR) + "/docs/benchmarks.md";
  std::string state_dir = "/tmp/vmgrid-bench-infosvc";
  std::string command;  // as run, for the tables
};

// Fewer arrived heartbeats than this share of the scheduled ones reject the run.
constexpr double kMinArrived = 0.9;
// Exit status of a rejected run.
constexpr int kRejectedExit = 3;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// Quantile q in [0, 1] of `s` (linear interpolation), NAN without samples.
double Q(const Samples& s, double q) { return s.v.empty() ? NAN : s.Quantile(q); }

std::string FmtMs(double ms) {
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

std::string Fixed(double v, int digits) {
  if (std::isnan(v)) return "–";
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

std::string Thousands(int64_t n) {
  std::string s = std::to_string(n < 0 ? -n : n), out = n < 0 ? "-" : "";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

std::string Verdict(bool met) { return met ? "met" : "**missed**"; }

std::string VmgridBinary() {
  return getenv("VMGRID_BINARY") ? getenv("VMGRID_BINARY") : VMGRID_BINARY;
}

// --- load average during the runs --------------------------------------------------

// Samples the 1-minute load average every second from construction on; a
// table asks for the samples taken within its measured windows.
class LoadLog {
 public:
  LoadLog() : thread_([this] { Run(); }) {}
  ~LoadLog() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  using Span = std::pair<Clock::time_point, Clock::time_point>;
  // The samples taken within `spans`; for a span shorter than the sampling
  // period, the sample nearest to its end (the load average is a 1-minute
  // mean anyway).
  Samples Within(const std::vector<Span>& spans) {
    Samples out;
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [a, b] : spans) {
      size_t before = out.v.size();
      const std::pair<Clock::time_point, double>* nearest = nullptr;
      for (const auto& sample : samples_) {
        if (sample.first >= a && sample.first <= b) out.v.push_back(sample.second);
        auto d = [&](const auto& x) { return x.first > b ? x.first - b : b - x.first; };
        if (!nearest || d(sample) < d(*nearest)) nearest = &sample;
      }
      if (out.v.size() == before && nearest) out.v.push_back(nearest->second);
    }
    return out;
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> l(mu_);
    while (!stop_) {
      samples_.emplace_back(Clock::now(), bench::LoadAverage1());
      cv_.wait_for(l, std::chrono::seconds(1), [this] { return stop_; });
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;                                          // guarded by mu_
  std::vector<std::pair<Clock::time_point, double>> samples_;  // guarded by mu_
  std::thread thread_;
};

// --- the controller and its database -----------------------------------------------

std::string WriteBootableDisk(const std::string& path) {
  // A 1 MiB raw disk with an MBR boot signature: passes the controller's
  // image checks; simulated hosts never boot it.
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

// `url` whose sessions run with synchronous_commit off (libpq's `options`):
// the setup's bulk insert, which is not measured against durability.
std::string WithAsyncCommit(const std::string& url) {
  return url + (url.find('?') == std::string::npos ? "?" : "&") +
         "options=-c%20synchronous_commit%3Doff";
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
  const std::string& name() const { return name_; }
  const std::string& target() const { return target_; }

 private:
  std::string admin_url_, name_, target_;
};

std::unique_ptr<ControllerProcess> StartController(const std::string& dir,
                                                   const std::string& database) {
  ControllerProcessOptions o;
  o.database = database;
  o.vmgrid_binary = VmgridBinary();
  o.state_dir = dir + "/controller";
  o.log_path = dir + "/controller.log";
  return Must(ControllerProcess::Start(o, std::chrono::seconds(300)), "start controller");
}

// --- PostgreSQL commit settings ----------------------------------------------------

// What the server says is in effect for a phase database's new sessions.
struct PgInEffect {
  bool asked_durable = false;
  std::string fsync = "?", synchronous_commit = "?", fsync_source, version;
  std::vector<std::string> notes;  // why it differs from what was asked
  bool durable() const { return fsync == "on" && synchronous_commit == "on"; }
  bool as_asked() const {
    const char* v = asked_durable ? "on" : "off";
    return fsync == v && synchronous_commit == v;
  }
  std::string Cell() const {
    std::string s = "fsync " + fsync + ", synchronous_commit " + synchronous_commit;
    if (asked_durable && !durable()) s += " (**not durable**)";
    return s;
  }
};

// Switches fsync (ALTER SYSTEM + pg_reload_conf on the admin connection,
// which must be a superuser's) and synchronous_commit (ALTER SYSTEM, and
// ALTER DATABASE for the phase database, which also beats the server's
// command line) per phase; Restore() puts ALTER SYSTEM's file back as it was.
class PgSettings {
 public:
  // An error message without the statement it quotes.
  static std::string Brief(const std::string& message) {
    return message.substr(0, message.find(" (in '"));
  }

  PgSettings(std::string url, std::string admin_url)
      : url_(std::move(url)), admin_url_(admin_url.empty() ? url_ : std::move(admin_url)) {}

  PgInEffect Apply(bool durable, const std::string& db_name, const std::string& db_target) {
    PgInEffect out;
    out.asked_durable = durable;
    const std::string v = durable ? "on" : "off";
    auto admin = Must(OpenSqlBackend(admin_url_), "connect to " + RedactTarget(admin_url_));
    if (!probed_) {
      probed_ = true;
      // Superusers only: what ALTER SYSTEM's file held before, to restore it.
      auto rows = admin->Query(
          "SELECT name, setting FROM pg_file_settings WHERE name IN ('fsync', "
          "'synchronous_commit') AND sourcefile LIKE '%postgresql.auto.conf'");
      if (rows.ok()) {
        can_alter_ = true;
        for (const auto& r : *rows) previous_[r.Text(0)] = r.Text(1);
      } else {
        alter_error_ = Brief(rows.error().message);
      }
    }
    if (can_alter_) {
      for (const char* name : {"fsync", "synchronous_commit"}) {
        if (auto st = admin->ExecScript(std::string("ALTER SYSTEM SET ") + name + " = " + v);
            !st.ok()) {
          alter_error_ = Brief(st.error().message);
          can_alter_ = false;
          break;
        }
        altered_ = true;
      }
      if (altered_) (void)admin->Query("SELECT pg_reload_conf()");
    }
    auto owner = Must(OpenSqlBackend(url_), "connect to " + RedactTarget(url_));
    if (auto st = owner->ExecScript("ALTER DATABASE " + db_name + " SET synchronous_commit = " + v);
        !st.ok())
      out.notes.push_back("ALTER DATABASE failed: " + Brief(st.error().message));
    // A reload reaches new sessions once the postmaster processed it.
    auto t0 = Clock::now();
    do {
      auto conn = Must(OpenSqlBackend(db_target), "connect to " + RedactTarget(db_target));
      auto show = [&](const std::string& sql) {
        auto r = conn->Query(sql);
        return r.ok() && !r->empty() ? (*r)[0].Text(0) : std::string("?");
      };
      out.fsync = show("SHOW fsync");
      out.synchronous_commit = show("SHOW synchronous_commit");
      out.fsync_source = show("SELECT source FROM pg_settings WHERE name = 'fsync'");
      out.version = show("SHOW server_version");
      if (out.as_asked()) break;
      std::this_thread::sleep_for(milliseconds(200));
    } while (Since(t0) < 3);
    if (out.fsync != v) {
      std::string why =
          out.fsync_source == "command line"
              ? "it is set on the server's command line, which ALTER SYSTEM cannot override"
          : !can_alter_
              ? "ALTER SYSTEM needs a superuser (" + alter_error_ + "; --pg-admin-url names one)"
              : "set in the server's " + out.fsync_source;
      out.notes.push_back(
          "fsync stays " + out.fsync + " for the " + (durable ? "durable" : "relaxed") +
          " row: " + why +
          (durable && out.fsync_source == "command line"
               ? " (scripts/pg-test-server.sh starts the server with fsync on under "
                 "VMGRID_PG_DURABLE=1)"
               : ""));
    }
    std::fprintf(stderr, "PostgreSQL, %s asked: %s%s\n", durable ? "durable" : "relaxed",
                 out.Cell().c_str(), out.notes.empty() ? "" : (" — " + out.notes[0]).c_str());
    return out;
  }

  void Restore() {
    if (!altered_) return;
    altered_ = false;
    auto admin = OpenSqlBackend(admin_url_);
    if (!admin.ok()) {
      std::fprintf(stderr, "cannot restore the server's settings: %s\n",
                   admin.error().message.c_str());
      return;
    }
    for (const char* name : {"fsync", "synchronous_commit"}) {
      auto it = previous_.find(name);
      std::string sql = it == previous_.end()
                            ? std::string("ALTER SYSTEM RESET ") + name
                            : std::string("ALTER SYSTEM SET ") + name + " = '" + it->second + "'";
      if (auto st = (*admin)->ExecScript(sql); !st.ok())
        std::fprintf(stderr, "%s: %s\n", sql.c_str(), st.error().message.c_str());
    }
    (void)(*admin)->Query("SELECT pg_reload_conf()");
    std::fprintf(stderr, "restored the server's fsync and synchronous_commit\n");
  }

 private:
  std::string url_, admin_url_;
  bool probed_ = false, can_alter_ = false, altered_ = false;
  std::map<std::string, std::string> previous_;
  std::string alter_error_;
};

PgSettings* g_pg_settings = nullptr;  // restored at exit, also after Die()

// --- simulated hosts in child processes ---------------------------------------------

struct FleetStats {
  int64_t due = 0, ok = 0, failed = 0, us = 0;
  int registered = 0, heartbeated_since = 0;
};

// `vmgrid sim-hosts` children sharing `count` hosts; the benchmark reads
// their counters and seeds their VMs through their control API (sim_hosts.h).
class SimFleet {
 public:
  SimFleet(const Flags& f, const ControllerProcess& controller, int count, int vcpus,
           int64_t memory_mb, const std::string& dir)
      : token_(controller.agent_token()) {
    const int n = std::clamp(f.sim_processes, 1, count);
    for (int p = 0, first = 0; p < n; ++p) {
      Child c;
      c.first = first;
      c.count = count / n + (p < count % n ? 1 : 0);
      first += c.count;
      c.prefix = n == 1 ? "sim-" : "sim" + std::to_string(p + 1) + "-";
      int port = PickFreePort();
      if (port == 0) Die("no free loopback port");
      c.url = "http://127.0.0.1:" + std::to_string(port);
      c.log = dir + "/sim-hosts-" + std::to_string(p + 1) + ".log";
      std::vector<std::string> argv = {VmgridBinary(),
                                       "sim-hosts",
                                       "--count",
                                       std::to_string(c.count),
                                       "--controller",
                                       controller.url(),
                                       "--token-file",
                                       controller.state_dir() + "/agent.token",
                                       "--listen",
                                       "127.0.0.1:" + std::to_string(port),
                                       "--name-prefix",
                                       c.prefix,
                                       "--vcpus",
                                       std::to_string(vcpus),
                                       "--memory-mb",
                                       std::to_string(memory_mb),
                                       "--sites",
                                       "10",
                                       "--networks",
                                       "50",
                                       "--heartbeat-interval",
                                       Fixed(f.heartbeat_interval_s, 3)};
      if (f.full_vm_lists) argv.push_back("--full-vm-lists");
      c.proc = Must(ChildProcess::Spawn(argv, c.log), "spawn vmgrid sim-hosts");
      children_.push_back(std::move(c));
    }
    for (auto& c : children_) {
      auto t0 = Clock::now();
      while (!ApiClient(c.url, token_).Get("/control/v1/stats").ok()) {
        if (!c.proc->Running()) Die("vmgrid sim-hosts exited; see " + c.log);
        if (Since(t0) > 60) Die("vmgrid sim-hosts does not answer; see " + c.log);
        std::this_thread::sleep_for(milliseconds(50));
      }
    }
  }
  ~SimFleet() { Stop(); }

  int processes() const { return static_cast<int>(children_.size()); }
  std::string HostName(int i) const {
    const Child& c = ChildOf(i);
    return c.prefix + std::to_string(i - c.first + 1);
  }

  // Summed counters; `since_ms` >= 0 also counts the hosts whose last
  // heartbeat was answered at or after it.
  FleetStats Stats(int64_t since_ms = -1) const {
    FleetStats s;
    for (const auto& c : children_) {
      std::string path = "/control/v1/stats";
      if (since_ms >= 0) path += "?since_ms=" + std::to_string(since_ms);
      json j = Must(ApiClient(c.url, token_).Get(path), "sim-hosts stats (" + c.log + ")");
      s.due += j["heartbeats_due"].get<int64_t>();
      s.ok += j["heartbeats_ok"].get<int64_t>();
      s.failed += j["heartbeats_failed"].get<int64_t>();
      s.us += j["heartbeat_us_total"].get<int64_t>();
      s.registered += j["registered"].get<int>();
      if (since_ms >= 0) s.heartbeated_since += j["hosts_heartbeated_since"].get<int>();
    }
    return s;
  }

  // Seeds VM `status` on host `index` for each pair, in batches.
  void Adopt(const std::vector<std::pair<int, VmStatus>>& vms) const {
    std::map<const Child*, json> batch;
    auto flush = [&](const Child* c) {
      json& b = batch[c];
      if (b.empty()) return;
      json answer = Must(ApiClient(c->url, token_).Post("/control/v1/adopt", {{"vms", b}}),
                         "seed the simulated hosts");
      if (answer["adopted"].get<size_t>() != b.size()) Die("seeding: not every VM adopted");
      b = json::array();
    };
    for (const auto& [index, status] : vms) {
      const Child* c = &ChildOf(index);
      json& b = batch[c];
      if (b.is_null()) b = json::array();
      b.push_back({{"host", HostName(index)}, {"status", ToJson(status)}});
      if (b.size() >= 2000) flush(c);
    }
    for (auto& [c, b] : batch) flush(c);
  }

  // CPU of all children so far, ms.
  double CpuMs() const {
    double sum = 0;
    for (const auto& c : children_) sum += c.proc ? bench::ProcessCpuMs(c.proc->pid()) : 0;
    return sum;
  }

  void Stop() {
    for (auto& c : children_)
      if (c.proc) {
        c.proc->Terminate(std::chrono::seconds(15));
        c.proc.reset();
      }
  }

 private:
  struct Child {
    std::string prefix, url, log;
    int first = 0, count = 0;
    std::unique_ptr<ChildProcess> proc;
  };
  const Child& ChildOf(int i) const {
    for (const auto& c : children_)
      if (i >= c.first && i < c.first + c.count) return c;
    Die("no simulated host " + std::to_string(i));
  }
  std::string token_;
  std::vector<Child> children_;
};

// --- measured windows ------------------------------------------------------------------

struct Snap {
  Clock::time_point t;
  FleetStats s;
  double controller_cpu_ms = NAN, sim_cpu_ms = NAN;
};

Snap TakeSnap(const SimFleet& fleet, const ControllerProcess& controller) {
  Snap s;
  s.controller_cpu_ms = bench::ProcessCpuMs(controller.pid());
  s.sim_cpu_ms = fleet.CpuMs();
  s.s = fleet.Stats();
  s.t = Clock::now();
  return s;
}

// Heartbeats and CPU within one measured window.
struct Window {
  std::string phase;
  bool checked = true;  // under the 90% rule
  Clock::time_point t0, t1;
  double seconds = 0;
  int64_t due = 0, ok = 0, failed = 0, us = 0;
  double controller_cpu_ms = NAN, sim_cpu_ms = NAN;
  double arrived() const {
    return due > 0 ? static_cast<double>(ok) / static_cast<double>(due) : NAN;
  }
  bool rejected() const { return checked && due > 0 && arrived() < kMinArrived; }
  double rtt_ms() const {
    return ok > 0 ? static_cast<double>(us) / 1000.0 / static_cast<double>(ok) : NAN;
  }
  double cpu_per_heartbeat_ms() const {
    return ok > 0 ? controller_cpu_ms / static_cast<double>(ok) : NAN;
  }
};

Window Between(const std::string& phase, const Snap& a, const Snap& b, bool checked = true) {
  Window w;
  w.phase = phase;
  w.checked = checked;
  w.t0 = a.t;
  w.t1 = b.t;
  w.seconds = std::chrono::duration<double>(b.t - a.t).count();
  w.due = b.s.due - a.s.due;
  w.ok = b.s.ok - a.s.ok;
  w.failed = b.s.failed - a.s.failed;
  w.us = b.s.us - a.s.us;
  w.controller_cpu_ms = b.controller_cpu_ms - a.controller_cpu_ms;
  w.sim_cpu_ms = b.sim_cpu_ms - a.sim_cpu_ms;
  std::fprintf(stderr, "%s: %.1f s, heartbeats %lld of %lld scheduled arrived (%.1f%%)\n",
               phase.c_str(), w.seconds, static_cast<long long>(w.ok),
               static_cast<long long>(w.due), 100 * w.arrived());
  return w;
}

// Waits until every one of `n` hosts has registered.
double WaitRegistered(const SimFleet& fleet, int n) {
  auto t0 = Clock::now();
  for (;;) {
    int got = fleet.Stats().registered;
    if (got >= n) return Since(t0);
    if (Since(t0) > 600) Die("registration stalled at " + std::to_string(got));
    std::this_thread::sleep_for(milliseconds(100));
  }
}

// A window of `seconds` with heartbeats only.
Window IdleWindow(const std::string& phase, const SimFleet& fleet,
                  const ControllerProcess& controller, double seconds) {
  Snap a = TakeSnap(fleet, controller);
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  return Between(phase, a, TakeSnap(fleet, controller));
}

// --- query phase ---------------------------------------------------------------------

struct QueryRow {
  std::string name;
  int64_t rows = 0;
  Samples quiet, live, api;  // QueryService quiet, QueryService and POST /v1/query on the live grid
  std::string note;          // instead of the quiet numbers (e.g. "> 60 s")
  std::string target;
};

std::string PercentileCells(const Samples& s) {
  if (s.v.empty()) return "– | –";
  return FmtMs(Q(s, 0.5)) + " | " + FmtMs(Q(s, 0.99));
}

std::string RowLine(const QueryRow& r) {
  std::string quiet = r.note.empty() ? PercentileCells(r.quiet) : r.note + " | –";
  return "| " + r.name + " | " + Thousands(r.rows) + " | " + quiet + " | " +
         PercentileCells(r.live) + " | " + PercentileCells(r.api) + " | " + r.target + " |\n";
}

SetQuery MakeSet(int64_t lo, int64_t hi) {
  SetQuery q;
  q.from = "vms";
  q.size = 4;
  q.same = "network";
  q.sum = "memory_mb";
  q.min = lo;
  q.max = hi;
  q.max_sets = 1;
  return q;
}

json SetJson(const SetQuery& q) {
  return json{{"from", q.from}, {"size", q.size}, {"same", q.same},        {"sum", q.sum},
              {"min", q.min},   {"max", q.max},   {"max_sets", q.max_sets}};
}

// The set question as a naive 4-way self-join.
std::string NaiveSql(const SetQuery& q) {
  return "SELECT a.id, b.id, c.id, d.id FROM vms a "
         "JOIN vms b ON b.network = a.network AND b.id > a.id "
         "JOIN vms c ON c.network = a.network AND c.id > b.id "
         "JOIN vms d ON d.network = a.network AND d.id > c.id "
         "WHERE a.memory_mb + b.memory_mb + c.memory_mb + d.memory_mb BETWEEN " +
         std::to_string(q.min) + " AND " + std::to_string(q.max) + " LIMIT 1";
}

// The set question as a skilled SQL user writes it: keep the networks whose
// 4 smallest sizes stay under the upper bound and whose 4 largest reach the
// lower bound (sums over a sliding frame of 4 sorted sizes: the smallest is
// the first 4, the largest the last 4), then the self-join inside those
// networks only, cutting partial sums that already exceed the upper bound.
std::string PrunedSql(const SetQuery& q) {
  const std::string lo = std::to_string(q.min), hi = std::to_string(q.max);
  const std::string frame =
      " OVER (PARTITION BY network ORDER BY memory_mb ROWS BETWEEN CURRENT ROW AND 3 FOLLOWING)";
  return "WITH w AS (SELECT network, SUM(memory_mb)" + frame + " AS s4, COUNT(*)" + frame +
         " AS n4 FROM vms), "
         "ok AS (SELECT network FROM w WHERE n4 = 4 GROUP BY network "
         "HAVING MIN(s4) <= " +
         hi + " AND MAX(s4) >= " + lo +
         "), "
         "cand AS (SELECT id, network, memory_mb FROM vms WHERE network IN (SELECT network FROM "
         "ok)) "
         "SELECT a.id, b.id, c.id, d.id FROM cand a "
         "JOIN cand b ON b.network = a.network AND b.id > a.id AND a.memory_mb + b.memory_mb <= " +
         hi +
         " "
         "JOIN cand c ON c.network = a.network AND c.id > b.id "
         "AND a.memory_mb + b.memory_mb + c.memory_mb <= " +
         hi +
         " "
         "JOIN cand d ON d.network = a.network AND d.id > c.id "
         "WHERE a.memory_mb + b.memory_mb + c.memory_mb + d.memory_mb BETWEEN " +
         lo + " AND " + hi + " LIMIT 1";
}

struct QueryPhaseResult {
  std::vector<QueryRow> rows;
  std::string notes;
  std::vector<Window> windows;       // heartbeat windows, in order
  std::vector<LoadLog::Span> spans;  // of the query runs (load average)
  std::optional<PgInEffect> pg;
  int64_t vms = 0;
  double restart_api_s = NAN, restart_reconciled_s = NAN;
  int64_t restart_errors = -1;
  double cpu_per_heartbeat_ms = NAN;
};

QueryPhaseResult RunQueries(const Flags& f, PgSettings* pg) {
  QueryPhaseResult out;
  std::string dir = f.state_dir + "/query";
  (void)RemoveTree(dir);
  if (!MakeDirs(dir).ok()) Die("mkdir " + dir);
  PhaseDatabase database(f, "query");
  if (pg) out.pg = pg->Apply(true, database.name(), database.target());
  auto controller = StartController(dir, database.target());
  ApiClient admin(controller->url(), controller->admin_token());

  // Five users own the VMs; the first, alice, is the ordinary user who asks.
  std::vector<std::string> user_ids;
  std::string user_token;
  for (const char* name : {"alice", "bob", "carol", "dave", "erin"}) {
    json u = Must(admin.Post("/v1/users", {{"name", name}}), "create user");
    user_ids.push_back(u["user"]["id"]);
    if (user_token.empty()) user_token = u["token"];
  }
  const QueryCaller user{user_ids[0], false};
  ApiClient user_api(controller->url(), user_token);
  std::string disk = WriteBootableDisk(dir + "/disk.raw");
  std::vector<std::string> image_ids;
  for (const char* name : {"debian", "alpine", "ubuntu", "fedora"})
    image_ids.push_back(CreateImage(admin, name, disk));

  // Room for the VMs below on every host: 64 vCPUs, 256 GiB.
  SimFleet fleet(f, *controller, f.hosts, 64, 256 * 1024, dir);
  double reg_s = WaitRegistered(fleet, f.hosts);
  std::fprintf(stderr, "%d hosts registered in %.1f s\n", f.hosts, reg_s);

  // Direct path: stop the controller, write the VM records, seed the hosts.
  controller->Stop();
  auto t_ins = Clock::now();
  constexpr int kNetworks = 1000;
  constexpr int kMaxBigPerNetwork = 3;  // VMs of 2048 MB per network: no 4 of them anywhere
  int64_t redrawn = 0;
  std::vector<std::pair<int, VmStatus>> seeded;
  {
    auto store = Must(Store::Open(f.backend == "postgres" ? WithAsyncCommit(controller->db_path())
                                                          : controller->db_path()),
                      "open store");
    auto hosts = Must(store->ListHosts(), "list hosts");
    std::map<std::string, std::string> id_by_name;
    for (const auto& h : hosts) id_by_name[h.name] = h.id;
    std::mt19937_64 rng(42);
    std::set<std::pair<std::string, std::string>> cached;
    std::set<std::string> ids;
    std::vector<int> big(kNetworks, 0);
    int64_t now = NowMs();
    for (int i = 0; i < f.vms; ++i) {
      int hi = static_cast<int>(rng() % static_cast<uint64_t>(f.hosts));
      Vm vm;
      char id[32];
      std::snprintf(id, sizeof id, "vm-%010llx",
                    static_cast<unsigned long long>(rng() & 0xffffffffffULL));
      if (!ids.insert(id).second) continue;  // an id drawn twice
      vm.id = vm.name = id;
      vm.owner_id = user_ids[rng() % user_ids.size()];
      vm.image_id = image_ids[rng() % image_ids.size()];
      vm.host_id = id_by_name.at(fleet.HostName(hi));
      vm.state = "running";
      vm.vcpus = 1;
      int net = static_cast<int>(rng() % kNetworks);
      vm.memory_mb = int64_t{64} << (rng() % 6);  // 64 MB .. 2 GB
      if (vm.memory_mb == 2048 && big[static_cast<size_t>(net)] >= kMaxBigPerNetwork) {
        vm.memory_mb = int64_t{64} << (rng() % 5);  // 64 MB .. 1 GB instead
        ++redrawn;
      }
      if (vm.memory_mb == 2048) ++big[static_cast<size_t>(net)];
      vm.disk = "clone";
      vm.start = "boot";
      vm.network = "vnet-" + std::to_string(net);
      vm.created_ms = vm.updated_ms = now;
      if (auto s = store->InsertVmRecord(vm); !s.ok()) Die("insert VM: " + s.error().message);
      if (cached.insert({vm.image_id, vm.host_id}).second)
        if (auto s = store->NoteImageCached(vm.image_id, vm.host_id); !s.ok())
          Die(s.error().message);
      VmStatus st;
      st.id = vm.id;
      st.owner_id = vm.owner_id;
      st.name = vm.name;
      st.state = "running";
      st.vcpus = vm.vcpus;
      st.memory_mb = vm.memory_mb;
      seeded.emplace_back(hi, st);
      if (i % 20000 == 19999) std::fprintf(stderr, "%d VMs inserted\n", i + 1);
    }
  }
  double ins_s = Since(t_ins);
  auto t_seed = Clock::now();
  fleet.Adopt(seeded);
  double seed_s = Since(t_seed);
  out.vms = static_cast<int64_t>(seeded.size());
  std::fprintf(stderr, "%lld VMs inserted in %.1f s, seeded into the hosts in %.1f s\n",
               static_cast<long long>(out.vms), ins_s, seed_s);

  // Restart with every VM: until the API answers, then until every host's
  // heartbeat was answered (the controller reconciles each report before
  // answering) and no VM record is in error.
  Snap restart0 = TakeSnap(fleet, *controller);
  const int64_t spawn_ms = NowMs();
  auto t_spawn = Clock::now();
  if (auto st = controller->Restart(std::chrono::seconds(300)); !st.ok()) Die(st.error().message);
  out.restart_api_s = Since(t_spawn);
  restart0.controller_cpu_ms = 0;  // a new process
  admin = ApiClient(controller->url(), controller->admin_token());
  double heartbeated_s = NAN;
  for (;;) {
    FleetStats s = fleet.Stats(spawn_ms);
    if (s.heartbeated_since >= f.hosts) {
      if (std::isnan(heartbeated_s)) heartbeated_s = Since(t_spawn);
      out.restart_errors = QueryCount(admin, "SELECT COUNT(*) FROM vms WHERE state = 'error'");
      if (out.restart_errors == 0) {
        out.restart_reconciled_s = Since(t_spawn);
        break;
      }
    }
    if (Since(t_spawn) > 300) {
      std::fprintf(stderr, "not reconciled after 300 s (%d hosts heartbeated, %lld VMs in error)\n",
                   s.heartbeated_since, static_cast<long long>(out.restart_errors));
      break;
    }
    std::this_thread::sleep_for(milliseconds(100));
  }
  out.windows.push_back(Between("query grid: restart until reconciled", restart0,
                                TakeSnap(fleet, *controller), false));
  int64_t vms_total = QueryCount(admin, "SELECT COUNT(*) FROM vms");
  int64_t vms_bad = QueryCount(admin, "SELECT COUNT(*) FROM vms WHERE state != 'running'");
  std::fprintf(stderr,
               "restart: API after %.2f s, every host heartbeated after %.2f s, reconciled after "
               "%.2f s; %lld VMs, %lld not running\n",
               out.restart_api_s, heartbeated_s, out.restart_reconciled_s,
               static_cast<long long>(vms_total), static_cast<long long>(vms_bad));

  // Heartbeats only, after one more interval to settle.
  std::this_thread::sleep_for(std::chrono::duration<double>(f.heartbeat_interval_s));
  out.windows.push_back(
      IdleWindow("query grid: heartbeats only", fleet, *controller, f.idle_window_s));
  out.cpu_per_heartbeat_ms = out.windows.back().cpu_per_heartbeat_ms();

  auto svc = Must(QueryService::Open(controller->db_path()), "open query service");
  QueryLimits limits;
  limits.timeout_ms = 10'000;
  const QueryCaller admin_caller{Must(admin.Get("/v1/whoami"), "whoami")["id"].get<std::string>(),
                                 true};
  // The no-answer window's premise, checked on everybody's VMs.
  auto big4 = Must(svc->Sql(admin_caller,
                            "SELECT COUNT(*) FROM (SELECT network FROM vms WHERE memory_mb = 2048 "
                            "GROUP BY network HAVING COUNT(*) >= 4) x",
                            limits),
                   "check the seeding");
  const int64_t networks_with_4_big = big4.rows[0][0].get<int64_t>();
  if (networks_with_4_big != 0) Die("a network has 4 VMs of 2048 MB: the seeding is wrong");
  const int64_t visible =
      Must(svc->Sql(user, "SELECT COUNT(*) FROM vms", limits), "count the user's VMs")
          .rows[0][0]
          .get<int64_t>();
  auto hosts = Must(svc->Sql(user, "SELECT id FROM hosts", limits), "list hosts");
  if (hosts.rows.empty()) Die("the user sees no hosts");

  // The co-allocation question of the paper, and a window with no answer:
  // exactly 8192 MB is a possible total of 4 VM sizes (4 x 2048 MB), but the
  // seeding put at most 3 VMs of 2048 MB on any network.
  const SetQuery set_found = MakeSet(512, 1024), set_none = MakeSet(8192, 8192);

  std::mt19937_64 order_rng(f.seed), param_rng(f.seed + 1);
  struct Qdef {
    std::string name;
    std::function<std::string()> sql;  // null for a set query
    const SetQuery* set = nullptr;
    double target_p50_ms = 0;  // 0: no target
  };
  auto host_id = [&] { return hosts.rows[param_rng() % hosts.rows.size()][0].get<std::string>(); };
  auto site = [&] { return "site-" + std::to_string(param_rng() % 10 + 1); };
  auto image = [&] { return image_ids[param_rng() % image_ids.size()]; };
  const std::vector<Qdef> qs = {
      {"single: one host by id",
       [&] { return "SELECT * FROM hosts WHERE id = '" + host_id() + "'"; }, nullptr, 0},
      {"join: hosts of a site with room for 1 GB and the image cached",
       [&] {
         return "SELECT h.name, h.free_memory_mb FROM hosts h JOIN image_cache c ON c.host_id = "
                "h.id WHERE c.image_id = '" +
                image() + "' AND h.site = '" + site() +
                "' AND h.state = 'up' AND h.free_vcpus >= 1 AND h.free_memory_mb >= 1024";
       },
       nullptr, 10},
      {"join: the user's VMs per host of a site with room for 1 GB (virtualization)",
       [&] {
         return "SELECT h.name, COUNT(*) AS vms FROM hosts h JOIN virtualization v ON "
                "v.physical_id = h.id AND v.physical_kind = 'host' WHERE h.site = '" +
                site() +
                "' AND h.free_memory_mb >= 1024 GROUP BY h.name ORDER BY vms DESC LIMIT 10";
       },
       nullptr, 10},
      {"set: 4 VMs on one network, 512..1024 MB in total", nullptr, &set_found, 20},
      {"set, no answer: 4 VMs on one network, exactly 8192 MB", nullptr, &set_none, 0},
  };

  std::vector<QueryRow> rows(qs.size());
  for (size_t i = 0; i < qs.size(); ++i) rows[i].name = qs[i].name;
  // One cell per query and path (QueryService in this process, POST
  // /v1/query); each run runs every cell once in a new random order, until
  // --runs or (after `min_runs`) the budget.
  auto measure = [&](bool live, int min_runs, double budget_s) {
    std::vector<std::pair<size_t, bool>> cells;  // (query, through the API)
    for (size_t i = 0; i < qs.size(); ++i) {
      cells.emplace_back(i, false);
      if (live) cells.emplace_back(i, true);
    }
    auto t_meas = Clock::now();
    int done = 0;
    for (; done < f.runs && (done < min_runs || Since(t_meas) < budget_s); ++done) {
      std::shuffle(cells.begin(), cells.end(), order_rng);
      for (const auto& [i, via_api] : cells) {
        const Qdef& q = qs[i];
        std::string sql = q.sql ? q.sql() : "";
        if (via_api) {
          json body = q.sql ? json{{"sql", sql}, {"timeout_ms", 10'000}}
                            : json{{"set", SetJson(*q.set)}, {"timeout_ms", 10'000}};
          auto t0 = Clock::now();
          (void)Must(user_api.Post("/v1/query", body), q.name + " via the API");
          rows[i].api.v.push_back(Ms(Clock::now() - t0));
          continue;
        }
        auto t0 = Clock::now();
        int64_t n =
            q.sql ? static_cast<int64_t>(Must(svc->Sql(user, sql, limits), q.name).rows.size())
                  : static_cast<int64_t>(Must(svc->Set(user, *q.set, limits), q.name).sets.size());
        (live ? rows[i].live : rows[i].quiet).v.push_back(Ms(Clock::now() - t0));
        rows[i].rows = n;
      }
      if ((done + 1) % 20 == 0)
        std::fprintf(stderr, "%s run %d\n", live ? "live" : "quiet", done + 1);
    }
    return done;
  };

  // Live grid: the controller serves every host's heartbeats meanwhile.
  int down_before = CountInFile(dir + "/controller.log", "missed its heartbeats");
  Snap live0 = TakeSnap(fleet, *controller);
  int live_runs = measure(true, 10, f.query_budget_s / 2);
  out.windows.push_back(Between("query grid: live queries", live0, TakeSnap(fleet, *controller)));
  out.spans.emplace_back(out.windows.back().t0, out.windows.back().t1);
  int64_t up_at_end = QueryCount(admin, "SELECT COUNT(*) FROM hosts WHERE state = 'up'");
  int down_events = CountInFile(dir + "/controller.log", "missed its heartbeats") - down_before;

  // Quiet: hosts and controller stopped (the database keeps every host up),
  // so the numbers are the information service's own cost.
  fleet.Stop();
  controller->Stop();
  auto t_quiet = Clock::now();
  int quiet_runs = measure(false, 20, f.query_budget_s / 2);
  auto example = Must(svc->Set(user, set_found, limits), "set");

  // The set questions as plain SQL, naive and pruned: up to 20 runs each or
  // the timeout, whichever comes first (quiet).
  auto run_sql = [&](const std::string& sql, const std::string& name) {
    QueryRow row;
    row.name = name;
    QueryLimits nl;
    nl.timeout_ms = int64_t{f.naive_timeout_s} * 1000;
    auto t0 = Clock::now();
    for (int r = 0; r < std::min(f.runs, 20) && Since(t0) < f.naive_timeout_s; ++r) {
      auto t1 = Clock::now();
      auto res = svc->Sql(user, sql, nl);
      if (!res.ok()) {
        row.note = "> " + std::to_string(f.naive_timeout_s) + " s";
        std::fprintf(stderr, "%s: %s\n", name.c_str(), res.error().message.c_str());
        break;
      }
      row.quiet.v.push_back(Ms(Clock::now() - t1));
      row.rows = static_cast<int64_t>(res->rows.size());
    }
    std::fprintf(stderr, "%s: %s\n", name.c_str(),
                 row.note.empty() ? (FmtMs(Q(row.quiet, 0.5)) + " ms").c_str() : row.note.c_str());
    return row;
  };
  struct SqlDef {
    std::string name;
    std::string sql;
    size_t set_row;  // the set operator's row for the same question
    bool target;     // the "≥ 100x the naive join" target
  };
  std::vector<SqlDef> sql_defs = {
      {"naive SQL 4-way self-join, 512..1024 MB", NaiveSql(set_found), qs.size() - 2, true},
      {"naive SQL 4-way self-join, no answer (exactly 8192 MB)", NaiveSql(set_none), qs.size() - 1,
       false},
      {"pruned SQL (window sums, then the self-join), 512..1024 MB", PrunedSql(set_found),
       qs.size() - 2, false},
      {"pruned SQL (window sums, then the self-join), no answer (exactly 8192 MB)",
       PrunedSql(set_none), qs.size() - 1, false},
  };
  std::vector<size_t> sql_order(sql_defs.size());
  for (size_t i = 0; i < sql_order.size(); ++i) sql_order[i] = i;
  std::shuffle(sql_order.begin(), sql_order.end(), order_rng);
  std::vector<QueryRow> sql_rows(sql_defs.size());
  for (size_t i : sql_order) sql_rows[i] = run_sql(sql_defs[i].sql, sql_defs[i].name);
  out.spans.emplace_back(t_quiet, Clock::now());

  for (size_t i = 0; i < qs.size(); ++i) {
    if (qs[i].target_p50_ms > 0) {
      double t = qs[i].target_p50_ms;
      rows[i].target = "p50 ≤ " + std::to_string(static_cast<int>(t)) +
                       " ms: " + Verdict(Q(rows[i].quiet, 0.5) <= t) + " quiet, " +
                       Verdict(Q(rows[i].api, 0.5) <= t) + " live API";
    }
    out.rows.push_back(rows[i]);
  }
  // Speed-up of the set operator over the SQL (both quiet, QueryService).
  for (size_t k = 0; k < sql_defs.size(); ++k) {
    QueryRow& row = sql_rows[k];
    const QueryRow& set_row = rows[sql_defs[k].set_row];
    double sql_p50 = row.note.empty() ? Q(row.quiet, 0.5) : f.naive_timeout_s * 1000.0;
    double speedup = sql_p50 / Q(set_row.quiet, 0.5);
    auto factor = [](double x) { return (x >= 10 ? Fixed(x, 0) : Fixed(x, 2)) + "x"; };
    row.target = speedup >= 1 || !row.note.empty()
                     ? "set operator " + std::string(row.note.empty() ? "" : "> ") +
                           factor(speedup) + " faster"
                     : "SQL " + factor(1 / speedup) + " faster than the set operator";
    if (sql_defs[k].target) row.target += " (≥ 100x: " + Verdict(speedup >= 100) + ")";
    out.rows.push_back(row);
  }

  const Window& live = out.windows[2];
  std::ostringstream notes;
  char line[4096];
  std::snprintf(
      line, sizeof line,
      "Setup: %s simulated hosts (%d `vmgrid sim-hosts` process%s; 10 sites, 50 network segments, "
      "64 vCPUs and 256 GiB each) registered through heartbeats in %.1f s; the controller was "
      "then stopped, %s VM records were inserted with the Store API in %.1f s%s (direct path: "
      "memory 64 MB..2 GB, powers of two; 1,000 virtual networks; 5 users; 4 images) and seeded "
      "into the simulated hosts through their control API in %.1f s, and the controller was "
      "started again. Every host heartbeats every %s s. Queries run as the ordinary user alice "
      "(her own token, the visibility filter on: she sees %s of the %s VMs), every run in a new "
      "random order (`std::shuffle`, seed %llu); latency is wall time per call. *Live grid*: "
      "controller running and every host heartbeating (%.1f%% of the scheduled heartbeats "
      "arrived, mean round trip %s ms; %lld of %s hosts up at the end, %d host-down events "
      "meanwhile), %d runs; QueryService in this process on its own read-only connection to the "
      "controller's database, and POST /v1/query with alice's token including HTTP and a new "
      "connection per call. *Quiet*: hosts and controller stopped, QueryService only, %d runs. "
      "Example set: %s.\n\n",
      Thousands(f.hosts).c_str(), fleet.processes(), fleet.processes() == 1 ? "" : "es", reg_s,
      Thousands(vms_total).c_str(), ins_s,
      f.backend == "postgres" ? " (on a session with synchronous_commit off)" : "", seed_s,
      Fixed(f.heartbeat_interval_s, 1).c_str(), Thousands(visible).c_str(),
      Thousands(vms_total).c_str(), static_cast<unsigned long long>(f.seed), 100 * live.arrived(),
      FmtMs(live.rtt_ms()).c_str(), static_cast<long long>(up_at_end), Thousands(f.hosts).c_str(),
      down_events, live_runs, quiet_runs,
      example.sets.empty() ? "none found"
                           : (example.sets[0].group.dump() + " total " +
                              std::to_string(example.sets[0].total) + " MB")
                                 .c_str());
  notes << line;
  std::snprintf(
      line, sizeof line,
      "The no-answer window is exactly 8192 MB: a possible total of 4 VM sizes (4 × 2048 MB, "
      "the largest there is), but the seeding allows at most %d VMs of 2048 MB per network (a "
      "2048-MB draw on a network that already has %d was drawn again from 64..1024 MB: %s "
      "times), so no network has such a set (checked at setup: %lld networks with 4 or more). "
      "Each network's 4 largest sizes total at most 3 × 2048 + 1024 = 7168 MB, which the set "
      "operator and the pruned SQL can tell; the naive join enumerates every 4-tuple of every "
      "network of alice's before it answers \"none\". The pruned SQL is what a skilled SQL user "
      "writes: `WITH w AS (SELECT network, SUM(memory_mb) OVER (PARTITION BY network ORDER BY "
      "memory_mb ROWS BETWEEN CURRENT ROW AND 3 FOLLOWING) AS s4, COUNT(*) OVER (...) AS n4 FROM "
      "vms), ok AS (SELECT network FROM w WHERE n4 = 4 GROUP BY network HAVING MIN(s4) <= MAX_MB "
      "AND MAX(s4) >= MIN_MB)` (the 4 smallest and the 4 largest sizes of each network), then "
      "the naive self-join over the VMs of those networks only, with the partial sums of 2 and "
      "3 VMs bounded by MAX_MB; same timeout (%d s), same user.\n\n",
      kMaxBigPerNetwork, kMaxBigPerNetwork, Thousands(redrawn).c_str(),
      static_cast<long long>(networks_with_4_big), f.naive_timeout_s);
  notes << line;
  out.notes = notes.str();
  return out;
}

// --- placement phase ---------------------------------------------------------------------

struct PlacementResult {
  std::string label;  // "durable", "relaxed" or "" (SQLite)
  std::optional<PgInEffect> pg;
  int hosts = 0, target = 0, accepted = 0, refused = 0, failed = 0;
  double seconds = 0, rate = 0;
  int64_t running = 0;
  double running_after_s = NAN, running_rate = NAN;
  int down_events = 0;
  Samples latency;
  std::string first_error;
  std::vector<Window> windows;  // heartbeats only; placement
  std::vector<LoadLog::Span> spans;
  double cpu_per_heartbeat_ms = NAN, cpu_per_placement_ms = NAN, cpu_per_placement_net_ms = NAN;
};

PlacementResult RunPlacement(const Flags& f, PgSettings* pg, const std::string& label) {
  PlacementResult out;
  out.label = label;
  std::string phase = label.empty() ? "placement" : "placement_" + label;
  std::string dir = f.state_dir + "/" + phase;
  (void)RemoveTree(dir);
  if (!MakeDirs(dir).ok()) Die("mkdir " + dir);
  PhaseDatabase database(f, phase);
  if (pg) out.pg = pg->Apply(label == "durable", database.name(), database.target());
  auto controller = StartController(dir, database.target());
  ApiClient admin(controller->url(), controller->admin_token());
  CreateImage(admin, "debian", WriteBootableDisk(dir + "/disk.raw"));
  ApiClient::Options keep;
  keep.keep_alive = true;  // the creates reuse their connections
  ApiClient creator(controller->url(), controller->admin_token(), keep);
  SimFleet fleet(f, *controller, f.placement_hosts, 16, 64 * 1024, dir);
  WaitRegistered(fleet, f.placement_hosts);
  auto t_up = Clock::now();
  while (QueryCount(admin, "SELECT COUNT(*) FROM hosts WHERE state = 'up'") < f.placement_hosts) {
    if (Since(t_up) > 300) Die("hosts did not come up for placement");
    std::this_thread::sleep_for(milliseconds(200));
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(f.heartbeat_interval_s));
  const std::string tag = label.empty() ? "" : " (" + label + ")";
  out.windows.push_back(IdleWindow("placement grid" + tag + ": heartbeats only", fleet, *controller,
                                   f.idle_window_s));
  out.cpu_per_heartbeat_ms = out.windows.back().cpu_per_heartbeat_ms();
  std::fprintf(stderr, "%d hosts up; placing\n", f.placement_hosts);

  out.hosts = f.placement_hosts;
  out.target = f.placements > 0 ? f.placements : 4 * f.placement_hosts;
  std::atomic<int> issued{0}, accepted{0}, refused{0}, failed{0};
  std::mutex mu;
  std::vector<std::thread> threads;
  const int down_before = CountInFile(dir + "/controller.log", "missed its heartbeats");
  Snap a = TakeSnap(fleet, *controller);
  auto t0 = a.t;
  for (int c = 0; c < f.clients; ++c) {
    threads.emplace_back([&] {
      std::vector<double> mine;
      while (issued.fetch_add(1) < out.target) {
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
  out.accepted = accepted;
  out.refused = refused;
  out.failed = failed;
  out.rate = out.accepted / out.seconds;
  // The creates run on the controller's background threads; the hosts answer at once.
  while (Since(t0) < out.seconds + 120) {
    out.running = QueryCount(admin, "SELECT COUNT(*) FROM vms WHERE state = 'running'");
    if (out.running >= out.accepted) {
      out.running_after_s = Since(t0);
      break;
    }
    std::this_thread::sleep_for(milliseconds(200));
  }
  Snap b = TakeSnap(fleet, *controller);
  out.down_events = CountInFile(dir + "/controller.log", "missed its heartbeats") - down_before;
  double end_s = std::isnan(out.running_after_s) ? Since(t0) : out.running_after_s;
  out.running_rate = static_cast<double>(out.running) / end_s;
  out.windows.push_back(Between("placement grid" + tag + ": creates until all running", a, b));
  const Window& w = out.windows.back();
  out.spans.emplace_back(w.t0, w.t1);
  if (out.accepted > 0) {
    out.cpu_per_placement_ms = w.controller_cpu_ms / out.accepted;
    out.cpu_per_placement_net_ms =
        (w.controller_cpu_ms - static_cast<double>(w.ok) * out.cpu_per_heartbeat_ms) / out.accepted;
  }
  fleet.Stop();
  return out;
}

// --- the tables ---------------------------------------------------------------------

std::string g_commit;

// Date, commit, machine and the load average during a table's runs.
std::string MethodLine(const Samples& load) {
  return "*Method*: " + bench::Today() + ", commit " + g_commit + ", " + bench::MachineLine() +
         "; load average (1 min) during these runs " + load.MedianIqr("%.1f") +
         " (median and IQR of samples taken every second).\n\n";
}

std::string WindowRow(const Window& w) {
  char b[1024];
  std::string check = !w.checked     ? "not checked (the controller is starting)"
                      : w.due == 0   ? "–"
                      : w.rejected() ? "**REJECTED** (< 90% arrived)"
                                     : "met (≥ 90% arrived)";
  std::snprintf(b, sizeof b, "| %s | %.1f | %s | %s | %s%% | %s | %s | %s | %s | %s |\n",
                w.phase.c_str(), w.seconds, Thousands(w.due).c_str(), Thousands(w.ok).c_str(),
                Fixed(100 * w.arrived(), 1).c_str(), Thousands(w.failed).c_str(),
                FmtMs(w.rtt_ms()).c_str(),
                Fixed(100 * w.controller_cpu_ms / 1000 / w.seconds, 0).c_str(),
                Fixed(100 * w.sim_cpu_ms / 1000 / w.seconds, 0).c_str(), check.c_str());
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  const char* kUsage =
      "usage: infosvc [--backend sqlite|postgres] [--pg-url URL] [--pg-admin-url URL] [--hosts N] "
      "[--vms N] [--placement-hosts N] [--placements N] [--runs N] [--clients N] "
      "[--heartbeat-interval S] [--sim-processes N] [--idle-window S] [--seed N] "
      "[--naive-timeout S] [--query-budget S] [--skip-queries] [--skip-placement] [--no-write] "
      "[--full-vm-lists] "
      "[--docs PATH]\n"
      "Exit status 3: the run is rejected (fewer than 90% of the scheduled heartbeats arrived in "
      "a measured window).";
  auto usage = [&] { Die(kUsage); };
  // The command as run, for the tables: without URLs (they may hold
  // passwords) and the docs' path.
  f.command = "bench/infosvc";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--no-write") continue;
    if (a == "--docs") {
      ++i;
      continue;
    }
    f.command += " " + a;
    if ((a == "--pg-url" || a == "--pg-admin-url") && i + 1 < argc) {
      f.command += " URL";
      ++i;
    }
  }
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    bool has = i + 1 < argc;
    if (a == "--help" || a == "-h") {
      std::printf("%s\n", kUsage);
      return 0;
    }
    if (a == "--backend" && has) {
      f.backend = argv[++i];
      if (f.backend != "sqlite" && f.backend != "postgres") usage();
    } else if (a == "--pg-url" && has)
      f.pg_url = argv[++i];
    else if (a == "--pg-admin-url" && has)
      f.pg_admin_url = argv[++i];
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
      f.heartbeat_interval_s = std::clamp(std::atof(argv[++i]), 0.1, 9.0);
    else if (a == "--sim-processes" && has)
      f.sim_processes = std::max(1, std::atoi(argv[++i]));
    else if (a == "--idle-window" && has)
      f.idle_window_s = std::max(1.0, std::atof(argv[++i]));
    else if (a == "--seed" && has)
      f.seed = std::strtoull(argv[++i], nullptr, 10);
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
    else if (a == "--full-vm-lists")
      f.full_vm_lists = true;
    else if (a == "--docs" && has)
      f.docs = argv[++i];
    else
      usage();
  }
  if (f.seed == 0) {
    f.seed = std::random_device{}() | 1;
    f.command += " --seed " + std::to_string(f.seed);
  }
  signal(SIGPIPE, SIG_IGN);
  spdlog::set_default_logger(spdlog::stderr_color_mt("infosvc"));  // stdout is the table
  g_commit = bench::GitCommit(VMGRID_SOURCE_DIR);
  std::fprintf(stderr, "order seed %llu\n", static_cast<unsigned long long>(f.seed));
  auto t_all = Clock::now();
  LoadLog load;

  std::unique_ptr<PgSettings> pg;
  if (f.backend == "postgres") {
    if (f.pg_url.empty()) Die("--backend postgres needs --pg-url or VMGRID_TEST_PG_URL");
    pg = std::make_unique<PgSettings>(f.pg_url, f.pg_admin_url);
    g_pg_settings = pg.get();
    std::atexit([] {
      if (g_pg_settings) g_pg_settings->Restore();
    });
  }

  std::optional<QueryPhaseResult> q;
  std::vector<PlacementResult> placements;
  if (f.queries) q = RunQueries(f, pg.get());
  if (f.placement) {
    if (pg) {
      placements.push_back(RunPlacement(f, pg.get(), "durable"));
      placements.push_back(RunPlacement(f, pg.get(), "relaxed"));
    } else {
      placements.push_back(RunPlacement(f, nullptr, ""));
    }
  }
  if (pg) pg->Restore();
  g_pg_settings = nullptr;

  // Every window, and the verdict on the run.
  std::vector<Window> windows;
  if (q) windows.insert(windows.end(), q->windows.begin(), q->windows.end());
  for (const auto& p : placements)
    windows.insert(windows.end(), p.windows.begin(), p.windows.end());
  std::vector<std::string> rejected_by;
  for (const auto& w : windows)
    if (w.rejected()) rejected_by.push_back(w.phase + " (" + Fixed(100 * w.arrived(), 1) + "%)");

  std::string pg_version;
  if (q && q->pg) pg_version = q->pg->version;
  for (const auto& p : placements)
    if (p.pg && pg_version.empty()) pg_version = p.pg->version;

  std::ostringstream md;
  md << "`" << f.command << "`. Controller: the built `vmgrid controller` ("
     << (f.backend == "postgres"
             ? "PostgreSQL " + pg_version +
                   " store, local server; the commit settings in effect are printed with each "
                   "table"
             : std::string("SQLite store"))
     << "); hosts: `vmgrid sim-hosts` child processes (agent API and heartbeats every "
     << Fixed(f.heartbeat_interval_s, 1) << " s like agents, "
     << (f.full_vm_lists ? "**every VM list sent in full** (`--full-vm-lists`: agents before the "
                           "VM-list digest, a baseline)"
                         : "an unchanged VM list named by its digest as agents do")
     << ", VM operations answered at once). Heartbeats scheduled vs answered by "
        "the controller are counted in every measured window; fewer than 90% arrived in any "
        "rejects the run.\n\n";
  if (!rejected_by.empty()) {
    md << "**RUN REJECTED: fewer than 90% of the scheduled heartbeats arrived in ";
    for (size_t i = 0; i < rejected_by.size(); ++i) md << (i ? "; " : "") << rejected_by[i];
    md << ". The controller did not keep up with the hosts' heartbeats, so the figures below "
          "were not measured under the load they claim.**\n\n";
  }

  std::vector<LoadLog::Span> hb_spans;
  for (const auto& w : windows) hb_spans.emplace_back(w.t0, w.t1);

  if (q) {
    md << "#### Queries\n\n" << MethodLine(load.Within(q->spans));
    if (q->pg) {
      md << "PostgreSQL settings in effect (SHOW, read back): " << q->pg->Cell() << ".";
      for (const auto& n : q->pg->notes) md << " " << n << ".";
      md << "\n\n";
    }
    md << q->notes
       << "| query | rows/sets | quiet p50 (ms) | quiet p99 | live p50 | live p99 | live API p50 | "
          "live API p99 | target |\n"
       << "|---|---|---|---|---|---|---|---|---|\n";
    for (const auto& r : q->rows) md << RowLine(r);
    md << "\n";
  }

  if (!placements.empty()) {
    std::vector<LoadLog::Span> spans;
    for (const auto& p : placements) spans.insert(spans.end(), p.spans.begin(), p.spans.end());
    const PlacementResult& p0 = placements[0];
    md << "#### Placement\n\n" << MethodLine(load.Within(spans));
    char line[2048];
    std::snprintf(
        line, sizeof line,
        "%s simulated hosts (16 vCPUs, 64 GiB each), %d client threads POSTing /v1/vms (1 vCPU, "
        "256 MB) with keep-alive connections until %s creates were accepted (202), then waiting "
        "until every accepted VM is running. creates/s = accepted creates / their wall time; "
        "running/s = VMs running / the time from the first create until the last was running."
        "%s\n\n",
        Thousands(p0.hosts).c_str(), f.clients, Thousands(p0.target).c_str(),
        pg ? " PostgreSQL: durable commits (fsync and synchronous_commit on) are the headline, "
             "the relaxed setting (both off) the second row; the settings are those read back "
             "from the server (SHOW fsync, SHOW synchronous_commit) for the phase's database."
           : "");
    md << line;
    std::string extras;
    std::set<std::string> said;
    for (const auto& p : placements) {
      if (!p.first_error.empty())
        extras += "First error" + (p.label.empty() ? "" : " (" + p.label + ")") + ": " +
                  p.first_error + ". ";
      if (p.pg)
        for (const auto& n : p.pg->notes)
          if (said.insert(n).second) extras += "PostgreSQL: " + n + ". ";
    }
    if (!extras.empty()) md << extras << "\n\n";
    md << (pg ? "| commits | settings in effect " : "")
       << "| hosts | accepted | refused | failed | seconds | creates/s | VMs running | running/s | "
          "create p50 (ms) | create p99 (ms) | all running after (s) | host-down events meanwhile "
          "| "
          "target ≥ 2,000/s |\n"
       << (pg ? "|---|---" : "") << "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (const auto& p : placements) {
      char row[2048];
      std::snprintf(
          row, sizeof row,
          "| %s | %d | %d | %d | %.1f | %.0f | %s | %.0f | %s | %s | %s | %d | creates %s, "
          "running %s |\n",
          Thousands(p.hosts).c_str(), p.accepted, p.refused, p.failed, p.seconds, p.rate,
          Thousands(p.running).c_str(), p.running_rate, FmtMs(Q(p.latency, 0.5)).c_str(),
          FmtMs(Q(p.latency, 0.99)).c_str(), Fixed(p.running_after_s, 1).c_str(), p.down_events,
          Verdict(p.rate >= 2000).c_str(),
          Verdict(!std::isnan(p.running_after_s) && p.running_rate >= 2000).c_str());
      if (p.pg) md << "| " << p.label << " | " << p.pg->Cell() << " ";
      md << row;
    }
    md << "\n";
  }

  // Heartbeats per measured window.
  md << "#### Heartbeats in the measured windows\n\n" << MethodLine(load.Within(hb_spans));
  md << "Scheduled: the heartbeats the hosts' schedule called for in the window (every host "
        "once per interval, whether sent yet or not); arrived: those the controller answered. "
        "CPU in % of one core from /proc/PID/stat (utime + stime); the controller's PostgreSQL "
        "server processes are not counted in it.\n\n"
     << "| window | seconds | scheduled | arrived | arrived % | failed | mean round trip (ms) | "
        "controller CPU (% core) | sim-hosts CPU (% core) | ≥ 90% arrived |\n"
     << "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& w : windows) md << WindowRow(w);
  md << "\n";

  // The controller's own figures.
  md << "#### Controller figures\n\n" << MethodLine(load.Within(hb_spans));
  md << "Restart: the setup's controller is stopped while the VM records are written, then "
        "spawned again on the same state; *reconciled* is when every host's heartbeat since the "
        "spawn was answered (the controller reconciles a host's VM records with its report before "
        "answering) and no VM record is in `error`. CPU per heartbeat: the controller process's "
        "CPU (utime + stime) in a window with heartbeats only (its background loops included) "
        "over the heartbeats answered in it. CPU per placement: its CPU from the first create "
        "until every accepted VM ran, over the accepted creates; *net* subtracts the window's "
        "heartbeats at the per-heartbeat cost of the same grid.\n\n"
     << "| figure | value |\n|---|---|\n";
  if (q) {
    md << "| restart with " << Thousands(q->vms)
       << " VMs: from spawning the controller to its API answering (s) | "
       << Fixed(q->restart_api_s, 2) << " |\n"
       << "| restart with " << Thousands(q->vms)
       << " VMs: from spawning to every host's heartbeat answered (each report reconciled) and "
          "no VM record in error; at least one heartbeat interval after the API answers (s) | "
       << (std::isnan(q->restart_reconciled_s)
               ? "not within 300 s (" + std::to_string(q->restart_errors) + " VMs in error)"
               : Fixed(q->restart_reconciled_s, 2))
       << " |\n"
       << "| controller CPU per heartbeat, query grid (hosts report ~"
       << (f.hosts > 0 ? Fixed(static_cast<double>(q->vms) / f.hosts, 0) : "0")
       << " VMs each; heartbeats-only window) (ms) | " << Fixed(q->cpu_per_heartbeat_ms, 3)
       << " |\n";
  }
  for (const auto& p : placements) {
    std::string tag = p.label.empty() ? "" : ", " + p.label;
    md << "| controller CPU per heartbeat, placement grid (empty hosts; heartbeats-only window"
       << tag << ") (ms) | " << Fixed(p.cpu_per_heartbeat_ms, 3) << " |\n"
       << "| controller CPU per placement (creates until all running, heartbeats included" << tag
       << ") (ms) | " << Fixed(p.cpu_per_placement_ms, 3) << " |\n"
       << "| controller CPU per placement, net of the window's heartbeats at the per-heartbeat "
          "cost above"
       << tag << " (ms) | " << Fixed(p.cpu_per_placement_net_ms, 3) << " |\n";
  }
  char tail[256];
  std::snprintf(tail, sizeof tail, "\nWhole run: %.0f s.%s\n", Since(t_all),
                rejected_by.empty() ? "" : " **This run is REJECTED (see above).**");
  md << tail;
  std::printf("%s", md.str().c_str());

  if (f.write) {
    if (!bench::WriteDocsSection(f.docs, "infosvc-" + f.backend,
                                 "## Information service (bench/infosvc), " + f.backend, md.str())
             .ok())
      Die("cannot write " + f.docs);
    std::fprintf(stderr, "wrote %s\n", f.docs.c_str());
  }
  if (!rejected_by.empty()) {
    std::fprintf(stderr,
                 "infosvc: RUN REJECTED: fewer than 90%% of the heartbeats arrived in %zu "
                 "window(s)\n",
                 rejected_by.size());
    return kRejectedExit;
  }
  return 0;
}
