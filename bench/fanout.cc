// bench/fanout: many hosts pulling one cold image at the same time (issue
// 15 §5), against one host pulling it alone. A LocalGrid with an image
// server and N agents (one process each, all on this machine); the tiny
// image and its post-boot checkpoint are published to the image server.
// After a warm-up round, --runs rounds of two cells in a new random order:
//   - 1 host: one clone resume, its host's cache cold;
//   - N hosts at once: N clone resumes requested back to back, placed one
//     per host (each host declares room for one), every host's cache cold.
// Cold everywhere: before each cell every agent is restarted with its chunk
// cache, materialized files and manifests removed, and the image server's
// files are dropped from the page cache (posix_fadvise DONTNEED), so the
// server reads them from disk again. Per cell: the time until the last VM's
// guest agent answered (each VM from its own request; long polls), and the
// bytes the hosts fetched from the image server (their counters).
//
// Usage: fanout [--hosts N=10] [--runs N=5] [--seed N] [--no-write] [--docs PATH]
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "bench_flags.h"
#include "client/api_client.h"
#include "common/util.h"
#include "dev/local_grid.h"
#include "die.h"
#include "grid_bench.h"
#include "machine.h"
#include "stats.h"

using namespace vmgrid;
using namespace vmgrid::bench;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

// Drops every file under `dir` from the page cache; returns how many.
int DropFromPageCache(const std::string& dir) {
  int n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    int fd = ::open(it->path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    (void)::fdatasync(fd);
    if (::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0) ++n;
    ::close(fd);
  }
  return n;
}

// Every host's counter of bytes fetched from the image server, summed, as
// of heartbeats sent after this call (the counters start at 0 with each
// agent process).
uint64_t FetchedBytes(const ApiClient& api, int hosts) {
  auto read = [&]() -> std::map<std::string, std::pair<std::string, uint64_t>> {
    std::map<std::string, std::pair<std::string, uint64_t>> by_host;
    auto h = api.Get("/v1/hosts");
    if (!h.ok()) Die(h.error().message);
    for (const json& host : (*h)["hosts"]) {
      const json& images = host.value("images", json());
      uint64_t b = images.is_object() && images.contains("image_server")
                       ? images["image_server"].value("bytes_fetched", uint64_t{0})
                       : 0;
      by_host[host["name"]] = {host.value("last_heartbeat", ""), b};
    }
    return by_host;
  };
  auto first = read();
  auto t0 = Clock::now();
  while (Since(t0) < 30) {
    std::this_thread::sleep_for(milliseconds(100));
    auto now = read();
    int fresh = 0;
    uint64_t sum = 0;
    for (auto& [name, v] : now) {
      if (v.first != first[name].first) ++fresh;
      sum += v.second;
    }
    if (fresh >= hosts) return sum;
  }
  Die("no fresh heartbeat from every host in 30 s");
}

struct Storm {
  double all = 0;            // seconds until the last VM answered
  std::vector<double> each;  // each VM from its own request
  std::set<std::string> on;  // the hosts used
};

// `n` clone resumes requested back to back, each waited for by a thread of
// its own with the long poll; then deleted.
Storm StartVms(const ApiClient& api, int n, int round) {
  Storm s;
  auto t0 = Clock::now();
  std::vector<std::string> ids(n);
  std::vector<Clock::time_point> asked(n);
  std::vector<double> done(n);
  std::vector<std::thread> waiters;
  std::vector<std::string> hosts(n);
  for (int i = 0; i < n; ++i) {
    asked[i] = Clock::now();
    auto r =
        api.Post("/v1/vms", {{"image", "tiny"},
                             {"start", "resume"},
                             {"disk", "clone"},
                             {"name", "fan-" + std::to_string(round) + "-" + std::to_string(i)}});
    if (!r.ok()) Die(r.error().message);
    ids[i] = (*r)["id"];
    waiters.emplace_back([&, i, created = *r] {
      hosts[i] = WaitRunning(api, created).value("host", "");
      done[i] = Since(asked[i]);
    });
  }
  for (auto& t : waiters) t.join();
  s.all = Since(t0);
  s.each = done;
  s.on.insert(hosts.begin(), hosts.end());
  for (const std::string& id : ids) (void)api.Delete("/v1/vms/" + id);
  auto gone = PollUntil(
      api, "/v1/vms", [](const json& j) { return j["vms"].empty(); }, seconds(120));
  if (!gone.ok()) Die("the VMs were not deleted: " + gone.error().message);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int hosts = 10;
  const BenchFlags flags = ParseBenchFlags(
      argc, argv, {.runs = 5, .docs = std::string(VMGRID_SOURCE_DIR) + "/docs/benchmarks.md"},
      "fanout [--hosts N] [--runs N] [--seed N] [--no-write] [--docs PATH]",
      [&](const std::string& a, const char* next) {
        if (a != "--hosts" || !next) return 0;
        hosts = std::clamp(std::atoi(next), 2, 32);
        return 2;
      });
  const int runs = flags.runs;
  signal(SIGPIPE, SIG_IGN);
  std::string image_src =
      getenv("VMGRID_TINY_IMAGE") ? getenv("VMGRID_TINY_IMAGE") : VMGRID_TINY_IMAGE_DIR;
  LocalGridOptions o;
  o.vmgrid_binary = VMGRID_BINARY;
  o.state_dir = "/tmp/vmgrid-bench-fanout";
  (void)RemoveTree(o.state_dir);
  o.hosts = hosts;
  o.image_server = true;
  // Room for one 1-vCPU VM per host, so that N creates land on N hosts
  // (placement would otherwise prefer the host it believes has the image
  // cached, where the checkpoint was made).
  o.host_vcpus = 1;
  LocalGrid grid(o);
  if (auto st = grid.Start(); !st.ok()) Die(st.error().message);
  ApiClient api = grid.Admin();
  std::fprintf(stderr, "importing tiny through the image server, making its checkpoint...\n");
  auto imported = ImportWithCheckpoint(api, image_src, "tiny", 0, seconds(600));
  if (!imported.ok()) Die(imported.error().message);

  auto cold = [&] {
    for (int i = 0; i < hosts; ++i)
      if (auto st = EmptyHostCache(grid, i, grid.image_server_url(), true); !st.ok())
        Die("emptying host " + std::to_string(i) + "'s cache: " + st.error().message);
    if (DropFromPageCache(grid.image_server_dir()) == 0)
      Die("no image server files under " + grid.image_server_dir());
  };
  const std::vector<int> cells = {1, hosts};
  std::map<int, Samples> all, each, mib, ratio;
  Samples load;
  std::mt19937_64 rng(flags.seed);
  for (int r = -1; r < runs; ++r) {  // r == -1: the warm-up
    std::vector<int> order = cells;
    std::shuffle(order.begin(), order.end(), rng);
    std::map<int, double> got;
    for (int n : order) {
      cold();
      Storm s = StartVms(api, n, r + 1);
      if (static_cast<int>(s.on.size()) != n)
        Die("the " + std::to_string(n) + " VMs went to " + std::to_string(s.on.size()) +
            " hosts, not one each");
      double fetched = static_cast<double>(FetchedBytes(api, hosts)) / (1 << 20);
      std::fprintf(stderr, "%s %d %2d host(s): all running %.2f s, fetched %.1f MiB\n",
                   r < 0 ? "warm-up" : "run", r + 1, n, s.all, fetched);
      if (r < 0) continue;
      got[n] = s.all;
      all[n].v.push_back(s.all);
      for (double e : s.each) each[n].v.push_back(e);
      mib[n].v.push_back(fetched);
      load.v.push_back(LoadAverage1());
    }
    if (r >= 0) ratio[hosts].v.push_back(got[hosts] / got[1]);
  }
  grid.KillVmProcesses();

  std::ostringstream md;
  md << "`bench/fanout --hosts " << hosts << " --runs " << runs << "`, " << Today() << ", commit "
     << GitCommit(VMGRID_SOURCE_DIR) << ", " << MachineLineWithAccel() << ", " << QemuVersion()
     << "; load average (1 min) during the runs " << load.MedianIqr("%.1f")
     << ". Image: tiny (128 MiB disk, 256 MB checkpoint), clones resumed from its post-boot "
        "checkpoint through the image server, every host's cache emptied and the image "
        "server's files dropped from the page cache before each cell; all "
     << hosts
     << " agents, the image server and the controller on this one machine (loopback, no link "
        "emulator). Median (IQR) of "
     << runs << " rounds after a warm-up round, the two cells in random order each round.\n\n"
     << "| hosts pulling at once | all running (s) | each VM (s) | / 1 host | fetched from the "
        "image server, all hosts (MiB) |\n"
     << "|---|---:|---:|---:|---:|\n";
  for (int n : cells)
    md << "| " << n << " | " << all[n].MedianIqr("%.2f") << " | " << each[n].MedianIqr("%.2f")
       << " | " << (n == 1 ? std::string("1") : ratio[n].MedianIqr("%.2f")) << " | "
       << mib[n].MedianIqr("%.1f") << " |\n";
  std::printf("%s", md.str().c_str());
  if (flags.write) {
    if (!WriteDocsSection(flags.docs, "fanout",
                          "## Many hosts pulling one cold image (bench/fanout)", md.str())
             .ok())
      Die("cannot write " + flags.docs);
    std::fprintf(stderr, "wrote %s\n", flags.docs.c_str());
  }
  return 0;
}
