#include "api/placement.h"

#include <map>

#include "common/http_json.h"

namespace vmgrid {

namespace {

// Every value spliced into the SQL below is an id or a validated name
// ([A-Za-z0-9._-]); checked here again so the query can never be altered.
Status CheckSafe(const std::string& what, const std::string& v) {
  if (v.empty()) return Status::Ok();
  return ValidateName(what, v);
}

const QueryCaller kPlacer{"", true};  // placement sees every host

}  // namespace

Result<std::vector<std::string>> RankHosts(QueryService& query, const PlacementRequest& r) {
  VMG_RETURN_IF_ERROR(CheckSafe("image id", r.image_id));
  VMG_RETURN_IF_ERROR(CheckSafe("site", r.site));
  VMG_RETURN_IF_ERROR(CheckSafe("network", r.network));
  std::string sql =
      "SELECT h.id FROM hosts h LEFT JOIN image_cache c ON c.host_id = h.id AND c.image_id = '" +
      r.image_id + "' WHERE h.state = 'up' AND h.free_vcpus >= " + std::to_string(r.vcpus) +
      " AND h.free_memory_mb >= " + std::to_string(r.memory_mb);
  if (!r.site.empty()) sql += " AND h.site = '" + r.site + "'";
  if (!r.network.empty()) sql += " AND h.network = '" + r.network + "'";
  sql += std::string(" ORDER BY (c.host_id IS NOT NULL) DESC, h.free_memory_mb ") +
         (r.policy == "pack" ? "ASC" : "DESC") + ", h.id LIMIT " + std::to_string(r.max_candidates);
  VMG_ASSIGN_OR_RETURN(QueryResult res, query.Sql(kPlacer, sql));
  std::vector<std::string> out;
  for (const auto& row : res.rows) out.push_back(row[0].get<std::string>());
  return out;
}

Result<std::vector<std::vector<std::string>>> HostGroups(QueryService& query,
                                                         const std::string& attribute,
                                                         const std::string& policy) {
  if (!attribute.empty() && attribute != "site" && attribute != "network")
    return MakeError(ErrorCode::kInvalidArgument, "'same' must be site or network");
  std::string key = attribute.empty() ? "''" : "h." + attribute;
  std::string sql = "SELECT " + key + ", h.id, h.free_memory_mb FROM hosts h WHERE h.state = 'up' "
                    "ORDER BY h.free_memory_mb " + (policy == "pack" ? "ASC" : "DESC") + ", h.id";
  QueryLimits limits;
  limits.max_rows = 100'000;
  VMG_ASSIGN_OR_RETURN(QueryResult res, query.Sql(kPlacer, sql, limits));
  std::map<std::string, std::pair<int64_t, std::vector<std::string>>> groups;
  for (const auto& row : res.rows) {
    auto& g = groups[row[0].get<std::string>()];
    g.first += row[2].get<int64_t>();
    g.second.push_back(row[1].get<std::string>());
  }
  std::vector<std::pair<int64_t, std::vector<std::string>>> ordered;
  for (auto& [k, g] : groups) ordered.push_back(std::move(g));
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::vector<std::string>> out;
  for (auto& g : ordered) out.push_back(std::move(g.second));
  return out;
}

}  // namespace vmgrid
