// VmDriver: what a host does to its VMs, behind the agent API. Two
// implementations: VmRunner (QEMU, src/agent/vm_runner.h) and SimVmTable
// (pretend VMs for scale tests, src/sim/sim_vm_table.h) — a driver, not a
// second server, as OpenNebula's dummy drivers are. The agent API
// (agent/agent_api.h) parses requests once and calls a driver, so scale tests
// run the real route code.
//
// Contract, for every implementation:
//   Create:     (new) -> running | stopped (start "none"); an id already
//               here -> kAlreadyExists
//   Stop:       running -> stopped
//   Checkpoint: running -> suspended | running (leave_running)
//   Resume:     suspended | stopped -> running
//   Destroy:    any -> (gone); purge_workspace also deletes a persistent disk
//   Exec:       running only
//   ReadGuestFile, WriteGuestFile: running only; one chunk of a guest file
//               through the guest agent (proto/guest_file.h), never a host path
//   ReadConsole: any state; the guest's serial output kept on this host
//   Live migration (docs/migration.md), the controller calling two hosts:
//     target PrepareIncoming:  (new) -> creating (an incoming VM: QEMU waits,
//                              paused, for the source; its disk is exported)
//     source MigrateOut:       running -> running, migrated out (paused; every
//                              other operation but ConfirmMigrateOut and
//                              Destroy is refused while migrating)
//     target FinishIncoming:   creating (incoming) -> running
//     target AbortIncoming:    creating (incoming) -> (gone, nothing left)
//     source ConfirmMigrateOut(migrated=true):  -> (gone; a persistent
//                              workspace's file is deleted: it moved)
//     source ConfirmMigrateOut(migrated=false): -> running again
//   A failed MigrateOut leaves the source running and not migrating; a
//   failed FinishIncoming removes the target like AbortIncoming.
// Unknown ids answer kNotFound, a wrong state kFailedPrecondition; a failed
// operation has no side effects beyond what docs/vm-lifecycle.md lists.
// Thread-safe: all methods, for every implementation.
#pragma once

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"
#include "proto/blob_ref.h"
#include "proto/checkpoint_ref.h"
#include "proto/console_log.h"
#include "proto/durable_workspace.h"
#include "proto/guest_file.h"
#include "proto/migration.h"
#include "proto/network_plan.h"
#include "proto/vm_spec.h"
#include "proto/vm_status.h"
#include "vmm/guest_agent_client.h"

namespace vmgrid {

class VmDriver {
 public:
  virtual ~VmDriver() = default;

  virtual Result<VmStatus> Create(const VmSpec& spec) = 0;
  virtual Result<VmStatus> Stop(const std::string& id) = 0;
  virtual Result<VmStatus> Checkpoint(const std::string& id, bool leave_running) = 0;
  virtual Result<VmStatus> Resume(const std::string& id) = 0;
  virtual Status Destroy(const std::string& id, bool purge_workspace) = 0;
  virtual Result<ExecResult> Exec(const std::string& id, const std::vector<std::string>& argv,
                                  const std::string& input, std::chrono::milliseconds timeout) = 0;
  // `vm cp`: a chunk of a file inside the guest (no such file: kNotFound,
  // denied: kPermissionDenied, a VM not running: kFailedPrecondition).
  virtual Result<GuestFileChunk> ReadGuestFile(const std::string& id,
                                               const GuestFileRead& request) = 0;
  virtual Result<GuestFileWritten> WriteGuestFile(const std::string& id,
                                                  const GuestFileWrite& request) = 0;
  virtual std::vector<VmStatus> List() = 0;
  // The VM's serial console log (proto/console_log.h), in any state: from
  // log offset `offset` (< 0: the last max_bytes). Unknown id: kNotFound.
  virtual Result<ConsoleLog> ReadConsole(const std::string& id, int64_t offset,
                                         int64_t max_bytes) = 0;
  // Directory of a VM's latest checkpoint ("" if none).
  virtual Result<std::string> CheckpointDir(const std::string& id) = 0;
  // Publishes the VM's latest checkpoint to the image server (its
  // directory and both versions).
  virtual Result<CheckpointRef> PublishCheckpoint(const std::string& id) = 0;
  // Boots `image` once as a throwaway clone and saves its post-boot
  // checkpoint into `target_dir`.
  virtual Status MakeImageCheckpoint(const ImageFiles& image,
                                     const std::map<std::string, BlobRef>& blobs, int vcpus,
                                     int64_t memory_mb, const std::string& target_dir) = 0;
  // Pushes read-write data attachment `index` (proto/data_attachment.h) as
  // the next version of its dataset's blob (its `blob.name`, or `name` for a
  // new one): in a running guest the file system is made read-only for the
  // copy and writable again after. Only chunks the image server lacks travel.
  // kFailedPrecondition: not read-write, or the guest refused (files open).
  virtual Result<DurableVersion> CommitData(const std::string& id, size_t index,
                                            const std::string& name) = 0;
  // Deletes a workspace no VM of this host uses (kFailedPrecondition if one does).
  virtual Status DeleteWorkspace(const std::string& path) = 0;
  // `vm forward` (running VMs with a NIC on an egress network): a TCP port of
  // this host reaching a guest port; kept across resumes and agent restarts
  // until removed or the VM is deleted.
  virtual Result<ForwardInfo> AddForward(const std::string& id, const ForwardRequest& request) = 0;
  virtual Status RemoveForward(const std::string& id, int listen_port) = 0;

  // Live migration, in the order the controller calls them (contract above).
  virtual Result<IncomingInfo> PrepareIncoming(const IncomingRequest& request) = 0;
  virtual Result<MigrationResult> MigrateOut(const std::string& id,
                                             const MigrateOutRequest& request) = 0;
  virtual Result<VmStatus> FinishIncoming(const std::string& id) = 0;
  virtual Status AbortIncoming(const std::string& id) = 0;
  virtual Status ConfirmMigrateOut(const std::string& id, bool migrated) = 0;
};

}  // namespace vmgrid
