// `vmgrid host list|show|drain|undrain`.
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

const std::vector<std::string> kHostHeaders = {"ID",    "NAME", "STATE", "KVM",       "VMS",
                                               "VCPUS", "MEM",  "DISK",  "HEARTBEAT", "URL"};
std::vector<std::string> HostRow(const json& h) {
  auto free_of = [&](const char* free_key, const char* total_key, bool mem) {
    auto f = Num(h, free_key);
    auto t = Num(h, total_key);
    auto fmt = [&](uint64_t v) { return mem ? FormatMemoryMb(v) : std::to_string(v); };
    if (f && t) return fmt(*f) + "/" + fmt(*t) + " free";
    if (t) return fmt(*t);
    return std::string("-");
  };
  std::string heartbeat = AgeStr(h, "last_heartbeat");
  if (heartbeat != "-") heartbeat += " ago";
  std::string kvm = "-";
  if (h.is_object() && h.contains("kvm") && h["kvm"].is_boolean()) {
    kvm = h["kvm"].get<bool>() ? "yes" : "no";
  }
  std::string state = Str(h, "state");
  if (h.is_object() && h.value("draining", false)) state += " (draining)";
  return {Str(h, "id"),
          Str(h, "name"),
          state,
          kvm,
          NumStr(h, "vm_count"),
          free_of("free_vcpus", "vcpus", false),
          free_of("free_memory_mb", "memory_mb", true),
          MemStr(h, "disk_mb"),
          heartbeat,
          Str(h, "url")};
}

int CmdHostList(Ctx& ctx) { return ListCommand(ctx, "/v1/hosts", "hosts", kHostHeaders, HostRow); }

int CmdHostShow(Ctx& ctx, const std::string& ref) {
  return ShowCommand(ctx, "/v1/hosts/" + PathEscape(ref), "host");
}

// Prints a line for each VM of the drain whose state changed since the
// last call: migrating (to X), moved to X, could not move (why).
class DrainProgress {
 public:
  explicit DrainProgress(Ctx& ctx) : ctx_(ctx) {}
  void Update(const json& op) {
    json vms;
    if (op.contains("result") && op["result"].is_object()) vms = op["result"].value("vms", json());
    if (!vms.is_array() && op.contains("progress") && op["progress"].is_object())
      vms = op["progress"].value("vms", json());
    if (!vms.is_array()) return;
    for (const auto& v : vms) {
      const std::string name = Str(v, "name"), state = Str(v, "state");
      std::string& seen = seen_[Str(v, "id")];
      if (state == seen || state == "waiting") continue;
      seen = state;
      if (state == "migrating")
        ctx_.io.out << "VM " << name << ": migrating to " << Str(v, "to") << std::endl;
      else if (state == "moved")
        ctx_.io.out << "VM " << name << ": moved to " << Str(v, "to") << std::endl;
      else
        ctx_.io.out << "VM " << name << ": could not move: " << Str(v, "error") << std::endl;
    }
  }

 private:
  Ctx& ctx_;
  std::map<std::string, std::string> seen_;  // VM id -> the state last printed
};

// POST /v1/hosts/REF/drain {parallel}: the host takes no new VMs, and a
// `drain` operation migrates its VMs away; polled (printing each VM's
// progress) unless `no_wait`. Exits 5 if any VM could not move.
int CmdHostDrain(Ctx& ctx, const std::string& ref, int parallel, bool no_wait) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = RetryWhileBusy(ctx, [&] {
    return client->Post("/v1/hosts/" + PathEscape(ref) + "/drain", json{{"parallel", parallel}});
  });
  if (!res.ok()) return Fail(ctx, res.error(), "host");
  if (no_wait) {
    if (ctx.g.json) {
      PrintJson(ctx, *res);
    } else {
      ctx.io.out << "draining host " << Str(*res, "host") << " (operation " << Str(*res, "id")
                 << "; `vmgrid host show " << ref << "` or GET /v1/operations/" << Str(*res, "id")
                 << ")" << std::endl;
    }
    return kExitOk;
  }
  DrainProgress progress(ctx);
  if (IsOperation(res))
    res = WaitOperation(ctx, *client, *res, "draining host " + ref, false, [&](const json& op) {
      if (!ctx.g.json) progress.Update(op);
    });
  if (!res.ok()) return Fail(ctx, res.error().Wrap("drain of host " + ref), "host");
  const auto not_moved = Num(*res, "not_moved").value_or(0);
  if (ctx.g.json) {
    PrintJson(ctx, *res);
  } else {
    ctx.io.out << "host " << ref << " is drained: " << Num(*res, "moved").value_or(0)
               << " VM(s) moved, " << not_moved << " could not move" << std::endl;
  }
  if (not_moved == 0) return kExitOk;
  ctx.io.err << "error: " << not_moved << " VM(s) could not move and still run on host " << ref
             << "; fix what is reported above and run `vmgrid host drain " << ref << "` again"
             << std::endl;
  return kExitConflict;
}

// POST /v1/hosts/REF/undrain: back in service.
int CmdHostUndrain(Ctx& ctx, const std::string& ref) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Post("/v1/hosts/" + PathEscape(ref) + "/undrain", json::object());
  if (!res.ok()) return Fail(ctx, res.error(), "host");
  if (ctx.g.json)
    PrintJson(ctx, *res);
  else
    ctx.io.out << "host " << Str(*res, "name") << " is back in service" << std::endl;
  return kExitOk;
}

}  // namespace

void AddHostCommands(CommandTree& t) {
  auto& ref = t.Keep<std::string>();
  auto* g = t.Group(&t.app, "host", "Hosts of the grid");
  g->group("Client commands");
  t.ListLeaf(g, "List hosts", [&t] { return CmdHostList(t.ctx); });
  t.Leaf(g, "show", "Show one host", [&t, &ref] { return CmdHostShow(t.ctx, ref); })
      ->add_option("REF", ref, "Host id or name")
      ->required();
  auto& parallel = t.Keep<int>();
  parallel = 2;
  auto& no_wait = t.Keep<bool>();
  auto* drain = t.Leaf(
      g, "drain",
      "Take a host out of service (admin): no new VM goes there, and its VMs "
      "are migrated away (running ones live, stopped ones cold); a VM that cannot move is "
      "reported and stays there (exit 5)",
      [&t, &ref, &parallel, &no_wait] { return CmdHostDrain(t.ctx, ref, parallel, no_wait); });
  drain->add_option("REF", ref, "Host id or name")->required();
  drain->add_option("--parallel", parallel, "Migrations at once (1-16, default 2)")
      ->check(CLI::Range(1, 16));
  drain->add_flag("--no-wait", no_wait,
                  "Return once the drain has started (poll with `vmgrid host show`)");
  t.Leaf(g, "undrain", "Return a drained host to service (admin); moved VMs stay where they are",
         [&t, &ref] { return CmdHostUndrain(t.ctx, ref); })
      ->add_option("REF", ref, "Host id or name")
      ->required();
}

}  // namespace vmgrid::cli
