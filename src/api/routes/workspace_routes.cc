#include "api/routes/workspace_routes.h"

#include <httplib.h>

#include "api/services/workspace_service.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

void InstallWorkspaceRoutes(RouteInstaller& s, WorkspaceService& workspaces, WorkspaceView view) {
  s.Get(
      "/v1/workspaces",
      [&workspaces, view](const Caller& c, const Req&) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(std::vector<Workspace> list, workspaces.List(c));
        json out = json::array();
        for (const auto& w : list) out.push_back(view(w));
        return Reply{200, {{"workspaces", out}}};
      },
      kUserRoles);
  s.Delete(R"(/v1/workspaces/([^/]+))",
           [&workspaces](const Caller& c, const Req& req) -> Result<Reply> {
             VMG_ASSIGN_OR_RETURN(json op, workspaces.Delete(c, req.matches[1]));
             return Reply{202, op};
           },
           kUserRoles);
}

}  // namespace vmgrid
