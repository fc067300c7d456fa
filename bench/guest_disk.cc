// Guest disk throughput after the start, over each disk chain a clone can
// have, against plain QEMU on a local qcow2 overlay (docs/benchmarks.md,
// "Guest disk throughput"). Issue 15 §5.
//
// Three VMs of the tiny image, each resumed from its post-boot checkpoint
// and kept running through the whole run:
//   - plain QEMU: a qcow2 overlay on the checkpoint's disk delta on the
//     image's raw file, all local files, no vmgrid process (bench/plain_qemu.h);
//   - vmgrid, local image: the same chain as vmgrid builds it (the clone's
//     overlay copied from the agent's template);
//   - vmgrid, image server: the clone's overlay on the checkpoint's delta on
//     the base disk read through the host's NBD export of its chunk cache
//     (warm: every chunk cached after the first round).
// Each round runs every cell once, in a new random order. A cell is one
// command in the guest: drop the guest's page cache, then busybox dd timed
// by the guest's own clock:
//   - read: the whole disk device, /dev/vda, 1 MiB blocks;
//   - write: a 32 MiB file on the guest's root file system with fsync.
//
// Usage: guest_disk [--runs N=10] [--seed N] [--no-write] [--docs PATH]
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <regex>
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
#include "vmm/guest_agent_client.h"

using namespace vmgrid;
using namespace vmgrid::bench;
using nlohmann::json;
using std::chrono::seconds;

namespace {

// The guest commands: drop the guest's page cache, then busybox dd between
// two reads of /proc/uptime (the tiny image's dd reports no time). Prints
// "START END" (seconds since the guest booted, 10 ms steps) on stdout and
// dd's "N+M records out" on stderr.
const std::map<std::string, std::string> kTests = {
    {"read",
     "sync; echo 3 > /proc/sys/vm/drop_caches; read a x < /proc/uptime; "
     "dd if=/dev/vda of=/dev/null bs=1M; read b x < /proc/uptime; echo $a $b"},
    {"write",
     "rm -f /var/ddtest; sync; echo 3 > /proc/sys/vm/drop_caches; read a x < /proc/uptime; "
     "dd if=/dev/zero of=/var/ddtest bs=1M count=32 conv=fsync; read b x < /proc/uptime; "
     "rm -f /var/ddtest; echo $a $b"},
};

struct GuestRun {
  std::string out, err;
};

// MB/s (10^6 bytes) from the guest's times and dd's count of whole 1 MiB blocks.
double DdMbPerS(const GuestRun& run, const std::string& what) {
  static const std::regex records(R"((\d+)\+(\d+) records out)");
  std::smatch m;
  if (!std::regex_search(run.err, m, records) || m[2].str() != "0")
    Die(what + ": no whole-block count from dd in: " + run.err);
  double start = 0, end = 0;
  if (std::sscanf(run.out.c_str(), "%lf %lf", &start, &end) != 2 || end <= start)
    Die(what + ": no guest times in: " + run.out);
  return std::stod(m[1].str()) * 1048576.0 / (end - start) / 1e6;
}

// A clone resumed through `api`, waited for with the long poll.
std::string StartVm(const ApiClient& api, const std::string& name) {
  auto r = api.Post("/v1/vms",
                    {{"image", "tiny"}, {"start", "resume"}, {"disk", "clone"}, {"name", name}});
  if (!r.ok()) Die(r.error().message);
  return WaitRunning(api, *r)["id"];
}

// `script` in the guest of VM `id` through POST /v1/vms/ID/exec.
GuestRun VmgridExec(const ApiClient& api, const std::string& id, const std::string& script) {
  auto op = AwaitOperation(api, api.Post("/v1/vms/" + id + "/exec",
                                         {{"argv", {"sh", "-c", script}}, {"timeout_s", 300}}));
  if (!op.ok()) Die("exec in " + id + ": " + op.error().message);
  const json& res = *op;  // the operation's result: {exit_code, stdout, stderr}
  if (res.value("exit_code", -1) != 0) Die("exec in " + id + " failed: " + res.dump());
  return {res.value("stdout", ""), res.value("stderr", "")};
}

}  // namespace

int main(int argc, char** argv) {
  const BenchFlags flags =
      ParseBenchFlags(argc, argv, {.docs = std::string(VMGRID_SOURCE_DIR) + "/docs/benchmarks.md"},
                      "guest_disk [--runs N] [--seed N] [--no-write] [--docs PATH]");
  const int runs = flags.runs;
  signal(SIGPIPE, SIG_IGN);
  std::string image_src =
      getenv("VMGRID_TINY_IMAGE") ? getenv("VMGRID_TINY_IMAGE") : VMGRID_TINY_IMAGE_DIR;
  LocalGridOptions o;
  o.vmgrid_binary = VMGRID_BINARY;
  o.state_dir = "/tmp/vmgrid-bench-guest-disk";
  (void)RemoveTree(o.state_dir);
  o.hosts = 1;
  o.image_server = false;
  LocalGrid grid(o);
  if (auto st = grid.Start(); !st.ok()) Die(st.error().message);
  ApiClient api = grid.Admin();
  std::fprintf(stderr, "importing tiny and making its post-boot checkpoint...\n");
  auto imported = ImportWithCheckpoint(api, image_src, "tiny", 0, seconds(300));
  if (!imported.ok()) Die(imported.error().message);
  json image = *imported;
  std::string image_dir = grid.controller_state_dir() + "/images/" + image["id"].get<std::string>();

  LocalGridOptions so = ServedGridOptions(o, "/tmp/vmgrid-bench-guest-disk-served");
  LocalGrid served(so);
  if (auto st = served.Start(); !st.ok()) Die(st.error().message);
  ApiClient served_api = served.Admin();
  std::fprintf(stderr, "importing tiny through the image server of a second grid...\n");
  if (auto r = ImportWithCheckpoint(served_api, image_src, "tiny", 0, seconds(300)); !r.ok())
    Die(r.error().message);

  std::fprintf(stderr, "starting the three VMs...\n");
  PlainQemu plain = PlainQemuStart(o.state_dir + "/plain", image, image_dir, true);
  (void)PlainQemuWaitReady(plain);
  auto plain_ga = GuestAgentClient::Connect(plain.run_dir + "/qga.sock", seconds(30));
  if (!plain_ga.ok()) Die("plain QEMU's guest agent: " + plain_ga.error().message);
  const std::string local_vm = StartVm(api, "disk-local");
  const std::string served_vm = StartVm(served_api, "disk-served");

  const std::vector<std::string> cells = {"plain QEMU, local qcow2", "vmgrid clone, local image",
                                          "vmgrid clone, image server (NBD, warm cache)"};
  auto run_cell = [&](const std::string& cell, const std::string& script) -> GuestRun {
    if (cell == cells[0]) {
      auto r = (*plain_ga)->Exec({"sh", "-c", script}, "", seconds(300));
      if (!r.ok() || r->exit_code != 0)
        Die("plain QEMU exec failed: " + (r.ok() ? r->err : r.error().message));
      return {r->out, r->err};
    }
    return cell == cells[1] ? VmgridExec(api, local_vm, script)
                            : VmgridExec(served_api, served_vm, script);
  };

  std::map<std::string, Samples> mbps;  // cell + "\n" + test
  std::map<std::string, Samples> ratio;
  Samples load;
  std::mt19937_64 rng(flags.seed);
  for (int r = -1; r < runs; ++r) {  // r == -1: the warm-up (fills the host cache)
    std::vector<std::pair<std::string, std::string>> order;
    for (const auto& c : cells)
      for (const auto& [test, script] : kTests) order.push_back({c, test});
    std::shuffle(order.begin(), order.end(), rng);
    std::map<std::string, double> got;
    for (const auto& [cell, test] : order) {
      double v = DdMbPerS(run_cell(cell, kTests.at(test)), cell + " " + test);
      std::fprintf(stderr, "%s %d %-46s %-5s %.1f MB/s\n", r < 0 ? "warm-up" : "run", r + 1,
                   cell.c_str(), test.c_str(), v);
      if (r < 0) continue;
      got[cell + "\n" + test] = v;
      mbps[cell + "\n" + test].v.push_back(v);
      load.v.push_back(LoadAverage1());
    }
    if (r < 0) continue;
    for (const auto& c : cells)
      for (const auto& [test, script] : kTests)
        ratio[c + "\n" + test].v.push_back(got[c + "\n" + test] / got[cells[0] + "\n" + test]);
  }
  plain.proc->KillHard();
  grid.KillVmProcesses();
  served.KillVmProcesses();

  std::ostringstream md;
  md << "`bench/guest_disk --runs " << runs << "`, " << Today() << ", commit "
     << GitCommit(VMGRID_SOURCE_DIR) << ", " << MachineLineWithAccel() << ", " << QemuVersion()
     << "; load average (1 min) during the runs " << load.MedianIqr("%.1f")
     << ". Image: tiny, 128 MiB disk, 256 MB, 1 vCPU, virtio-blk; each VM resumed from the "
        "image's post-boot checkpoint and running through the whole run. MB/s (10^6 bytes) of "
        "busybox dd in the guest, timed with the guest's /proc/uptime (10 ms steps), after "
        "dropping the guest's page cache; median (IQR) of "
     << runs
     << " rounds after a warm-up round, each round running every cell once in random order. "
        "\"/ plain\" is each round's figure over plain QEMU's in the same round.\n\n"
     << "| disk chain | read /dev/vda, 1 MiB blocks (MB/s) | / plain | write 32 MiB file + "
        "fsync (MB/s) | / plain |\n"
     << "|---|---:|---:|---:|---:|\n";
  for (const auto& c : cells) {
    md << "| " << c;
    for (const char* test : {"read", "write"})
      md << " | " << mbps[c + "\n" + test].MedianIqr("%.1f") << " | "
         << (c == cells[0] ? std::string("1") : ratio[c + "\n" + test].MedianIqr("%.2f"));
    md << " |\n";
  }
  std::printf("%s", md.str().c_str());
  if (flags.write) {
    if (!WriteDocsSection(flags.docs, "guest-disk", "## Guest disk throughput (bench/guest_disk)",
                          md.str())
             .ok())
      Die("cannot write " + flags.docs);
    std::fprintf(stderr, "wrote %s\n", flags.docs.c_str());
  }
  return 0;
}
