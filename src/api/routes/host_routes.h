// The host routes of the REST API: GET /v1/hosts[/ID] (users), POST
// /v1/agent/register (the join token) and POST /v1/agent/heartbeat (a
// host's own credential). Each parses its request and calls HostService.
#pragma once

#include "api/routes/route.h"

namespace vmgrid {

class HostService;

// The routes users see (the main listener).
void InstallHostRoutes(RouteInstaller& s, HostService& hosts);
// The routes agents call (both listeners).
void InstallAgentRoutes(RouteInstaller& s, HostService& hosts);

}  // namespace vmgrid
