// bench/runtime: the paper's run-time table (issue 13, section 3). The seed
// measured SpecHPC Seismic on the physical host, in a VM with a local disk,
// and in a VM whose disk came over the grid virtual file system. Here two
// workloads run as vmgrid jobs (docs/jobs.md) and directly on the host, with
// the same busybox binary (the host's busybox-static is the tiny guest's):
//   - cpu: `bzip2 -9` over a fixed 4 MiB text file, several passes;
//   - io:  a file-tree scan: md5sum of every file of a directory tree, the
//          sorted sums hashed again (the digest checks that every cell did
//          the same work).
// Each reads its input from a dataset attached at /in (docs/datasets.md).
// Cells, run by run interleaved:
//   host       the command on the host, over the same files (page cache warm);
//   VM local   a job whose image, checkpoint and dataset chunks are already in
//              the host's chunk cache: nothing crosses the network;
//   cold LAN / cold WAN   the host's cache emptied first: the image and the
//              dataset are fetched on demand from the image server, directly
//              (loopback) or through a LinkEmulator (RTT, bandwidth cap);
//   warm WAN   the run right after cold WAN on the same agent.
// The program's run time is `time -p` around it (in the guest: the guest's
// clock); the job's time is from POST /v1/jobs until the job has ended.
// Then a bag of tasks: N tasks of `sleep S` on the local grid, makespan
// against the ideal (total work ÷ slots), resumed from the checkpoint and
// booted. Prints markdown and writes it between markers in
// docs/benchmarks.md. A benchmark, not a test: nothing here asserts a time.
//
// Usage: runtime [--runs 5] [--cells host,local,cold-lan,cold-wan,warm-wan]
//                [--workloads cpu,io] [--bag-tasks 100] [--bag-seconds 3]
//                [--bag resume,boot|none] [--rtt-ms 40] [--mbit 100]
//                [--cpu-passes 3] [--no-write] [--docs PATH]

#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "client/api_client.h"
#include "common/subprocess.h"
#include "common/util.h"
#include "dev/local_grid.h"
#include "die.h"
#include "grid_bench.h"
#include "linkem/link_emulator.h"
#include "stats.h"
#include "wan.h"

using namespace vmgrid;
using namespace vmgrid::bench;
using nlohmann::json;
using std::chrono::seconds;

namespace {

constexpr char kStateDir[] = "/tmp/vmgrid-bench-runtime";
constexpr char kBusybox[] = "/bin/busybox";  // the host's busybox-static, also the guest's
constexpr int kVmMemoryMb = 256;

// ---------------------------------------------------------------------------------------------
// Inputs: deterministic, so that every machine measures the same bytes.

// xorshift64*: the inputs depend on nothing but the seed.
struct Rng {
  uint64_t s;
  uint64_t Next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
};

// English-like text from a fixed vocabulary: bzip2 works on it as on prose.
std::string Text(uint64_t seed, size_t bytes) {
  static const char* kWords[] = {
      "grid",    "virtual", "machine", "host",   "image",      "disk",     "the",     "of",
      "and",     "to",      "a",       "in",     "is",         "for",      "that",    "with",
      "data",    "job",     "task",    "user",   "middleware", "resource", "cluster", "node",
      "network", "file",    "system",  "time",   "seismic",    "wave",     "model",   "kernel",
      "process", "memory",  "state",   "server", "client",     "request",  "result",  "run"};
  constexpr size_t kN = sizeof kWords / sizeof kWords[0];
  Rng r{seed};
  std::string out;
  out.reserve(bytes + 32);
  size_t line = 0;
  while (out.size() < bytes) {
    uint64_t x = r.Next();
    out += kWords[x % kN];
    if ((x >> 20) % 97 == 0) out += " " + std::to_string((x >> 32) % 100000);
    out += ++line % 12 == 0 ? ".\n" : " ";
  }
  out.resize(bytes);
  return out;
}

struct Inputs {
  std::string cpu_dir, io_dir;
  size_t cpu_bytes = 0, io_files = 0, io_bytes = 0;
};

// cpu: one 4 MiB text file. io: 32 directories of 48 files, 4-44 KiB each
// (half text, half random bytes), about 36 MiB.
Inputs MakeInputs(const std::string& root) {
  Inputs in;
  in.cpu_dir = root + "/cpu-in";
  in.io_dir = root + "/io-in";
  Must(MakeDirs(in.cpu_dir), "mkdir");
  in.cpu_bytes = 4u << 20;
  Must(WriteFileAtomic(in.cpu_dir + "/input.txt", Text(1, in.cpu_bytes)), "write cpu input");
  Rng r{7};
  for (int d = 0; d < 32; ++d) {
    std::string dir = in.io_dir + "/d" + std::to_string(d);
    Must(MakeDirs(dir), "mkdir");
    for (int f = 0; f < 48; ++f) {
      size_t size = (4 + r.Next() % 41) << 10;
      std::string data;
      if (f % 2 == 0) {
        data = Text(r.Next(), size);
      } else {
        data.resize(size);
        for (size_t i = 0; i + 8 <= size; i += 8) {
          uint64_t x = r.Next();
          std::memcpy(&data[i], &x, 8);
        }
      }
      Must(WriteFileAtomic(dir + "/f" + std::to_string(f), data), "write io input");
      in.io_files++;
      in.io_bytes += size;
    }
  }
  return in;
}

// ---------------------------------------------------------------------------------------------
// Workloads: the same shell command on the host and in the guest, `cd` into
// the input first (the host's directory or the guest's /in).

struct Workload {
  std::string name, dataset, host_dir, command, what;
};

std::vector<std::string> TimedArgv(const std::string& dir, const std::string& command) {
  return {kBusybox, "time", "-p", kBusybox, "sh", "-c", "cd " + dir + " && " + command};
}

// `time -p`'s "real S" line.
double RealSeconds(const std::string& err) {
  auto p = err.rfind("real ");
  if (p == std::string::npos) Die("no `real` in the time output: " + err);
  return std::atof(err.c_str() + p + 5);
}

struct RunResult {
  double program_s = 0;  // time -p real
  double job_s = 0;      // POST /v1/jobs until the job ended (VM runs only)
  std::string out;       // the workload's stdout (its digest)
};

RunResult OnHost(const Workload& w) {
  auto t0 = Clock::now();
  auto p = Must(RunProcess(TimedArgv(w.host_dir, w.command), std::chrono::minutes(20)), w.name);
  if (p.exit_code != 0) Die(w.name + " on the host exited " + std::to_string(p.exit_code) + p.err);
  RunResult r;
  r.job_s = Since(t0);
  r.program_s = RealSeconds(p.err);
  r.out = p.out;
  return r;
}

json WaitJob(const ApiClient& api, const std::string& id, seconds timeout) {
  return Must(PollUntil(
                  api, "/v1/jobs/" + id,
                  [](const json& j) {
                    const std::string s = j.value("state", "");
                    return s == "succeeded" || s == "failed" || s == "cancelled";
                  },
                  timeout),
              "job " + id);
}

std::string TaskLog(const ApiClient& api, const std::string& id, int task,
                    const std::string& stream) {
  auto r =
      Must(api.Get("/v1/jobs/" + id + "/tasks/" + std::to_string(task) + "/logs?stream=" + stream),
           "logs of " + id);
  return r["data"].get<std::string>();
}

// A job that fails is an error (reported in its cell), not the end of the run.
Result<RunResult> InVm(const ApiClient& api, const Workload& w) {
  json body = {{"image", "tiny"},
               {"resume", true},
               {"count", 1},
               {"retries", 0},
               {"timeout_s", 1200},
               {"argv", TimedArgv("/in", w.command)},
               {"data", {{{"name", "in"}, {"dataset", w.dataset}, {"mount", "/in"}}}}};
  auto t0 = Clock::now();
  std::string id = Must(api.Post("/v1/jobs", body), "submit " + w.name)["id"];
  json job = WaitJob(api, id, seconds(1500));
  RunResult r;
  r.job_s = Since(t0);
  if (job["state"] != "succeeded")
    return MakeError(ErrorCode::kInternal, w.name + " job " + id + " " + job.value("state", "") +
                                               ": " + job["tasks"][0].value("error", ""));
  r.program_s = RealSeconds(TaskLog(api, id, 0, "stderr"));
  r.out = TaskLog(api, id, 0, "stdout");
  return r;
}

// ---------------------------------------------------------------------------------------------
// Bag of tasks

struct BagResult {
  double makespan_s = 0;
  int succeeded = 0, max_concurrent = 0;
  double mean_task_s = 0;  // started_at..finished_at (1 s resolution)
};

int64_t ParseIsoSeconds(const std::string& s) {
  struct tm tm {};
  if (!strptime(s.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm)) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

BagResult Bag(const ApiClient& api, int tasks, double task_s, bool resume) {
  json body = {{"image", "tiny"}, {"resume", resume}, {"count", tasks},
               {"retries", 2},    {"timeout_s", 600}, {"argv", {"/bin/sleep", Fmt("%g", task_s)}}};
  if (!resume) {
    body["memory_mb"] = kVmMemoryMb;
    body["vcpus"] = 1;
  }
  auto t0 = Clock::now();
  std::string id = Must(api.Post("/v1/jobs", body), "submit bag")["id"];
  json job = WaitJob(api, id, seconds(3600));
  BagResult r;
  r.makespan_s = Since(t0);
  std::vector<std::pair<int64_t, int>> edges;
  double sum = 0;
  for (const auto& t : job["tasks"]) {
    if (t["state"] == "succeeded") r.succeeded++;
    if (!t["started_at"].is_string() || !t["finished_at"].is_string()) continue;
    int64_t a = ParseIsoSeconds(t["started_at"]), b = ParseIsoSeconds(t["finished_at"]);
    sum += static_cast<double>(b - a);
    edges.push_back({a, +1});
    edges.push_back({b, -1});
  }
  std::sort(edges.begin(), edges.end());  // an end before a start in the same second
  int now = 0;
  for (auto& [at, d] : edges) r.max_concurrent = std::max(r.max_concurrent, now += d);
  r.mean_task_s = edges.empty() ? 0 : sum / static_cast<double>(edges.size() / 2);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 5, bag_tasks = 100, cpu_passes = 3;
  double rtt_ms = 40, mbit = 100, bag_seconds = 3;
  bool write = true;
  std::vector<std::string> cells = {"host", "local", "cold-lan", "cold-wan", "warm-wan"};
  std::vector<std::string> workloads = {"cpu", "io"};
  std::vector<std::string> bag_modes = {"resume", "boot"};
  std::string docs = std::string(VMGRID_SOURCE_DIR) + "/docs/benchmarks.md";
  std::string tiny_dir = std::string(VMGRID_SOURCE_DIR) + "/build/images/tiny";
  CLI::App app{"The paper's run-time table and a bag of tasks (docs/benchmarks.md)", "runtime"};
  app.add_option("--runs", runs, "Runs per cell")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--cells", cells, "Cells: host,local,cold-lan,cold-wan,warm-wan")
      ->delimiter(',')
      ->check(CLI::IsMember({"host", "local", "cold-lan", "cold-wan", "warm-wan"}));
  app.add_option("--workloads", workloads, "Workloads: cpu,io")
      ->delimiter(',')
      ->check(CLI::IsMember({"cpu", "io"}));
  app.add_option("--bag", bag_modes, "Bags of tasks: resume,boot, or none")
      ->delimiter(',')
      ->check(CLI::IsMember({"resume", "boot", "none"}));
  app.add_option("--bag-tasks", bag_tasks, "Tasks in a bag")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--bag-seconds", bag_seconds, "Each task's sleep, s")
      ->check(CLI::Range(0.0, 3000.0))
      ->capture_default_str();
  app.add_option("--rtt-ms", rtt_ms, "WAN round-trip time, ms")
      ->check(CLI::Range(0.0, 600000.0))
      ->capture_default_str();
  app.add_option("--mbit", mbit, "WAN rate, Mbit/s")
      ->check(CLI::Range(1.0, 1000000.0))
      ->capture_default_str();
  app.add_option("--cpu-passes", cpu_passes, "bzip2 passes of the cpu workload")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--tiny", tiny_dir, "The tiny guest build")->capture_default_str();
  app.add_flag("!--no-write", write, "Print only; do not rewrite docs/benchmarks.md");
  app.add_option("--docs", docs, "The markdown file to write")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::erase(bag_modes, "none");
  const std::set<std::string> want(cells.begin(), cells.end());
  signal(SIGPIPE, SIG_IGN);
  auto whole = Clock::now();

  (void)RemoveTree(kStateDir);
  Inputs inputs = MakeInputs(std::string(kStateDir) + "/data");
  // Every tool named by path: on the host, PATH would find GNU bzip2 and coreutils.
  const std::string bb = std::string(kBusybox) + " ";
  std::string bz = "i=0; while [ $i -lt " + std::to_string(cpu_passes) + " ]; do " + bb +
                   "bzip2 -9 -c input.txt | " + bb + "wc -c; i=$((i+1)); done | " + bb + "uniq";
  std::vector<Workload> all = {
      {"cpu", "rt-cpu", inputs.cpu_dir, bz,
       "`bzip2 -9` of a 4 MiB text file, " + std::to_string(cpu_passes) + " passes"},
      {"io", "rt-io", inputs.io_dir,
       bb + "find . -type f -exec " + bb + "md5sum {} + | " + bb + "sort | " + bb + "md5sum",
       "md5sum of every file of a tree (" + std::to_string(inputs.io_files) + " files, " +
           Fmt("%.1f", static_cast<double>(inputs.io_bytes) / (1 << 20)) +
           " MiB), the sorted sums hashed"}};
  std::vector<Workload> under_test;
  for (auto& w : all)
    if (std::find(workloads.begin(), workloads.end(), w.name) != workloads.end())
      under_test.push_back(w);

  LocalGridOptions o;
  o.vmgrid_binary = VMGRID_BINARY;
  o.state_dir = std::string(kStateDir) + "/grid";
  o.hosts = 1;
  o.host_vcpus = 8;
  o.host_memory_mb = 8192;
  LocalGrid grid(o);
  Must(grid.Start(), "grid");
  ApiClient api = grid.Admin();
  const std::string lan_url = grid.image_server_url();
  linkem::LinkEmulator wan(WanOptions(lan_url, rtt_ms, mbit));
  const std::string wan_url = Must(StartInFront(wan, lan_url), "link emulator");

  std::fprintf(stderr, "importing tiny and making its checkpoint...\n");
  Must(ImportWithCheckpoint(api, tiny_dir, "tiny", kVmMemoryMb), "import tiny");
  for (auto& w : under_test) {
    std::vector<std::string> push = {VMGRID_BINARY, "--url", grid.url(), "--token",
                                     grid.admin_token()};
    if (!grid.ca_file().empty()) push.insert(push.end(), {"--ca", grid.ca_file()});
    push.insert(push.end(), {"data", "push", w.dataset, w.host_dir});
    Must(RunProcessChecked(push), "data push " + w.dataset);
  }

  // samples[workload][cell]
  std::map<std::string, std::map<std::string, Samples>> program, job;
  std::map<std::string, std::string> digest;  // workload -> the host's output
  std::map<std::string, std::map<std::string, int>> failed;
  auto record = [&](const Workload& w, const std::string& cell, int run,
                    const Result<RunResult>& result) {
    if (!result.ok()) {
      failed[w.name][cell]++;
      std::fprintf(stderr, "run %d %-3s %-9s FAILED: %s\n", run + 1, w.name.c_str(), cell.c_str(),
                   result.error().message.c_str());
      return;
    }
    const RunResult& r = *result;
    program[w.name][cell].v.push_back(r.program_s);
    job[w.name][cell].v.push_back(r.job_s);
    if (digest.count(w.name) && digest[w.name] != r.out)
      Die(w.name + " in " + cell + " printed " + r.out + ", the first run " + digest[w.name]);
    digest[w.name] = r.out;
    std::fprintf(stderr, "run %d %-3s %-9s program %6.2f s  job %6.2f s\n", run + 1, w.name.c_str(),
                 cell.c_str(), r.program_s, r.job_s);
  };
  for (int run = 0; run < runs; ++run) {
    for (auto& w : under_test) {
      if (want.count("host")) record(w, "host", run, OnHost(w));
      struct Net {
        std::string name, url, cold, warm;
      };
      for (const Net& net : {Net{"LAN", lan_url, "cold-lan", "local"},
                             Net{"WAN", wan_url, "cold-wan", "warm-wan"}}) {
        if (!want.count(net.cold) && !want.count(net.warm)) continue;
        Must(EmptyHostCache(grid, 0, net.url, true), "empty the host cache");
        Result<RunResult> cold = InVm(api, w);  // also fills the cache for the warm cell
        if (want.count(net.cold)) record(w, net.cold, run, cold);
        if (want.count(net.warm)) record(w, net.warm, run, InVm(api, w));
      }
    }
  }

  std::vector<std::pair<std::string, BagResult>> bags;
  if (!bag_modes.empty()) Must(EmptyHostCache(grid, 0, lan_url, true), "empty the host cache");
  for (const auto& mode : bag_modes) {
    std::fprintf(stderr, "bag of %d tasks (%s)...\n", bag_tasks, mode.c_str());
    bags.push_back({mode, Bag(api, bag_tasks, bag_seconds, mode == "resume")});
    std::fprintf(stderr, "bag %s: makespan %.1f s\n", mode.c_str(), bags.back().second.makespan_s);
  }
  grid.KillVmProcesses();
  wan.Stop();

  // --- report
  std::string commit = "unknown";
  if (auto c = RunProcessChecked({"git", "-C", VMGRID_SOURCE_DIR, "rev-parse", "--short", "HEAD"});
      c.ok())
    commit = c->substr(0, c->find('\n'));
  double load1 = 0;
  if (auto l = ReadFile("/proc/loadavg"); l.ok()) load1 = std::atof(l->c_str());
  std::ostringstream md;
  md << "Date: " << FormatTimeMs(NowMs()).substr(0, 10) << ". Machine: " << MachineLineWithAccel()
     << "; shared with other engineers' builds and tests (load average " << Fmt("%.1f", load1)
     << " at the end of the run). Commit " << commit << ". " << runs
     << " run(s) per cell, cells interleaved run by run. VMs: the tiny image (busybox, Debian "
        "kernel), 1 vCPU, "
     << kVmMemoryMb
     << " MB, resumed from its post-boot checkpoint, one job of one task per run. WAN: "
        "LinkEmulator in front of the image server, "
     << Fmt("%.0f", rtt_ms) << " ms RTT, " << Fmt("%.0f", mbit)
     << " Mbit/s. Program time: `busybox time -p` around the command (in a VM: by the guest's "
        "clock); job time: POST /v1/jobs until the job has ended (host clock, 0.5 s "
        "scheduler passes). Median (Q1–Q3).\n\n";
  md << "Workloads (the same busybox-static binary on the host and in the guest; input in a "
        "dataset at /in):\n\n";
  for (auto& w : under_test)
    md << "- **" << w.name << "**: " << w.what << ": `" << w.command << "`\n";
  md << "\n";
  const std::vector<std::pair<std::string, std::string>> columns = {
      {"host", "host (a)"},
      {"local", "VM, local (b): warm cache"},
      {"cold-lan", "VM, on demand (c): cold LAN"},
      {"cold-wan", "cold WAN"},
      {"warm-wan", "warm WAN"}};
  for (const char* what : {"program", "job"}) {
    auto& table = std::string(what) == "program" ? program : job;
    md << (std::string(what) == "program" ? "Program run time, s (the paper's measure):\n\n"
                                          : "Whole job, s (submit → ended: VM resume with "
                                            "its image fetch, dataset attach, program, "
                                            "delete):\n\n");
    md << "| workload |";
    std::string rule = "|---|";
    for (auto& [key, title] : columns)
      if (want.count(key)) {
        md << " " << title << " |";
        rule += "---|";
      }
    md << "\n" << rule << "\n";
    for (auto& w : under_test) {
      md << "| " << w.name << " |";
      double base = table[w.name]["host"].Median();
      for (auto& [key, title] : columns) {
        if (!want.count(key)) continue;
        const Samples& s = table[w.name][key];
        md << " " << s.MedianIqr("%.2f");
        if (key != "host" && base > 0 && !s.v.empty())
          md << " " << Fmt("%+.1f%%", 100 * (s.Median() / base - 1));
        if (int n = failed[w.name][key]; n > 0) md << " (" << n << " run(s) failed)";
        md << " |";
      }
      md << "\n";
    }
    md << "\n";
  }
  md << "The paper (Figueiredo, Dinda, Fortes, ICDCS 2003, table 2; SpecHPC Seismic, VMware "
        "Workstation on a physical host, the VM's disk local or over PVFS from a LAN server): "
        "physical 16.4, VM local disk 16.6 (+1.2%), VM over the grid virtual file system 16.8 "
        "(+2.0%) thousand seconds.\n\n";
  if (!bags.empty()) {
    const int slots = 8;  // host_vcpus 8 ÷ 1 vCPU per task (memory: 8192 ÷ 256)
    double ideal = bag_tasks * bag_seconds / slots;
    md << "Bag of tasks: " << bag_tasks << " tasks of `sleep " << Fmt("%g", bag_seconds)
       << "` in one job on the one-host local grid (" << slots
       << " slots: 8 vCPUs offered ÷ 1 vCPU per task, on 2 physical cores), warm LAN cache. "
          "Ideal = total work ÷ slots = "
       << Fmt("%.1f", ideal) << " s. One run each.\n\n"
       << "| start | makespan | ÷ ideal | tasks succeeded | most tasks running at once | "
          "mean task (VM running → ended, 1 s resolution) |\n|---|---|---|---|---|---|\n";
    for (auto& [mode, b] : bags)
      md << "| " << (mode == "resume" ? "`--resume` (from the checkpoint)" : "boot") << " | "
         << Fmt("%.1f s", b.makespan_s) << " | " << Fmt("%.2fx", b.makespan_s / ideal) << " | "
         << b.succeeded << "/" << bag_tasks << " | " << b.max_concurrent << " | "
         << Fmt("%.1f s", b.mean_task_s) << " |\n";
    md << "\n";
  }
  md << "Whole run: " << Fmt("%.0f", Since(whole)) << " s.\n";

  std::printf("%s", md.str().c_str());
  if (write) {
    Must(WriteDocsSection(docs, "runtime", "## Run time (bench/runtime)", md.str()),
         "write " + docs);
    std::fprintf(stderr, "wrote %s\n", docs.c_str());
  }
  return 0;
}
