#include "api/routes/host_routes.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include "api/routes.h"
#include "api/services/host_service.h"
#include "common/http_json.h"
#include "proto/host_report.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

void InstallHostRoutes(RouteInstaller& s, HostService& hosts) {
  s.Get(
      "/v1/hosts",
      [&hosts](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(PageRequest page, PageQueryParams(req));
        VMG_ASSIGN_OR_RETURN(json list, hosts.List(c.admin(), page));
        return Reply{200, std::move(list)};
      },
      kUserRoles);
  s.Get(R"(/v1/hosts/([^/]+))",
        [&hosts](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(json host, hosts.Get(req.matches[1], c.admin()));
          return Reply{200, host};
        },
        kUserRoles);
}

void InstallAgentRoutes(RouteInstaller& s, HostService& hosts) {
  s.Post("/v1/agent/register",
         [&hosts](const Caller&, const Req& req) -> Result<Reply> {
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
           JsonFields f(body, request_fields::kRegisterHost);
           VMG_RETURN_IF_ERROR(f.CheckUnknown());
           VMG_ASSIGN_OR_RETURN(std::string name, f.String("name", true));
           VMG_ASSIGN_OR_RETURN(json answer, hosts.Register(name));
           return Reply{200, answer};
         },
         {"agent"});
  s.Post("/v1/agent/heartbeat",
         [&hosts](const Caller& c, const Req& req) -> Result<Reply> {
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
           // A host speaks only for itself: say so before judging the rest.
           JsonFields f(body, request_fields::kHeartbeat);
           VMG_ASSIGN_OR_RETURN(std::string name, f.String("name", true));
           if (name != c.user.name)
             return MakeError(
                 ErrorCode::kPermissionDenied,
                 "this credential belongs to host '" + c.user.name + "', not '" + name + "'");
           VMG_ASSIGN_OR_RETURN(ParsedHostReport parsed, HostReportFromJson(body));
           if (parsed.dropped_vms > 0)
             spdlog::warn("heartbeat of host {}: {} VM entr(ies) did not parse and were left out",
                          name, parsed.dropped_vms);
           VMG_ASSIGN_OR_RETURN(HeartbeatReply reply,
                                hosts.Heartbeat(c.user.name, parsed.report, req.remote_addr));
           // Entries that did not parse are left out of what the digest
           // names: the host keeps sending its list, and the warning above.
           if (parsed.dropped_vms > 0) reply.vms_digest.clear();
           return Reply{200, ToJson(reply)};
         },
         {"host"});
}

}  // namespace vmgrid
