// The VM routes of the REST API on existing VMs: POST
// /v1/vms/ID/{stop,checkpoint,resume} and DELETE /v1/vms/ID (each answers
// 202 with the VM as moved), POST /v1/vms/ID/exec (202 with an operation);
// and GET /v1/operations/ID, which polls any operation (exec, image
// finalize, workspace delete). Each parses its request and calls VmService
// (operations: the OpQueue).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>

#include "api/routes/route.h"

namespace vmgrid {

class OpQueue;
class VmService;

// How a VM is shown (the controller's view: names of its image, host, ...).
using VmView = std::function<nlohmann::json(const Vm&)>;

void InstallVmActionRoutes(RouteInstaller& s, VmService& vms, VmView view);
void InstallExecRoutes(RouteInstaller& s, VmService& vms);
void InstallOperationRoutes(RouteInstaller& s, const OpQueue& ops);

}  // namespace vmgrid
