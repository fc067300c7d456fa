// The live-migration route of the REST API: POST /v1/vms/ID/migrate {to?}
// answers 202 with the `migrate` operation (poll GET /v1/operations/ID).
// It parses the request and calls MigrationService (docs/migration.md).
#pragma once

#include "api/routes/route.h"

namespace vmgrid {

class MigrationService;

void InstallMigrationRoutes(RouteInstaller& s, MigrationService& migrations);

}  // namespace vmgrid
