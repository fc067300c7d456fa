// VmCgroups: one cgroup v2 per VM under ROOT/vmgrid/ID, with memory.max and
// cpu.max set from what the controller placed, so a guest (or a QEMU taken
// over by it) cannot take more of the host than it was given. ROOT is the
// unified hierarchy (/sys/fs/cgroup) or a subtree delegated to the agent.
// Optional by design: Open reports why a host cannot do it (cgroup v1 or
// hybrid hierarchies, no cpu/memory controller, no write access) and the
// agent runs VMs without limits, saying so in its log.
// Thread-safety: methods may be called from any thread (they touch only the
// VM's own directory after Open).
#pragma once

#include <cstdint>
#include <string>

#include "common/result.h"

namespace vmgrid {

struct CgroupLimits {
  int vcpus = 1;
  int64_t memory_mb = 256;
  // QEMU's own memory on top of the guest's (device emulation, TCG's
  // translation cache, page tables): counted, so that the limit is a limit.
  int64_t overhead_mb = 512;
};

class VmCgroups {
 public:
  // kUnavailable (with the reason) unless ROOT is a cgroup v2 directory whose
  // cgroup.controllers offers cpu and memory and ROOT/vmgrid can be made
  // with both enabled for its children.
  static Result<VmCgroups> Open(const std::string& root = "/sys/fs/cgroup");

  // Makes (or reuses) ROOT/vmgrid/VM_ID with the limits; returns its path.
  // A process joins by writing to its cgroup.procs (QemuConfig::cgroup_dir).
  Result<std::string> Prepare(const std::string& vm_id, const CgroupLimits& limits) const;
  // Removes the VM's cgroup (fails harmlessly while a process is in it).
  void Remove(const std::string& vm_id) const;

  const std::string& dir() const { return dir_; }  // ROOT/vmgrid

 private:
  explicit VmCgroups(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

}  // namespace vmgrid
