#include "api/routes/vm_routes.h"

#include <httplib.h>

#include "api/op_queue.h"
#include "api/routes.h"
#include "api/services/vm_service.h"
#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

void InstallVmActionRoutes(RouteInstaller& s, VmService& vms, VmView view) {
  for (const std::string action : {"stop", "checkpoint", "resume"}) {
    s.Post(
        "/v1/vms/([^/]+)/" + action,
        [&vms, view, action](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body));
          JsonFields f(body, request_fields::kVmCheckpoint);
          VMG_RETURN_IF_ERROR(f.CheckUnknown());
          VMG_ASSIGN_OR_RETURN(bool leave, f.Bool("leave_running", false));
          if (action != "checkpoint" && body.contains("leave_running"))
            return MakeError(ErrorCode::kInvalidArgument,
                             "leave_running applies to checkpoint only");
          const VmOp op = action == "stop" ? VmOp::kStop
                          : action == "checkpoint"
                              ? (leave ? VmOp::kCheckpointLeaveRunning : VmOp::kCheckpoint)
                              : VmOp::kResume;
          VMG_ASSIGN_OR_RETURN(Vm moved, vms.Act(req.matches[1], c.owner(), op));
          return Reply{202, view(moved)};
        },
        kUserRoles);
  }
  s.Post(
      "/v1/vms/([^/]+)/forwards",
      [&vms](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body));
        VMG_ASSIGN_OR_RETURN(ForwardRequest r, ForwardRequestFromJson(body));
        VMG_ASSIGN_OR_RETURN(json f, vms.Forward(req.matches[1], c.owner(), r));
        return Reply{201, f};
      },
      kUserRoles);
  s.Delete(R"(/v1/vms/([^/]+)/forwards/([^/]+))",
           [&vms](const Caller& c, const Req& req) -> Result<Reply> {
             const std::string port = req.matches[2];
             if (port.empty() || port.size() > 5 ||
                 port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) < 1 ||
                 std::stoi(port) > 65535)
               return MakeError(ErrorCode::kInvalidArgument,
                                "'" + port + "' is not a port (1-65535)");
             VMG_RETURN_IF_ERROR(vms.Unforward(req.matches[1], c.owner(), std::stoi(port)));
             return Reply{204, nullptr};
           },
           kUserRoles);
  s.Delete(R"(/v1/vms/([^/]+))",
           [&vms, view](const Caller& c, const Req& req) -> Result<Reply> {
             const bool purge = req.get_param_value("purge_workspace") == "true";
             VMG_ASSIGN_OR_RETURN(Vm moved, vms.Delete(req.matches[1], c.owner(), purge));
             return Reply{202, view(moved)};
           },
           kUserRoles);
}

void InstallExecRoutes(RouteInstaller& s, VmService& vms) {
  s.Post(R"(/v1/vms/([^/]+)/exec)",
         [&vms](const Caller& c, const Req& req) -> Result<Reply> {
           // An unknown VM is 404 whatever the body says.
           VMG_RETURN_IF_ERROR(vms.Get(req.matches[1], c.owner()));
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
           JsonFields f(body, request_fields::kExec);
           VMG_RETURN_IF_ERROR(f.CheckUnknown());
           ExecRequest r;
           VMG_ASSIGN_OR_RETURN(r.argv, f.StringList("argv", true, 256));
           VMG_ASSIGN_OR_RETURN(r.input, f.String("input", false));
           VMG_ASSIGN_OR_RETURN(r.timeout_s, f.Int("timeout_s", 60, 1, 3600));
           VMG_ASSIGN_OR_RETURN(json op, vms.Exec(c, req.matches[1], r));
           return Reply{202, op};
         },
         kUserRoles);
}

void InstallOperationRoutes(RouteInstaller& s, const OpQueue& ops) {
  s.Get(R"(/v1/operations/([^/]+))",
        [&ops](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(json op, ops.Get(req.matches[1], c.user.id, c.admin()));
          return Reply{200, op};
        },
        kUserRoles);
}

}  // namespace vmgrid
