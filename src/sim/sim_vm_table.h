// SimVmTable: the VmDriver (agent/vm_driver.h) of a simulated host (compare
// OpenNebula's dummy drivers). Same states, transitions and error codes as
// VmRunner, but every transition completes at once (after the optional fake
// latency of `on_operation`) and nothing touches QEMU or the file system:
// the table is the host. The real agent API code serves it (sim_hosts.h).
// Which operation may start from which state, and the state it ends in, come
// from the transition table (common/vm_state.h); every operation succeeds
// at once, so no transitional state is ever seen here.
//
//   Create:     (new) -> running; an id already here -> kAlreadyExists
//   Stop:       running -> stopped
//   Checkpoint: running -> suspended | running (leave_running); has_checkpoint
//   Resume:     stopped | suspended -> running
//   Destroy:    any -> (gone)
//   Exec:       running only; answers a canned result
//   ReadGuestFile, WriteGuestFile: running only; files kept in memory per VM
//   Adopt:      a state that is none of VmState's -> kInvalidArgument
// On failure: no side effects. Unknown ids answer kNotFound.
// Thread-safe: all public methods.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "agent/vm_driver.h"
#include "agent/vm_runner.h"
#include "common/result.h"
#include "vmm/guest_agent_client.h"

namespace vmgrid {

class SimVmTable : public VmDriver {
 public:
  // `on_operation` runs before every VM operation, outside the table's lock
  // (SimHosts counts operations and sleeps their fake latency there).
  explicit SimVmTable(std::string host_name, std::function<void()> on_operation = nullptr)
      : host_name_(std::move(host_name)), on_operation_(std::move(on_operation)) {}

  Result<VmStatus> Create(const VmSpec& spec) override;
  Result<VmStatus> Stop(const std::string& id) override;
  Result<VmStatus> Checkpoint(const std::string& id, bool leave_running) override;
  Result<VmStatus> Resume(const std::string& id) override;
  Status Destroy(const std::string& id, bool purge_workspace = false) override;
  // exit 0; stdout names the host, the VM and the argv.
  Result<ExecResult> Exec(const std::string& id, const std::vector<std::string>& argv,
                          const std::string& input = "",
                          std::chrono::milliseconds timeout = std::chrono::seconds(60)) override;
  Result<GuestFileChunk> ReadGuestFile(const std::string& id,
                                       const GuestFileRead& request) override;
  Result<GuestFileWritten> WriteGuestFile(const std::string& id,
                                          const GuestFileWrite& request) override;
  // A path that names the checkpoint; nothing exists there.
  Result<std::string> CheckpointDir(const std::string& id) override;
  // Refused: simulated hosts have no image server.
  Result<CheckpointRef> PublishCheckpoint(const std::string& id) override;
  Result<DurableVersion> CommitData(const std::string& id, size_t index,
                                    const std::string& name) override;
  // Pretends: nothing is written to target_dir.
  Status MakeImageCheckpoint(const ImageFiles& image, const std::map<std::string, BlobRef>& blobs,
                             int vcpus, int64_t memory_mb, const std::string& target_dir) override;
  // Refuses (kFailedPrecondition) while a VM of this host uses `path`.
  Status DeleteWorkspace(const std::string& path) override;
  // Simulated hosts have no serial console: kFailedPrecondition.
  Result<ConsoleLog> ReadConsole(const std::string& id, int64_t offset, int64_t max_bytes) override;
  // Simulated hosts carry no virtual networks: kFailedPrecondition.
  Result<ForwardInfo> AddForward(const std::string& id, const ForwardRequest& request) override;
  Status RemoveForward(const std::string& id, int listen_port) override;
  // Simulated as VmRunner's states go (no data moves): an incoming VM is
  // `creating` until finished or aborted, a migrated-out one refuses other
  // operations until confirmed. The endpoint names this host, ports 1 and 2.
  Result<IncomingInfo> PrepareIncoming(const IncomingRequest& request) override;
  Result<MigrationResult> MigrateOut(const std::string& id,
                                     const MigrateOutRequest& request) override;
  Result<VmStatus> FinishIncoming(const std::string& id) override;
  Status AbortIncoming(const std::string& id) override;
  Status ConfirmMigrateOut(const std::string& id, bool migrated) override;

  // Records a VM as if it had been created here earlier (benchmarks seed
  // state this way; an agent would re-adopt it after a restart).
  Status Adopt(const VmStatus& status);

  std::vector<VmStatus> List() override;
  size_t size() const;
  // Sums over the VMs that are not in `error`, as the controller reserves.
  int used_vcpus() const;
  int64_t used_memory_mb() const;
  const std::string& host_name() const { return host_name_; }

 private:
  struct Entry {
    VmStatus status;
    std::string workspace_path;                  // persistent disks only
    std::map<std::string, std::string> files{};  // guest path -> bytes (vm cp)
    bool incoming = false;                       // PrepareIncoming'd, not finished yet
    bool migrated_out = false;                   // MigrateOut'd, not confirmed yet
  };
  static Entry NewEntry(const VmSpec& spec, const std::string& state);
  Result<Entry*> FindLocked(const std::string& id);
  // FindLocked, refusing a VM in the middle of a migration.
  Result<Entry*> FindIdleLocked(const std::string& id);
  void Operate();

  const std::string host_name_;
  const std::function<void()> on_operation_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> vms_;  // guarded by mu_
};

}  // namespace vmgrid
