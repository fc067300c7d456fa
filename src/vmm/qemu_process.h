// QemuProcess: launches, adopts and stops one daemonized QEMU per run
// directory, plus the pure argv builder that fixes the VM's device layout.
// QEMU outlives the agent by design; destroying a QemuProcess never stops it.
// Thread-safety: Alive(), pid(), run_dir(), LogTail() and qmp() (itself
// locked) may be called concurrently; Quit() and Kill() must not race.
//
// QEMU is started detached (a double fork: its own session, parent init),
// with signal dispositions reset, umask 077 and no inherited fds, so killing
// the agent or its process group leaves VMs running; a restarted agent
// re-attaches with Adopt(). The launcher drops privileges itself (setgroups,
// setgid, setuid to config.uid/gid, or the runas user) before exec, so QEMU
// never holds root and gets neither -daemonize nor -runas.
//
// Facts this relies on (QEMU 7.2, verified by the integration tests):
// * The seccomp filter is installed before -daemonize forks and calls setsid()
//   and before -runas calls setuid(): with either, spawn=deny and
//   elevateprivileges=deny kill QEMU at startup (SIGSYS). Without them the
//   full sandbox kSandboxOptions runs under TCG and KVM.
// * QEMU opens the sockets, pidfile, -D log, serial file and disks as the
//   unprivileged user: run_dir, the disk chain and the kernel/initrd must be
//   reachable by it (run_dir 0700 owned by it is enough for the run files).
// * After a migration ends QEMU re-opens disk images by name (read-only) and
//   it creates drive-backup targets: backup target directories must be
//   writable by its user.
// * Options given on -drive override those of a json: backing filename
//   (QEMU's bdrv_fill_options joins them with the explicit ones winning), so
//   `backing.file.server.path=` points an NBD backing node at another socket
//   whatever the qcow2 header names.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "vmm/nic_config.h"
#include "vmm/qmp_client.h"
#include "vmm/unique_fd.h"

namespace vmgrid {

// A disk beyond the boot disk: a dataset attached to the VM
// (proto/data_attachment.h), data disk i at PCI slot 0x18+i with a serial the
// guest finds it by. Part of the device layout, like the NICs.
struct DataDiskConfig {
  std::string path;              // a qcow2 overlay or a raw file
  std::string format = "qcow2";  // qcow2 | raw
  bool readonly = false;         // the guest cannot write it
  std::string nbd_socket;        // "": none; else the overlay's backing NBD node connects here
  std::string serial;            // [A-Za-z0-9-]{1,20}
  bool operator==(const DataDiskConfig&) const = default;
};
inline constexpr int kMaxDataDisks = 4;

struct QemuConfig {
  std::string vm_id;  // used in -name and the process title; [A-Za-z0-9._-]{1,64}
  int vcpus = 1;
  int memory_mb = 256;
  std::string kernel, initrd, append;  // empty kernel => boot from disk firmware
  std::string disk_path;               // empty => no disk
  std::string disk_format = "qcow2";   // qcow2 | raw
  // > 0: the layer this many backing steps below disk_path is a user's image;
  // QEMU opens it with no backing file of its own ("backing.…backing=" on the
  // -drive), whatever its header says. 0: no layer is cut.
  int disk_untrusted_depth = 0;
  std::string run_dir;    // holds qmp.sock, qga.sock, qemu.pid, console.log, qemu.log
  bool incoming = false;  // start with -incoming defer (resume from a checkpoint)
  // With `incoming`: the saved state QEMU loads as it starts (-incoming fd:N,
  // the file opened by Launch, so QEMU's user needs no access to it) instead
  // of waiting for migrate-incoming; FinishResumeAtStart then runs the VM.
  // The load overlaps QEMU's start. "" = -incoming defer.
  std::string incoming_file;
  // -S: the guest stays paused until `cont`, also once an incoming migration
  // completes (a live-migration target must not run before the source knows
  // the migration succeeded: vmm/migration.h).
  bool start_paused = false;
  std::string runas;       // unprivileged user when we run as root ("" = none)
  int uid = -1, gid = -1;  // run as this uid/gid (wins over runas); -1 = runas/ourselves
  bool sandbox = true;     // -sandbox kSandboxOptions
  // A clone disk whose chain ends in an NBD export: the NBD node, nbd_depth
  // backing levels below disk_path (1 = the disk's backing file), connects
  // to nbd_socket whatever the image headers name. 0 = no override.
  std::string nbd_socket;
  int nbd_depth = 0;
  // A cgroup directory (VmCgroups::Prepare) QEMU joins before it execs; "" = none.
  std::string cgroup_dir;
  std::string accel;    // "" = auto: kvm if KvmUsableBy(qemu_binary), else tcg
  std::string vmgenid;  // guid for -device vmgenid; "" = "auto" (QEMU picks a fresh one)
  // Network cards, NIC i at PCI slot 0x10+i (vmm/nic_config.h). Part of the
  // device layout: a resume needs the same list.
  std::vector<NicConfig> nics;
  // Data disks (at most kMaxDataDisks), disk i at PCI slot 0x18+i.
  std::vector<DataDiskConfig> data_disks;
  std::string qemu_binary = "qemu-system-x86_64";
  // -action reboot=shutdown: a guest reboot ends QEMU (a SHUTDOWN event with
  // reason "guest-reset", then exit 0) instead of resetting the machine; for
  // a guest restored with vmm/boot_stub.h in place of its kernel.
  bool reboot_exits = false;
};

// Fixed names inside a run directory.
inline constexpr char kQmpSocketName[] = "qmp.sock";
inline constexpr char kQgaSocketName[] = "qga.sock";
inline constexpr char kPidFileName[] = "qemu.pid";
inline constexpr char kConsoleLogName[] = "console.log";
inline constexpr char kQemuLogName[] = "qemu.log";
inline constexpr char kQemuStderrName[] = "qemu.stderr";  // QEMU's stderr (its error messages)
// How much of the end of a log LogTail and ConsoleTail return by default.
inline constexpr size_t kLogTailBytes = 1500;
// The fd number QEMU reads QemuConfig::incoming_file from (-incoming fd:3).
inline constexpr int kIncomingStateFd = 3;
inline constexpr char kSandboxOptions[] =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

std::string RunPath(const std::string& run_dir, const char* name);

// Rejects values QEMU would misparse (commas in option lists), socket paths
// longer than sun_path, out-of-range sizes, and bad NICs (ValidateNics).
Status ValidateQemuConfig(const QemuConfig& config);

// The full argv (argv[0] = qemu_binary). Pure: accel "" is treated as tcg
// (Launch resolves "auto" first) and paths are used as given (Launch makes
// them absolute, and starts QEMU in /).
std::vector<std::string> BuildQemuArgv(const QemuConfig& config);

// /dev/kvm exists, opens read-write and speaks the stable KVM API.
bool KvmAvailable();

// True if `sys_module_dir` (normally /sys/module) shows a hardware-assisted
// KVM module (kvm_intel or kvm_amd) rather than, say, kvm_pvm.
bool KvmIsHardwareAssisted(const std::string& sys_module_dir = "/sys/module");

// KvmAvailable(), KVM is hardware-assisted, and `qemu_binary` really starts a
// q35 machine with accel=kvm -cpu host. The later checks matter on
// nested/paravirtual hosts (e.g. Firecracker with PVM, kvm_pvm): there
// /dev/kvm works and QEMU may even start, but a stock guest kernel stops
// with a KVM internal error during boot. Runs a ~40 ms probe QEMU once per
// binary; the result is cached. VMGRID_ACCEL=tcg in the environment turns
// KVM off, VMGRID_ACCEL=kvm skips the module check. Thread-safe. Launch uses
// this for accel "" (auto).
bool KvmUsableBy(const std::string& qemu_binary);

class QemuProcess {
 public:
  // Starts QEMU and connects QMP. On any failure nothing it started is left
  // running, and the error carries the tail of QEMU's stderr and qemu.log
  // (host detail for the agent's log, not for users).
  // kAlreadyExists if a QEMU is already running in config.run_dir.
  static Result<std::unique_ptr<QemuProcess>> Launch(const QemuConfig& config,
                                                     std::chrono::milliseconds timeout);

  // Re-attaches to the QEMU running in `run_dir` (after an agent restart).
  // kNotFound if none runs there. Fails with kTimeout while another QMP client
  // is connected to it.
  static Result<std::unique_ptr<QemuProcess>> Adopt(const std::string& run_dir,
                                                    std::chrono::milliseconds timeout);

  ~QemuProcess();  // closes our handles only; QEMU keeps running
  QemuProcess(const QemuProcess&) = delete;
  QemuProcess& operator=(const QemuProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& run_dir() const { return run_dir_; }
  QmpClient& qmp() { return *qmp_; }
  std::string qga_socket() const { return RunPath(run_dir_, kQgaSocketName); }
  // The end of qemu.stderr and qemu.log: QEMU's own error messages.
  std::string LogTail() const;
  // The last `max_bytes` of the guest's serial console (kernel messages such
  // as hung tasks or an oops), for diagnosing a guest that stopped answering.
  std::string ConsoleTail(size_t max_bytes = kLogTailBytes) const;

  // False once the process has exited (a zombie counts as exited).
  bool Alive() const;

  // QMP quit, wait up to `grace` for the exit, then SIGKILL. Removes the
  // sockets and pidfile once the process is gone.
  Status Quit(std::chrono::milliseconds grace);
  // SIGKILL and wait for the exit.
  Status Kill();

 private:
  QemuProcess(std::string run_dir, pid_t pid, vmm::UniqueFd pidfd, std::unique_ptr<QmpClient> qmp);
  bool WaitExit(std::chrono::steady_clock::time_point deadline) const;
  void RemoveRuntimeFiles() const;

  std::string run_dir_;
  pid_t pid_;
  // A pidfd pins the process identity: signals cannot hit a recycled pid, and
  // it becomes readable when QEMU exits even though QEMU is not our child.
  vmm::UniqueFd pidfd_;
  std::unique_ptr<QmpClient> qmp_;
};

// Kills (SIGKILL) every QEMU started for `run_dir`, found in /proc by its
// -pidfile argument: also one whose pid file is not written yet, whose QMP
// does not answer (still starting, or stopped by a lease fence) or whose pid
// file is gone. Waits up to `timeout` for them to exit; returns how many it
// killed. For leftovers of interrupted creates and deletes (agent Recover).
int KillQemusForRunDir(const std::string& run_dir, std::chrono::milliseconds timeout);

// Kills every QEMU whose -pidfile lies under `vms_root`/ID/ while the
// directory `vms_root`/ID does not exist (a VM whose files were removed while
// its QEMU ran on: no agent can manage it any more). Returns the VM ids.
std::vector<std::string> KillOrphanQemus(const std::string& vms_root,
                                         std::chrono::milliseconds timeout);

}  // namespace vmgrid
