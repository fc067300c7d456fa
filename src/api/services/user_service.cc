#include "api/services/user_service.h"

#include <spdlog/spdlog.h>

#include "common/http_json.h"
#include "common/util.h"

namespace vmgrid {

using nlohmann::json;

json UserService::Brief(const User& u) {
  return {
      {"id", u.id}, {"name", u.name}, {"role", u.role}, {"created_at", FormatTimeMs(u.created_ms)}};
}

Result<json> UserService::Create(const std::string& name, const std::string& role) {
  VMG_RETURN_IF_ERROR(ValidateName("user", name));
  if (role != "user" && role != "admin")
    return MakeError(ErrorCode::kInvalidArgument,
                     "field 'role' is '" + role + "'; it must be one of: user, admin");
  VMG_ASSIGN_OR_RETURN(auto created, store_.CreateUser(name, role));
  return json{{"user", Brief(created.first)}, {"token", created.second}};
}

Result<json> UserService::List(const PageRequest& page) {
  VMG_ASSIGN_OR_RETURN(std::vector<User> users, store_.ListUsers());
  auto got = PageOf(
      std::move(users), page, [](const User& u) { return NumberKey(u.created_ms); },
      [](const User& u) { return u.id; });
  json out = json::array();
  for (const auto& u : got.items) {
    VMG_ASSIGN_OR_RETURN(json user, View(u));
    out.push_back(std::move(user));
  }
  json answer{{"users", std::move(out)}};
  AddNext(answer, got.next);
  return answer;
}

Result<json> UserService::View(const User& u) {
  VMG_ASSIGN_OR_RETURN(UserUsage use, store_.GetUserUsage(u.id));
  const UserQuota& q = u.quota;
  return json{{"id", u.id},
              {"name", u.name},
              {"role", u.role},
              {"created_at", FormatTimeMs(u.created_ms)},
              {"quota",
               {{"vms", q.vms},
                {"vcpus", q.vcpus},
                {"memory_mb", q.memory_mb},
                {"image_bytes", q.image_bytes},
                {"workspace_bytes", q.workspace_bytes}}},
              {"usage",
               {{"vms", use.vms},
                {"vcpus", use.vcpus},
                {"memory_mb", use.memory_mb},
                {"image_bytes", use.image_bytes},
                {"workspace_bytes", use.workspace_bytes}}}};
}

Result<json> UserService::SetQuota(const std::string& name, const UserQuota& q) {
  for (int64_t v : {q.vms, q.vcpus, q.memory_mb, q.image_bytes, q.workspace_bytes})
    if (v < 0) return MakeError(ErrorCode::kInvalidArgument, "a quota is 0 (unlimited) or more");
  VMG_ASSIGN_OR_RETURN(User u, store_.SetUserQuota(name, q));
  spdlog::info(
      "quota of user {} set to {} VMs, {} vCPUs, {} MB, {} image bytes, {} workspace bytes", u.name,
      q.vms, q.vcpus, q.memory_mb, q.image_bytes, q.workspace_bytes);
  return View(u);
}

}  // namespace vmgrid
