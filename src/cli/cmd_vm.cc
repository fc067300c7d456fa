// `vmgrid vm ...`: create (single VMs and gangs), list, show, stop,
// checkpoint, resume, rm, exec, forward, unforward, migrate.
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

const std::vector<std::string> kVmHeaders = {"ID",    "NAME", "STATE", "HOST",  "IMAGE",
                                             "VCPUS", "MEM",  "DISK",  "START", "AGE"};
std::vector<std::string> VmRow(const json& v) {
  std::string host = Str(v, "host");
  if (host == "-") host = Str(v, "host_id");
  std::string image = Str(v, "image");
  if (image == "-") image = Str(v, "image_id");
  return {Str(v, "id"),    Str(v, "name"),         Str(v, "state"),        host,
          image,           NumStr(v, "vcpus"),     MemStr(v, "memory_mb"), Str(v, "disk"),
          Str(v, "start"), AgeStr(v, "created_at")};
}

// What a VM is waiting for after `op` succeeds (common/vm_state.h).
std::string SuccessStateOf(VmOp op) {
  auto s = SuccessOf(op);
  return s ? ToString(*s) : "";
}

std::string VmErrorText(const json& vm) {
  std::string e = Str(vm, "error");
  return e == "-" ? "no error message recorded" : e;
}

// Polls GET /v1/vms/ID until the VM leaves the transitional states (or, for
// rm, disappears). expected: the state that means success ("" = gone).
// Returns the exit code and prints the outcome.
int WaitVm(Ctx& ctx, const ApiClient& client, json vm, const std::string& ref,
           const std::string& expected) {
  const std::string id = IdOr(vm, ref);
  const std::string path = "/v1/vms/" + PathEscape(id);
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(ctx.g.wait_timeout_s);
  StatusLine status(ctx.io);
  int unavailable_streak = 0;
  bool first = true;
  std::string state = StateOf(vm);
  while (true) {
    if (!first || state.empty() || IsTransitionalName(state)) {
      if (!first) std::this_thread::sleep_for(kVmPollInterval);
      auto got = client.Get(path);
      if (!got.ok()) {
        if (got.error().code == ErrorCode::kNotFound && expected.empty()) {
          status.Finish(ctx.io.err_is_tty
                            ? id + " deleted (" + FormatElapsed(Seconds(Clock::now() - start)) + ")"
                            : "");
          if (!ctx.g.json) ctx.io.out << "deleted " << id << std::endl;
          return kExitOk;
        }
        if (got.error().code == ErrorCode::kUnavailable && ++unavailable_streak < 10 &&
            Clock::now() < deadline) {
          first = false;
          continue;  // controller restarting? retry for ~2 s
        }
        status.Finish("");
        return Fail(ctx, got.error().Wrap("while waiting for " + id), "vm");
      }
      unavailable_streak = 0;
      vm = std::move(got).value();
      state = StateOf(vm);
    }
    first = false;
    const double elapsed = Seconds(Clock::now() - start);
    if (!IsTransitionalName(state) && !state.empty()) break;
    if (Clock::now() >= deadline) {
      status.Finish("");
      ctx.io.err << "error: timed out after " << ctx.g.wait_timeout_s << "s waiting for " << id
                 << " (still " << (state.empty() ? "?" : state)
                 << "); it may still finish: check with `vmgrid vm show " << id
                 << "` (raise the limit with --wait-timeout)" << std::endl;
      return kExitUnavailable;
    }
    status.Update(id + " " + (state.empty() ? "waiting" : state) + "\u2026 " +
                  FormatElapsed(elapsed));
  }
  const double elapsed = Seconds(Clock::now() - start);
  if (state == ToString(VmState::kError)) {
    status.Finish("");
    ctx.io.err << "error: " << id << " failed: " << VmErrorText(vm) << std::endl;
    if (ctx.g.json) PrintJson(ctx, vm);
    return kExitFailure;
  }
  if (!expected.empty() && state != expected) {
    status.Finish("");
    ctx.io.err << "error: " << id << " ended in state " << state << ", expected " << expected;
    std::string e = Str(vm, "error");
    if (e != "-") ctx.io.err << ": " << e;
    if (state == "unknown")
      ctx.io.err << "\n  hint: its host is not answering; see `vmgrid host list`";
    ctx.io.err << std::endl;
    if (ctx.g.json) PrintJson(ctx, vm);
    return kExitFailure;
  }
  if (expected.empty()) {
    // rm: the VM is still there in a non-transitional state.
    status.Finish("");
    ctx.io.err << "error: " << id << " was not deleted (state " << state << ")" << std::endl;
    return kExitFailure;
  }
  status.Finish(ctx.io.err_is_tty ? id + " " + state + " (" + FormatElapsed(elapsed) + ")" : "");
  return PrintOne(ctx, vm, kVmHeaders, VmRow);
}

struct VmCreateArgs {
  std::string image;
  std::string name;
  int vcpus = 0;
  std::string memory;
  bool persistent = false;
  std::string workspace;
  bool resume = false;
  std::string from_checkpoint;
  std::string from_future;
  int count = 0;
  std::string same;
  std::string total_mem;  // "512M..1G"
  std::string policy;
  std::string restart;
  std::string site;
  std::string host_network;  // --host-segment
  std::string network;       // --network-label
  std::vector<std::string> nets;
  bool no_wait = false;
};

int CmdVmCreate(Ctx& ctx, const VmCreateArgs& a) {
  if ((!a.image.empty()) + (!a.from_checkpoint.empty()) + (!a.from_future.empty()) != 1)
    return UsageError(ctx, "give exactly one of --image, --from-checkpoint and --from-future",
                      "vm create");
  json body = json::object();
  if (!a.from_future.empty()) body["from_future"] = a.from_future;
  if (!a.image.empty()) body["image"] = a.image;
  if (!a.from_checkpoint.empty()) body["from_checkpoint"] = a.from_checkpoint;
  if (!a.name.empty()) body["name"] = a.name;
  if (a.vcpus > 0) body["vcpus"] = a.vcpus;
  if (!a.memory.empty()) {
    auto mb = ParseMemoryMb(a.memory);
    if (!mb.ok()) return UsageError(ctx, "--memory-mb: " + mb.error().message, "vm create");
    body["memory_mb"] = *mb;
  }
  if (a.persistent) body["disk"] = "persistent";
  if (!a.workspace.empty()) body["workspace"] = a.workspace;
  if (a.resume) body["start"] = "resume";
  if (!a.policy.empty()) body["policy"] = a.policy;
  if (!a.restart.empty()) body["restart"] = a.restart;
  if (!a.site.empty()) body["site"] = a.site;
  if (!a.host_network.empty()) body["host_network"] = a.host_network;
  if (!a.network.empty()) body["network"] = a.network;
  if (!a.nets.empty()) body["nets"] = a.nets;
  if (a.count > 0) body["count"] = a.count;
  if (!a.same.empty()) body["same"] = a.same;
  if (!a.total_mem.empty()) {
    auto dots = a.total_mem.find("..");
    if (dots == std::string::npos)
      return UsageError(ctx, "--total-mem wants MIN..MAX, e.g. 512M..1G", "vm create");
    auto mn = ParseMemoryMb(a.total_mem.substr(0, dots));
    auto mx = ParseMemoryMb(a.total_mem.substr(dots + 2));
    if (!mn.ok() || !mx.ok())
      return UsageError(ctx, "--total-mem wants MIN..MAX, e.g. 512M..1G", "vm create");
    body["total_memory_mb"] = {{"min", *mn}, {"max", *mx}};
  }
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto vm = client->Post("/v1/vms", body);
  if (vm.ok() && vm->contains("vms")) {
    // A gang: all placed (or none, which is an error above). Wait for each.
    int rc = kExitOk;
    for (const auto& one : (*vm)["vms"]) {
      if (a.no_wait) {
        PrintOne(ctx, one, kVmHeaders, VmRow);
        continue;
      }
      int r = WaitVm(ctx, *client, one, IdOr(one, ""), SuccessStateOf(VmOp::kCreate));
      if (r != kExitOk) rc = r;
    }
    return rc;
  }
  if (!vm.ok()) {
    int code = Fail(ctx, vm.error().Wrap("cannot create the VM"), "image");
    return code;
  }
  if (a.no_wait) return PrintOne(ctx, *vm, kVmHeaders, VmRow);
  return WaitVm(ctx, *client, *vm, a.name.empty() ? IdOr(*vm, "") : a.name,
                SuccessStateOf(VmOp::kCreate));
}

int CmdVmList(Ctx& ctx) { return ListCommand(ctx, "/v1/vms", "vms", kVmHeaders, VmRow); }

int CmdVmShow(Ctx& ctx, const std::string& ref) {
  return ShowCommand(ctx, "/v1/vms/" + PathEscape(ref), "vm");
}

// POST /v1/vms/REF/ACTION then wait for `expected`.
int VmAction(Ctx& ctx, const std::string& ref, const std::string& action, const json& body,
             const std::string& expected, bool no_wait) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto vm = client->Post("/v1/vms/" + PathEscape(ref) + "/" + action, body);
  if (!vm.ok()) return Fail(ctx, vm.error(), "vm");
  if (no_wait) return PrintOne(ctx, *vm, kVmHeaders, VmRow);
  return WaitVm(ctx, *client, *vm, ref, expected);
}

int CmdVmRm(Ctx& ctx, const std::string& ref, bool purge_workspace, bool no_wait) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  std::string path = "/v1/vms/" + PathEscape(ref);
  if (purge_workspace) path += "?purge_workspace=true";
  auto res = client->Delete(path);
  if (!res.ok()) return Fail(ctx, res.error(), "vm");
  json vm = res->is_object() ? *res : json::object();
  if (no_wait) {
    if (ctx.g.json) {
      PrintJson(ctx, vm);
    } else {
      ctx.io.out << "deleting " << IdOr(vm, ref) << std::endl;
    }
    return kExitOk;
  }
  if (StateOf(vm).empty()) vm["state"] = ToString(VmState::kDeleting);
  return WaitVm(ctx, *client, vm, ref, SuccessStateOf(VmOp::kDelete));
}

struct ExecArgs {
  std::string ref;
  std::vector<std::string> argv;
  int timeout_s = 0;
  std::optional<std::string> input;
};

int CmdVmExec(Ctx& ctx, const ExecArgs& a) {
  if (a.argv.empty()) {
    ctx.io.err << "error: no command given; usage: vmgrid vm exec REF -- CMD [ARGS...]"
               << std::endl;
    return kExitUsage;
  }
  json body = {{"argv", a.argv}};
  if (a.input) {
    if (*a.input == "-") {
      std::string data((std::istreambuf_iterator<char>(std::cin)),
                       std::istreambuf_iterator<char>());
      body["input"] = data;
    } else {
      body["input"] = *a.input;
    }
  }
  if (a.timeout_s > 0) body["timeout_s"] = a.timeout_s;
  auto client = MakeClient(ctx);
  if (!client.ok()) {
    Fail(ctx, client.error());
    return kExitFailure;
  }
  // The controller answers at once with an exec operation (202), polled
  // here until the guest command has ended. While the user's exec limit is
  // reached (429) the command waits its turn, as it did when execs queued.
  const int guest_timeout = a.timeout_s > 0 ? a.timeout_s : 60;
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::seconds(std::max(300, guest_timeout + 60));
  auto res = client->Post("/v1/vms/" + PathEscape(a.ref) + "/exec", body);
  while (!res.ok() && res.error().code == ErrorCode::kTooManyRequests &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    res = client->Post("/v1/vms/" + PathEscape(a.ref) + "/exec", body);
  }
  auto wait = std::chrono::milliseconds(50);
  while (res.ok() && res->is_object() && !res->contains("exit_code") &&
         res->value("kind", "") == "exec") {
    const std::string state = res->value("state", "");
    if (state == "succeeded" && (*res)["result"].is_object()) {
      res = json((*res)["result"]);
      break;
    }
    if (state == "failed") {
      const json& e = (*res)["error"];
      res = MakeError(
          e.is_object() ? ErrorCodeFromApiString(e.value("code", "")) : ErrorCode::kInternal,
          e.is_object() ? e.value("message", "exec failed") : "exec failed");
      break;
    }
    if (std::chrono::steady_clock::now() >= give_up) {
      res = MakeError(ErrorCode::kTimeout,
                      "exec operation " + res->value("id", "") + " has not ended");
      break;
    }
    std::this_thread::sleep_for(wait);
    wait = std::min(wait * 2, std::chrono::milliseconds(500));
    res = client->Get("/v1/operations/" + PathEscape(res->value("id", "")));
  }
  if (!res.ok()) {
    Fail(ctx, res.error(), "vm");
    return ExecTransportExitCode(res.error().code);
  }
  const json& r = *res;
  auto text = [&](const char* key) -> std::string {
    if (r.is_object() && r.contains(key) && r[key].is_string()) return r[key].get<std::string>();
    return "";
  };
  ctx.io.out << text("stdout") << std::flush;
  ctx.io.err << text("stderr") << std::flush;
  if (!r.is_object() || !r.contains("exit_code") || !r["exit_code"].is_number_integer()) {
    ctx.io.err << "error: the controller's exec answer has no exit_code" << std::endl;
    return kExitFailure;
  }
  const int64_t code = r["exit_code"].get<int64_t>();
  if (code < 0 || code > 255) {
    ctx.io.err << "error: the guest command ended abnormally (exit code " << code << ")"
               << std::endl;
    return kExitFailure;
  }
  return static_cast<int>(code);
}

struct ForwardArgs {
  std::string ref;
  int guest_port = 0;
  std::string listen = "127.0.0.1:0";
  int nic = 0;
};

// `vm forward REF GUEST_PORT [--listen IP:PORT] [--nic N]`: POST
// /v1/vms/REF/forwards; prints where to connect.
int CmdVmForward(Ctx& ctx, const ForwardArgs& a) {
  const auto colon = a.listen.rfind(':');
  if (colon == std::string::npos)
    return Fail(ctx,
                MakeError(ErrorCode::kInvalidArgument, "--listen wants IP:PORT (PORT 0: any)"));
  json body = {
      {"guest_port", a.guest_port}, {"nic", a.nic}, {"listen_ip", a.listen.substr(0, colon)}};
  const std::string port = a.listen.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    return Fail(ctx, MakeError(ErrorCode::kInvalidArgument, "--listen: bad port '" + port + "'"));
  body["listen_port"] = std::stoi(port);
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto r = client->Post("/v1/vms/" + PathEscape(a.ref) + "/forwards", body);
  if (!r.ok()) return Fail(ctx, r.error(), "vm");
  if (ctx.g.json) {
    PrintJson(ctx, *r);
  } else {
    ctx.io.out << "host " << Str(*r, "host") << " " << Str(*r, "listen_ip") << ":"
               << NumStr(*r, "listen_port") << " -> " << Str(*r, "guest_ip") << ":"
               << NumStr(*r, "guest_port") << " (vm " << a.ref << ", nic " << NumStr(*r, "nic")
               << ")" << std::endl;
  }
  return kExitOk;
}

int CmdVmUnforward(Ctx& ctx, const std::string& ref, int port) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto r = client->Delete("/v1/vms/" + PathEscape(ref) + "/forwards/" + std::to_string(port));
  if (!r.ok()) return Fail(ctx, r.error(), "vm");
  if (!ctx.g.json) ctx.io.out << "removed the forward on port " << port << std::endl;
  return kExitOk;
}

// POST /v1/vms/REF/migrate {to?}: a `migrate` operation, polled until the VM
// runs on its new host (or the migration failed and it runs on its source).
int CmdVmMigrate(Ctx& ctx, const std::string& ref, const std::string& to, bool no_wait) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  json body = json::object();
  if (!to.empty()) body["to"] = to;
  auto res = RetryWhileBusy(
      ctx, [&] { return client->Post("/v1/vms/" + PathEscape(ref) + "/migrate", body); });
  if (!res.ok()) return Fail(ctx, res.error(), "vm");
  if (no_wait) {
    if (ctx.g.json) {
      PrintJson(ctx, *res);
    } else {
      ctx.io.out << "migrating " << ref << " from " << Str(*res, "from") << " to "
                 << Str(*res, "to") << " (operation " << Str(*res, "id") << ")" << std::endl;
    }
    return kExitOk;
  }
  const std::string what = "migrating " + ref + " to " + Str(*res, "to");
  if (IsOperation(res)) res = WaitOperation(ctx, *client, *res, what, false);
  if (!res.ok()) return Fail(ctx, res.error().Wrap("migration of " + ref), "vm");
  if (ctx.g.json) {
    PrintJson(ctx, *res);
  } else {
    auto num = [&](const char* k) { return Num(*res, k).value_or(0); };
    ctx.io.out << "migrated " << ref << " from " << Str(*res, "from") << " to " << Str(*res, "to")
               << " in " << num("total_ms") << " ms (downtime " << num("downtime_ms") << " ms, RAM "
               << num("ram_bytes") / 1000000 << " MB, disk " << num("disk_bytes") / 1000000
               << " MB)" << std::endl;
    if (res->contains("warning")) ctx.io.err << "warning: " << Str(*res, "warning") << std::endl;
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------

}  // namespace

// The flags of these commands, kept for the parse.
struct AddVmCommandsFlags {
  std::string ref;
  VmCreateArgs create;
  ExecArgs exec;
  ForwardArgs forward;
  bool no_wait = false;
  bool leave_running = false;
  bool purge_workspace = false;
  std::string migrate_to;
  bool wait = true;
};

void AddVmCommands(CommandTree& t) {
  auto& s = t.Keep<AddVmCommandsFlags>();
  auto* g = t.Group(&t.app, "vm", "Virtual machines");
  g->group("Client commands");
  auto* c =
      t.Leaf(g, "create", "Create and start a VM", [&] { return CmdVmCreate(t.ctx, s.create); });
  c->add_option("--image", s.create.image, "Image id or name");
  c->add_option("--from-checkpoint", s.create.from_checkpoint,
                "Resume a new clone from this VM's latest checkpoint (instead of --image)");
  c->add_option("--count", s.create.count, "Create a gang of N VMs, all placed or none")
      ->check(CLI::Range(1, 64));
  c->add_option("--same", s.create.same,
                "Gang members share this host attribute: site or segment (the hosts' network "
                "segment; `network` is an older name of it)")
      ->check(CLI::IsMember({"site", "segment", "network"}))
      ->transform([](const std::string& v) { return v == "segment" ? "network" : v; });
  c->add_option("--total-mem", s.create.total_mem, "Gang's total memory range, e.g. 512M..1G");
  c->add_option("--policy", s.create.policy, "Placement: spread (default) or pack")
      ->check(CLI::IsMember({"spread", "pack"}));
  c->add_option("--restart", s.create.restart,
                "When its host fails: never (default: the VM is marked error) or on-host-failure "
                "(a clone VM restarts on another host from its image; docs/host-failure.md)")
      ->check(CLI::IsMember({"never", "on-host-failure"}));
  c->add_option("--site", s.create.site, "Only hosts of this site");
  c->add_option("--host-segment,--host-network", s.create.host_network,
                "Only hosts on this network segment (a placement requirement, not a network "
                "card; --host-network is its older name)");
  c->add_option("--net", s.create.nets,
                "Give the VM a network card on this virtual network (`vmgrid net`); repeatable, "
                "one card each, in order");
  c->add_option("--network-label", s.create.network,
                "A free-form label shown as `network` in the information service's vms view "
                "(not a network card: see --net)");
  c->add_option("--from-future", s.create.from_future,
                "Realize a future from `vmgrid query` (its image, host and start mode)");
  c->add_option("--name", s.create.name, "VM name");
  c->add_option("--vcpus", s.create.vcpus, "vCPUs (default 1)")->check(CLI::Range(1, 1024));
  c->add_option("--memory-mb", s.create.memory, "Memory, MiB or 256M/1G (default 256M)")
      ->check(MemoryValidator());
  auto* persistent =
      c->add_flag("--persistent", s.create.persistent, "Keep the disk in a workspace");
  c->add_option("--workspace", s.create.workspace, "Workspace name (with --persistent)")
      ->needs(persistent);
  c->add_flag("--resume", s.create.resume, "Start from the image's checkpoint");
  c->add_flag("--no-wait", s.create.no_wait, "Return right after the request is accepted");

  t.Leaf(g, "list", "List VMs", [&] { return CmdVmList(t.ctx); });
  t.Leaf(g, "show", "Show one VM", [&] { return CmdVmShow(t.ctx, s.ref); })
      ->add_option("REF", s.ref, "VM id or name")
      ->required();
  auto* stop = t.Leaf(g, "stop", "Stop a VM", [&] {
    return VmAction(t.ctx, s.ref, "stop", nullptr, SuccessStateOf(VmOp::kStop), s.no_wait);
  });
  stop->add_option("REF", s.ref, "VM id or name")->required();
  stop->add_flag("--no-wait", s.no_wait, "Do not wait");
  auto* cp = t.Leaf(g, "checkpoint", "Checkpoint a VM (suspends it unless --leave-running)", [&] {
    return VmAction(
        t.ctx, s.ref, "checkpoint", {{"leave_running", s.leave_running}},
        SuccessStateOf(s.leave_running ? VmOp::kCheckpointLeaveRunning : VmOp::kCheckpoint),
        s.no_wait);
  });
  cp->add_option("REF", s.ref, "VM id or name")->required();
  cp->add_flag("--leave-running", s.leave_running, "Keep the VM running");
  cp->add_flag("--no-wait", s.no_wait, "Do not wait");
  auto* resume = t.Leaf(g, "resume", "Resume a suspended VM", [&] {
    return VmAction(t.ctx, s.ref, "resume", nullptr, SuccessStateOf(VmOp::kResume), s.no_wait);
  });
  resume->add_option("REF", s.ref, "VM id or name")->required();
  resume->add_flag("--no-wait", s.no_wait, "Do not wait");
  auto* rm = t.Leaf(g, "rm", "Delete a VM",
                    [&] { return CmdVmRm(t.ctx, s.ref, s.purge_workspace, s.no_wait); });
  rm->add_option("REF", s.ref, "VM id or name")->required();
  rm->add_flag("--purge-workspace", s.purge_workspace, "Also delete its workspace");
  rm->add_flag("--no-wait", s.no_wait, "Do not wait");
  auto* mig =
      t.Leaf(g, "migrate", "Live-migrate a running VM to another host: vm migrate REF [--to HOST]",
             [&] { return CmdVmMigrate(t.ctx, s.ref, s.migrate_to, s.no_wait); });
  mig->add_option("REF", s.ref, "VM id or name")->required();
  mig->add_option("--to", s.migrate_to, "Target host (name or id); default: placement's choice");
  mig->add_flag("--wait", s.wait, "Wait until the VM runs on its new host (the default)");
  mig->add_flag("--no-wait", s.no_wait, "Return once the migration has started");
  auto* fw =
      t.Leaf(g, "forward", "Expose a guest TCP port on the VM's host (its network needs --egress)",
             [&] { return CmdVmForward(t.ctx, s.forward); });
  fw->add_option("REF", s.forward.ref, "VM id or name")->required();
  fw->add_option("GUEST_PORT", s.forward.guest_port, "TCP port in the guest")
      ->required()
      ->check(CLI::Range(1, 65535));
  fw->add_option("--listen", s.forward.listen,
                 "IP:PORT on the VM's host: loopback or the host's tunnel address; PORT 0 = any")
      ->capture_default_str();
  fw->add_option("--nic", s.forward.nic, "The NIC (its index) whose address is reached")
      ->check(CLI::Range(0, 7))
      ->capture_default_str();
  auto* unfw = t.Leaf(g, "unforward", "Remove a forward: vm unforward REF PORT",
                      [&] { return CmdVmUnforward(t.ctx, s.ref, s.forward.guest_port); });
  unfw->add_option("REF", s.ref, "VM id or name")->required();
  unfw->add_option("PORT", s.forward.guest_port, "The forward's listen port")
      ->required()
      ->check(CLI::Range(1, 65535));
  auto* ex = t.Leaf(g, "exec", "Run a command in a VM: vm exec REF [--timeout S] -- CMD ARGS...",
                    [&] { return CmdVmExec(t.ctx, s.exec); });
  ex->add_option("REF", s.exec.ref, "VM id or name")->required();
  ex->add_option("CMD", s.exec.argv, "Command and arguments (after --)");
  ex->add_option("--timeout", s.exec.timeout_s, "Seconds before the guest command is killed")
      ->check(CLI::Range(1, 86400));
  ex->add_option_function<std::string>(
      "--input", [&](const std::string& v) { s.exec.input = v; },
      "Standard input for the command ('-' reads this process's stdin)");
}

}  // namespace vmgrid::cli
