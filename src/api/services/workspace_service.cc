#include "api/services/workspace_service.h"

#include <spdlog/spdlog.h>

#include <memory>

#include "api/admission.h"
#include "api/agent_client.h"
#include "api/op_queue.h"

namespace vmgrid {

using nlohmann::json;

Result<Page<Workspace>> WorkspaceService::List(const Caller& c, const PageRequest& page) {
  VMG_ASSIGN_OR_RETURN(auto all, store_.ListWorkspaces(c.owner()));
  return PageOf(
      std::move(all), page, [](const Workspace& w) { return NumberKey(w.created_ms); },
      [](const Workspace& w) { return w.id; });
}

bool WorkspaceService::BeingDeleted(const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  return deleting_.count(id) > 0;
}

Result<json> WorkspaceService::Delete(const Caller& c, const std::string& ref) {
  VMG_ASSIGN_OR_RETURN(Workspace ws, store_.GetWorkspace(ref, c.owner()));
  auto in_use = [](const Workspace& w) {
    return MakeError(ErrorCode::kFailedPrecondition, "workspace " + w.name + " is in use by VM " +
                                                         w.vm_id + "; remove the VM first");
  };
  if (!ws.vm_id.empty()) return in_use(ws);
  VMG_ASSIGN_OR_RETURN(Host host, store_.GetHost(ws.host_id));
  VMG_ASSIGN_OR_RETURN(auto slot, long_ops_.Acquire(c.user.id, 1, c.admin()));
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!deleting_.insert(ws.id).second)
      return MakeError(ErrorCode::kFailedPrecondition,
                       "workspace " + ws.name + " is being deleted");
  }
  auto unmark = std::shared_ptr<void>(nullptr, [this, id = ws.id](void*) {
    std::lock_guard<std::mutex> l(mu_);
    deleting_.erase(id);
  });
  // A VM may have taken it between the read above and the mark.
  VMG_ASSIGN_OR_RETURN(ws, store_.GetWorkspace(ws.id, ""));
  if (!ws.vm_id.empty()) return in_use(ws);
  OpQueue::Operation op;
  op.kind = "workspace_delete";
  op.owner_id = c.user.id;
  op.workspace_id = ws.id;
  json answer = ops_.Start(op);
  ops_.Run("", [this, id = op.id, h = host, w = ws, unmark = std::move(unmark),
                slot = std::move(slot)]() mutable {
    Result<json> outcome = json(nullptr);
    Status r = agents_.DeleteWorkspace(h, w.path);
    if (!r.ok())
      outcome = r.error().Wrap("deleting the workspace file");
    else if (Status st = store_.DeleteWorkspace(w.id); !st.ok())
      outcome = st.error();
    if (!outcome.ok()) spdlog::warn("workspace {}: {}", w.id, outcome.error().message);
    unmark.reset();
    slot.reset();
    ops_.Finish(id, outcome);
  });
  return answer;
}

}  // namespace vmgrid
