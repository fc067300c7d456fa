#include "api/routes/query_routes.h"

#include <httplib.h>

#include <cstdint>

#include "api/admission.h"
#include "api/routes.h"
#include "common/http_json.h"
#include "infosvc/query_service.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

namespace {

Result<SetQuery> ParseSetQuery(const json& sj) {
  if (!sj.is_object()) return MakeError(ErrorCode::kInvalidArgument, "'set' must be an object");
  JsonFields sf(sj, request_fields::kSetQuery);
  VMG_RETURN_IF_ERROR(sf.CheckUnknown());
  SetQuery q;
  VMG_ASSIGN_OR_RETURN(q.from, sf.String("from", false, "vms"));
  VMG_ASSIGN_OR_RETURN(int64_t size, sf.Int("size", 2, 1, 64));
  VMG_ASSIGN_OR_RETURN(q.same, sf.String("same", false));
  VMG_ASSIGN_OR_RETURN(q.sum, sf.String("sum", false, "memory_mb"));
  VMG_ASSIGN_OR_RETURN(q.min, sf.Int("min", 0, INT64_MIN / 4, INT64_MAX / 4));
  VMG_ASSIGN_OR_RETURN(q.max, sf.Int("max", INT64_MAX / 4, INT64_MIN / 4, INT64_MAX / 4));
  VMG_ASSIGN_OR_RETURN(q.where, sf.String("where", false));
  VMG_ASSIGN_OR_RETURN(int64_t max_sets, sf.Int("max_sets", 10, 1, 1000));
  q.size = static_cast<size_t>(size);
  q.max_sets = static_cast<size_t>(max_sets);
  return q;
}

}  // namespace

void InstallQueryRoutes(RouteInstaller& s, QueryService& query, Admission& queries) {
  s.Post(
      "/v1/query",
      [&query, &queries](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
        JsonFields f(body, request_fields::kQuery);
        VMG_RETURN_IF_ERROR(f.CheckUnknown());
        VMG_ASSIGN_OR_RETURN(std::string sql, f.String("sql", false));
        QueryLimits limits;
        VMG_ASSIGN_OR_RETURN(limits.max_rows, f.Int("max_rows", 10'000, 1, 10'000));
        VMG_ASSIGN_OR_RETURN(limits.timeout_ms, f.Int("timeout_ms", 2'000, 1, 10'000));
        VMG_ASSIGN_OR_RETURN(auto slot, queries.Acquire(c.user.id, 1, c.admin()));
        const QueryCaller caller{c.user.id, c.admin()};
        const bool has_set = body.contains("set");
        if (sql.empty() == !has_set)
          return MakeError(ErrorCode::kInvalidArgument, "give exactly one of 'sql' and 'set'");
        if (!has_set) {
          VMG_ASSIGN_OR_RETURN(QueryResult r, query.Sql(caller, sql, limits));
          return Reply{200,
                       {{"columns", r.columns},
                        {"rows", r.rows},
                        {"elapsed_ms", static_cast<double>(r.elapsed_us) / 1000.0}}};
        }
        VMG_ASSIGN_OR_RETURN(SetQuery q, ParseSetQuery(body["set"]));
        VMG_ASSIGN_OR_RETURN(SetResult r, query.Set(caller, q, limits));
        json sets = json::array();
        for (const auto& set : r.sets)
          sets.push_back({{"group", set.group}, {"ids", set.ids}, {"total", set.total}});
        return Reply{200,
                     {{"sets", sets},
                      {"candidates", r.candidates},
                      {"groups", r.groups},
                      {"exact_search", r.used_exact_search},
                      {"elapsed_ms", static_cast<double>(r.elapsed_us) / 1000.0}}};
      },
      kUserRoles);
}

}  // namespace vmgrid
