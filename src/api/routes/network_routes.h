// The virtual-network routes of the REST API (docs/vnet.md): POST/GET
// /v1/networks, GET/DELETE /v1/networks/{ref}, POST
// /v1/networks/{ref}/share (admin). Each parses its request and calls
// NetworkService.
#pragma once

#include "api/routes/route.h"

namespace vmgrid {

class NetworkService;

void InstallNetworkRoutes(RouteInstaller& s, NetworkService& networks);

}  // namespace vmgrid
