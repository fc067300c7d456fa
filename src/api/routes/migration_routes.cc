#include "api/routes/migration_routes.h"

#include <httplib.h>

#include "api/routes.h"
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

}  // namespace vmgrid
