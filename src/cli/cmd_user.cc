// `vmgrid user ...` (admin), `vmgrid workspace ...` and `vmgrid whoami`.
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "cli/command.h"
#include "cli/exit_codes.h"
#include "cli/format.h"
#include "client/api_client.h"
#include "common/result.h"
#include "common/util.h"
#include "common/vm_state.h"

namespace vmgrid::cli {
namespace {

const std::vector<std::string> kWorkspaceHeaders = {"ID",   "NAME", "OWNER", "IMAGE",  "HOST",
                                                    "SIZE", "VM",   "AGE",   "DURABLE"};
// The latest durable version: "v3 on host-1, 5m old (2/40 chunks sent)", or "-".
std::string DurableStr(const json& w) {
  const json d = w.value("durable", json());
  if (!d.is_object()) return "-";
  return "v" + std::to_string(d.value("version", int64_t{0})) + " on " + Str(d, "host") + ", " +
         AgeStr(d, "taken_at") + " old (" + std::to_string(d.value("sent_chunks", int64_t{0})) +
         "/" + std::to_string(d.value("chunks", int64_t{0})) + " chunks sent)";
}
std::vector<std::string> WorkspaceRow(const json& w) {
  return {Str(w, "id"),       Str(w, "name"),          Str(w, "owner"),
          Str(w, "image_id"), Str(w, "host_id"),       BytesStr(w, "size_bytes"),
          Str(w, "vm_id"),    AgeStr(w, "created_at"), DurableStr(w)};
}

const std::vector<std::string> kUserHeaders = {"ID", "NAME", "ROLE", "AGE"};
std::vector<std::string> UserRow(const json& u) {
  return {Str(u, "id"), Str(u, "name"), Str(u, "role"), AgeStr(u, "created_at")};
}

int CmdUserCreate(Ctx& ctx, const std::string& name, bool admin) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Post("/v1/users", {{"name", name}, {"role", admin ? "admin" : "user"}});
  if (!res.ok()) return Fail(ctx, res.error().Wrap("cannot create user " + name), "user");
  if (ctx.g.json) {
    PrintJson(ctx, *res);
    return kExitOk;
  }
  const json& user = res->contains("user") ? (*res)["user"] : json::object();
  const std::string token = Str(*res, "token");
  ctx.io.out << "created user " << Str(user, "name") << " (" << Str(user, "id") << ", role "
             << Str(user, "role") << ")\n"
             << "token: " << token << std::endl;
  ctx.io.err << "The token is shown only this once. Store it, e.g.:\n"
             << "  mkdir -p ~/.config/vmgrid && (umask 077 && echo '" << token
             << "' > ~/.config/vmgrid/token)\n"
             << "or: export VMGRID_TOKEN='" << token << "'" << std::endl;
  return kExitOk;
}

int CmdUserList(Ctx& ctx) { return ListCommand(ctx, "/v1/users", "users", kUserHeaders, UserRow); }

// The quota fields, as the API and --flags name them.
const std::vector<std::pair<const char*, const char*>> kQuotaFields = {
    {"vms", "VMs"},
    {"vcpus", "vCPUs"},
    {"memory_mb", "memory MB"},
    {"image_bytes", "image bytes"},
    {"workspace_bytes", "workspace bytes"}};

// Shows a user's quota (and usage); with flags, changes the given fields and
// keeps the others (the API's PUT replaces the whole quota).
int CmdUserQuota(Ctx& ctx, const std::string& name, const std::map<std::string, int64_t>& set) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  json user;
  std::string path = "/v1/users";
  for (;;) {  // every page (docs/api.md, "Paging") until the user is found
    auto users = client->Get(path);
    if (!users.ok()) return Fail(ctx, users.error().Wrap("cannot read users"), "user quota");
    for (const auto& u : users->value("users", json::array()))
      if (Str(u, "name") == name) user = u;
    auto next = users->find("next");
    if (!user.is_null() || next == users->end() || !next->is_string() ||
        path == "/v1/users?cursor=" + PathEscape(next->get<std::string>()))
      break;
    path = "/v1/users?cursor=" + PathEscape(next->get<std::string>());
  }
  if (user.is_null())
    return Fail(ctx, MakeError(ErrorCode::kNotFound, "user '" + name + "' not found"),
                "user quota");
  if (!set.empty()) {
    json quota = user.value("quota", json::object());
    for (const auto& [field, value] : set) quota[field] = value;
    auto res = client->Put("/v1/users/" + PathEscape(name) + "/quota", quota);
    if (!res.ok())
      return Fail(ctx, res.error().Wrap("cannot set the quota of " + name), "user quota");
    user = *res;
  }
  if (ctx.g.json) {
    PrintJson(ctx, user);
    return kExitOk;
  }
  const json quota = user.value("quota", json::object()),
             usage = user.value("usage", json::object());
  std::vector<std::vector<std::string>> rows;
  for (const auto& [field, label] : kQuotaFields) {
    const int64_t limit = quota.value(field, int64_t{0});
    rows.push_back({label, limit > 0 ? std::to_string(limit) : "unlimited",
                    std::to_string(usage.value(field, int64_t{0}))});
  }
  ctx.io.out << "quota of " << name << ":\n";
  PrintTable(ctx, {"RESOURCE", "QUOTA", "USED"}, rows);
  return kExitOk;
}

int CmdWorkspaceList(Ctx& ctx) {
  return ListCommand(ctx, "/v1/workspaces", "workspaces", kWorkspaceHeaders, WorkspaceRow);
}

int CmdWorkspaceRm(Ctx& ctx, const std::string& ref) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  // Deletion is an operation (202), polled until the file is gone.
  auto res =
      RetryWhileBusy(ctx, [&] { return client->Delete("/v1/workspaces/" + PathEscape(ref)); });
  if (IsOperation(res)) res = WaitOperation(ctx, *client, *res, "deleting workspace " + ref, false);
  if (!res.ok()) {
    return Fail(ctx, res.error(), "workspace");
  }
  if (!ctx.g.json) ctx.io.out << "deleted workspace " << ref << std::endl;
  return kExitOk;
}

int CmdWhoami(Ctx& ctx) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Get("/v1/whoami");
  if (!res.ok()) return Fail(ctx, res.error());
  if (ctx.g.json) {
    PrintJson(ctx, *res);
    return kExitOk;
  }
  std::vector<std::pair<std::string, std::string>> pairs;
  FlattenDetails("", *res, {"id", "name", "role"}, &pairs);
  pairs.emplace_back("controller", client->base_url());
  pairs.emplace_back("token from", ctx.token_source);
  PrintKeyValues(ctx.io.out, pairs);
  return kExitOk;
}

}  // namespace

// The flags of these commands, kept for the parse.
struct AddUserCommandsFlags {
  std::string ref;
  std::string user_name;
  bool user_admin = false;
  std::map<std::string, int64_t> quota;  // user quota: the fields to set
};

void AddUserCommands(CommandTree& t) {
  auto& s = t.Keep<AddUserCommandsFlags>();
  {
    auto* g = t.Group(&t.app, "user", "Users (admin)");
    g->group("Client commands");
    auto* c = t.Leaf(g, "create", "Create a user and print its token",
                     [&] { return CmdUserCreate(t.ctx, s.user_name, s.user_admin); });
    c->add_option("NAME", s.user_name, "User name")->required();
    c->add_flag("--admin", s.user_admin, "Give the admin role");
    t.ListLeaf(g, "List users", [&] { return CmdUserList(t.ctx); });
    auto* q =
        t.Leaf(g, "quota", "Show a user's quota and usage, or set parts of it (0 = unlimited)",
               [&] { return CmdUserQuota(t.ctx, s.user_name, s.quota); });
    q->add_option("NAME", s.user_name, "User name")->required();
    for (const auto& [field, label] : kQuotaFields) {
      std::string flag = std::string("--") + field;
      std::replace(flag.begin(), flag.end(), '_', '-');
      q->add_option_function<int64_t>(
           flag, [&s, f = std::string(field)](const int64_t& v) { s.quota[f] = v; },
           std::string("Most ") + label + " at once (0: unlimited)")
          ->check(CLI::NonNegativeNumber);
    }
  }

  // --- workspace
  {
    auto* g = t.Group(&t.app, "workspace", "Persistent VM disks");
    g->group("Client commands");
    t.ListLeaf(g, "List workspaces", [&] { return CmdWorkspaceList(t.ctx); });
    t.Leaf(g, "rm", "Delete a workspace", [&] { return CmdWorkspaceRm(t.ctx, s.ref); })
        ->add_option("REF", s.ref, "Workspace id or name")
        ->required();
  }
}

void AddWhoamiCommand(CommandTree& t) {
  t.Leaf(&t.app, "whoami", "Show the user of the token", [&] {
     return CmdWhoami(t.ctx);
   })->group("Client commands");
}

}  // namespace vmgrid::cli
