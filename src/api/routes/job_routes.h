// Grid jobs' routes (docs/jobs.md): POST/GET /v1/jobs, GET /v1/jobs/ID,
// GET /v1/jobs/ID/tasks/I/logs?stream=stdout|stderr, POST /v1/jobs/ID/cancel.
// They parse the request and call JobService.
#pragma once

#include "api/routes/route.h"

namespace vmgrid {

class JobService;

void InstallJobRoutes(RouteInstaller& s, JobService& jobs);

}  // namespace vmgrid
