#include "api/routes/job_routes.h"

#include <httplib.h>

#include <charconv>

#include "api/services/job_service.h"
#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

void InstallJobRoutes(RouteInstaller& s, JobService& jobs) {
  s.Post(
      "/v1/jobs",
      [&jobs](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
        VMG_ASSIGN_OR_RETURN(JobRequest r, ParseJobRequest(body));
        VMG_ASSIGN_OR_RETURN(json job, jobs.Submit(c, r));
        return Reply{201, job};
      },
      kUserRoles);
  s.Get(
      "/v1/jobs",
      [&jobs](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(PageRequest page, PageQueryParams(req));
        VMG_ASSIGN_OR_RETURN(json list, jobs.List(c, page));
        return Reply{200, list};
      },
      kUserRoles);
  s.Get(R"(/v1/jobs/([^/]+))",
        [&jobs](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(json job, jobs.Get(c, req.matches[1]));
          return Reply{200, job};
        },
        kUserRoles);
  s.Get(R"(/v1/jobs/([^/]+)/tasks/([^/]+)/logs)",
        [&jobs](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_RETURN_IF_ERROR(CheckQueryParams(req, {"stream"}));
          const std::string i = req.matches[2];
          int64_t index = -1;
          auto [end, ec] = std::from_chars(i.data(), i.data() + i.size(), index);
          if (ec != std::errc() || end != i.data() + i.size() || index < 0)
            return MakeError(ErrorCode::kInvalidArgument, "bad task index '" + i + "'");
          const std::string stream =
              req.has_param("stream") ? req.get_param_value("stream") : "stdout";
          VMG_ASSIGN_OR_RETURN(json logs, jobs.Logs(c, req.matches[1], index, stream));
          return Reply{200, logs};
        },
        kUserRoles);
  s.Post(R"(/v1/jobs/([^/]+)/cancel)",
         [&jobs](const Caller& c, const Req& req) -> Result<Reply> {
           VMG_ASSIGN_OR_RETURN(json job, jobs.Cancel(c, req.matches[1]));
           return Reply{200, job};
         },
         kUserRoles);
}

}  // namespace vmgrid
