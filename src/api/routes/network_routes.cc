#include "api/routes/network_routes.h"

#include <httplib.h>

#include "api/routes.h"
#include "api/services/network_service.h"
#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

void InstallNetworkRoutes(RouteInstaller& s, NetworkService& networks) {
  s.Post(
      "/v1/networks",
      [&networks](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
        JsonFields f(body, request_fields::kCreateNetwork);
        VMG_RETURN_IF_ERROR(f.CheckUnknown());
        VMG_ASSIGN_OR_RETURN(std::string name, f.String("name", true));
        VMG_ASSIGN_OR_RETURN(std::string subnet, f.String("subnet", false, ""));
        VMG_ASSIGN_OR_RETURN(bool egress, f.Bool("egress", false));
        VMG_ASSIGN_OR_RETURN(json net, networks.Create(c, name, subnet, egress));
        return Reply{201, net};
      },
      kUserRoles);
  s.Get(
      "/v1/networks",
      [&networks](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(PageRequest page, PageQueryParams(req));
        VMG_ASSIGN_OR_RETURN(json list, networks.List(c, page));
        return Reply{200, list};
      },
      kUserRoles);
  s.Get(R"(/v1/networks/([^/]+))",
        [&networks](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(json net, networks.Get(c, req.matches[1]));
          return Reply{200, net};
        },
        kUserRoles);
  s.Delete(R"(/v1/networks/([^/]+))",
           [&networks](const Caller& c, const Req& req) -> Result<Reply> {
             VMG_RETURN_IF_ERROR(networks.Delete(c, req.matches[1]));
             return Reply{204, nullptr};
           },
           kUserRoles);
  s.Post(R"(/v1/networks/([^/]+)/share)",
         [&networks](const Caller& c, const Req& req) -> Result<Reply> {
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
           JsonFields f(body, request_fields::kShareNetwork);
           VMG_RETURN_IF_ERROR(f.CheckUnknown());
           VMG_ASSIGN_OR_RETURN(std::string user, f.String("user", true));
           VMG_ASSIGN_OR_RETURN(json net, networks.Share(c, req.matches[1], user));
           return Reply{200, net};
         },
         {"admin"});
}

}  // namespace vmgrid
