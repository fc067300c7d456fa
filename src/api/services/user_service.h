// UserService: the grid's users as the admin manages them — create (with
// the user's first token, shown once), list (each with its quota and what
// it holds now) and set a quota. Only tokens' hashes are stored.
// Thread-safe (the Store is).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"
#include "store/store.h"

namespace vmgrid {

class UserService {
 public:
  explicit UserService(Store& store) : store_(store) {}

  // A new user `name` with `role` ("user" or "admin") and its token:
  // {user: {...}, token}. kInvalidArgument for a bad name or role,
  // kAlreadyExists for a taken name; nothing is created on failure.
  Result<nlohmann::json> Create(const std::string& name, const std::string& role);
  // Every user with its quota and usage: {users: [...]}.
  // One page (common/paging.h), oldest first: {"users": [...], "next"}.
  Result<nlohmann::json> List(const PageRequest& page);
  // Replaces user `name`'s whole quota (0: unlimited); answers the user.
  Result<nlohmann::json> SetQuota(const std::string& name, const UserQuota& quota);

  // A user with its quota and what it holds now, counted as the quota counts it.
  Result<nlohmann::json> View(const User& u);
  // A user without them (as the token's holder sees itself, GET /v1/whoami).
  static nlohmann::json Brief(const User& u);

 private:
  Store& store_;
};

}  // namespace vmgrid
