#include "api/routes/workspace_routes.h"

#include <httplib.h>

#include "api/services/workspace_service.h"
#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

void InstallWorkspaceRoutes(RouteInstaller& s, WorkspaceService& workspaces, WorkspaceView view) {
  s.Get(
      "/v1/workspaces",
      [&workspaces, view](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(PageRequest page, PageQueryParams(req));
        VMG_ASSIGN_OR_RETURN(Page<Workspace> list, workspaces.List(c, page));
        json out = json::array();
        for (const auto& w : list.items) out.push_back(view(w));
        json answer{{"workspaces", std::move(out)}};
        AddNext(answer, list.next);
        return Reply{200, std::move(answer)};
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
