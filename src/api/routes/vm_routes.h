// The VM lifecycle routes of the REST API on existing VMs: POST
// /v1/vms/ID/{stop,checkpoint,resume} and DELETE /v1/vms/ID. Each parses its
// request, calls VmService, and answers 202 with the VM as moved.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>

#include "api/routes/route.h"

namespace vmgrid {

class VmService;

// How a VM is shown (the controller's view: names of its image, host, ...).
using VmView = std::function<nlohmann::json(const Vm&)>;

void InstallVmActionRoutes(RouteInstaller& s, VmService& vms, VmView view);

}  // namespace vmgrid
