// Plain QEMU as a user would run it, without vmgrid: the baseline of the
// benchmarks that start VMs (bench/instantiate, bench/storm). The same QEMU
// binary and device configuration as the agent's (BuildQemuArgv), in the
// foreground, on a fresh qcow2 overlay of an image imported into a LocalGrid
// without an image server (its files under the controller's directory).
#pragma once

#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/child_process.h"
#include "common/subprocess.h"
#include "common/util.h"
#include "die.h"
#include "machine.h"
#include "stats.h"
#include "vmm/guest_agent_client.h"
#include "vmm/qemu_process.h"
#include "vmm/qmp_client.h"

namespace vmgrid::bench {

// Whether the installed QEMU is version major.minor or later.
inline bool QemuAtLeast(int major, int minor) {
  int a = 0, b = 0;
  if (std::sscanf(QemuVersion().c_str(), "QEMU %d.%d", &a, &b) != 2) return false;
  return a > major || (a == major && b >= minor);
}

// The command line of plain QEMU for `c` (BuildQemuArgv's, as the agent
// runs it) as a user would type it: in the foreground (no -daemonize or
// -pidfile), and a resume (`c.incoming`) reading `state_file` with
// `-incoming file:` (QEMU 8.2 and later: QEMU reads the file itself, no shell,
// no pipe), else `-incoming "exec:cat FILE"`, for which the sandbox must
// allow spawning (its spawn=deny kills the shell silently with SIGSYS; vmgrid
// itself restores through an fd).
inline std::vector<std::string> PlainQemuArgv(const QemuConfig& c, const std::string& state_file) {
  std::vector<std::string> argv = BuildQemuArgv(c);
  const bool file_uri = QemuAtLeast(8, 2);
  std::vector<std::string> plain;
  for (size_t i = 0; i < argv.size(); ++i) {
    if (argv[i] == "-daemonize") continue;
    if (argv[i] == "-pidfile") {
      ++i;
      continue;
    }
    if (argv[i] == "-sandbox" && c.incoming && !file_uri && i + 1 < argv.size()) {
      std::string options = argv[++i];
      if (auto at = options.find(",spawn=deny"); at != std::string::npos)
        options.erase(at, std::string(",spawn=deny").size());
      plain.insert(plain.end(), {"-sandbox", options});
      continue;
    }
    if (argv[i] == "-incoming") {
      plain.push_back("-incoming");
      plain.push_back((file_uri ? "file:" : "exec:cat ") + state_file);
      ++i;
      continue;
    }
    plain.push_back(argv[i]);
  }
  return plain;
}

// One plain QEMU started by PlainQemuStart.
struct PlainQemu {
  std::unique_ptr<ChildProcess> proc;
  std::string work, run_dir;
  bool resume = false;
  Clock::time_point started;
};

// Prepares `work` (a fresh overlay: not timed) and spawns plain QEMU booting
// the image, or resuming its post-boot checkpoint (PlainQemuArgv).
inline PlainQemu PlainQemuStart(const std::string& work, const nlohmann::json& image,
                                const std::string& image_dir, bool resume) {
  (void)RemoveTree(work);
  if (!MakeDirs(work + "/run").ok()) Die("mkdir " + work);
  std::string overlay = work + "/disk.qcow2";
  std::string backing = resume ? image_dir + "/checkpoint/disk.qcow2" : image_dir + "/disk.raw";
  if (!RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F",
                          resume ? "qcow2" : "raw", overlay})
           .ok())
    Die("qemu-img create failed");
  QemuConfig c;
  c.vm_id = "plain";
  c.memory_mb = static_cast<int>(image["checkpoint"]["memory_mb"].get<int64_t>());
  c.vcpus = image["checkpoint"]["vcpus"];
  c.kernel = image_dir + "/vmlinuz";
  c.initrd = image_dir + "/initrd.img";
  c.append = image["append"];
  c.disk_path = overlay;
  c.disk_format = "qcow2";
  c.run_dir = work + "/run";
  c.accel = KvmUsableBy(c.qemu_binary) ? "kvm" : "tcg";
  c.incoming = resume;
  std::vector<std::string> plain = PlainQemuArgv(c, image_dir + "/checkpoint/memory.state");
  PlainQemu q;
  q.work = work;
  q.run_dir = c.run_dir;
  q.resume = resume;
  q.started = Clock::now();
  auto proc = ChildProcess::Spawn(plain, work + "/qemu.out");
  if (!proc.ok()) Die(proc.error().message);
  q.proc = std::move(proc).value();
  return q;
}

// Waits until the guest agent of the plain QEMU in `run_dir` answers
// guest-ping, after a resume's `cont` as soon as `query-status` leaves
// `inmigrate` (`log`: where QEMU's output is, for errors).
inline void WaitPlainReady(const std::string& run_dir, bool resume, const std::string& log) {
  using std::chrono::milliseconds;
  auto deadline = Clock::now() + std::chrono::seconds(600);
  if (resume) {
    auto qmp = QmpClient::Connect(run_dir + "/qmp.sock", std::chrono::seconds(30));
    if (!qmp.ok()) Die("plain QEMU: " + qmp.error().message + "; see " + log);
    while (true) {
      auto st = (*qmp)->Execute("query-status");
      if (st.ok() && (*st)["status"] != "inmigrate") break;
      if (Clock::now() > deadline) Die("plain resume did not finish; see " + log);
      std::this_thread::sleep_for(milliseconds(5));
    }
    if (!(*qmp)->Execute("cont").ok()) Die("cont failed; see " + log);
  }
  Status ready = GuestAgentClient::WaitReady(run_dir + "/qga.sock", deadline);
  if (!ready.ok()) Die("plain QEMU: " + ready.error().message + "; see " + log);
}

// Seconds from the spawn until the guest agent answers (WaitPlainReady).
inline double PlainQemuWaitReady(PlainQemu& q) {
  WaitPlainReady(q.run_dir, q.resume, q.work + "/qemu.out");
  return Since(q.started);
}

// Boots (or resumes) once and stops it: seconds until the guest agent answered.
inline double PlainQemuOnce(const std::string& work, const nlohmann::json& image,
                            const std::string& image_dir, bool resume) {
  PlainQemu q = PlainQemuStart(work, image, image_dir, resume);
  double t = PlainQemuWaitReady(q);
  q.proc->KillHard();
  return t;
}

}  // namespace vmgrid::bench
