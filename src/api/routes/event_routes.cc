#include "api/routes/event_routes.h"

#include <httplib.h>

#include <cstdint>

#include "api/services/event_service.h"
#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

namespace {

Result<int64_t> IntParam(const Req& req, const std::string& name, int64_t fallback) {
  return IntQueryParam(req, name, fallback, INT64_MIN, INT64_MAX);
}

Result<EventListRequest> ParseEventQuery(const Req& req) {
  // Any other parameter is refused.
  VMG_RETURN_IF_ERROR(CheckQueryParams(req, {"after", "last", "vm", "limit", "follow", "wait"}));
  EventListRequest r;
  VMG_ASSIGN_OR_RETURN(r.after, IntParam(req, "after", 0));
  VMG_ASSIGN_OR_RETURN(r.last, IntParam(req, "last", 0));
  VMG_ASSIGN_OR_RETURN(r.limit, IntParam(req, "limit", r.limit));
  VMG_ASSIGN_OR_RETURN(int64_t wait_s, IntParam(req, "wait", r.wait_ms / 1000));
  if (wait_s < 0 || wait_s > EventService::kMaxWaitMs / 1000)
    return MakeError(ErrorCode::kInvalidArgument,
                     "wait must be 0.." + std::to_string(EventService::kMaxWaitMs / 1000) + " s");
  r.wait_ms = wait_s * 1000;
  r.vm = req.get_param_value("vm");
  const std::string follow = req.get_param_value("follow");
  if (!follow.empty() && follow != "0" && follow != "1" && follow != "true" && follow != "false")
    return MakeError(ErrorCode::kInvalidArgument, "follow must be 1 or 0");
  r.follow = follow == "1" || follow == "true";
  if (r.last > 0 && req.has_param("after"))
    return MakeError(ErrorCode::kInvalidArgument, "give either after or last, not both");
  return r;
}

}  // namespace

void InstallEventRoutes(RouteInstaller& s, EventService& events) {
  s.Get(
      "/v1/events",
      [&events](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(EventListRequest r, ParseEventQuery(req));
        VMG_ASSIGN_OR_RETURN(EventPage page, events.List(c, r));
        json list = json::array();
        for (const auto& e : page.events) list.push_back(EventService::EventJson(e));
        return Reply{200, {{"events", list}, {"next", page.next}}};
      },
      kUserRoles);
}

}  // namespace vmgrid
