// The VM routes of the REST API: POST /v1/vms (202 with the VM, or the
// gang's VMs; VmCreateService), GET /v1/vms[/ID]; on existing VMs POST
// /v1/vms/ID/{stop,checkpoint,resume} and DELETE /v1/vms/ID (each answers
// 202 with the VM as moved), POST /v1/vms/ID/exec (202 with an operation);
// and GET /v1/operations/ID, which polls any operation (exec, image
// finalize, workspace delete). Each parses its request and calls one
// service (VmCreateService, VmService; operations: the OpQueue).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "api/routes/route.h"

namespace vmgrid {

class DatasetService;
class EventService;
class NetworkService;
class OpQueue;
class VmCreateService;
class VmService;

// How a VM is shown (the controller's view: names of its image, host, ...).
using VmView = std::function<nlohmann::json(const Vm&)>;
// How a list of VMs is shown: the JSON text of an array of VmView's (read
// and serialized more cheaply, ApiViews::VmListText).
using VmListView = std::function<std::string(const std::vector<Vm>&)>;

// POST /v1/vms, GET /v1/vms and GET /v1/vms/ID (with the VM's cards;
// ?while=STATE&wait=S answers once the VM left STATE: EventService::VmWhenNot).
void InstallVmCreateRoutes(RouteInstaller& s, VmCreateService& creates, VmService& vms,
                           NetworkService& networks, EventService& events, VmView view,
                           VmListView list_view);
// stop and DELETE take ?commit=true: every read-write dataset attachment
// is committed first (DatasetService::CommitAllThen).
void InstallVmActionRoutes(RouteInstaller& s, VmService& vms, DatasetService& datasets,
                           VmView view);
void InstallExecRoutes(RouteInstaller& s, VmService& vms);
void InstallOperationRoutes(RouteInstaller& s, const OpQueue& ops);

}  // namespace vmgrid
