// bench/storm: many VMs resumed on one host at once (issue 15 §5), and the
// memory each costs. N clones of the tiny image's post-boot checkpoint are
// requested back to back through the API (a "boot storm" of resumes); in
// the same run, N plain QEMUs resume the same checkpoint at once with no
// vmgrid (bench/plain_qemu.h), and one VM alone is the single-VM figure of
// both. After a warm-up round, --runs rounds, each running the four cells
// (vmgrid storm, plain storm, vmgrid single, plain single) in a new random
// order. Per storm: the time until the last VM's guest agent answered, and
// each VM's own time from its request (or spawn). With all N running:
// each QEMU's resident and proportional set size (/proc/PID/smaps_rollup),
// the agent's, and the controller's CPU time over the storm per VM placed.
//
// Usage: storm [--vms N=20] [--runs N=10] [--seed N] [--no-write] [--docs PATH]

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "bench_flags.h"
#include "client/api_client.h"
#include "common/util.h"
#include "dev/local_grid.h"
#include "die.h"
#include "grid_bench.h"
#include "machine.h"
#include "plain_qemu.h"
#include "stats.h"

using namespace vmgrid;
using namespace vmgrid::bench;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

constexpr char kState[] = "/tmp/vmgrid-bench-storm";

// kB of "Rss:" and "Pss:" in /proc/PID/smaps_rollup (0 if unreadable).
std::pair<double, double> RssPssKb(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  double rss = 0, pss = 0;
  while (std::getline(f, line)) {
    std::istringstream fields(line);
    std::string key;
    double value = 0;
    if (!(fields >> key >> value)) continue;  // the first line names the range
    if (key == "Rss:") rss = value;
    if (key == "Pss:") pss = value;
  }
  return {rss, pss};
}

pid_t PidOfFile(const std::string& path) {
  auto text = ReadFile(path, 64);
  return text.ok() ? static_cast<pid_t>(std::atol(text->c_str())) : 0;
}

struct StormResult {
  double all_s = 0;                    // until the last VM answered
  std::vector<double> each_s;          // each VM from its own request
  std::vector<double> rss_kb, pss_kb;  // each QEMU with all N running
  double agent_rss_kb = 0, controller_cpu_s = 0;
};

void DeleteAll(const ApiClient& api, const std::vector<std::string>& ids) {
  for (const auto& id : ids) (void)api.Delete("/v1/vms/" + id);
  (void)PollUntil(
      api, "/v1/vms",
      [&](const json& j) {
        for (const auto& v : j["vms"])
          if (std::find(ids.begin(), ids.end(), v["id"]) != ids.end()) return false;
        return true;
      },
      seconds(120));
}

// N clone resumes requested back to back; waits as a program watching many
// VMs would, on the event stream (`GET /v1/events?follow=1`, one long poll
// at a time that answers at each state change), not by polling the list.
StormResult VmgridStorm(LocalGrid& grid, const ApiClient& api, int n, int round) {
  StormResult r;
  pid_t controller = grid.controller_pid(0);
  double cpu0 = controller > 0 ? ProcessCpuMs(controller) : 0;
  auto newest = api.Get("/v1/events?last=1");
  if (!newest.ok()) Die("events: " + newest.error().message);
  int64_t cursor = newest->value("next", int64_t{0});  // the newest event so far
  auto t0 = Clock::now();
  std::map<std::string, Clock::time_point> asked;
  std::vector<std::string> ids;
  for (int i = 0; i < n; ++i) {
    auto created =
        api.Post("/v1/vms", {{"image", "tiny"},
                             {"start", "resume"},
                             {"disk", "clone"},
                             {"name", "storm-" + std::to_string(round) + "-" + std::to_string(i)}});
    if (!created.ok()) Die("create: " + created.error().message);
    ids.push_back((*created)["id"]);
    asked[ids.back()] = Clock::now();
  }
  std::map<std::string, double> done;
  while (done.size() < ids.size()) {
    auto page = api.Get("/v1/events?follow=1&wait=5&limit=1000&after=" + std::to_string(cursor));
    if (!page.ok()) Die("events: " + page.error().message);
    for (const auto& e : (*page)["events"]) {
      const std::string id = e.value("vm_id", "");
      if (!asked.count(id) || done.count(id) || e.value("kind", "") != "vm.state") continue;
      const json& data = e.contains("data") ? e["data"] : json::object();
      if (data.value("to", "") == "error") Die("VM " + id + " failed: " + e.value("message", ""));
      if (data.value("to", "") == "running") done[id] = Since(asked[id]);
    }
    cursor = page->value("next", cursor);
    if (Since(t0) > 600) Die("the storm did not finish in 600 s");
  }
  r.all_s = Since(t0);
  if (controller > 0) r.controller_cpu_s = (ProcessCpuMs(controller) - cpu0) / 1000;
  for (auto& [id, s] : done) r.each_s.push_back(s);
  for (const auto& id : ids) {
    pid_t pid = PidOfFile(grid.agent_state_dir(0) + "/vms/" + id + "/run/qemu.pid");
    if (pid <= 0) continue;
    auto [rss, pss] = RssPssKb(pid);
    r.rss_kb.push_back(rss);
    r.pss_kb.push_back(pss);
  }
  pid_t agent = grid.agent_pid(0);
  if (agent > 0) r.agent_rss_kb = RssPssKb(agent).first;
  DeleteAll(api, ids);
  return r;
}

// N plain QEMUs resuming the same checkpoint at once (overlays made first,
// untimed); each waited for in a thread of its own.
StormResult PlainStorm(const json& image, const std::string& image_dir, int n) {
  StormResult r;
  std::vector<std::string> works;
  for (int i = 0; i < n; ++i) works.push_back(std::string(kState) + "/plain-" + std::to_string(i));
  std::vector<PlainQemu> qemus;
  auto t0 = Clock::now();
  for (const auto& w : works) qemus.push_back(PlainQemuStart(w, image, image_dir, true));
  std::vector<double> each(static_cast<size_t>(n));
  std::vector<std::thread> waiters;
  for (size_t i = 0; i < qemus.size(); ++i)
    waiters.emplace_back([&, i] { each[i] = PlainQemuWaitReady(qemus[i]); });
  for (auto& t : waiters) t.join();
  r.all_s = Since(t0);
  r.each_s = each;
  for (auto& q : qemus) {
    auto [rss, pss] = RssPssKb(q.proc->pid());
    r.rss_kb.push_back(rss);
    r.pss_kb.push_back(pss);
    q.proc->KillHard();
  }
  return r;
}

std::string Mib(const Samples& kb) {
  Samples m;
  for (double v : kb.v) m.v.push_back(v / 1024);
  return m.MedianIqr("%.0f");
}

}  // namespace

int main(int argc, char** argv) {
  int n = 20;
  const BenchFlags flags =
      ParseBenchFlags(argc, argv, {.docs = std::string(VMGRID_SOURCE_DIR) + "/docs/benchmarks.md"},
                      "storm [--vms N] [--runs N] [--seed N] [--no-write] [--docs PATH]",
                      [&](const std::string& a, const char* next) {
                        if (a != "--vms" || !next) return 0;
                        n = std::max(2, std::atoi(next));
                        return 2;
                      });
  const int runs = flags.runs;
  signal(SIGPIPE, SIG_IGN);
  std::string image_src =
      getenv("VMGRID_TINY_IMAGE") ? getenv("VMGRID_TINY_IMAGE") : VMGRID_TINY_IMAGE_DIR;
  LocalGridOptions o;
  o.vmgrid_binary = VMGRID_BINARY;
  o.state_dir = kState;
  (void)RemoveTree(o.state_dir);
  o.hosts = 1;
  // Room for N VMs of 1 vCPU and 256 MB on the one host (vCPUs are
  // overcommitted: this machine has 2 cores).
  o.host_vcpus = n + 2;
  o.host_memory_mb = static_cast<int64_t>(n + 2) * 384;
  // Image files by path, as bench/instantiate's main grid: vmgrid's own
  // overhead against plain QEMU on the same local files.
  o.image_server = false;
  LocalGrid grid(o);
  if (auto st = grid.Start(); !st.ok()) Die(st.error().message);
  ApiClient api = grid.Admin();
  std::fprintf(stderr, "importing tiny and making its post-boot checkpoint...\n");
  auto imported = ImportWithCheckpoint(api, image_src, "tiny", 0, seconds(300));
  if (!imported.ok()) Die(imported.error().message);
  json image = *imported;
  std::string image_dir = grid.controller_state_dir() + "/images/" + image["id"].get<std::string>();

  const std::vector<std::string> cells = {"vmgrid storm", "plain storm", "vmgrid single",
                                          "plain single"};
  std::map<std::string, Samples> all, each, rss, pss, ratio;
  Samples agent_rss, controller_cpu_ms, load;
  std::mt19937_64 rng(flags.seed);
  for (int r = -1; r < runs; ++r) {  // r == -1: the warm-up
    std::vector<size_t> order(cells.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    std::map<std::string, double> got;
    for (size_t i : order) {
      const std::string& cell = cells[i];
      const int count = cell.find("storm") != std::string::npos ? n : 1;
      StormResult s = cell.starts_with("vmgrid") ? VmgridStorm(grid, api, count, r + 1)
                                                 : PlainStorm(image, image_dir, count);
      got[cell] = s.all_s;
      std::fprintf(stderr, "%s %d %-14s %d VM(s): all running in %.3f s\n",
                   r < 0 ? "warm-up" : "run", r + 1, cell.c_str(), count, s.all_s);
      if (r < 0) continue;
      all[cell].v.push_back(s.all_s);
      each[cell].v.insert(each[cell].v.end(), s.each_s.begin(), s.each_s.end());
      if (count == n) {
        rss[cell].v.insert(rss[cell].v.end(), s.rss_kb.begin(), s.rss_kb.end());
        pss[cell].v.insert(pss[cell].v.end(), s.pss_kb.begin(), s.pss_kb.end());
        if (cell.starts_with("vmgrid")) {
          agent_rss.v.push_back(s.agent_rss_kb);
          controller_cpu_ms.v.push_back(s.controller_cpu_s * 1000 / n);
        }
      }
      load.v.push_back(LoadAverage1());
    }
    if (r < 0) continue;
    ratio["storm"].v.push_back(got["vmgrid storm"] / got["plain storm"]);
    ratio["single"].v.push_back(got["vmgrid single"] / got["plain single"]);
  }
  grid.KillVmProcesses();

  std::ostringstream md;
  md << "`bench/storm --vms " << n << " --runs " << runs << "`, " << Today() << ", commit "
     << GitCommit(VMGRID_SOURCE_DIR) << ", " << MachineLineWithAccel() << ", " << QemuVersion()
     << "; load average (1 min) during the runs " << load.MedianIqr("%.1f")
     << ". Image: tiny, 256 MB, 1 vCPU, clones resumed from its post-boot checkpoint on one host. "
        "Median (IQR) of "
     << runs
     << " rounds after a warm-up round; each round runs the four cells once, in random order; "
        "\"vmgrid / plain\" is each round's ratio.\n\n"
     << "| start | plain QEMU, all running (s) | vmgrid, all running (s) | vmgrid / plain | plain "
        "QEMU, each VM (s) | vmgrid, each VM (s) |\n"
     << "|---|---:|---:|---:|---:|---:|\n";
  md << "| 1 VM | " << all["plain single"].MedianIqr("%.3f") << " | "
     << all["vmgrid single"].MedianIqr("%.3f") << " | " << ratio["single"].MedianIqr("%.2f")
     << " | – | – |\n";
  md << "| " << n << " VMs at once | " << all["plain storm"].MedianIqr("%.2f") << " | "
     << all["vmgrid storm"].MedianIqr("%.2f") << " | " << ratio["storm"].MedianIqr("%.2f") << " | "
     << each["plain storm"].MedianIqr("%.2f") << " | " << each["vmgrid storm"].MedianIqr("%.2f")
     << " |\n";
  md << "\nMemory with " << n
     << " VMs running (MiB; median (IQR) over all VMs of all rounds; PSS shares pages mapped by "
        "several processes among them):\n\n"
     << "| | plain QEMU | vmgrid |\n|---|---:|---:|\n"
     << "| QEMU RSS per VM | " << Mib(rss["plain storm"]) << " | " << Mib(rss["vmgrid storm"])
     << " |\n"
     << "| QEMU PSS per VM | " << Mib(pss["plain storm"]) << " | " << Mib(pss["vmgrid storm"])
     << " |\n";
  Samples agent_share;
  for (double kb : agent_rss.v) agent_share.v.push_back(kb / n);
  md << "| agent RSS (whole process, one per host) | – | " << Mib(agent_rss) << " |\n"
     << "| agent RSS / VMs | – | " << Fmt("%.1f", agent_share.Median() / 1024) << " |\n";
  md << "\nController CPU per VM placed and started during a storm (its user + system time over "
        "the storm / "
     << n << "): " << controller_cpu_ms.MedianIqr("%.2f") << " ms.\n";
  std::printf("%s", md.str().c_str());
  if (flags.write) {
    if (!WriteDocsSection(flags.docs, "storm", "## Many VMs on one host at once (bench/storm)",
                          md.str())
             .ok())
      Die("cannot write " + flags.docs);
    std::fprintf(stderr, "wrote %s\n", flags.docs.c_str());
  }
  return 0;
}
