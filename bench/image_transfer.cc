// bench/image_transfer: the paper's instantiation table with images that
// reach hosts through the image server (issue 3, section 8; issue 15 §2).
// For each image (tiny; the Debian image when it is built) it measures, run
// by run interleaved, the time from "start a VM" to "its guest agent
// answers" for boot and resume:
//   - plain QEMU from local files (same kernel, initrd, disk, memory and
//     devices; no vmgrid); resume = -incoming from a checkpoint that plain
//     QEMU made of itself right after booting;
//   - vmgrid with the host cache emptied and the image server's page cache
//     dropped (cold) and right after (warm), the agent fetching through a
//     LinkEmulator in front of the image server: LAN (1 Gbit/s, 0.2 ms RTT)
//     and WAN (100 Mbit/s, 40 ms RTT);
//   - the simple alternative a user would try ("copy whole"): download the
//     image's files (the disk as a qcow2 of its allocated blocks, kernel,
//     initrd; for a resume also the checkpoint) over the same emulated link
//     with one HTTP connection, page cache dropped, then start plain QEMU
//     locally (the download plus that run's plain start);
//   - the same with the files compressed (FILE.zst, zstd -3) and decoded
//     while they arrive ("copy whole, zstd");
//   - cold boots with the agent's prefetch off, and cold starts with the
//     chunks fetched raw (`--no-compressed-transfer`) instead of as zstd
//     frames;
// the bytes each cold start moved (the host's counter of what it fetched,
// and the bytes the link emulator carried, TLS included), and the NBD read
// throughput of our export (warm chunk cache) vs qemu-nbd serving the same
// raw file. Cells are median (Q1–Q3); a ratio's target is met only when
// the IQR of the per-run ratios is on its side. Prints the tables and
// writes the markdown between markers in docs/benchmarks.md.
//
// Usage: image_transfer [--images tiny,debian] [--runs N] [--debian-runs N]
//                       [--rtt-ms 40] [--mbit 100] [--lan-rtt-ms 0.2]
//                       [--lan-mbit 1000] [--no-nbd] [--no-write] [--docs PATH]

#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
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

// What the host received from the image server (zstd frames as received).
uint64_t ServerBytes(const json& images) {
  return images["image_server"]["bytes_fetched"].get<uint64_t>();
}

// The same chunks' own bytes (after decoding).
uint64_t ServerRawBytes(const json& images) {
  return images["image_server"].value("raw_bytes_fetched", uint64_t{0});
}

// Bytes QEMU read from the host's NBD exports: the disk blocks the guests read.
uint64_t NbdReadBytes(const json& images) { return images["nbd"]["bytes_read"].get<uint64_t>(); }

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
// Cold everywhere, and the copy-whole baseline

// Drops the page cache of every file under `dir` (POSIX_FADV_DONTNEED; the
// files are written and closed, so their pages are clean): the next read
// comes from the disk, as on a server that has not served the image lately.
void DropPageCache(const std::string& dir) {
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    int fd = open(it->path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    (void)fdatasync(fd);
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

uint64_t WireBytes(const linkem::LinkEmulator& link) {
  auto st = link.stats();
  return st.bytes_to_client + st.bytes_to_target;
}

// What a user without vmgrid would copy to the host: the disk as a qcow2 of
// its allocated blocks (qemu-img convert; a sparse-aware copy), the kernel
// and the initrd; for a resume also the checkpoint's memory state and disk
// delta. Served by a plain HTTP server (no TLS) from `dir`.
struct CopyWhole {
  std::string dir;
  std::vector<std::string> boot_files, resume_files;
  uint64_t boot_bytes = 0, resume_bytes = 0;
  uint64_t boot_zst_bytes = 0, resume_zst_bytes = 0;  // the same files as FILE.zst (zstd -3)
};

CopyWhole PrepareCopyWhole(const ImageUnderTest& im) {
  CopyWhole c;
  c.dir = std::string(kStateDir) + "/copy/" + im.name;
  (void)RemoveTree(c.dir);
  if (!MakeDirs(c.dir).ok()) Die("mkdir " + c.dir);
  if (!RunProcessChecked(
           {"qemu-img", "convert", "-O", "qcow2", "-f", "raw", im.disk, c.dir + "/disk.qcow2"})
           .ok())
    Die("qemu-img convert failed");
  auto copy = [&](const std::string& from, const std::string& name) {
    std::filesystem::copy_file(from, c.dir + "/" + name);
    return name;
  };
  c.boot_files = {"disk.qcow2", copy(im.kernel, "kernel"), copy(im.initrd, "initrd")};
  c.resume_files = c.boot_files;
  c.resume_files.push_back(copy(im.plain_ckpt + "/memory.state", "memory.state"));
  c.resume_files.push_back(copy(im.plain_ckpt + "/disk.qcow2", "ckpt-disk.qcow2"));
  for (const auto& f : c.resume_files) {
    // The compressed alternative: zstd's default level, as `zstd FILE` makes.
    if (!RunProcessChecked(
             {"zstd", "-3", "-q", "-f", c.dir + "/" + f, "-o", c.dir + "/" + f + ".zst"})
             .ok())
      Die("zstd " + f + " failed");
    for (const std::string& name : {f, f + ".zst"}) {
      struct stat st {};
      if (stat((c.dir + "/" + name).c_str(), &st) != 0) Die("stat " + name);
      const bool zst = name != f;
      (zst ? c.resume_zst_bytes : c.resume_bytes) += static_cast<uint64_t>(st.st_size);
      if (std::find(c.boot_files.begin(), c.boot_files.end(), f) != c.boot_files.end())
        (zst ? c.boot_zst_bytes : c.boot_bytes) += static_cast<uint64_t>(st.st_size);
    }
  }
  return c;
}

// Downloads `files` from `url` (the server's page cache dropped first), one
// keep-alive connection, one file after another; returns the seconds. With
// `zstd`, it downloads FILE.zst instead and decodes it while it arrives
// (`curl … | zstd -d`), the decoding's time included.
double Download(const CopyWhole& c, const std::string& url, const std::vector<std::string>& files,
                bool zstd = false) {
  DropPageCache(c.dir);
  const std::string hostport = url.substr(url.find("//") + 2);
  httplib::Client client(hostport.substr(0, hostport.rfind(':')),
                         std::atoi(hostport.substr(hostport.rfind(':') + 1).c_str()));
  client.set_keep_alive(true);
  client.set_read_timeout(600, 0);
  std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> dctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  std::vector<char> out(ZSTD_DStreamOutSize());
  auto t0 = Clock::now();
  for (const auto& f : files) {
    uint64_t got = 0, decoded = 0;
    ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_only);
    auto r = client.Get("/" + f + (zstd ? ".zst" : ""), [&](const char* data, size_t n) {
      got += n;
      if (!zstd) return true;
      ZSTD_inBuffer in{data, n, 0};
      while (in.pos < in.size) {
        ZSTD_outBuffer o{out.data(), out.size(), 0};
        size_t rc = ZSTD_decompressStream(dctx.get(), &o, &in);
        if (ZSTD_isError(rc)) Die("zstd -d of " + f + ": " + ZSTD_getErrorName(rc));
        decoded += o.pos;
      }
      return true;
    });
    if (!r || r->status != 200) Die("copy-whole download of " + f + " failed");
    if (got == 0 || (zstd && decoded == 0)) Die("copy-whole download of " + f + " was empty");
  }
  return Since(t0);
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
  // Per-run ratios: the verdict needs the whole IQR on the target's side.
  Samples runs = {};
};

}  // namespace

int main(int argc, char** argv) {
  int runs = 10, debian_runs = 1, random_reads = 20000;
  double rtt_ms = 40, mbit = 100, lan_rtt_ms = 0.2, lan_mbit = 1000;
  bool write = true, nbd_bench = true;
  std::vector<std::string> images = {"tiny", "debian"};
  std::string docs = std::string(VMGRID_SOURCE_DIR) + "/docs/benchmarks.md";
  std::string images_root = std::string(VMGRID_SOURCE_DIR) + "/build/images";
  const char* usage =
      "usage: image_transfer [--images tiny,debian] [--runs N] [--debian-runs N] [--rtt-ms MS] "
      "[--mbit M] [--lan-rtt-ms MS] [--lan-mbit M]\n"
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
    else if (a == "--lan-rtt-ms")
      lan_rtt_ms = std::atof(next().c_str());
    else if (a == "--lan-mbit")
      lan_mbit = std::atof(next().c_str());
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
  // Both networks go through a link emulator in front of the image server;
  // the copy-whole baseline goes through identical ones in front of a plain
  // HTTP server of the files a user would copy.
  const std::string server_url = grid.image_server_url();
  linkem::LinkEmulator lan(WanOptions(server_url, lan_rtt_ms, lan_mbit));
  linkem::LinkEmulator wan(WanOptions(server_url, rtt_ms, mbit));
  auto lan_started = StartInFront(lan, server_url);
  auto wan_started = StartInFront(wan, server_url);
  if (!lan_started.ok() || !wan_started.ok()) Die("cannot start the link emulators");
  const std::string lan_url = *lan_started, wan_url = *wan_started;
  // Only the copies are served (never the grid's state beside them).
  httplib::Server copy_server;
  const std::string copy_root = std::string(kStateDir) + "/copy";
  if (!MakeDirs(copy_root).ok() || !copy_server.set_mount_point("/", copy_root))
    Die("cannot serve " + copy_root);
  const int copy_port = copy_server.bind_to_any_port("127.0.0.1");
  if (copy_port <= 0) Die("cannot bind the copy-whole server");
  std::thread copy_thread([&] { copy_server.listen_after_bind(); });
  const std::string copy_url = "http://127.0.0.1:" + std::to_string(copy_port);
  linkem::LinkEmulator copy_lan(WanOptions(copy_url, lan_rtt_ms, lan_mbit));
  linkem::LinkEmulator copy_wan(WanOptions(copy_url, rtt_ms, mbit));
  auto copy_lan_started = StartInFront(copy_lan, copy_url);
  auto copy_wan_started = StartInFront(copy_wan, copy_url);
  if (!copy_lan_started.ok() || !copy_wan_started.ok()) Die("cannot start the link emulators");

  std::ostringstream md;
  md << "Date: " << Today() << ", commit " << GitCommit(VMGRID_SOURCE_DIR)
     << ". Machine: " << MachineLineWithAccel()
     << ". Links: LinkEmulator in front of the image server (and of the copy-whole server), "
        "LAN "
     << Fmt("%.1f", lan_rtt_ms) << " ms RTT and " << Fmt("%.0f", lan_mbit) << " Mbit/s, WAN "
     << Fmt("%.0f", rtt_ms) << " ms RTT and " << Fmt("%.0f", mbit)
     << " Mbit/s, each shared by all connections (real kernel TCP on loopback on both sides, "
        "so handshakes and slow start are in). Cold: the host's cache emptied (agent restarted) "
        "and the image server's page cache dropped (`POSIX_FADV_DONTNEED` on its files). Times: "
        "from the request (POST /v1/vms, or spawning plain QEMU) until the guest agent answers; "
        "median (Q1–Q3) of the runs, interleaved; ratios are the median (Q1–Q3) of each run's "
        "ratio to that run's plain start.\n\n";
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
    const CopyWhole copy = PrepareCopyWhole(im);
    auto copy_paths = [&](const std::vector<std::string>& files) {
      std::vector<std::string> out;
      for (const auto& f : files) out.push_back(im.name + "/" + f);
      return out;
    };
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
    std::map<std::string, Samples> ratio;      // per run, to that run's plain start
    std::map<std::string, Samples> bytes;      // host counter: fetched from the image server
    std::map<std::string, Samples> raw_bytes;  // the same chunks decoded (their own bytes)
    std::map<std::string, Samples> nbd_read;   // disk bytes QEMU read through the NBD export
    std::map<std::string, Samples> wire;       // carried by the link emulator
    std::map<std::string, Samples> create_ms;  // controller's create_ms
    std::map<std::string, Samples> download;   // copy whole: the download alone
    Samples load;
    struct Net {
      const char* name;
      std::string url;
      linkem::LinkEmulator* link;
      std::string copy_url;
      linkem::LinkEmulator* copy_link;
    };
    const Net nets[] = {{"LAN", lan_url, &lan, *copy_lan_started, &copy_lan},
                        {"WAN", wan_url, &wan, *copy_wan_started, &copy_wan}};
    // The host's counters (and the link's) at a point in time.
    struct Counters {
      uint64_t fetched = 0, raw = 0, nbd = 0, wire = 0;
    };
    std::map<std::string, double> plain;  // this run's plain starts
    // One vmgrid start as `key`; records its time, ratio and what it moved
    // since `before`; returns the counters after it.
    auto record = [&](const std::string& key, const std::string& start, const Net& net,
                      Counters before, const std::string& name) {
      json b = body_base;
      b["start"] = start;
      if (start == "resume") b.erase("memory_mb");
      b["name"] = name;
      VmRun r = VmgridOnce(api, b);
      json images = FreshHostImages(api);
      Counters after{ServerBytes(images), ServerRawBytes(images), NbdReadBytes(images),
                     WireBytes(*net.link)};
      t[key].v.push_back(r.seconds);
      ratio[key].v.push_back(r.seconds / plain[start]);
      create_ms[key].v.push_back(r.create_ms);
      bytes[key].v.push_back(static_cast<double>(after.fetched - before.fetched));
      raw_bytes[key].v.push_back(static_cast<double>(after.raw - before.raw));
      nbd_read[key].v.push_back(static_cast<double>(after.nbd - before.nbd));
      wire[key].v.push_back(static_cast<double>(after.wire - before.wire));
      std::fprintf(stderr,
                   "[%s] %-28s %.2f s (controller %.0f ms), %s MiB from the image server (%s MiB "
                   "decoded), %s MiB on the wire, %s MiB read through NBD\n",
                   im.name.c_str(), key.c_str(), r.seconds, r.create_ms,
                   MiB(static_cast<double>(after.fetched - before.fetched)).c_str(),
                   MiB(static_cast<double>(after.raw - before.raw)).c_str(),
                   MiB(static_cast<double>(after.wire - before.wire)).c_str(),
                   MiB(static_cast<double>(after.nbd - before.nbd)).c_str());
      return after;
    };
    for (int run = 0; run < im.runs; ++run) {
      load.v.push_back(LoadAverage1());
      plain.clear();
      for (const char* start : {"boot", "resume"}) {
        double sec = PlainOnce(im, std::string(start) == "resume");
        plain[start] = sec;
        t[std::string("plain ") + start].v.push_back(sec);
        std::fprintf(stderr, "[%s] run %d plain %-6s %.2f s\n", im.name.c_str(), run + 1, start,
                     sec);
      }
      for (const Net& net : nets) {
        for (const char* start : {"boot", "resume"}) {
          if (auto st = EmptyHostCache(grid, 0, net.url, true); !st.ok()) Die(st.error().message);
          DropPageCache(grid.image_server_dir());
          // A fresh agent process: its counters start at 0 (reading them
          // here could still see the previous process's last heartbeat).
          Counters before{0, 0, 0, WireBytes(*net.link)};
          for (const char* temp : {"cold", "warm"}) {
            std::string key = std::string(temp) + " " + net.name + " " + start;
            before = record(
                key, start, net, before,
                std::string(temp) + "-" + net.name + "-" + start + "-" + std::to_string(run));
          }
          // The copy-whole baseline over the same kind of link.
          const bool resume = std::string(start) == "resume";
          const uint64_t w0 = WireBytes(*net.copy_link);
          const double d = Download(copy, net.copy_url,
                                    copy_paths(resume ? copy.resume_files : copy.boot_files));
          const std::string key = std::string("copy whole ") + net.name + " " + start;
          download[key].v.push_back(d);
          wire[key].v.push_back(static_cast<double>(WireBytes(*net.copy_link) - w0));
          t[key].v.push_back(d + plain[start]);
          ratio[key].v.push_back((d + plain[start]) / plain[start]);
          std::fprintf(stderr, "[%s] run %d %-16s %.2f s (download %.2f s)\n", im.name.c_str(),
                       run + 1, key.c_str(), d + plain[start], d);
          // ... and compressed, decoded while it arrives.
          const uint64_t z0 = WireBytes(*net.copy_link);
          const double dz = Download(
              copy, net.copy_url, copy_paths(resume ? copy.resume_files : copy.boot_files), true);
          const std::string zkey = std::string("copy whole zstd ") + net.name + " " + start;
          download[zkey].v.push_back(dz);
          wire[zkey].v.push_back(static_cast<double>(WireBytes(*net.copy_link) - z0));
          t[zkey].v.push_back(dz + plain[start]);
          ratio[zkey].v.push_back((dz + plain[start]) / plain[start]);
          std::fprintf(stderr, "[%s] run %d %-16s %.2f s (download + zstd -d %.2f s)\n",
                       im.name.c_str(), run + 1, zkey.c_str(), dz + plain[start], dz);
        }
      }
      for (const Net& net : nets) {
        if (auto st = EmptyHostCache(grid, 0, net.url, false); !st.ok()) Die(st.error().message);
        DropPageCache(grid.image_server_dir());
        record(std::string("cold ") + net.name + " boot, no prefetch", "boot", net,
               Counters{0, 0, 0, WireBytes(*net.link)},  // a fresh agent process
               std::string("nopf-") + net.name + "-" + std::to_string(run));
        // Chunks fetched raw, as before compressed transfer.
        for (const char* start : {"boot", "resume"}) {
          if (auto st = EmptyHostCache(grid, 0, net.url, true, false); !st.ok())
            Die(st.error().message);
          DropPageCache(grid.image_server_dir());
          record(std::string("cold ") + net.name + " " + start + ", raw", start, net,
                 Counters{0, 0, 0, WireBytes(*net.link)},
                 std::string("raw-") + net.name + "-" + start + "-" + std::to_string(run));
        }
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
       << im.runs << " run(s), load average (1 min) at their starts " << load.MedianIqr("%.1f")
       << ". Import + vmgrid checkpoint took " << Fmt("%.0f", import_s)
       << " s. Copy whole: " << MiB(static_cast<double>(copy.boot_bytes))
       << " MiB to boot (the disk as qcow2 of its allocated blocks, kernel, initrd), "
       << MiB(static_cast<double>(copy.resume_bytes))
       << " MiB to resume (also plain QEMU's checkpoint: memory state and disk delta), then "
          "plain QEMU from the local files; the cell is download + that run's plain start. Copy "
          "whole, zstd: the same files compressed by `zstd -3` ("
       << MiB(static_cast<double>(copy.boot_zst_bytes)) << " MiB to boot, "
       << MiB(static_cast<double>(copy.resume_zst_bytes))
       << " MiB to resume), decoded while they arrive.\n\n"
       << "| start | plain QEMU, local files | cold LAN | cold WAN | warm LAN | warm WAN | copy "
          "whole LAN | copy whole WAN | copy whole zstd LAN | copy whole zstd WAN |\n"
       << "|---|---|---|---|---|---|---|---|---|---|\n";
    auto cell = [&](const std::string& key) {
      std::string c = t[key].MedianIqr("%.2f") + " s";
      if (ratio.count(key)) c += ", " + ratio[key].MedianIqr("%.2f") + "x";
      return c;
    };
    for (const char* start : {"boot", "resume"}) {
      std::string st = start;
      md << "| " << st << " | " << cell("plain " + st);
      for (const char* col : {"cold LAN ", "cold WAN ", "warm LAN ", "warm WAN ", "copy whole LAN ",
                              "copy whole WAN ", "copy whole zstd LAN ", "copy whole zstd WAN "})
        md << " | " << cell(col + st);
      md << " |\n";
    }
    // Each run's vmgrid time over the same run's time of `other`.
    auto per_run = [&](const std::string& key, const std::string& other) {
      Samples r;
      const auto& v = t[key].v;
      const auto& c = t[other].v;
      for (size_t i = 0; i < v.size() && i < c.size(); ++i) r.v.push_back(v[i] / c[i]);
      return r;
    };
    md << "\nvmgrid cold against copy whole (each run's ratio; below 1: vmgrid is faster):\n\n"
       << "| start | LAN, vs copy whole | LAN, vs copy whole zstd | WAN, vs copy whole | WAN, vs "
          "copy whole zstd |\n|---|---|---|---|---|\n";
    for (const char* start : {"boot", "resume"}) {
      std::string st = start;
      md << "| " << st;
      for (const char* net : {"LAN", "WAN"})
        for (const char* way : {"copy whole ", "copy whole zstd "})
          md << " | "
             << per_run("cold " + std::string(net) + " " + st, way + std::string(net) + " " + st)
                    .MedianIqr("%.2f")
             << "x";
      md << " |\n";
    }
    md << "\nPrefetch (cold boots; \"with\" = the columns above):\n\n"
       << "| cold boot | with prefetch | without prefetch | bytes with | bytes without "
          "|\n|---|---|---|---|---|\n";
    for (const char* net : {"LAN", "WAN"}) {
      std::string n = net;
      md << "| " << n << " | " << cell("cold " + n + " boot") << " | "
         << cell("cold " + n + " boot, no prefetch") << " | "
         << MiB(bytes["cold " + n + " boot"].Median()) << " MiB | "
         << MiB(bytes["cold " + n + " boot, no prefetch"].Median()) << " MiB |\n";
    }
    md << "\nCompressed transfer (cold starts; \"zstd frames\" = the columns above, \"raw\" = "
          "the agent run with `--no-compressed-transfer`):\n\n"
       << "| cold start | zstd frames | raw | zstd / raw (per run) | on the wire, zstd | on the "
          "wire, raw |\n|---|---|---|---|---|---|\n";
    for (const char* net : {"LAN", "WAN"})
      for (const char* start : {"boot", "resume"}) {
        std::string k = std::string("cold ") + net + " " + start;
        md << "| " << net << " " << start << " | " << cell(k) << " | " << cell(k + ", raw") << " | "
           << per_run(k, k + ", raw").MedianIqr("%.2f") << "x | " << MiB(wire[k].Median())
           << " MiB | " << MiB(wire[k + ", raw"].Median()) << " MiB |\n";
      }
    // Bytes: each cold start fetched the materialized files whole (kernel,
    // initrd; for resume also the memory state and disk delta) plus the disk
    // chunks the guest (and prefetch) read through the export. What the
    // guest needed: those files (a resume: only the memory state and disk
    // delta, not the kernel it does not run) and the disk bytes QEMU read.
    md << "\nBytes per start (median): *received* is the host's counter "
          "image_server.bytes_fetched (chunk payload as it arrived, zstd frames compressed); "
          "*decoded* the same chunks' own bytes; *on the wire* what the link emulator carried "
          "both ways (TLS, HTTP and manifests included); *disk read* the bytes QEMU read through "
          "the NBD export (the blocks the guest read). *Needed*: what the guest could not start "
          "without, the disk read plus the files QEMU loads whole (boot: kernel and initrd; "
          "resume: memory state and disk delta, not the kernel a resumed guest does not run).\n\n"
       << "| start | received | decoded | on the wire | disk read | % of disk virtual | % of disk "
          "allocated | decoded % of image (disk virtual + kernel + initrd) | needed | needed ÷ "
       << Fmt("%.0f", mbit) << " Mbit/s + 3 RTT |\n|---|---|---|---|---|---|---|---|---|---|\n";
    const double image_total = static_cast<double>(im.disk_virtual + kernel_bytes + initrd_bytes);
    // Bytes the guest needed for a start; `run` < 0: the median run.
    auto needed = [&](const std::string& key, double disk_read) {
      bool resume = key.find("resume") != std::string::npos;
      double files =
          static_cast<double>(resume ? mem_bytes + ckdisk_bytes : kernel_bytes + initrd_bytes);
      return files + disk_read;
    };
    for (std::string key : {"cold LAN boot", "cold WAN boot", "cold LAN boot, no prefetch",
                            "cold WAN boot, raw", "cold LAN resume", "cold WAN resume",
                            "cold WAN resume, raw", "warm LAN boot", "warm LAN resume"}) {
      double b = bytes[key].Median(), dec = raw_bytes[key].Median(), rd = nbd_read[key].Median();
      double need = key.rfind("warm", 0) == 0 ? 0 : needed(key, rd);
      md << "| " << key << " | " << MiB(b) << " MiB | " << MiB(dec) << " MiB | "
         << MiB(wire[key].Median()) << " MiB | " << MiB(rd) << " MiB | "
         << Fmt("%.2f%%", 100 * rd / static_cast<double>(im.disk_virtual)) << " | "
         << Fmt("%.2f%%", 100 * rd / static_cast<double>(im.disk_allocated)) << " | "
         << Fmt("%.2f%%", 100 * dec / image_total) << " | " << MiB(need) << " MiB | "
         << Fmt("%.2f s", need / bw + 3 * rtt_ms / 1000) << " |\n";
    }
    for (const char* way : {"copy whole WAN ", "copy whole zstd WAN "})
      for (const char* start : {"boot", "resume"}) {
        std::string key = way + std::string(start);
        const bool zst = std::string(way).find("zstd") != std::string::npos;
        const bool boot = start == std::string("boot");
        uint64_t files = zst ? (boot ? copy.boot_zst_bytes : copy.resume_zst_bytes)
                             : (boot ? copy.boot_bytes : copy.resume_bytes);
        md << "| " << key << " | " << MiB(static_cast<double>(files)) << " MiB (files) | – | "
           << MiB(wire[key].Median()) << " MiB | – | – | – | – | – | "
           << download[key].MedianIqr("%.2f") << " s measured download |\n";
      }
    md << "\nController's `create_ms` (request to guest agent, measured inside the controller), "
          "median: ";
    bool first = true;
    for (auto& [key, s] : create_ms) {
      md << (first ? "" : "; ") << key << " " << Fmt("%.2f s", s.Median() / 1000);
      first = false;
    }
    md << ".\n\n";

    // --- targets (on the per-run ratios)
    auto target = [&](const std::string& what, const std::string& key, double limit) {
      Target tg{
          im.name + ": " + what, "≤ " + Fmt("%.2g", limit) + "x", ratio[key].Median(), limit,
          t[key].MedianIqr("%.2f") + " s vs plain " +
              t[key.substr(key.rfind(' ') + 1) == "boot" ? "plain boot" : "plain resume"].MedianIqr(
                  "%.2f") +
              " s"};
      tg.runs = ratio[key];
      targets.push_back(tg);
    };
    target("warm-cache resume (LAN) vs plain local resume", "warm LAN resume", 1.1);
    target("cold LAN boot vs plain local boot", "cold LAN boot", 1.3);
    if (im.name == "debian") {
      double b = raw_bytes["cold LAN boot"].Median();  // decoded: compression not counted
      targets.push_back(
          {"debian: bytes fetched (decoded) to boot (cold LAN, with prefetch) vs image", "≤ 5%",
           b / image_total, 0.05,
           MiB(b) + " MiB of " + MiB(image_total) + " MiB (disk virtual + kernel + initrd); " +
               Fmt("%.1f%%",
                   100 * b / static_cast<double>(im.disk_allocated + kernel_bytes + initrd_bytes)) +
               " of the allocated bytes"});
      debian_bytes_measured = true;
    }
    Target wan_bound{im.name + ": cold WAN resume vs bytes the guest needed ÷ bandwidth + 3 RTT",
                     "≤ 1.25x", 0, 1.25, ""};
    const auto& wt = t["cold WAN resume"].v;
    const auto& wread = nbd_read["cold WAN resume"].v;
    for (size_t i = 0; i < wt.size() && i < wread.size(); ++i)
      wan_bound.runs.v.push_back(wt[i] /
                                 (needed("cold WAN resume", wread[i]) / bw + 3 * rtt_ms / 1000));
    wan_bound.ratio = wan_bound.runs.Median();
    const double wneed = needed("cold WAN resume", nbd_read["cold WAN resume"].Median());
    wan_bound.detail = t["cold WAN resume"].MedianIqr("%.2f") + " s vs " +
                       Fmt("%.2f s", wneed / bw + 3 * rtt_ms / 1000) + " (" + MiB(wneed) +
                       " MiB needed; " + MiB(wire["cold WAN resume"].Median()) +
                       " MiB on the wire)";
    targets.push_back(wan_bound);
  }
  if (!debian_bytes_measured)
    targets.push_back({"debian: bytes fetched to boot vs image", "≤ 5%", 0, 0.05,
                       "Debian image not measured", false});

  grid.KillVmProcesses();
  wan.Stop();
  lan.Stop();
  copy_wan.Stop();
  copy_lan.Stop();
  copy_server.stop();
  copy_thread.join();

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
    // limit < 0: a lower bound on the ratio (at least |limit|). With
    // per-run ratios the whole IQR must be on the target's side.
    const bool iqr = tg.runs.v.size() > 1;
    const double lo = iqr ? tg.runs.Quantile(0.25) : tg.ratio;
    const double hi = iqr ? tg.runs.Quantile(0.75) : tg.ratio;
    bool met = tg.limit < 0 ? lo >= -tg.limit : hi <= tg.limit;
    std::string ratio = tg.target.find('%') != std::string::npos ? Fmt("%.2f%%", 100 * tg.ratio)
                        : iqr                                    ? tg.runs.MedianIqr("%.2f") + "x"
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
