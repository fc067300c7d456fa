#include "api/routes/migration_routes.h"

#include <httplib.h>

#include "api/routes.h"
#include "api/services/drain_service.h"
#include "api/services/host_service.h"
#include "api/services/migration_service.h"
#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

void InstallMigrationRoutes(RouteInstaller& s, MigrationService& migrations) {
  s.Post(R"(/v1/vms/([^/]+)/migrate)",
         [&migrations](const Caller& c, const Req& req) -> Result<Reply> {
           // The body is optional: no body, or {}, lets placement choose.
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body));
           JsonFields f(body, request_fields::kMigrateVm);
           VMG_RETURN_IF_ERROR(f.CheckUnknown());
           VMG_ASSIGN_OR_RETURN(std::string to, f.String("to", false));
           VMG_ASSIGN_OR_RETURN(json op, migrations.Migrate(c, req.matches[1], to));
           return Reply{202, op};
         },
         kUserRoles);
}

void InstallDrainRoutes(RouteInstaller& s, DrainService& drains, HostService& hosts) {
  s.Post(R"(/v1/hosts/([^/]+)/drain)",
         [&drains](const Caller& c, const Req& req) -> Result<Reply> {
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body));
           JsonFields f(body, request_fields::kDrainHost);
           VMG_RETURN_IF_ERROR(f.CheckUnknown());
           VMG_ASSIGN_OR_RETURN(int64_t parallel, f.Int("parallel", DrainService::kDefaultParallel,
                                                        1, DrainService::kMaxParallel));
           VMG_ASSIGN_OR_RETURN(json op,
                                drains.Drain(c, req.matches[1], static_cast<int>(parallel)));
           return Reply{202, op};
         },
         {"admin"});
  s.Post(R"(/v1/hosts/([^/]+)/undrain)",
         [&drains, &hosts](const Caller& c, const Req& req) -> Result<Reply> {
           VMG_ASSIGN_OR_RETURN(Host host, drains.Undrain(c, req.matches[1]));
           return Reply{200, hosts.HostJson(host, c.admin())};
         },
         {"admin"});
}

}  // namespace vmgrid
