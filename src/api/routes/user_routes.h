// The user routes of the REST API: GET /v1/whoami (any user), POST/GET
// /v1/users and PUT /v1/users/{name}/quota (admin). Each parses its request
// and calls UserService.
#pragma once

#include "api/routes/route.h"

namespace vmgrid {

class UserService;

void InstallUserRoutes(RouteInstaller& s, UserService& users);

}  // namespace vmgrid
