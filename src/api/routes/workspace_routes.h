// The workspace routes of the REST API: GET /v1/workspaces and DELETE
// /v1/workspaces/{ref} (202 with an operation). Each parses its request and
// calls WorkspaceService.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>

#include "api/routes/route.h"

namespace vmgrid {

class WorkspaceService;

// How a workspace is shown (the controller's view: names of its owner,
// image and host).
using WorkspaceView = std::function<nlohmann::json(const Workspace&)>;

void InstallWorkspaceRoutes(RouteInstaller& s, WorkspaceService& workspaces, WorkspaceView view);

}  // namespace vmgrid
