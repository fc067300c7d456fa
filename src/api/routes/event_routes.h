// The event stream's route: GET /v1/events?after=&last=&vm=&limit=&follow=&wait=
// (docs/api.md, "Events"). It parses the query and calls EventService.
#pragma once

#include "api/routes/route.h"

namespace vmgrid {

class EventService;

void InstallEventRoutes(RouteInstaller& s, EventService& events);

}  // namespace vmgrid
