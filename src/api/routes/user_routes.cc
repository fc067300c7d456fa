#include "api/routes/user_routes.h"

#include <httplib.h>

#include "api/routes.h"
#include "api/services/user_service.h"
#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

void InstallUserRoutes(RouteInstaller& s, UserService& users) {
  s.Get(
      "/v1/whoami",
      [](const Caller& c, const Req&) -> Result<Reply> {
        return Reply{200, UserService::Brief(c.user)};
      },
      kUserRoles);
  s.Post("/v1/users",
         [&users](const Caller&, const Req& req) -> Result<Reply> {
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
           JsonFields f(body, request_fields::kCreateUser);
           VMG_RETURN_IF_ERROR(f.CheckUnknown());
           VMG_ASSIGN_OR_RETURN(std::string name, f.String("name", true));
           // The service checks the name, then the role.
           VMG_ASSIGN_OR_RETURN(std::string role, f.String("role", false, "user"));
           VMG_ASSIGN_OR_RETURN(json created, users.Create(name, role));
           return Reply{201, created};
         },
         {"admin"});
  s.Get("/v1/users",
        [&users](const Caller&, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(PageRequest page, PageQueryParams(req));
          VMG_ASSIGN_OR_RETURN(json list, users.List(page));
          return Reply{200, list};
        },
        {"admin"});
  // PUT replaces the whole quota: a field left out is 0, unlimited.
  s.Put(R"(/v1/users/([^/]+)/quota)",
        [&users](const Caller&, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
          JsonFields f(body, request_fields::kUserQuota);
          VMG_RETURN_IF_ERROR(f.CheckUnknown());
          constexpr int64_t kMax = int64_t{1} << 53;  // exact in every JSON client
          UserQuota q;
          VMG_ASSIGN_OR_RETURN(q.vms, f.Int("vms", 0, 0, kMax));
          VMG_ASSIGN_OR_RETURN(q.vcpus, f.Int("vcpus", 0, 0, kMax));
          VMG_ASSIGN_OR_RETURN(q.memory_mb, f.Int("memory_mb", 0, 0, kMax));
          VMG_ASSIGN_OR_RETURN(q.image_bytes, f.Int("image_bytes", 0, 0, kMax));
          VMG_ASSIGN_OR_RETURN(q.workspace_bytes, f.Int("workspace_bytes", 0, 0, kMax));
          VMG_ASSIGN_OR_RETURN(json user, users.SetQuota(req.matches[1], q));
          return Reply{200, user};
        },
        {"admin"});
}

}  // namespace vmgrid
