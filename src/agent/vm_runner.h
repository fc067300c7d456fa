// VmRunner: the agent's side of the VM lifecycle. It owns the on-disk state
// of every VM on this host (STATE/vms/ID/), starts QEMU through vmm/, and
// re-adopts running QEMU processes after an agent restart.
//
// State machine (the transition table of common/vm_state.h decides which
// operation may start from which state and what it sets; docs/vm-lifecycle.md
// shows it with what each failure leaves behind):
//   creating -> running | (failure: nothing left behind, VM forgotten)
//   running  -> stopping -> stopped
//   running  -> checkpointing -> suspended | running (leave_running)
//   stopped | suspended -> resuming -> running
//   any      -> deleting -> (gone)
// A failed transition leaves the VM in the state it started from when that is
// still true (e.g. a failed checkpoint of a running VM resumes it), and in
// `error` otherwise (QEMU died); the error text says what happened.
//
// Thread-safety: all public methods are thread-safe. Operations on one VM are
// serialized; different VMs proceed in parallel.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "agent/console_log.h"
#include "agent/host_images.h"
#include "agent/host_networks.h"
#include "agent/overlay_templates.h"
#include "agent/vm_driver.h"
#include "common/result.h"
#include "proto/vm_spec.h"
#include "proto/vm_status.h"
#include "vmm/guest_agent_client.h"
#include "vmm/qemu_process.h"
#include "vmm/vm_cgroup.h"

namespace vmgrid {

class QemuProcess;

// `message` without what only the host should see: QEMU's output (after
// "; qemu stderr:", "; qemu.log:", "; see ") is cut and every absolute path
// or json: backing string becomes "<host path>".
std::string RedactForUser(const std::string& message);

struct VmRunnerOptions {
  std::string state_dir;
  // When the agent runs as root, each VM's QEMU runs as a uid/gid of its
  // own, vm_uid_base + slot (slot < vm_uid_count, the lowest one no VM on
  // this host holds; recorded in the VM's state.json, so it survives agent
  // restarts and returns to the pool when the VM is deleted). The range
  // must belong to the agent: no other user or service may use those ids.
  // vm_uid_base 0 turns this off (QEMU runs as `runas`).
  int vm_uid_base = 2000000000;
  int vm_uid_count = 65536;
  std::string runas;  // "" = run QEMU as ourselves; without per-VM uids (or not root)
  // cgroup v2 hierarchy (or a subtree delegated to the agent) for one cgroup
  // per VM with its placed memory and vCPUs as limits; used when usable
  // (VmCgroups::Open), "" = off.
  std::string cgroup_root = "/sys/fs/cgroup";
  std::string qemu_binary = "qemu-system-x86_64";
  std::string accel;  // "" = auto
  std::chrono::milliseconds ready_timeout = std::chrono::seconds(120);
  HostImages* images = nullptr;  // null: no image server, image files are local paths
  // The host's virtual switches (agent/host_networks.h); null: VMs with
  // NICs are refused.
  HostNetworks* networks = nullptr;
  // `vm cp`: the largest guest file a copy may read or write here (at most
  // kMaxGuestCopyBytes, the protocol's bound).
  int64_t max_copy_bytes = kMaxGuestCopyBytes;
};

// The QEMU VmDriver (agent/vm_driver.h).
class VmRunner : public VmDriver {
 public:
  explicit VmRunner(VmRunnerOptions options);
  ~VmRunner() override;

  // Scans STATE/vms: re-adopts running QEMU processes, marks VMs whose QEMU is
  // gone as stopped (with an error), and removes leftovers of creates that
  // were interrupted. Call once before serving.
  Status Recover();

  Result<VmStatus> Create(const VmSpec& spec) override;
  Result<VmStatus> Stop(const std::string& id) override;
  // Durable workspaces: pushes the workspace of every running persistent VM
  // whose spec asks for interval pushes and whose last one is that old: a
  // point-in-time copy (guest sync, then drive-backup sync=full while it
  // runs), converted and pushed without holding up the VM's operations.
  // Called periodically by the agent from a thread of its own.
  void PushDueWorkspaces();
  Result<VmStatus> Checkpoint(const std::string& id, bool leave_running) override;
  // From suspended: restore the checkpoint. From stopped: boot the disk again.
  Result<VmStatus> Resume(const std::string& id) override;
  Status Destroy(const std::string& id, bool purge_workspace) override;
  Result<ExecResult> Exec(const std::string& id, const std::vector<std::string>& argv,
                          const std::string& input, std::chrono::milliseconds timeout) override;
  Result<GuestFileChunk> ReadGuestFile(const std::string& id,
                                       const GuestFileRead& request) override;
  Result<GuestFileWritten> WriteGuestFile(const std::string& id,
                                          const GuestFileWrite& request) override;
  Result<VmStatus> Get(const std::string& id);
  // state.json and published.json writes that failed (each logged; the
  // in-memory state stays authoritative, see PersistStateOrCount).
  int64_t state_write_failures() const { return state_write_failures_.load(); }
  std::vector<VmStatus> List() override;
  // The serial console log (agent/console_log.h), any state.
  Result<ConsoleLog> ReadConsole(const std::string& id, int64_t offset, int64_t max_bytes) override;
  // Bounds every VM's console log (kConsoleLogMaxBytes, keeping the last
  // kConsoleLogKeepBytes readable); the agent calls it periodically.
  void TrimConsoleLogs();
  // Directory of a VM's latest checkpoint ("" if none).
  Result<std::string> CheckpointDir(const std::string& id) override;
  // Publishes the VM's latest checkpoint to the image server (once per
  // checkpoint) so that any host can resume clones of it: the memory state,
  // and the disk as one qcow2 delta over the image's base disk (all layers
  // in between flattened). {"dir", "vm_ckpt_memory", "vm_ckpt_disk"}.
  Result<CheckpointRef> PublishCheckpoint(const std::string& id) override;
  Result<DurableVersion> CommitData(const std::string& id, size_t index,
                                    const std::string& name) override;

  // Boots `image` once as a throwaway clone, waits for its guest agent, and
  // saves a post-boot checkpoint into `target_dir` (created atomically).
  Status MakeImageCheckpoint(const ImageFiles& image, const std::map<std::string, BlobRef>& blobs,
                             int vcpus, int64_t memory_mb, const std::string& target_dir) override;

  Result<ForwardInfo> AddForward(const std::string& id, const ForwardRequest& request) override;
  Status RemoveForward(const std::string& id, int listen_port) override;

  // Live migration (agent/vm_driver.h, docs/migration.md). The target's
  // QEMU listens on request.listen_host; the VM keeps its id, spec (NICs,
  // workspace name) and per-VM uid scheme (a fresh uid of this host).
  Result<IncomingInfo> PrepareIncoming(const IncomingRequest& request) override;
  Result<MigrationResult> MigrateOut(const std::string& id,
                                     const MigrateOutRequest& request) override;
  Result<VmStatus> FinishIncoming(const std::string& id) override;
  Status AbortIncoming(const std::string& id) override;
  Status ConfirmMigrateOut(const std::string& id, bool migrated) override;

  // Gives every running VM with NICs its switch ports again (after the
  // switches started late, e.g. at an agent's first plan). Logs failures.
  void ReattachNics();

  // Deletes a workspace file no VM on this host uses.
  Status DeleteWorkspace(const std::string& path) override;

  const VmRunnerOptions& options() const { return options_; }

 private:
  struct Vm;
  Result<std::shared_ptr<Vm>> Find(const std::string& id);
  std::string VmDir(const std::string& id) const;
  Status PersistState(Vm& vm);
  void PersistStateOrCount(Vm& vm);
  // Turns spec.blobs into local files and an NBD backing (HostImages).
  Status ResolveBlobs(Vm& vm);
  Status PrepareDisk(Vm& vm, bool* created_workspace);
  // migration_target: -incoming defer and -S, no state loaded (StartIncoming's job).
  // `paused`: start with -S and no -incoming (a cold migration's source).
  Status Launch(Vm& vm, bool incoming, const std::string& memory_state,
                bool migration_target = false, bool paused = false);
  // MigrateOut of a stopped VM: its disks only (docs/migration.md, "Cold
  // migration"). Called with op_mu held.
  Result<MigrationResult> MigrateOutCold(Vm& vm, const MigrateOutRequest& request);
  // The disk of an incoming migration: a fresh qcow2 over what lies below
  // the source's top layer (the image, or an image's checkpoint; nothing
  // for a persistent workspace, which gets the image's virtual size).
  Status PrepareIncomingDisk(Vm& vm, bool* created_workspace);
  // The data attachments' disk files (after the boot disk); `incoming`: an
  // incoming migration's, whose blank ones the mirror fills.
  Status PrepareDataDisks(Vm& vm, bool incoming);
  // A new VM record (a create, or an incoming migration when `migration` is
  // "incoming") in state creating with a per-VM uid; kAlreadyExists if the id
  // or its directory is taken here.
  Result<std::shared_ptr<Vm>> RegisterNewVm(const VmSpec& spec, const std::string& migration,
                                            const std::string& what);
  // STATE/vms/ID with run/ (owners and modes for QEMU's uid), the blobs
  // resolved, spec.json and state.json written. op_mu held.
  Status MakeVmFiles(Vm& vm);
  // Undoes a create or an incoming migration that did not complete: kills
  // QEMU, removes the VM's files (and a workspace it created) and its record.
  // op_mu held.
  void DiscardNewVm(Vm& vm);
  // kFailedPrecondition while `vm` takes part in a live migration.
  Status NotMigrating(const Vm& vm) const;
  // RefreshLiveness, then kFailedPrecondition unless running and not migrating. op_mu held.
  Status RunningAndIdle(Vm& vm);
  // Where the migration's PSK file lives while QEMU needs it.
  std::string MigrationKeyDir(const std::string& id) const;
  Status WaitGuestReady(Vm& vm, std::chrono::steady_clock::time_point started);
  // Mounts the VM's datasets in its guest (agent/guest_data.h). op_mu held.
  Status MountData(Vm& vm);
  Status ChownForQemu(const Vm& vm, const std::string& path);
  // The VM's NICs as switch ports (HostNetworks::Attach); none without NICs.
  Result<std::vector<NicConfig>> AttachNics(const Vm& vm, bool wait);
  // STATE/vms/ID/forwards.json: the VM's forwards, added again after each
  // attach (a port's removal takes its forwards with it).
  std::vector<ForwardInfo> LoadForwards(const std::string& id) const;
  Status SaveForwards(const std::string& id, const std::vector<ForwardInfo>& forwards);
  // The uid/gid QEMU of `vm` runs as (-1: the agent's own).
  std::pair<int, int> QemuIds(const Vm& vm) const;
  HostImages::VmNbdEndpoint NbdEndpoint(const Vm& vm) const;
  // Data attachments (agent/guest_data.h): exports each attached version on
  // a socket of the VM's own and returns their backing strings ("" for a
  // blank one); ReleaseData drops them. kFailedPrecondition without an
  // image server.
  Result<std::vector<std::string>> AcquireData(const Vm& vm);
  void ReleaseData(const VmSpec& spec);
  // The data disks as QEMU gets them.
  std::vector<DataDiskConfig> DataDisks(const Vm& vm) const;
  // The lowest free per-VM uid slot; -1 when per-VM uids are off. mu_ held.
  int AllocateUidLocked() const;
  // Errors that reach users name no host path and carry no QEMU output:
  // logs `e` in full and returns its code with `what` and the reason with
  // QEMU's output cut and host paths replaced (RedactForUser).
  Error ForUser(const Error& e, const std::string& what) const;
  VmStatus StatusOf(const Vm& vm) const;
  // Called with op_mu held: a QEMU that exited turns a running VM stopped,
  // unless its guest, restored with the boot stub, rebooted: then the VM is
  // started again (RestartAfterReboot).
  void RefreshLiveness(Vm& vm);
  // The VM's QEMU, started with the boot stub, exited because its guest
  // rebooted (QEMU's SHUTDOWN event, reason "guest-reset"). op_mu held.
  bool RebootedGuest(Vm& vm);
  // Boots the VM again on its disk with the image's kernel and initrd
  // (fetched now if this host lacks them); the VM stays running. op_mu held.
  Status RestartAfterReboot(Vm& vm);
  // Runs `task` on its own thread; the destructor waits for it.
  void InBackground(std::function<void()> task);
  // RefreshLiveness in the background (a restart may fetch a kernel).
  void RestartAfterRebootLater(const std::shared_ptr<Vm>& vm);
  // Fetches the kernel and initrd of `spec` from the image server, if they
  // come from there, and sets *kernel and *initrd to their files.
  Status MaterializeBootFiles(const VmSpec& spec, std::string* kernel, std::string* initrd);
  // STATE/blobs/boot-stub.elf (vmm/boot_stub.h), written if missing.
  Result<std::string> BootStubPath();
  // `shared`: an image's checkpoint, readable by the QEMUs of its clones.
  Status SaveCheckpoint(Vm& vm, const std::string& target_dir, bool shared);
  // Durable workspaces: pushes the persistent workspace `qcow2` (consistent:
  // QEMU stopped, or a checkpoint's full copy) as a new version when the
  // spec asks for it; records it in `vm` (status, state.json). A failure is
  // logged and kept in the VM's durable_error; the caller's operation goes on.
  // `writes`: the disk's write count (DiskWriteCount) the copy holds, if
  // known (-1): equal to the last interval push's, nothing is pushed.
  // After a resume, once the VM is reported running: 64 bytes of host
  // randomness into the guest's /dev/urandom, with the VM's op_mu held.
  void ReseedLater(const std::shared_ptr<Vm>& vm);
  void PushDurable(Vm& vm, const std::string& qcow2, const std::string& trigger,
                   int64_t writes = -1);
  // The same with vm.push_mu held by the caller; `at_ms`: when the copy was
  // taken. True when the version was published.
  bool PushDurableLocked(Vm& vm, const std::string& qcow2, const std::string& trigger,
                         int64_t at_ms);

  const VmRunnerOptions options_;
  int qemu_uid_ = -1, qemu_gid_ = -1;
  bool per_vm_uids_ = false;
  std::atomic<int64_t> state_write_failures_{0};
  std::optional<VmCgroups> cgroups_;  // set when the host allows per-VM cgroups
  OverlayTemplates overlays_;         // STATE/overlay-templates

  // Tasks of InBackground (host entropy written into resumed guests after
  // they are reported running, restarts after a guest reboot); waited for by
  // the destructor.
  std::mutex background_mu_;
  std::vector<std::future<void>> background_;  // guarded by background_mu_

  std::mutex mu_;
  std::mutex console_mu_;                           // serialises console log reads and trims
  std::mutex stub_mu_;                              // serialises BootStubPath's writes
  std::map<std::string, std::shared_ptr<Vm>> vms_;  // guarded by mu_
};

}  // namespace vmgrid
