// The dataset routes of the REST API (docs/datasets.md): GET /v1/datasets,
// GET/DELETE /v1/datasets/{ref}, POST /v1/datasets/{name}/chunks and
// /v1/datasets/{name}/versions (a push), GET
// /v1/datasets/{ref}/versions/{version}/manifest and .../chunks/{digest} (a
// pull), DELETE /v1/datasets/{ref}/versions/{version}. Each parses its
// request and calls DatasetService.
#pragma once

#include "api/routes/route.h"

namespace vmgrid {

class DatasetService;

void InstallDatasetRoutes(RouteInstaller& s, DatasetService& datasets);

}  // namespace vmgrid
