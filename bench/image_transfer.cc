// bench/image_transfer: the paper's instantiation table with images that
// reach hosts through the image server (issue 3, section 8). For each image
// (tiny; the Debian image when it is built) it measures, run by run
// interleaved, the time from "start a VM" to "its guest agent answers" for
// boot and resume:
//   - plain QEMU from local files (same kernel, initrd, disk, memory and
//     devices; no vmgrid); resume = -incoming from a checkpoint that plain
//     QEMU made of itself right after booting;
//   - vmgrid with the host cache emptied (cold) and right after (warm), with
//     the agent fetching from the image server directly (LAN: loopback) and
//     through a LinkEmulator (WAN: RTT and a bandwidth cap);
//   - cold boots with the agent's prefetch off;
// the bytes each cold start fetched from the image server (host counters),
// and the NBD read throughput of our export (warm chunk cache) vs qemu-nbd
// serving the same raw file. Prints the tables, the targets met or missed,
// and writes the markdown between markers in docs/benchmarks.md.
//
// Usage: image_transfer [--images tiny,debian] [--runs N] [--debian-runs N]
//                       [--rtt-ms 40] [--mbit 100] [--no-nbd] [--no-write] [--docs PATH]

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "chunks/manifest.h"
#include "client/api_client.h"
#include "common/child_process.h"
#include "common/subprocess.h"
#include "common/util.h"
#include "dev/local_grid.h"
#include "die.h"
#include "grid_bench.h"
#include "linkem/link_emulator.h"
#include "nbd_bench.h"
#include "plain_qemu.h"
#include "stats.h"
#include "vmm/guest_agent_client.h"
#include "vmm/machine_ops.h"
#include "vmm/qemu_process.h"
#include "vmm/qmp_client.h"
#include "wan.h"

using namespace vmgrid;
using namespace vmgrid::bench;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

constexpr char kStateDir[] = "/tmp/vmgrid-bench-image-transfer";

std::string MiB(double bytes) { return Fmt("%.1f", bytes / (1 << 20)); }

// One image under test: its source directory and how it is started.
struct ImageUnderTest {
  std::string name, dir;
  int memory_mb = 256;
  int runs = 3;
  json manifest;  // the guest build's manifest.json
  json api;       // the image as the controller describes it (versions, checkpoint)
  std::string disk, kernel, initrd, append;  // absolute local paths
  uint64_t disk_virtual = 0, disk_allocated = 0;
  std::string plain_ckpt;  // directory with memory.state + disk.qcow2 made by plain QEMU
};

// ---------------------------------------------------------------------------------------------
// Plain QEMU (same argv builder as the agent, foreground, no vmgrid process)

QemuConfig PlainConfig(const ImageUnderTest& im, const std::string& work,
                       const std::string& overlay, bool incoming) {
  QemuConfig c;
  c.vm_id = "plain";
  c.memory_mb = im.memory_mb;
  c.vcpus = 1;
  c.kernel = im.kernel;
  c.initrd = im.initrd;
  c.append = im.append;
  c.disk_path = overlay;
  c.disk_format = "qcow2";
  c.run_dir = work + "/run";
  c.accel = KvmUsableBy(c.qemu_binary) ? "kvm" : "tcg";
  c.incoming = incoming;
  return c;
}

std::unique_ptr<ChildProcess> SpawnPlain(const QemuConfig& c, const std::string& incoming_file,
                                         const std::string& log) {
  auto proc = ChildProcess::Spawn(PlainQemuArgv(c, incoming_file), log);
  if (!proc.ok()) Die(proc.error().message);
  return std::move(*proc);
}

std::string FreshOverlay(const std::string& work, const std::string& backing,
                         const std::string& fmt) {
  (void)RemoveTree(work);
  if (!MakeDirs(work + "/run").ok()) Die("mkdir " + work);
  std::string overlay = work + "/disk.qcow2";
  if (!RunProcessChecked(
           {"qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", fmt, overlay})
           .ok())
    Die("qemu-img create failed");
  return overlay;
}

// Plain QEMU boot, or resume from the plain checkpoint: spawn -> guest agent answers.
double PlainOnce(const ImageUnderTest& im, bool resume) {
  std::string work = std::string(kStateDir) + "/plain-" + im.name;
  std::string overlay = resume ? FreshOverlay(work, im.plain_ckpt + "/disk.qcow2", "qcow2")
                               : FreshOverlay(work, im.disk, "raw");
  QemuConfig c = PlainConfig(im, work, overlay, resume);
  auto t0 = Clock::now();
  auto proc = SpawnPlain(c, im.plain_ckpt + "/memory.state", work + "/qemu.out");
  WaitPlainReady(c.run_dir, resume, work + "/qemu.out");
  double t = Since(t0);
  proc->KillHard();
  return t;
}

// The plain-QEMU post-boot checkpoint, made like the agent makes an image's:
// boot, guest agent answers, sync, then pause + disk top + memory to files.
void MakePlainCheckpoint(ImageUnderTest& im) {
  std::string work = std::string(kStateDir) + "/plain-ckpt-" + im.name;
  std::string overlay = FreshOverlay(work, im.disk, "raw");
  QemuConfig c = PlainConfig(im, work, overlay, false);
  auto proc = SpawnPlain(c, "", work + "/qemu.out");
  auto deadline = Clock::now() + seconds(600);
  auto ga = GuestAgentClient::ConnectWhenReady(c.run_dir + "/qga.sock", deadline);
  if (!ga.ok()) Die("plain checkpoint boot: " + ga.error().message);
  (void)(*ga)->Exec({"/bin/sync"}, "", seconds(30));
  auto qmp = QmpClient::Connect(c.run_dir + "/qmp.sock", seconds(30));
  if (!qmp.ok()) Die(qmp.error().message);
  im.plain_ckpt = work + "/ckpt";
  if (!MakeDirs(im.plain_ckpt).ok()) Die("mkdir " + im.plain_ckpt);
  Status st = CheckpointToFiles(**qmp, "disk0", im.plain_ckpt + "/disk.qcow2", false,
                                im.plain_ckpt + "/memory.state", seconds(600));
  if (!st.ok()) Die("plain checkpoint: " + st.error().message);
  proc->KillHard();
}

// ---------------------------------------------------------------------------------------------
// vmgrid

json Import(const ApiClient& api, ImageUnderTest& im) {
  auto created = api.Post("/v1/images", {{"name", im.name},
                                         {"format", im.manifest.value("disk_format", "raw")},
                                         {"has_kernel", true},
                                         {"has_initrd", true},
                                         {"append", im.append}});
  if (!created.ok()) Die(created.error().message);
  std::string id = (*created)["id"];
  for (auto [kind, path] :
       {std::pair{"disk", im.disk}, {"kernel", im.kernel}, {"initrd", im.initrd}}) {
    auto r = api.PutFile("/v1/images/" + id + "/files/" + kind, path);
    if (!r.ok()) Die(std::string(kind) + ": " + r.error().message);
  }
  if (auto r = AwaitOperation(api, api.Post("/v1/images/" + id + "/finalize")); !r.ok())
    Die(r.error().message);
  if (auto r = api.Post("/v1/images/" + id + "/checkpoint", {{"memory_mb", im.memory_mb}}); !r.ok())
    Die(r.error().message);
  auto done = PollUntil(
      api, "/v1/images/" + id,
      [](const json& j) {
        return !j["checkpoint"].is_null() && j["checkpoint"]["state"] != "creating";
      },
      seconds(900));
  if (!done.ok() || (*done)["checkpoint"]["state"] != "ready")
    Die("image checkpoint failed: " + (done.ok() ? done->dump() : done.error().message));
  return *done;
}

// The host's image counters as of a heartbeat sent after this call.
json FreshHostImages(const ApiClient& api) {
  auto heartbeat = [&]() -> std::pair<std::string, json> {
    auto h = api.Get("/v1/hosts");
    if (!h.ok() || (*h)["hosts"].empty()) return {"", json()};
    const json& host = (*h)["hosts"][0];
    return {host.value("last_heartbeat", ""), host.value("images", json())};
  };
  std::string first = heartbeat().first;
  auto t0 = Clock::now();
  while (Since(t0) < 10) {
    std::this_thread::sleep_for(milliseconds(50));
    auto [at, images] = heartbeat();
    if (at != first && images.is_object()) return images;
  }
  Die("no heartbeat from the host in 10 s");
}

uint64_t ServerBytes(const json& images) {
  return images["image_server"]["bytes_fetched"].get<uint64_t>();
}

struct VmRun {
  double seconds = 0;
  double create_ms = 0;  // the controller's own measure
};

// One instantiation: request -> state running (polling every 10 ms); then deleted.
VmRun VmgridOnce(const ApiClient& api, json body) {
  auto t0 = Clock::now();
  auto r = api.Post("/v1/vms", body);
  if (!r.ok()) Die(r.error().message);
  std::string id = (*r)["id"];
  json vm;
  while (true) {
    auto g = api.Get("/v1/vms/" + id);
    if (g.ok() && (*g)["state"] == "running") {
      vm = *g;
      break;
    }
    if (g.ok() && (*g)["state"] == "error") Die("VM failed: " + g->dump());
    if (Since(t0) > 900) Die("VM did not start in 900 s");
    std::this_thread::sleep_for(milliseconds(10));
  }
  VmRun run;
  run.seconds = Since(t0);
  if (vm.contains("create_ms") && vm["create_ms"].is_number())
    run.create_ms = vm["create_ms"].get<double>();
  (void)api.Delete("/v1/vms/" + id + "?purge_workspace=true");
  (void)PollUntil(
      api, "/v1/vms",
      [&](const json& j) {
        for (const auto& v : j["vms"])
          if (v["id"] == id) return false;
        return true;
      },
      seconds(120));
  return run;
}

// Non-zero bytes of a published version, from the image server's manifest.
uint64_t StoredBytes(const LocalGrid& grid, const json& ref) {
  std::string path = grid.image_server_dir() + "/manifests/" + ref["name"].get<std::string>() +
                     "/" + std::to_string(ref["version"].get<uint64_t>()) + ".json";
  auto text = ReadFile(path, kMaxManifestJsonBytes + 1);
  if (!text.ok()) Die(text.error().message);
  auto m = ParseManifestJson(*text);
  if (!m.ok()) Die(m.error().message);
  return m->NonZeroBytes();
}

// ---------------------------------------------------------------------------------------------
// NBD read throughput: our export (warm chunk cache) vs qemu-nbd, same raw file

struct NbdResult {
  json ours, qemu;
  double ours_nbdcopy = 0, qemu_nbdcopy = 0;  // MiB/s
};

NbdResult MeasureNbd(const ImageUnderTest& im, int random_reads) {
  NbdExportPairOptions po;
  po.image = im.disk;
  po.work = std::string(kStateDir) + "/nbd-" + im.name;
  po.manifest_name = im.name;
  auto pair = Must(NbdExportPair::Start(po));
  const uint64_t size = pair->manifest().size;
  const std::string &ours_uri = pair->ours_uri(), &qemu_uri = pair->qemu_uri();
  NbdResult r;
  // A first untimed pass puts the raw file and the cache's chunk files in the
  // page cache for both; then alternate so that load drift hits both alike.
  (void)Must(NbdcopyMiBs(qemu_uri, size));
  (void)Must(NbdcopyMiBs(ours_uri, size));
  r.qemu_nbdcopy = Must(NbdcopyMiBs(qemu_uri, size));
  r.ours_nbdcopy = Must(NbdcopyMiBs(ours_uri, size));
  r.qemu = Must(RunReadBench(qemu_uri, pair->chunks_file(), random_reads));
  r.ours = Must(RunReadBench(ours_uri, pair->chunks_file(), random_reads));
  return r;
}

// ---------------------------------------------------------------------------------------------

uint64_t AllocatedBytes(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) Die("stat " + path);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

struct Target {
  std::string measure, target;
  double ratio = 0, limit = 0;
  std::string detail;
  bool measured = true;
};

}  // namespace

int main(int argc, char** argv) {
  int runs = 3, debian_runs = 1, random_reads = 20000;
  double rtt_ms = 40, mbit = 100;
  bool write = true, nbd_bench = true;
  std::vector<std::string> images = {"tiny", "debian"};
  std::string docs = std::string(VMGRID_SOURCE_DIR) + "/docs/benchmarks.md";
  std::string images_root = std::string(VMGRID_SOURCE_DIR) + "/build/images";
  const char* usage =
      "usage: image_transfer [--images tiny,debian] [--runs N] [--debian-runs N] [--rtt-ms MS] "
      "[--mbit M]\n"
      "                      [--random-reads N] [--images-root DIR] [--no-nbd] [--no-write] "
      "[--docs PATH]";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die(usage);
      return argv[++i];
    };
    if (a == "--runs")
      runs = std::max(1, std::atoi(next().c_str()));
    else if (a == "--debian-runs")
      debian_runs = std::max(1, std::atoi(next().c_str()));
    else if (a == "--images")
      images = Split(next());
    else if (a == "--rtt-ms")
      rtt_ms = std::atof(next().c_str());
    else if (a == "--mbit")
      mbit = std::atof(next().c_str());
    else if (a == "--random-reads")
      random_reads = std::max(16, std::atoi(next().c_str()));
    else if (a == "--images-root")
      images_root = next();
    else if (a == "--no-nbd")
      nbd_bench = false;
    else if (a == "--no-write")
      write = false;
    else if (a == "--docs")
      docs = next();
    else
      Die(usage);
  }
  signal(SIGPIPE, SIG_IGN);
  auto whole = Clock::now();

  std::vector<ImageUnderTest> under_test;
  std::vector<std::string> not_measured;
  for (const auto& name : images) {
    ImageUnderTest im;
    im.name = name;
    im.dir = images_root + "/" + name;
    auto text = ReadFile(im.dir + "/manifest.json");
    if (!text.ok()) {
      std::fprintf(stderr, "image %s: %s/manifest.json missing; not measured\n", name.c_str(),
                   im.dir.c_str());
      not_measured.push_back(name);
      continue;
    }
    im.manifest = json::parse(*text);
    im.disk = im.dir + "/" + im.manifest["disk"].get<std::string>();
    im.kernel = im.dir + "/" + im.manifest["kernel"].get<std::string>();
    im.initrd = im.dir + "/" + im.manifest["initrd"].get<std::string>();
    im.append = im.manifest.value("append", "");
    im.memory_mb = name == "tiny" ? 256 : 1024;
    im.runs = name == "tiny" ? runs : debian_runs;
    struct stat st {};
    if (stat(im.disk.c_str(), &st) != 0) Die("stat " + im.disk);
    im.disk_virtual = static_cast<uint64_t>(st.st_size);
    im.disk_allocated = AllocatedBytes(im.disk);
    under_test.push_back(std::move(im));
  }
  if (under_test.empty()) Die("no image to measure");

  LocalGridOptions o;
  o.vmgrid_binary = VMGRID_BINARY;
  o.state_dir = kStateDir;
  (void)RemoveTree(o.state_dir);
  o.hosts = 1;
  o.host_vcpus = 8;
  o.host_memory_mb = 8192;
  LocalGrid grid(o);
  if (auto st = grid.Start(); !st.ok()) Die(st.error().message);
  ApiClient api = grid.Admin();
  const std::string lan_url = grid.image_server_url();
  linkem::LinkEmulator wan(WanOptions(lan_url, rtt_ms, mbit));
  auto started = StartInFront(wan, lan_url);
  if (!started.ok()) Die(started.error().message);
  const std::string wan_url = *started;

  std::ostringstream md;
  md << "Date: " << FormatTimeMs(NowMs()).substr(0, 10) << ". Machine: " << MachineLineWithAccel()
     << "; shared with other engineers' builds and tests during the run. WAN: LinkEmulator in "
        "front of the "
        "image server, "
     << Fmt("%.0f", rtt_ms) << " ms RTT, " << Fmt("%.0f", mbit)
     << " Mbit/s shared by all connections; LAN: the image server on loopback. Times: from the "
        "request "
        "(POST /v1/vms, or spawning plain QEMU) until the guest agent answers; median (min–max) of "
        "the runs.\n\n";
  std::vector<Target> targets;
  bool debian_bytes_measured = false;

  for (auto& im : under_test) {
    std::fprintf(stderr, "[%s] importing and making the post-boot checkpoint (%d MB)...\n",
                 im.name.c_str(), im.memory_mb);
    auto t_import = Clock::now();
    im.api = Import(api, im);
    double import_s = Since(t_import);
    std::fprintf(stderr, "[%s] imported + checkpointed in %.1f s; plain QEMU checkpoint...\n",
                 im.name.c_str(), import_s);
    MakePlainCheckpoint(im);
    const json& versions = im.api["versions"];
    const uint64_t kernel_bytes = StoredBytes(grid, versions["kernel"]);
    const uint64_t initrd_bytes = StoredBytes(grid, versions["initrd"]);
    const uint64_t mem_bytes = StoredBytes(grid, versions["ckpt_memory"]);
    const uint64_t ckdisk_bytes = StoredBytes(grid, versions["ckpt_disk"]);
    const uint64_t disk_stored = StoredBytes(grid, versions["disk"]);
    json body_base = {{"image", im.name}, {"memory_mb", im.memory_mb}, {"vcpus", 1}};

    // Priming: make sure both prefetch hints exist (the checkpoint's boot on
    // this host recorded the boot order; the first resume records its own).
    if (auto st = EmptyHostCache(grid, 0, lan_url, true); !st.ok()) Die(st.error().message);
    for (const char* start : {"boot", "resume"}) {
      json b = body_base;
      b["start"] = start;
      b["name"] = std::string("prime-") + start;
      if (std::string(start) == "resume") b.erase("memory_mb");
      VmRun r = VmgridOnce(api, b);
      std::fprintf(stderr, "[%s] priming %s %.2f s\n", im.name.c_str(), start, r.seconds);
    }

    std::map<std::string, Samples> t;          // "plain boot", "cold LAN boot", ...
    std::map<std::string, Samples> bytes;      // image server bytes for cold starts
    std::map<std::string, Samples> create_ms;  // controller's create_ms
    for (int run = 0; run < im.runs; ++run) {
      for (const char* start : {"boot", "resume"}) {
        double s = PlainOnce(im, std::string(start) == "resume");
        t[std::string("plain ") + start].v.push_back(s);
        std::fprintf(stderr, "[%s] run %d plain %-6s %.2f s\n", im.name.c_str(), run + 1, start, s);
      }
      struct Net {
        const char* name;
        std::string url;
      };
      for (const Net& net : {Net{"LAN", lan_url}, Net{"WAN", wan_url}}) {
        for (const char* start : {"boot", "resume"}) {
          if (auto st = EmptyHostCache(grid, 0, net.url, true); !st.ok()) Die(st.error().message);
          // A fresh agent process: its counters start at 0 (reading them
          // here could still see the previous process's last heartbeat).
          uint64_t before = 0;
          for (const char* temp : {"cold", "warm"}) {
            json b = body_base;
            b["start"] = start;
            if (std::string(start) == "resume") b.erase("memory_mb");
            b["name"] =
                std::string(temp) + "-" + net.name + "-" + start + "-" + std::to_string(run);
            std::string key = std::string(temp) + " " + net.name + " " + start;
            VmRun r = VmgridOnce(api, b);
            uint64_t after = ServerBytes(FreshHostImages(api));
            t[key].v.push_back(r.seconds);
            create_ms[key].v.push_back(r.create_ms);
            bytes[key].v.push_back(static_cast<double>(after - before));
            std::fprintf(
                stderr,
                "[%s] run %d %-16s %.2f s (controller %.0f ms), %s MiB from the image server\n",
                im.name.c_str(), run + 1, key.c_str(), r.seconds, r.create_ms,
                MiB(static_cast<double>(after - before)).c_str());
            before = after;
          }
        }
      }
      for (const Net& net : {Net{"LAN", lan_url}, Net{"WAN", wan_url}}) {
        if (auto st = EmptyHostCache(grid, 0, net.url, false); !st.ok()) Die(st.error().message);
        uint64_t before = 0;  // a fresh agent process (see above)
        json b = body_base;
        b["start"] = "boot";
        b["name"] = std::string("nopf-") + net.name + "-" + std::to_string(run);
        std::string key = std::string("cold ") + net.name + " boot, no prefetch";
        VmRun r = VmgridOnce(api, b);
        uint64_t after = ServerBytes(FreshHostImages(api));
        t[key].v.push_back(r.seconds);
        create_ms[key].v.push_back(r.create_ms);
        bytes[key].v.push_back(static_cast<double>(after - before));
        std::fprintf(stderr, "[%s] run %d %-28s %.2f s, %s MiB\n", im.name.c_str(), run + 1,
                     key.c_str(), r.seconds, MiB(static_cast<double>(after - before)).c_str());
      }
    }
    if (auto st = EmptyHostCache(grid, 0, lan_url, true); !st.ok()) Die(st.error().message);

    // --- tables for this image
    const double bw = mbit * 1e6 / 8;  // bytes/s
    md << "### " << im.name << "\n\n"
       << "Image: " << im.name << " — disk " << MiB(static_cast<double>(im.disk_virtual))
       << " MiB virtual, " << MiB(static_cast<double>(im.disk_allocated)) << " MiB allocated ("
       << MiB(static_cast<double>(disk_stored))
       << " MiB in non-zero 512 KiB chunks); kernel (PVH vmlinux) "
       << MiB(static_cast<double>(kernel_bytes)) << " MiB and initrd "
       << MiB(static_cast<double>(initrd_bytes)) << " MiB stored; post-boot checkpoint "
       << im.memory_mb << " MB guest: memory state " << MiB(static_cast<double>(mem_bytes))
       << " MiB, disk delta " << MiB(static_cast<double>(ckdisk_bytes)) << " MiB stored. 1 vCPU. "
       << im.runs << " run(s). Import + "
       << "vmgrid checkpoint took " << Fmt("%.0f", import_s) << " s.\n\n"
       << "| start | plain QEMU, local files | cold LAN | cold WAN | warm LAN | warm WAN |\n"
       << "|---|---|---|---|---|---|\n";
    auto cell = [&](const std::string& key, double base) {
      const Samples& s = t[key];
      std::string c = Fmt("%.2f s", s.Median());
      if (s.v.size() > 1) c += " (" + Fmt("%.2f", s.Min()) + "–" + Fmt("%.2f", s.Max()) + ")";
      if (base > 0) c += " " + Fmt("%.2fx", s.Median() / base);
      return c;
    };
    for (const char* start : {"boot", "resume"}) {
      std::string st = start;
      double base = t["plain " + st].Median();
      md << "| " << st << " | " << cell("plain " + st, 0) << " | " << cell("cold LAN " + st, base)
         << " | " << cell("cold WAN " + st, base) << " | " << cell("warm LAN " + st, base) << " | "
         << cell("warm WAN " + st, base) << " |\n";
    }
    md << "\nPrefetch (cold boots; \"with\" = the columns above):\n\n"
       << "| cold boot | with prefetch | without prefetch | bytes with | bytes without "
          "|\n|---|---|---|---|---|\n";
    for (const char* net : {"LAN", "WAN"}) {
      std::string n = net;
      md << "| " << n << " | " << cell("cold " + n + " boot", 0) << " | "
         << cell("cold " + n + " boot, no prefetch", 0) << " | "
         << MiB(bytes["cold " + n + " boot"].Median()) << " MiB | "
         << MiB(bytes["cold " + n + " boot, no prefetch"].Median()) << " MiB |\n";
    }
    // Bytes: each cold start fetched the materialized files whole (kernel,
    // initrd; for resume also the memory state and disk delta) plus the disk
    // chunks the guest (and prefetch) read through the export.
    md << "\nBytes fetched from the image server per start (median; host counter "
          "image_server.bytes_fetched). "
          "\"Disk part\" = total minus the files materialized whole before QEMU starts (kernel, "
          "initrd; for a "
          "resume also memory state and disk delta).\n\n"
       << "| start | total | disk part | % of disk virtual | % of disk allocated | total % of "
          "image "
          "(disk virtual + kernel + initrd) | lower bound at "
       << Fmt("%.0f", mbit) << " Mbit/s |\n|---|---|---|---|---|---|---|\n";
    const double image_total = static_cast<double>(im.disk_virtual + kernel_bytes + initrd_bytes);
    for (std::string key :
         {"cold LAN boot", "cold WAN boot", "cold LAN boot, no prefetch", "cold LAN resume",
          "cold WAN resume", "warm LAN boot", "warm LAN resume"}) {
      double b = bytes[key].Median();
      bool resume = key.find("resume") != std::string::npos;
      double files = static_cast<double>(kernel_bytes + initrd_bytes +
                                         (resume ? mem_bytes + ckdisk_bytes : 0));
      double disk_part = key.rfind("warm", 0) == 0 ? b : std::max(0.0, b - files);
      md << "| " << key << " | " << MiB(b) << " MiB | " << MiB(disk_part) << " MiB | "
         << Fmt("%.2f%%", 100 * disk_part / static_cast<double>(im.disk_virtual)) << " | "
         << Fmt("%.2f%%", 100 * disk_part / static_cast<double>(im.disk_allocated)) << " | "
         << Fmt("%.2f%%", 100 * b / image_total) << " | "
         << Fmt("%.2f s", b / bw + 3 * rtt_ms / 1000) << " |\n";
    }
    md << "\nController's `create_ms` (request to guest agent, measured inside the controller), "
          "median: ";
    bool first = true;
    for (auto& [key, s] : create_ms) {
      md << (first ? "" : "; ") << key << " " << Fmt("%.2f s", s.Median() / 1000);
      first = false;
    }
    md << ".\n\n";

    // --- targets
    auto ratio = [&](const std::string& a, const std::string& b) {
      return t[a].Median() / t[b].Median();
    };
    targets.push_back({im.name + ": warm-cache resume (LAN) vs plain local resume", "≤ 1.1x",
                       ratio("warm LAN resume", "plain resume"), 1.1,
                       Fmt("%.2f s", t["warm LAN resume"].Median()) + " vs " +
                           Fmt("%.2f s", t["plain resume"].Median())});
    targets.push_back({im.name + ": cold LAN boot vs plain local boot", "≤ 1.3x",
                       ratio("cold LAN boot", "plain boot"), 1.3,
                       Fmt("%.2f s", t["cold LAN boot"].Median()) + " vs " +
                           Fmt("%.2f s", t["plain boot"].Median())});
    if (im.name == "debian") {
      double b = bytes["cold LAN boot"].Median();
      targets.push_back(
          {"debian: bytes fetched to boot (cold LAN, with prefetch) vs image", "≤ 5%",
           b / image_total, 0.05,
           MiB(b) + " MiB of " + MiB(image_total) + " MiB (disk virtual + kernel + initrd); " +
               Fmt("%.1f%%",
                   100 * b / static_cast<double>(im.disk_allocated + kernel_bytes + initrd_bytes)) +
               " of the allocated bytes"});
      debian_bytes_measured = true;
    }
    double wb = bytes["cold WAN resume"].Median();
    double bound = wb / bw + 3 * rtt_ms / 1000;
    targets.push_back({im.name + ": cold WAN resume vs bytes ÷ bandwidth + 3 RTT", "≤ 1.25x",
                       t["cold WAN resume"].Median() / bound, 1.25,
                       Fmt("%.2f s", t["cold WAN resume"].Median()) + " vs " +
                           Fmt("%.2f s", bound) + " (" + MiB(wb) + " MiB)"});
  }
  if (!debian_bytes_measured)
    targets.push_back({"debian: bytes fetched to boot vs image", "≤ 5%", 0, 0.05,
                       "Debian image not measured", false});

  grid.KillVmProcesses();
  wan.Stop();

  // --- NBD throughput
  if (nbd_bench) {
    md << "### NBD read throughput (warm cache)\n\n"
       << "Our export: ChunkStore → ChunkCache (every chunk cached, the chunk files in the page "
          "cache) → "
          "ManifestBlockSource → nbd::NbdServer on a unix socket, in the benchmark process; "
          "qemu-nbd: "
          "`qemu-nbd --read-only --shared=8 --format=raw` of the same raw file (in the page "
          "cache). Sequential: "
          "`nbdcopy --no-extents URI null:` (second pass), and libnbd reads of 1 MiB at queue "
          "depth 8 over the whole "
          "export; random: 4 KiB reads at random offsets inside the chunks that hold data, one "
          "connection, queue "
          "depth 1 and 16 (bench/nbd_read_bench.py, python3-libnbd).\n\n"
       << "| image | server | nbdcopy MiB/s | seq 1 MiB QD8 MiB/s | rand 4 KiB QD1 IOPS | QD1 "
          "MiB/s | rand 4 KiB QD16 "
          "IOPS | QD16 MiB/s |\n|---|---|---|---|---|---|---|---|\n";
    for (auto& im : under_test) {
      std::fprintf(stderr, "[%s] NBD throughput...\n", im.name.c_str());
      NbdResult r = MeasureNbd(im, random_reads);
      auto row = [&](const char* server, const json& j, double copy) {
        md << "| " << im.name << " | " << server << " | " << Fmt("%.0f", copy) << " | "
           << Fmt("%.0f", j["seq"]["mib_s"].get<double>()) << " | "
           << Fmt("%.0f", j["rand_qd1"]["iops"].get<double>()) << " | "
           << Fmt("%.1f", j["rand_qd1"]["mib_s"].get<double>()) << " | "
           << Fmt("%.0f", j["rand_qd16"]["iops"].get<double>()) << " | "
           << Fmt("%.1f", j["rand_qd16"]["mib_s"].get<double>()) << " |\n";
      };
      row("vmgrid export", r.ours, r.ours_nbdcopy);
      row("qemu-nbd", r.qemu, r.qemu_nbdcopy);
      struct {
        const char* what;
        double ours, theirs;
      } cmp[] = {{"nbdcopy sequential", r.ours_nbdcopy, r.qemu_nbdcopy},
                 {"sequential 1 MiB QD8", r.ours["seq"]["mib_s"].get<double>(),
                  r.qemu["seq"]["mib_s"].get<double>()},
                 {"random 4 KiB QD1", r.ours["rand_qd1"]["iops"].get<double>(),
                  r.qemu["rand_qd1"]["iops"].get<double>()},
                 {"random 4 KiB QD16", r.ours["rand_qd16"]["iops"].get<double>(),
                  r.qemu["rand_qd16"]["iops"].get<double>()}};
      for (auto& c : cmp)
        targets.push_back({im.name + ": NBD " + c.what + " vs qemu-nbd", "≥ 1x", c.ours / c.theirs,
                           -1.0, Fmt("%.0f", c.ours) + " vs " + Fmt("%.0f", c.theirs)});
    }
    md << "\n";
  }

  md << "### Targets\n\n| measure | target | measured | ratio | result |\n|---|---|---|---|---|\n";
  for (const auto& tg : targets) {
    if (!tg.measured) {
      md << "| " << tg.measure << " | " << tg.target << " | " << tg.detail
         << " | – | not measured |\n";
      continue;
    }
    // limit < 0: a lower bound on the ratio (at least |limit|).
    bool met = tg.limit < 0 ? tg.ratio >= -tg.limit : tg.ratio <= tg.limit;
    std::string ratio = tg.target.find('%') != std::string::npos ? Fmt("%.2f%%", 100 * tg.ratio)
                                                                 : Fmt("%.2fx", tg.ratio);
    md << "| " << tg.measure << " | " << tg.target << " | " << tg.detail << " | " << ratio << " | "
       << (met ? "met" : "**missed**") << " |\n";
  }
  for (const auto& n : not_measured)
    md << "\nImage " << n << " was not measured: " << images_root << "/" << n
       << "/manifest.json does not exist (build it with guest/build-" << n << ".sh).\n";
  md << "\nWhole run: " << Fmt("%.0f", Since(whole)) << " s.\n";

  std::printf("%s", md.str().c_str());
  if (write) {
    if (!WriteDocsSection(docs, "image-transfer", "## Image transfer (bench/image_transfer)",
                          md.str())
             .ok())
      Die("cannot write " + docs);
    std::fprintf(stderr, "wrote %s\n", docs.c_str());
  }
  return 0;
}
