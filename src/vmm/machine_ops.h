// Lifecycle steps the agent runs over QMP: pause/resume, checkpointing (VM
// state to a file + the disk's top layer to a qcow2) and resuming from one.
// Thread-safety: free functions; they use the QmpClient's own locking, but
// two lifecycle operations on one VM must not run concurrently.
//
// A consistent checkpoint is: Stop, BackupDiskTop, SaveStateToFile (in this
// order: a completed migration inactivates the disks, after which QEMU 7.2
// refuses drive-backup with "Block node is read-only" until `cont`).
// State files move through fds passed with getfd (URI "fd:NAME"), not exec:,
// so no shell runs and the -runas user needs no access to the state file.
#pragma once

#include <chrono>
#include <string>

#include "common/result.h"
#include "vmm/qmp_client.h"

namespace vmgrid {

// Stops the VM and migrates its state into `path` (created/truncated, mode
// 0600, fsync'ed). The VM is left paused ("postmigrate", disks inactivated; a
// later `cont` re-activates them). A partial file is removed on failure.
Status SaveStateToFile(QmpClient& qmp, const std::string& path, std::chrono::milliseconds timeout);

// Copies the disk's top layer (sync=top; sync=full when `full`) into a new
// qcow2 at `target_qcow2` with drive-backup mode=absolute-paths, so the copy
// keeps the original backing file. The copy is a point-in-time image as of
// the call; call it while paused so it matches the RAM saved next. The target
// must not exist and its directory must be writable by QEMU's (-runas) user.
Status BackupDiskTop(QmpClient& qmp, const std::string& device, const std::string& target_qcow2,
                     bool full, std::chrono::milliseconds timeout);

// How many writes and discards the guest has sent to `device` (a -drive id)
// since QEMU started, failed and invalid ones included: from
// query-blockstats. Block jobs (drive-backup, mirror) do not count. Equal
// counts at two moments of one QEMU mean the guest changed nothing on the
// disk in between. kNotFound for an unknown device; kInternal when QEMU's
// reply lacks the counters.
Result<int64_t> DiskWriteCount(QmpClient& qmp, const std::string& device);

// For a QEMU started with -incoming defer: loads the state saved in `path`,
// then runs the VM.
Status ResumeFromFile(QmpClient& qmp, const std::string& path, std::chrono::milliseconds timeout);

// For a QEMU launched with QemuConfig::incoming_file (the state loads as QEMU
// starts): waits until the load ends, then runs the VM. The faster resume:
// QEMU's start and the load overlap.
Status FinishResumeAtStart(QmpClient& qmp, std::chrono::milliseconds timeout);

// The whole consistent checkpoint: Stop, BackupDiskTop (skipped when
// `device` is empty, e.g. a diskless VM), SaveStateToFile. On failure it
// removes what it wrote. The VM is left paused either way; Cont() resumes it
// (also after success, which re-activates the disks).
Status CheckpointToFiles(QmpClient& qmp, const std::string& device, const std::string& disk_target,
                         bool full_disk, const std::string& state_path,
                         std::chrono::milliseconds timeout);

// query-status "status": running, paused, postmigrate, inmigrate, ...
Result<std::string> QueryStatus(QmpClient& qmp);
Status Cont(QmpClient& qmp);
Status Stop(QmpClient& qmp);

}  // namespace vmgrid
