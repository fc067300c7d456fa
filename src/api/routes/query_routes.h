// The information service's route of the REST API: POST /v1/query, an SQL
// query over the published views or a set query (docs/infosvc.md). It parses
// the request, takes one of the caller's query slots (admission) and calls
// infosvc's QueryService, which is this route's service: it owns the
// visibility rules and the limits, and has unit tests of its own.
#pragma once

#include "api/routes/route.h"

namespace vmgrid {

class Admission;
class QueryService;

void InstallQueryRoutes(RouteInstaller& s, QueryService& query, Admission& queries);

}  // namespace vmgrid
