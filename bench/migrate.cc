// bench/migrate: live migration of the tiny guest (running, its disk a qcow2
// overlay on the image), vmgrid's path against plain QEMU driven by bare QMP,
// over the same link: loopback, and an emulated WAN (linkem's LinkEmulator
// between source and target for both the NBD mirror and the RAM stream).
//
// One guest boots once and then moves from QEMU to QEMU: every trial starts a
// fresh target QEMU (same devices, a fresh overlay on the same base), migrates
// the guest into it and quits the old one. Trials of all cells run
// interleaved in a random order (issue 15's method); each cell reports median
// and IQR.
//
//   plain   target: QEMU -incoming defer (no -S), nbd-server-start (no TLS),
//           block-export-add writable, migrate-incoming tcp. Source:
//           blockdev-add nbd, blockdev-mirror sync=top copy-mode=write-blocking
//           (so nothing is left to copy once the vCPUs stop), BLOCK_JOB_READY,
//           migrate (QEMU's default capabilities). The target runs by itself
//           when the stream completes (RESUME event); the source's mirror is
//           cancelled afterwards (not timed).
//   vmgrid  vmm/migration.h as the agents call it: StartIncoming (target with
//           -S; PSK TLS for NBD and the stream), MigrateOut (mirror sync=top
//           background, READY, migrate with pause-before-switchover, mirror
//           completed while paused, migrate-continue), FinishIncoming
//           (incoming completed, nbd-server-stop, cont). Not included: the
//           controller, the agents' HTTP calls, the target's guest-agent wait.
// Both set max-bandwidth unthrottled (QEMU's default is 128 MiB/s) and keep
// QEMU's default downtime-limit (300 ms).
//
// Measured per trial:
//   total      from the first QMP command of the migration (target prepare)
//              until the guest runs on the target (excludes launching the
//              target QEMU, identical for both)
//   downtime   QEMU's own figure (query-migrate "downtime" on the source)
//   gap        the largest gap between ticks of a guest loop (a kernel
//              message on the serial console every ~5 ms), timestamped by the
//              host when each QEMU's console file grows: what an observer of
//              the guest sees. The guest's own clock (printk time) across the
//              switchover is printed too: it misses most of the pause, so a
//              guest-timed gap would understate the outage.
//   bytes      QEMU's RAM "transferred" + the mirror job's offset; on an
//              emulated link also the bytes the emulator carried (both
//              directions, incl. TLS and NBD framing).
//
// Usage: migrate [--runs N=10] [--memory MB=256] [--vcpus N=1] [--no-wan]
//                [--lan] [--mbit N=100] [--rtt-ms N=40] [--seed N]
//                [--csv PATH]
// The tiny image: VMGRID_TINY_IMAGE or the build's images/tiny.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spdlog/cfg/env.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "die.h"
#include "linkem/link_emulator.h"
#include "machine.h"
#include "vmm/guest_agent_client.h"
#include "vmm/migration.h"
#include "vmm/qemu_process.h"
#include "vmm/test_util.h"

using namespace vmgrid;
using vmgrid::bench::Die;
using Clock = std::chrono::steady_clock;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

namespace fs = std::filesystem;

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

double Load1() {
  std::ifstream in("/proc/loadavg");
  double a = 0;
  in >> a;
  return a;
}

struct Options {
  int runs = 10;
  int memory_mb = 256;
  int vcpus = 1;
  bool wan = true;
  bool lan = false;
  int mbit = 100;
  int rtt_ms = 40;
  unsigned seed = 0;  // 0: from the clock
  std::string csv;
  std::string work_dir = "/tmp/vmgrid-bench-migrate";
};

// One link between source and target. rate 0 and rtt 0 with emulated=false:
// plain loopback, no proxy.
struct LinkSpec {
  std::string name;
  bool emulated = false;
  uint64_t rate_bps = 0;
  std::chrono::microseconds rtt{0};
};

// kPlainTls: the plain sequence with the same PSK TLS as vmgrid on the NBD
// connection and the stream, to tell TLS's cost from vmgrid's orchestration.
enum class Side { kPlain = 0, kPlainTls = 1, kVmgrid = 2 };
constexpr int kSides = 3;
const char* SideName(Side s) {
  return s == Side::kPlain ? "plain QEMU" : s == Side::kPlainTls ? "plain QEMU + TLS" : "vmgrid";
}

struct Sample {
  double total_ms = 0;
  double downtime_ms = 0;    // QEMU's
  double gap_ms = 0;         // largest host-seen gap between guest ticks
  double switch_gap_ms = 0;  // last tick from the source -> first from the target
  double guest_jump_ms = 0;  // the guest's printk clock across the switchover
  double ram_mb = 0, disk_mb = 0, link_mb = 0;
  double load1 = 0;
  std::string phases;  // "name@ms ..." since the start, for the log
};

// Milestones of one trial, for the log: where the time went.
class Phases {
 public:
  Phases() : t0_(Clock::now()) {}
  void Mark(const std::string& name) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%s@%.0f", text_.empty() ? "" : " ", name.c_str(),
                  MsBetween(t0_, Clock::now()));
    text_ += buf;
  }
  const std::string& text() const { return text_; }

 private:
  Clock::time_point t0_;
  std::string text_;
};

// --- guest ticks --------------------------------------------------------------

// Watches the source's and the target's console files and timestamps every
// growth (the guest's tick loop writes a line every few ms).
class TickWatch {
 public:
  struct Arrival {
    Clock::time_point t;
    int file;  // 0 source, 1 target
  };
  TickWatch(std::string source_log, std::string target_log)
      : paths_{std::move(source_log), std::move(target_log)} {
    thread_ = std::thread([this] { Loop(); });
  }
  ~TickWatch() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  bool TargetTicked() const { return target_ticked_; }
  // Valid after Stop.
  const std::vector<Arrival>& arrivals() const { return arrivals_; }

 private:
  static off_t Size(const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 ? st.st_size : 0;
  }
  void Loop() {
    off_t size[2] = {Size(paths_[0]), Size(paths_[1])};
    while (!stop_) {
      for (int i = 0; i < 2; ++i) {
        off_t now = Size(paths_[i]);
        if (now > size[i]) {
          arrivals_.push_back({Clock::now(), i});
          if (i == 1) target_ticked_ = true;
        }
        size[i] = now;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
  }

  std::string paths_[2];
  std::atomic<bool> stop_{false};
  std::atomic<bool> target_ticked_{false};
  std::vector<Arrival> arrivals_;  // written by the thread until Stop
  std::thread thread_;
};

// The guest's printk time (seconds) of the last (or first) complete
// "[ SECONDS] tick" line.
std::optional<double> TickValue(const std::string& path, bool last) {
  std::ifstream in(path);
  std::string line;
  std::optional<double> v;
  while (std::getline(in, line)) {
    if (in.eof()) break;  // an incomplete last line
    size_t open = line.find('['), close = line.find("] tick");
    if (open == std::string::npos || close == std::string::npos || close < open) continue;
    v = std::atof(line.c_str() + open + 1);
    if (!last) return v;
  }
  return v;
}

// --- plain QEMU over QMP ------------------------------------------------------

constexpr int64_t kUnthrottled = int64_t{1} << 40;

Result<std::string> DiskNode(QmpClient& q) {
  VMG_ASSIGN_OR_RETURN(json blocks, q.Execute("query-block"));
  for (const json& b : blocks)
    if (b.value("device", "") == "disk0" && b.contains("inserted"))
      return b["inserted"].value("node-name", "");
  return MakeError(ErrorCode::kNotFound, "no disk0");
}

// A port that was free a moment ago (a user picks one by hand).
Result<int> FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return MakeError(ErrorCode::kInternal, "no free port");
  }
  ::close(fd);
  return static_cast<int>(ntohs(a.sin_port));
}

// --- one trial ----------------------------------------------------------------

// Emulated links in front of the target's two listeners (NBD, migration);
// each its own bottleneck (the mirror and the RAM stream barely overlap).
struct Links {
  std::unique_ptr<linkem::LinkEmulator> nbd, mig;
  int nbd_port = 0, mig_port = 0;
  double Mb() const {
    uint64_t b = 0;
    for (const auto* l : {nbd.get(), mig.get()})
      if (l) b += l->stats().bytes_to_target + l->stats().bytes_to_client;
    return static_cast<double>(b) / 1e6;
  }
};

Result<Links> Connect(const LinkSpec& spec, int nbd_port, int mig_port) {
  Links l;
  if (!spec.emulated) {
    l.nbd_port = nbd_port;
    l.mig_port = mig_port;
    return l;
  }
  for (auto [target, out, port] :
       {std::tuple{nbd_port, &l.nbd, &l.nbd_port}, std::tuple{mig_port, &l.mig, &l.mig_port}}) {
    linkem::LinkEmulatorOptions o;
    o.target_port = static_cast<uint16_t>(target);
    o.rate_bps = spec.rate_bps;
    o.rtt = spec.rtt;
    *out = std::make_unique<linkem::LinkEmulator>(o);
    VMG_ASSIGN_OR_RETURN(*port, (*out)->Start());
  }
  return l;
}

class Bench {
 public:
  Bench(Options o, vmm::testing::TinyImage img) : o_(std::move(o)), img_(std::move(img)) {}
  ~Bench() {
    if (vm_) (void)vm_->Kill();
  }

  Status Boot() {
    // QEMUs of an interrupted earlier run (they are daemons) would load the
    // machine under this one.
    for (pid_t pid : vmm::testing::ProcessesMentioning(o_.work_dir)) ::kill(pid, SIGKILL);
    std::error_code ec;
    fs::remove_all(o_.work_dir, ec);
    fs::create_directories(o_.work_dir, ec);
    if (ec) return MakeError(ErrorCode::kInternal, "create " + o_.work_dir + ": " + ec.message());
    vmgenid_ = vmm::testing::RandomUuid();
    dh_params_ = o_.work_dir + "/dh-params.pem";
    if (vmm::testing::Sh("openssl genpkey -genparam -algorithm DH -pkeyopt dh_param:ffdhe2048 "
                         "-out '" +
                         dh_params_ + "' 2>/dev/null") != 0)
      return MakeError(ErrorCode::kInternal, "openssl could not write the ffdhe2048 group");
    VMG_ASSIGN_OR_RETURN(vm_, Launch(/*incoming=*/false, /*paused=*/false));
    auto ga = GuestAgentClient::ConnectWhenReady(vm_->qga_socket(), Clock::now() + seconds(240));
    if (!ga.ok()) return ga.error().Wrap("guest agent");
    // The tick loop: one kernel message per iteration, which the kernel
    // prints on the serial console with polled I/O (a tty write from user
    // space waits for the UART's interrupt, and one lost across a migration
    // stalled the loop for good). Level 3 passes "quiet"; devkmsg "on" lifts
    // the rate limit on /dev/kmsg.
    auto r = (*ga)->Exec({"sh", "-c",
                          "echo on >/proc/sys/kernel/printk_devkmsg && "
                          "(while :; do echo \"<3>tick\" >/dev/kmsg; usleep 5000; done) "
                          ">/dev/null 2>&1 </dev/null & echo started"},
                         "", seconds(60));
    if (!r.ok()) return r.error().Wrap("start the tick loop");
    if (r->exit_code != 0) return MakeError(ErrorCode::kInternal, "tick loop: " + r->err);
    std::this_thread::sleep_for(seconds(1));
    return Status::Ok();
  }

  // Moves the guest from vm_ to a fresh QEMU over `spec` the `side` way.
  Result<Sample> Migrate(const LinkSpec& spec, Side side) {
    VMG_ASSIGN_OR_RETURN(std::unique_ptr<QemuProcess> dst,
                         Launch(/*incoming=*/true, /*paused=*/side == Side::kVmgrid));
    Sample s;
    s.load1 = Load1();
    TickWatch ticks(RunPath(vm_->run_dir(), kConsoleLogName),
                    RunPath(dst->run_dir(), kConsoleLogName));
    const auto t0 = Clock::now();
    Result<Sample> r = side == Side::kVmgrid ? Vmgrid(*vm_, *dst, spec)
                                             : Plain(*vm_, *dst, spec, side == Side::kPlainTls);
    const auto t_running = Clock::now();
    if (!r.ok()) {
      (void)dst->Kill();
      if (side != Side::kVmgrid) CleanUpPlain(vm_->qmp());
      if (Result<json> st = vm_->qmp().Execute("query-status");
          !st.ok() || st->value("status", "") != "running")
        return r.error().Wrap("the guest is lost");
      return r.error();
    }
    s.total_ms = MsBetween(t0, t_running);
    s.downtime_ms = r->downtime_ms;
    s.ram_mb = r->ram_mb;
    s.disk_mb = r->disk_mb;
    s.link_mb = r->link_mb;
    s.phases = r->phases;
    for (int i = 0; i < 5000 && !ticks.TargetTicked(); ++i)
      std::this_thread::sleep_for(milliseconds(1));
    std::this_thread::sleep_for(milliseconds(20));
    ticks.Stop();
    const auto& a = ticks.arrivals();
    for (size_t i = 1; i < a.size(); ++i) {
      double d = MsBetween(a[i - 1].t, a[i].t);
      s.gap_ms = std::max(s.gap_ms, d);
      if (a[i - 1].file == 0 && a[i].file == 1) s.switch_gap_ms = d;
    }
    auto before = TickValue(RunPath(vm_->run_dir(), kConsoleLogName), true);
    auto after = TickValue(RunPath(dst->run_dir(), kConsoleLogName), false);
    if (before && after) s.guest_jump_ms = (*after - *before) * 1000;
    // The target holds the guest now.
    const std::string old_run = vm_->run_dir();
    (void)vm_->Quit(seconds(10));
    vm_ = std::move(dst);
    std::error_code ec;
    fs::remove_all(old_run, ec);
    fs::remove(old_run + ".qcow2", ec);
    if (!ticks.TargetTicked())
      return MakeError(ErrorCode::kTimeout, "migrated, but the guest never ticked on the target");
    return s;
  }

 private:
  Result<std::unique_ptr<QemuProcess>> Launch(bool incoming, bool paused) {
    const std::string name = "vm" + std::to_string(next_++);
    const std::string overlay = o_.work_dir + "/" + name + ".qcow2";
    if (vmm::testing::Sh("qemu-img create -q -f qcow2 -b '" + img_.rootfs + "' -F raw '" + overlay +
                         "' >/dev/null") != 0)
      return MakeError(ErrorCode::kInternal, "qemu-img create failed");
    QemuConfig c;
    c.vm_id = "bench-migrate-" + name;
    c.vcpus = o_.vcpus;
    c.memory_mb = o_.memory_mb;
    c.kernel = img_.fast_kernel;
    c.initrd = img_.initrd;
    c.append = img_.append;
    c.disk_path = overlay;
    c.run_dir = o_.work_dir + "/" + name;
    c.accel = "tcg";
    c.vmgenid = vmgenid_;  // one VM: the same generation id on every host
    c.incoming = incoming;
    c.start_paused = paused;
    return QemuProcess::Launch(c, seconds(30));
  }

  // What a failed plain trial may leave on the source (vmgrid's MigrateOut
  // cleans up after itself).
  static void CleanUpPlain(QmpClient& q) {
    (void)q.Execute("migrate_cancel");
    (void)q.Execute("block-job-cancel", {{"device", "mig-mirror"}, {"force", true}});
    for (int i = 0; i < 100; ++i) {
      auto jobs = q.Execute("query-block-jobs");
      if (!jobs.ok() || jobs->empty()) break;
      std::this_thread::sleep_for(milliseconds(20));
    }
    (void)q.Execute("blockdev-del", {{"node-name", "mig-nbd"}});
    (void)q.Execute("migrate-set-parameters", {{"tls-creds", ""}});
    (void)q.Execute("object-del", {{"id", "mig-tls"}});
    (void)q.Execute("cont");
  }

  // tls-creds-psk "mig-tls" from DIR/keys.psk (written here; QEMU runs as us).
  Status AddPsk(QmpClient& q, const std::string& dir, const MigrationKey& key, bool server) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    std::ofstream(dir + "/keys.psk") << key.identity << ":" << key.key_hex << "\n";
    // The same fixed DH group vmgrid hands its server (vmm/migration.cc), so
    // the two differ only in what they do, not in QEMU generating parameters.
    if (server) fs::copy_file(dh_params_, dir + "/dh-params.pem", ec);
    if (ec) return MakeError(ErrorCode::kInternal, "copy the DH parameters: " + ec.message());
    json args = {{"qom-type", "tls-creds-psk"},
                 {"id", "mig-tls"},
                 {"endpoint", server ? "server" : "client"},
                 {"dir", dir}};
    if (!server) args["username"] = key.identity;
    VMG_RETURN_IF_ERROR(q.Execute("object-add", args));
    return Status::Ok();
  }

  // Plain QEMU, by hand.
  Result<Sample> Plain(QemuProcess& src, QemuProcess& dst, const LinkSpec& spec, bool tls) {
    QmpClient& t = dst.qmp();
    QmpClient& q = src.qmp();
    Phases ph;
    (void)t.DrainEvents();
    (void)q.DrainEvents();
    VMG_ASSIGN_OR_RETURN(std::string node, DiskNode(t));
    VMG_ASSIGN_OR_RETURN(int nbd_port, FreePort());
    VMG_ASSIGN_OR_RETURN(int mig_port, FreePort());
    json nbd_args = {{"addr",
                      {{"type", "inet"},
                       {"data", {{"host", "127.0.0.1"}, {"port", std::to_string(nbd_port)}}}}}};
    json nbd_client = {{"driver", "nbd"},
                       {"node-name", "mig-nbd"},
                       {"server", {{"type", "inet"}, {"host", "127.0.0.1"}}},
                       {"export", "disk0"}};
    if (tls) {
      VMG_ASSIGN_OR_RETURN(MigrationKey key, NewMigrationKey("bench-migrate"));
      VMG_RETURN_IF_ERROR(AddPsk(t, dst.run_dir() + "/psk", key, true));
      ph.Mark("server-creds");
      VMG_RETURN_IF_ERROR(AddPsk(q, src.run_dir() + "/psk-out", key, false));
      ph.Mark("client-creds");
      VMG_RETURN_IF_ERROR(t.Execute("migrate-set-parameters", {{"tls-creds", "mig-tls"}}));
      VMG_RETURN_IF_ERROR(q.Execute("migrate-set-parameters", {{"tls-creds", "mig-tls"}}));
      nbd_args["tls-creds"] = "mig-tls";
      nbd_client["tls-creds"] = "mig-tls";
    }
    VMG_RETURN_IF_ERROR(t.Execute("nbd-server-start", nbd_args));
    VMG_RETURN_IF_ERROR(t.Execute("block-export-add", {{"type", "nbd"},
                                                       {"id", "exp0"},
                                                       {"node-name", node},
                                                       {"name", "disk0"},
                                                       {"writable", true}}));
    VMG_RETURN_IF_ERROR(
        t.Execute("migrate-incoming", {{"uri", "tcp:127.0.0.1:" + std::to_string(mig_port)}}));
    VMG_ASSIGN_OR_RETURN(Links links, Connect(spec, nbd_port, mig_port));
    ph.Mark("prepared");
    VMG_RETURN_IF_ERROR(q.Execute("migrate-set-parameters", {{"max-bandwidth", kUnthrottled}}));
    nbd_client["server"]["port"] = std::to_string(links.nbd_port);
    VMG_RETURN_IF_ERROR(q.Execute("blockdev-add", nbd_client));
    VMG_RETURN_IF_ERROR(q.Execute("blockdev-mirror", {{"job-id", "mig-mirror"},
                                                      {"device", "disk0"},
                                                      {"target", "mig-nbd"},
                                                      {"sync", "top"},
                                                      {"copy-mode", "write-blocking"}}));
    VMG_RETURN_IF_ERROR(q.WaitEvent("BLOCK_JOB_READY", seconds(600)));
    ph.Mark("mirror-ready");
    VMG_RETURN_IF_ERROR(
        q.Execute("migrate", {{"uri", "tcp:127.0.0.1:" + std::to_string(links.mig_port)}}));
    ph.Mark("migrating");
    Result<json> resumed = t.WaitEvent("RESUME", seconds(600));
    ph.Mark("running");
    if (!resumed.ok()) {
      auto info = q.Execute("query-migrate");
      return MakeError(ErrorCode::kInternal,
                       "target did not resume: " + resumed.error().message +
                           "; source: " + (info.ok() ? info->dump() : info.error().message));
    }
    // Not timed: the figures and the source's cleanup.
    Sample s;
    json info;
    for (int i = 0; i < 10000; ++i) {
      VMG_ASSIGN_OR_RETURN(info, q.Execute("query-migrate"));
      if (info.value("status", "") == "completed") break;
      std::this_thread::sleep_for(milliseconds(1));
    }
    s.downtime_ms = static_cast<double>(info.value("downtime", 0));
    if (info.contains("ram"))
      s.ram_mb = static_cast<double>(info["ram"].value("transferred", int64_t{0})) / 1e6;
    VMG_ASSIGN_OR_RETURN(json jobs, q.Execute("query-block-jobs"));
    for (const json& j : jobs)
      if (j.value("device", "") == "mig-mirror")
        s.disk_mb = static_cast<double>(j.value("offset", int64_t{0})) / 1e6;
    s.link_mb = links.Mb();
    s.phases = ph.text();
    (void)q.Execute("block-job-cancel", {{"device", "mig-mirror"}});
    // The target is the next trial's source: no export may hold its disk
    // (migration could not inactivate it), no TLS object may stay on.
    VMG_RETURN_IF_ERROR(t.Execute("nbd-server-stop"));
    if (tls) {
      VMG_RETURN_IF_ERROR(t.Execute("migrate-set-parameters", {{"tls-creds", ""}}));
      VMG_RETURN_IF_ERROR(t.Execute("object-del", {{"id", "mig-tls"}}));
    }
    return s;
  }

  // vmgrid's path (vmm/migration.h).
  Result<Sample> Vmgrid(QemuProcess& src, QemuProcess& dst, const LinkSpec& spec) {
    Phases ph;
    VMG_ASSIGN_OR_RETURN(MigrationKey key, NewMigrationKey("bench-migrate"));
    IncomingParams in;
    in.key = key;
    in.key_dir = dst.run_dir() + "/mig-key";
    std::unique_ptr<MigrationTunnel> tunnel;
    VMG_ASSIGN_OR_RETURN(IncomingEndpoint ep, StartIncoming(dst.qmp(), in, seconds(30), &tunnel));
    VMG_ASSIGN_OR_RETURN(Links links, Connect(spec, ep.nbd_port, ep.migration_port));
    ph.Mark("prepared");
    OutgoingParams out;
    out.on_phase = [&ph](MigrationPhase p) { ph.Mark(ToString(p)); };
    out.target = ep;
    out.target.nbd_port = links.nbd_port;
    out.target.migration_port = links.mig_port;
    out.key = key;
    out.key_dir = src.run_dir() + "/mig-key";
    VMG_ASSIGN_OR_RETURN(MigrationStats stats, MigrateOut(src.qmp(), out, seconds(600)));
    ph.Mark("out-done");
    VMG_RETURN_IF_ERROR(FinishIncoming(dst.qmp(), in.key_dir, seconds(60)));
    ph.Mark("running");
    Sample s;
    s.phases = ph.text();
    s.downtime_ms = static_cast<double>(stats.downtime_ms);
    s.ram_mb = static_cast<double>(stats.ram_bytes) / 1e6;
    s.disk_mb = static_cast<double>(stats.disk_bytes) / 1e6;
    s.link_mb = links.Mb();
    return s;
  }

  Options o_;
  vmm::testing::TinyImage img_;
  std::string vmgenid_;
  std::string dh_params_;  // RFC 7919 ffdhe2048, for the plain + TLS side
  std::unique_ptr<QemuProcess> vm_;
  int next_ = 0;
};

// --- statistics and the table -------------------------------------------------

// Quantile with linear interpolation between order statistics (R's type 7).
double Quantile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  double h = (static_cast<double>(v.size()) - 1) * p;
  size_t lo = static_cast<size_t>(std::floor(h));
  size_t hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (h - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

struct Quartiles {
  double q1, med, q3;
};
Quartiles Q(const std::vector<double>& v) {
  return {Quantile(v, 0.25), Quantile(v, 0.5), Quantile(v, 0.75)};
}

std::string Cell(const std::vector<double>& v, int decimals = 0) {
  if (v.empty()) return "–";
  Quartiles q = Q(v);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.*f (%.*f–%.*f)", decimals, q.med, decimals, q.q1, decimals,
                q.q3);
  return buf;
}

// The goal: vmgrid within 1.1x of plain. Met when vmgrid's upper quartile is
// within 1.1x of plain's median; missed when its lower quartile is above that.
std::string Verdict(const std::vector<double>& plain, const std::vector<double>& vmgrid) {
  if (plain.empty() || vmgrid.empty()) return "–";
  Quartiles p = Q(plain), v = Q(vmgrid);
  char buf[96];
  const char* word = v.q3 <= 1.1 * p.med ? "met" : v.q1 > 1.1 * p.med ? "not met" : "undecided";
  std::snprintf(buf, sizeof buf, "%.2fx, %s", p.med > 0 ? v.med / p.med : NAN, word);
  return buf;
}

struct Cell2 {
  std::vector<Sample> s[kSides];
  std::vector<std::string> errors;
};

std::vector<double> Field(const std::vector<Sample>& v, double Sample::*f) {
  std::vector<double> out;
  for (const Sample& s : v) out.push_back(s.*f);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::cfg::load_env_levels();  // SPDLOG_LEVEL=trace shows each QMP command's time
  Options o;
  CLI::App app{"Live migration of the tiny guest: vmgrid against plain QEMU (docs/benchmarks.md)",
               "migrate"};
  app.add_option("--runs", o.runs, "Runs per cell")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--memory", o.memory_mb, "Guest memory, MiB")
      ->check(CLI::Range(128, 65536))
      ->capture_default_str();
  app.add_option("--vcpus", o.vcpus, "Guest vCPUs")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_flag("!--no-wan", o.wan, "Skip the emulated WAN row");
  app.add_flag("--lan", o.lan, "Add an emulated LAN row (1 Gbit/s, 0.2 ms RTT)");
  app.add_option("--mbit", o.mbit, "WAN rate, Mbit/s")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--rtt-ms", o.rtt_ms, "WAN round-trip time, ms")
      ->check(CLI::Range(0, 600000))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "Shuffle seed (0: from the clock)");
  app.add_option("--csv", o.csv, "Also write every sample to this CSV file");
  CLI11_PARSE(app, argc, argv);
  signal(SIGPIPE, SIG_IGN);
  std::string why;
  auto img = vmm::testing::FindTinyImage(VMGRID_TINY_IMAGE_DIR, &why);
  if (!img) Die(why);
  if (o.seed == 0) o.seed = static_cast<unsigned>(Clock::now().time_since_epoch().count());

  std::vector<LinkSpec> links = {{"loopback", false, 0, {}}};
  if (o.lan)
    links.push_back({"LAN (linkem 1000 Mbit/s, 0.2 ms RTT)", true, 1'000'000'000,
                     std::chrono::microseconds(200)});
  if (o.wan)
    links.push_back({"WAN (linkem " + std::to_string(o.mbit) + " Mbit/s, " +
                         std::to_string(o.rtt_ms) + " ms RTT)",
                     true, static_cast<uint64_t>(o.mbit) * 1'000'000,
                     std::chrono::microseconds(o.rtt_ms * 1000)});
  struct Trial {
    size_t link;
    Side side;
  };
  std::vector<Trial> trials;
  for (size_t l = 0; l < links.size(); ++l)
    for (int r = 0; r < o.runs; ++r)
      for (Side s : {Side::kPlain, Side::kPlainTls, Side::kVmgrid}) trials.push_back({l, s});
  std::mt19937 rng(o.seed);
  std::shuffle(trials.begin(), trials.end(), rng);

  const std::string load_before = LoadAverage();
  std::fprintf(stderr, "migrate: load average %s; booting the tiny guest...\n",
               load_before.c_str());
  Bench bench(o, *img);
  if (Status st = bench.Boot(); !st.ok()) Die(st.error().message);
  std::vector<Cell2> cells(links.size());
  std::ofstream csv;
  if (!o.csv.empty()) {
    csv.open(o.csv);
    csv << "trial,link,side,total_ms,qemu_downtime_ms,gap_ms,switch_gap_ms,guest_clock_jump_ms,"
           "ram_mb,disk_mb,link_mb,load1\n";
  }
  const auto started = Clock::now();
  double load_min = 1e9, load_max = 0;
  for (size_t i = 0; i < trials.size(); ++i) {
    const Trial& t = trials[i];
    Result<Sample> r = bench.Migrate(links[t.link], t.side);
    if (!r.ok()) {
      std::fprintf(stderr, "migrate: %zu/%zu %s %s: FAILED: %s\n", i + 1, trials.size(),
                   links[t.link].name.c_str(), SideName(t.side), r.error().message.c_str());
      cells[t.link].errors.push_back(std::string(SideName(t.side)) + ": " + r.error().message);
      if (r.error().message.find("the guest is lost") != std::string::npos) break;
      continue;
    }
    const Sample& s = *r;
    load_min = std::min(load_min, s.load1);
    load_max = std::max(load_max, s.load1);
    cells[t.link].s[static_cast<int>(t.side)].push_back(s);
    std::fprintf(
        stderr,
        "migrate: %zu/%zu %-40s %-10s total %6.0f ms, downtime %4.0f ms, gap %4.0f ms "
        "(guest clock %3.0f ms), RAM %.1f MB, disk %.1f MB, link %.1f MB, load %.2f [%s]\n",
        i + 1, trials.size(), links[t.link].name.c_str(), SideName(t.side), s.total_ms,
        s.downtime_ms, s.gap_ms, s.guest_jump_ms, s.ram_mb, s.disk_mb, s.link_mb, s.load1,
        s.phases.c_str());
    if (csv)
      csv << i + 1 << ",\"" << links[t.link].name << "\"," << SideName(t.side) << "," << s.total_ms
          << "," << s.downtime_ms << "," << s.gap_ms << "," << s.switch_gap_ms << ","
          << s.guest_jump_ms << "," << s.ram_mb << "," << s.disk_mb << "," << s.link_mb << ","
          << s.load1 << "\n";
  }
  const double minutes = std::chrono::duration<double>(Clock::now() - started).count() / 60;

  std::printf("## bench/migrate: live migration, vmgrid vs plain QEMU\n\n");
  std::printf(
      "machine: %s; QEMU TCG; guest: tiny image, %d vCPU, %d MiB, disk a qcow2 overlay on "
      "rootfs.raw, a loop printing a kernel message on the serial console every ~5 ms\n",
      bench::MachineLine().c_str(), o.vcpus, o.memory_mb);
  std::printf(
      "load average: %s before; 1-min load at the trials %.2f–%.2f; %d runs per cell, all "
      "trials interleaved in random order (seed %u), %.1f min\n",
      load_before.c_str(), load_min, load_max, o.runs, o.seed, minutes);
  std::printf(
      "plain QEMU: no -S; blockdev-mirror sync=top copy-mode=write-blocking to the "
      "target's NBD export, migrate with default capabilities, the target runs on completion; no "
      "TLS, or (+ TLS) QEMU's PSK TLS on NBD and the stream (same key format and RFC 7919 DH "
      "group as vmgrid's NBD). vmgrid: vmm/migration.h (StartIncoming, MigrateOut, "
      "FinishIncoming): QEMU's PSK TLS on NBD, the stream through vmgrid's TLS 1.3 PSK tunnel "
      "(vmm/migration_tunnel.h), mirror sync=top background, pause-before-switchover, under "
      "TCG on QEMU < 9 the guest paused while RAM moves, target -S + cont. Both: max-bandwidth "
      "unthrottled.\n");
  std::printf(
      "total: target prepare → guest running on the target. downtime: QEMU's query-migrate. "
      "gap: largest host-timed gap between the guest's console ticks. guest clock: the guest's "
      "printk time across the switchover (how much of it the guest's own clock saw). MB: RAM "
      "transferred + "
      "mirror offset; link: bytes through the emulator (both directions). median (Q1–Q3).\n\n");
  std::printf(
      "| link | side | n | total ms | QEMU downtime ms | gap seen ms | guest clock ms | RAM MB | "
      "disk MB | link MB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (size_t l = 0; l < links.size(); ++l) {
    for (int side = 0; side < kSides; ++side) {
      const auto& v = cells[l].s[side];
      std::printf(
          "| %s | %s | %zu | %s | %s | %s | %s | %s | %s | %s |\n", links[l].name.c_str(),
          SideName(static_cast<Side>(side)), v.size(), Cell(Field(v, &Sample::total_ms)).c_str(),
          Cell(Field(v, &Sample::downtime_ms)).c_str(), Cell(Field(v, &Sample::gap_ms)).c_str(),
          Cell(Field(v, &Sample::guest_jump_ms)).c_str(),
          Cell(Field(v, &Sample::ram_mb), 1).c_str(), Cell(Field(v, &Sample::disk_mb), 1).c_str(),
          links[l].emulated ? Cell(Field(v, &Sample::link_mb), 1).c_str() : "–");
    }
  }
  std::printf(
      "\nGoal (issue 12): vmgrid ≤ 1.1× plain QEMU. Ratio of medians; \"met\" when vmgrid's Q3 ≤ "
      "1.1× plain's median, \"not met\" when its Q1 is above that.\n\n");
  std::printf("| link | vmgrid vs | total | QEMU downtime | gap seen |\n|---|---|---|---|---|\n");
  bool failed = false;
  for (size_t l = 0; l < links.size(); ++l) {
    const auto& v = cells[l].s[static_cast<int>(Side::kVmgrid)];
    for (Side base : {Side::kPlain, Side::kPlainTls}) {
      const auto& p = cells[l].s[static_cast<int>(base)];
      std::printf("| %s | %s | %s | %s | %s |\n", links[l].name.c_str(), SideName(base),
                  Verdict(Field(p, &Sample::total_ms), Field(v, &Sample::total_ms)).c_str(),
                  Verdict(Field(p, &Sample::downtime_ms), Field(v, &Sample::downtime_ms)).c_str(),
                  Verdict(Field(p, &Sample::gap_ms), Field(v, &Sample::gap_ms)).c_str());
    }
  }
  for (size_t l = 0; l < links.size(); ++l) {
    for (const std::string& e : cells[l].errors) {
      std::printf("\nfailed (%s): %s\n", links[l].name.c_str(), e.c_str());
      failed = true;
    }
  }
  std::printf("\nload average after: %s\n", LoadAverage().c_str());
  return failed ? 1 : 0;
}
