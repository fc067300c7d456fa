// SimVmTable: the pretend VM lifecycle of one simulated host (compare
// OpenNebula's dummy drivers). Same states, transitions and error codes as
// VmRunner (src/agent/vm_runner.h), but every transition completes at once
// and nothing touches QEMU or the file system: the table is the host.
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
//   Adopt:      a state that is none of VmState's -> kInvalidArgument
// On failure: no side effects. Unknown ids answer kNotFound.
// Thread-safe: all public methods.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "agent/vm_runner.h"
#include "common/result.h"
#include "vmm/guest_agent_client.h"

namespace vmgrid {

class SimVmTable {
 public:
  explicit SimVmTable(std::string host_name) : host_name_(std::move(host_name)) {}

  Result<VmStatus> Create(const VmSpec& spec);
  Result<VmStatus> Stop(const std::string& id);
  Result<VmStatus> Checkpoint(const std::string& id, bool leave_running);
  Result<VmStatus> Resume(const std::string& id);
  Status Destroy(const std::string& id);
  // exit 0; stdout names the host, the VM and the argv.
  Result<ExecResult> Exec(const std::string& id, const std::vector<std::string>& argv);
  // A path that names the checkpoint; nothing exists there.
  Result<std::string> CheckpointDir(const std::string& id);
  // Refuses (kFailedPrecondition) while a VM of this host uses `path`.
  Status DeleteWorkspace(const std::string& path);

  // Records a VM as if it had been created here earlier (benchmarks seed
  // state this way; an agent would re-adopt it after a restart).
  Status Adopt(const VmStatus& status);

  std::vector<VmStatus> List() const;
  size_t size() const;
  // Sums over the VMs that are not in `error`, as the controller reserves.
  int used_vcpus() const;
  int64_t used_memory_mb() const;
  const std::string& host_name() const { return host_name_; }

 private:
  struct Entry {
    VmStatus status;
    std::string workspace_path;  // persistent disks only
  };
  Result<Entry*> FindLocked(const std::string& id);

  const std::string host_name_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> vms_;  // guarded by mu_
};

}  // namespace vmgrid
