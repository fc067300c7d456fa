// The live-migration route of the REST API: POST /v1/vms/ID/migrate {to?}
// answers 202 with the `migrate` operation (poll GET /v1/operations/ID).
// It parses the request and calls MigrationService (docs/migration.md).
// The admin's drain routes: POST /v1/hosts/REF/drain {parallel?} answers 202
// with the `drain` operation; POST /v1/hosts/REF/undrain answers the host
// (DrainService, docs/migration.md "Drain and maintenance").
#pragma once

#include "api/routes/route.h"

namespace vmgrid {

class DrainService;
class HostService;
class MigrationService;

void InstallMigrationRoutes(RouteInstaller& s, MigrationService& migrations);
void InstallDrainRoutes(RouteInstaller& s, DrainService& drains, HostService& hosts);

}  // namespace vmgrid
