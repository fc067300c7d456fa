// WorkspaceService: users' persistent workspaces (a VM's disk kept on its
// host after the VM is gone): list, and delete — an agent call, so a
// deletion is an operation (GET /v1/operations/ID) and the workspace stays
// listed until its file is gone. While a deletion runs no VM may take the
// workspace (BeingDeleted) and no second deletion starts.
//
// A service of its own rather than part of VmService or UserService: it
// keeps state of its own (the deletions running) that the VM create path
// consults, and a workspace outlives the VMs that use it.
// Thread-safe: every method.
#pragma once

#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "api/routes/route.h"
#include "common/result.h"
#include "store/store.h"

namespace vmgrid {

class Admission;
class AgentClient;
class OpQueue;

class WorkspaceService {
 public:
  // `long_ops` bounds each user's deletions (shared with the controller's
  // other long operations).
  WorkspaceService(Store& store, AgentClient& agents, OpQueue& ops, Admission& long_ops)
      : store_(store), agents_(agents), ops_(ops), long_ops_(long_ops) {}

  // One page (common/paging.h), oldest first.
  Result<Page<Workspace>> List(const Caller& c, const PageRequest& page);
  // Starts deleting workspace `ref` (its file on its host, then its record);
  // answers the operation. kFailedPrecondition while a VM uses it or another
  // deletion runs, kTooManyRequests over the caller's long operations. On
  // failure of the operation the workspace is kept: delete again.
  Result<nlohmann::json> Delete(const Caller& c, const std::string& ref);
  // Whether a deletion of workspace `id` runs: no VM may take it.
  bool BeingDeleted(const std::string& id);

 private:
  Store& store_;
  AgentClient& agents_;
  OpQueue& ops_;
  Admission& long_ops_;
  std::mutex mu_;
  std::set<std::string> deleting_;  // workspace ids; guarded by mu_
};

}  // namespace vmgrid
