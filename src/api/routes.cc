#include "api/routes.h"

namespace vmgrid {

namespace {
namespace f = request_fields;

constexpr BodyObject kCreateUserBody[] = {{"", f::kCreateUser}};
constexpr BodyObject kUserQuotaBody[] = {{"", f::kUserQuota}};
constexpr BodyObject kRegisterHostBody[] = {{"", f::kRegisterHost}};
constexpr BodyObject kHeartbeatBody[] = {{"", f::kHeartbeat, false},
                                         {"capacity", f::kHeartbeatCapacity, false}};
constexpr BodyObject kCreateImageBody[] = {{"", f::kCreateImage}};
constexpr BodyObject kImageCheckpointBody[] = {{"", f::kImageCheckpoint}};
constexpr BodyObject kCreateVmBody[] = {{"", f::kCreateVm}, {"total_memory_mb", f::kTotalMemory}};
constexpr BodyObject kVmCheckpointBody[] = {{"", f::kVmCheckpoint}};
constexpr BodyObject kExecBody[] = {{"", f::kExec}};
constexpr BodyObject kFileReadBody[] = {{"", f::kFileRead}};
constexpr BodyObject kFileWriteBody[] = {{"", f::kFileWrite}};
constexpr BodyObject kQueryBody[] = {{"", f::kQuery}, {"set", f::kSetQuery}};
constexpr BodyObject kCreateNetworkBody[] = {{"", f::kCreateNetwork}};
constexpr BodyObject kShareNetworkBody[] = {{"", f::kShareNetwork}};
constexpr BodyObject kForwardBody[] = {{"", f::kForward}};
constexpr BodyObject kMigrateVmBody[] = {{"", f::kMigrateVm}};
constexpr BodyObject kDrainHostBody[] = {{"", f::kDrainHost}};
constexpr BodyObject kDatasetChunkBody[] = {{"", f::kDatasetChunk}};
constexpr BodyObject kDatasetVersionBody[] = {{"", f::kDatasetVersion}};
constexpr BodyObject kShareDatasetBody[] = {{"", f::kShareDataset}};
constexpr BodyObject kSubmitJobBody[] = {{"", f::kSubmitJob}, {"output", f::kJobOutput}};

// Stop and resume read an optional empty object (VmAction refuses
// leave_running for them), so they take no documented body.
constexpr RouteSpec kRoutes[] = {
    {"GET", "/v1/health", "/v1/health", {}},
    {"GET", "/v1/openapi.json", "/v1/openapi.json", {}},
    {"GET", "/v1/whoami", "/v1/whoami", {}},
    {"POST", "/v1/users", "/v1/users", kCreateUserBody},
    {"GET", "/v1/users", "/v1/users", {}},
    {"PUT", "/v1/users/([^/]+)/quota", "/v1/users/{name}/quota", kUserQuotaBody},
    {"GET", "/v1/hosts", "/v1/hosts", {}},
    {"GET", "/v1/hosts/([^/]+)", "/v1/hosts/{ref}", {}},
    {"POST", "/v1/hosts/([^/]+)/drain", "/v1/hosts/{ref}/drain", kDrainHostBody},
    {"POST", "/v1/hosts/([^/]+)/undrain", "/v1/hosts/{ref}/undrain", {}},
    {"POST", "/v1/agent/register", "/v1/agent/register", kRegisterHostBody},
    {"POST", "/v1/agent/heartbeat", "/v1/agent/heartbeat", kHeartbeatBody},
    {"POST", "/v1/images", "/v1/images", kCreateImageBody},
    {"GET", "/v1/images", "/v1/images", {}},
    {"GET", "/v1/images/([^/]+)", "/v1/images/{ref}", {}},
    {"PUT", "/v1/images/([^/]+)/files/(disk|kernel|initrd)", "/v1/images/{ref}/files/{kind}", {}},
    {"POST", "/v1/images/([^/]+)/finalize", "/v1/images/{ref}/finalize", {}},
    {"POST", "/v1/images/([^/]+)/checkpoint", "/v1/images/{ref}/checkpoint", kImageCheckpointBody},
    {"DELETE", "/v1/images/([^/]+)", "/v1/images/{ref}", {}},
    {"GET", "/v1/datasets", "/v1/datasets", {}},
    {"GET", "/v1/datasets/((?:[^/]+/)?[^/]+)", "/v1/datasets/{ref}", {}},
    {"DELETE", "/v1/datasets/((?:[^/]+/)?[^/]+)", "/v1/datasets/{ref}", {}},
    {"POST", "/v1/datasets/([^/]+)/share", "/v1/datasets/{ref}/share", kShareDatasetBody},
    {"POST", "/v1/datasets/([^/]+)/unshare", "/v1/datasets/{ref}/unshare", kShareDatasetBody},
    {"POST",
     "/v1/vms/([^/]+)/data/((?:[^/]+/)?[^/]+)/commit",
     "/v1/vms/{ref}/data/{name}/commit",
     {}},
    {"POST", "/v1/datasets/([^/]+)/chunks", "/v1/datasets/{name}/chunks", kDatasetChunkBody},
    {"POST", "/v1/datasets/([^/]+)/versions", "/v1/datasets/{name}/versions", kDatasetVersionBody},
    {"GET",
     "/v1/datasets/((?:[^/]+/)?[^/]+)/versions/([^/]+)/manifest",
     "/v1/datasets/{ref}/versions/{version}/manifest",
     {}},
    {"GET",
     "/v1/datasets/((?:[^/]+/)?[^/]+)/versions/([^/]+)/chunks/([^/]+)",
     "/v1/datasets/{ref}/versions/{version}/chunks/{digest}",
     {}},
    {"DELETE",
     "/v1/datasets/([^/]+)/versions/([^/]+)",
     "/v1/datasets/{ref}/versions/{version}",
     {}},
    {"POST", "/v1/vms", "/v1/vms", kCreateVmBody},
    {"GET", "/v1/vms", "/v1/vms", {}},
    {"GET", "/v1/vms/([^/]+)", "/v1/vms/{ref}", {}},
    {"POST", "/v1/vms/([^/]+)/stop", "/v1/vms/{ref}/stop", {}},
    {"POST", "/v1/vms/([^/]+)/checkpoint", "/v1/vms/{ref}/checkpoint", kVmCheckpointBody},
    {"POST", "/v1/vms/([^/]+)/resume", "/v1/vms/{ref}/resume", {}},
    {"GET", "/v1/vms/([^/]+)/console", "/v1/vms/{ref}/console", {}},
    {"POST", "/v1/vms/([^/]+)/exec", "/v1/vms/{ref}/exec", kExecBody},
    {"POST", "/v1/vms/([^/]+)/files/read", "/v1/vms/{ref}/files/read", kFileReadBody},
    {"POST", "/v1/vms/([^/]+)/files/write", "/v1/vms/{ref}/files/write", kFileWriteBody},
    {"POST", "/v1/vms/([^/]+)/forwards", "/v1/vms/{ref}/forwards", kForwardBody},
    {"DELETE", "/v1/vms/([^/]+)/forwards/([^/]+)", "/v1/vms/{ref}/forwards/{port}", {}},
    {"POST", "/v1/vms/([^/]+)/migrate", "/v1/vms/{ref}/migrate", kMigrateVmBody},
    {"GET", "/v1/operations/([^/]+)", "/v1/operations/{id}", {}},
    {"DELETE", "/v1/vms/([^/]+)", "/v1/vms/{ref}", {}},
    {"POST", "/v1/query", "/v1/query", kQueryBody},
    {"GET", "/v1/workspaces", "/v1/workspaces", {}},
    {"DELETE", "/v1/workspaces/([^/]+)", "/v1/workspaces/{ref}", {}},
    {"POST", "/v1/networks", "/v1/networks", kCreateNetworkBody},
    {"GET", "/v1/networks", "/v1/networks", {}},
    {"GET", "/v1/networks/([^/]+)", "/v1/networks/{ref}", {}},
    {"DELETE", "/v1/networks/([^/]+)", "/v1/networks/{ref}", {}},
    {"POST", "/v1/networks/([^/]+)/share", "/v1/networks/{ref}/share", kShareNetworkBody},
    {"GET", "/v1/events", "/v1/events", {}},
    {"POST", "/v1/jobs", "/v1/jobs", kSubmitJobBody},
    {"GET", "/v1/jobs", "/v1/jobs", {}},
    {"GET", "/v1/jobs/([^/]+)", "/v1/jobs/{id}", {}},
    {"GET", "/v1/jobs/([^/]+)/tasks/([^/]+)/logs", "/v1/jobs/{id}/tasks/{index}/logs", {}},
    {"POST", "/v1/jobs/([^/]+)/cancel", "/v1/jobs/{id}/cancel", {}},
};
}  // namespace

std::span<const RouteSpec> ControllerRoutes() { return kRoutes; }

}  // namespace vmgrid
