// `vmgrid net ...`: a user's virtual networks (docs/vnet.md): create, list,
// show (with the VMs' cards: MAC, address, host), rm, and share (admin).
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/exit_codes.h"
#include "client/api_client.h"
#include "common/result.h"

namespace vmgrid::cli {
namespace {

const std::vector<std::string> kNetHeaders = {"ID", "NAME", "OWNER", "SUBNET", "EGRESS", "AGE"};
std::vector<std::string> NetRow(const json& n) {
  std::string egress = n.contains("egress") && n["egress"].is_boolean()
                           ? (n["egress"].get<bool>() ? "yes" : "no")
                           : "-";
  return {Str(n, "id"),     Str(n, "name"), Str(n, "owner"),
          Str(n, "subnet"), egress,         AgeStr(n, "created_at")};
}

const std::vector<std::string> kNicHeaders = {"VM", "NIC", "MAC", "IP", "HOST"};
std::vector<std::string> NicRow(const json& c) {
  return {Str(c, "vm"), NumStr(c, "index"), Str(c, "mac"), Str(c, "ip"), Str(c, "host")};
}

struct NetCreateArgs {
  std::string name;
  std::string subnet;
  bool egress = false;
};

int CmdNetCreate(Ctx& ctx, const NetCreateArgs& a) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  json body = {{"name", a.name}};
  if (!a.subnet.empty()) body["subnet"] = a.subnet;
  if (a.egress) body["egress"] = true;
  auto res = client->Post("/v1/networks", body);
  if (!res.ok()) return Fail(ctx, res.error());
  return PrintOne(ctx, *res, kNetHeaders, NetRow);
}

int CmdNetShow(Ctx& ctx, const std::string& ref) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Get("/v1/networks/" + PathEscape(ref));
  if (!res.ok()) return Fail(ctx, res.error(), "net");
  if (ctx.g.json) return PrintShow(ctx, *res);
  json details = *res;
  details.erase("nics");
  PrintDetails(ctx.io.out, details);
  ctx.io.out << "\n";
  return PrintList(ctx, *res, "nics", kNicHeaders, NicRow);
}

int CmdNetRm(Ctx& ctx, const std::string& ref) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Delete("/v1/networks/" + PathEscape(ref));
  if (!res.ok()) return Fail(ctx, res.error(), "net");
  if (!ctx.g.json) ctx.io.out << "deleted network " << ref << std::endl;
  return kExitOk;
}

int CmdNetShare(Ctx& ctx, const std::string& ref, const std::string& user) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Post("/v1/networks/" + PathEscape(ref) + "/share", {{"user", user}});
  if (!res.ok()) return Fail(ctx, res.error(), "net");
  if (ctx.g.json) return PrintShow(ctx, *res);
  ctx.io.out << "shared network " << ref << " with " << user << std::endl;
  return kExitOk;
}

}  // namespace

// The flags of these commands, kept for the parse.
struct AddNetCommandsFlags {
  std::string ref;
  std::string user;
  NetCreateArgs create;
};

void AddNetCommands(CommandTree& t) {
  auto& s = t.Keep<AddNetCommandsFlags>();
  auto* g = t.Group(&t.app, "net", "Virtual networks joining your VMs across hosts");
  g->group("Client commands");
  auto* c = t.Leaf(g, "create", "Create a virtual network",
                   [&] { return CmdNetCreate(t.ctx, s.create); });
  c->add_option("NAME", s.create.name, "Network name")->required();
  c->add_option("--subnet", s.create.subnet,
                "Private IPv4 subnet its VMs get addresses in, /16 to /28 (default 10.20.0.0/24; "
                "networks are isolated, so subnets may overlap)");
  c->add_flag("--egress", s.create.egress,
              "Let its VMs reach outside the grid through a NAT gateway");
  t.ListLeaf(g, "List the networks you may use",
             [&] { return ListCommand(t.ctx, "/v1/networks", "networks", kNetHeaders, NetRow); });
  t.Leaf(g, "show", "Show a network and its VMs' cards (MAC, address, host)",
         [&] { return CmdNetShow(t.ctx, s.ref); })
      ->add_option("REF", s.ref, "Network id or name")
      ->required();
  t.Leaf(g, "rm", "Delete a network (refused while VMs use it)",
         [&] { return CmdNetRm(t.ctx, s.ref); })
      ->add_option("REF", s.ref, "Network id or name")
      ->required();
  auto* sh = t.Leaf(g, "share", "Let another user put VMs on a network (admin)",
                    [&] { return CmdNetShare(t.ctx, s.ref, s.user); });
  sh->add_option("REF", s.ref, "Network id or name")->required();
  sh->add_option("--user", s.user, "User name")->required();
}

}  // namespace vmgrid::cli
