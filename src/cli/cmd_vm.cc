// `vmgrid vm ...`: create (single VMs and gangs), list, show, stop,
// checkpoint, resume, rm, exec, console, cp, forward, unforward, migrate.
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
#include "common/host_port.h"
#include "common/result.h"
#include "common/subprocess.h"
#include "common/util.h"
#include "common/vm_state.h"
#include "proto/console_log.h"
#include "proto/data_attachment.h"
#include "proto/guest_file.h"

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

// Waits until the VM leaves the transitional states (or, for rm,
// disappears), with long polls (GET /v1/vms/ID?while=STATE&wait=S answers as
// soon as the state changes) or, over the controller's bound of waiters,
// GET every kVmPollInterval. expected: the state that means success ("" =
// gone). Returns the exit code and prints the outcome.
int WaitVm(Ctx& ctx, const ApiClient& client, json vm, const std::string& ref,
           const std::string& expected) {
  const std::string id = IdOr(vm, ref);
  const std::string path = "/v1/vms/" + PathEscape(id);
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(ctx.g.wait_timeout_s);
  StatusLine status(ctx.io);
  int unavailable_streak = 0;
  bool first = true;
  // Until the controller says 429. On a terminal each wait is short so that
  // the status line's elapsed time keeps moving.
  bool long_poll = true;
  std::string state = StateOf(vm);
  while (true) {
    if (!first || state.empty() || IsTransitionalName(state)) {
      const bool wait_here = long_poll && !state.empty() && IsTransitionalName(state);
      if (!first && !wait_here) std::this_thread::sleep_for(kVmPollInterval);
      const auto left = std::chrono::duration_cast<std::chrono::seconds>(deadline - Clock::now());
      auto got = wait_here ? client.Get(path + "?while=" + state + "&wait=" +
                                        std::to_string(std::clamp<int64_t>(
                                            left.count(), 1, ctx.io.err_is_tty ? 1 : 25)))
                           : client.Get(path);
      if (!got.ok() && got.error().code == ErrorCode::kTooManyRequests && wait_here) {
        long_poll = false;  // too many waiters: poll instead
        first = false;
        continue;
      }
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
  std::vector<std::string> data;      // --data NAME[:VERSION][:MOUNT][:ro|rw]
  std::vector<std::string> new_data;  // --new-data NAME[:MOUNT][:SIZE_MB]
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
  for (const std::string& d : a.data) {
    auto one = ParseDataArgument(d);
    if (!one.ok()) return UsageError(ctx, one.error().message, "vm create");
    body["data"].push_back(*one);
  }
  for (const std::string& d : a.new_data) {
    auto one = ParseNewDataArgument(d);
    if (!one.ok()) return UsageError(ctx, one.error().message, "vm create");
    body["data"].push_back(*one);
  }
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

// --commit: the controller first commits each read-write dataset attachment
// (an operation, waited for here; its result holds the VM as the stop or
// delete left it). Without any, it answers the VM at once.
Result<json> AfterCommits(Ctx& ctx, const ApiClient& client, Result<json> res,
                          const std::string& ref) {
  if (!IsOperation(res)) return res;
  auto done = WaitOperation(ctx, client, *res, "committing the datasets of VM " + ref, false);
  if (!done.ok()) return done;
  if (!ctx.g.json)
    for (const auto& c : ListOf(*done, "commits"))
      ctx.io.out << "dataset " << Str(c, "dataset") << " version " << NumStr(c, "version")
                 << ": sent " << NumStr(c, "sent_chunks") << " of " << NumStr(c, "chunks")
                 << " chunks" << std::endl;
  return done->contains("vm") ? (*done)["vm"] : json::object();
}

int CmdVmStop(Ctx& ctx, const std::string& ref, bool commit, bool no_wait) {
  if (!commit) return VmAction(ctx, ref, "stop", nullptr, SuccessStateOf(VmOp::kStop), no_wait);
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto vm = AfterCommits(
      ctx, *client,
      RetryWhileBusy(
          ctx, [&] { return client->Post("/v1/vms/" + PathEscape(ref) + "/stop?commit=true"); }),
      ref);
  if (!vm.ok()) return Fail(ctx, vm.error(), "vm");
  if (no_wait) return PrintOne(ctx, *vm, kVmHeaders, VmRow);
  return WaitVm(ctx, *client, *vm, ref, SuccessStateOf(VmOp::kStop));
}

int CmdVmRm(Ctx& ctx, const std::string& ref, bool purge_workspace, bool commit, bool no_wait) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  std::string path = "/v1/vms/" + PathEscape(ref);
  if (purge_workspace) path += "?purge_workspace=true";
  if (commit) path += purge_workspace ? "&commit=true" : "?commit=true";
  auto res = AfterCommits(
      ctx, *client,
      commit ? RetryWhileBusy(ctx, [&] { return client->Delete(path); }) : client->Delete(path),
      ref);
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

// The controller answers at once with an exec operation (202), polled
// here until the guest command has ended; returns its result ({exit_code,
// stdout, stderr}). While the user's exec limit is reached (429) the command
// waits its turn, as it did when execs queued.
Result<json> RunGuestExec(const ApiClient& client, const std::string& ref, const json& body,
                          int guest_timeout) {
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::seconds(std::max(300, guest_timeout + 60));
  auto res = client.Post("/v1/vms/" + PathEscape(ref) + "/exec", body);
  while (!res.ok() && res.error().code == ErrorCode::kTooManyRequests &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    res = client.Post("/v1/vms/" + PathEscape(ref) + "/exec", body);
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
    res = client.Get("/v1/operations/" + PathEscape(res->value("id", "")));
  }
  return res;
}

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
  const int guest_timeout = a.timeout_s > 0 ? a.timeout_s : 60;
  Result<json> res = RunGuestExec(*client, a.ref, body, guest_timeout);
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

struct ConsoleArgs {
  std::string ref;
  bool follow = false;
  int64_t bytes = kConsoleReadDefaultBytes;
};

// The guest's serial console log (docs/api.md "Serial console"): its tail,
// then, with --follow, what comes next, polled every second until Ctrl-C.
int CmdVmConsole(Ctx& ctx, const ConsoleArgs& a) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  const std::string path = "/v1/vms/" + PathEscape(a.ref) + "/console?max_bytes=";
  auto read = [&](int64_t offset, int64_t max) -> Result<ConsoleLog> {
    std::string p = path + std::to_string(max);
    if (offset >= 0) p += "&offset=" + std::to_string(offset);
    VMG_ASSIGN_OR_RETURN(json answer, client->Get(p));
    return ConsoleLogFromJson(answer);
  };
  auto log = read(-1, a.bytes);
  if (!log.ok()) return Fail(ctx, log.error(), "vm");
  ctx.io.out << log->text << std::flush;
  if (!a.follow) return kExitOk;
  SigintGuard guard;
  int64_t next = log->next_offset;
  while (!g_interrupted.load()) {
    for (int i = 0; i < 10 && !g_interrupted.load(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (g_interrupted.load()) break;
    log = read(next, kConsoleReadMaxBytes);
    if (!log.ok()) {
      // A controller restarting or the exec limit reached: try again.
      const ErrorCode code = log.error().code;
      if (code == ErrorCode::kTooManyRequests || code == ErrorCode::kUnavailable ||
          code == ErrorCode::kTimeout)
        continue;
      return Fail(ctx, log.error(), "vm");
    }
    if (log->dropped > 0)
      ctx.io.err << "[" << log->dropped << " bytes of console output were dropped]" << std::endl;
    ctx.io.out << log->text << std::flush;
    next = log->next_offset;
  }
  return kExitOk;
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
  auto listen = ParseHostPort(a.listen, "--listen (IP:PORT, PORT 0: any)");
  if (!listen.ok()) return Fail(ctx, listen.error());
  json body = {{"guest_port", a.guest_port},
               {"nic", a.nic},
               {"listen_ip", listen->host},
               {"listen_port", listen->port}};
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
               << " in " << num("total_ms") << " ms";
    if (res->value("cold", false))
      ctx.io.out << " (stopped: disk " << num("disk_bytes") / 1000000 << " MB)" << std::endl;
    else
      ctx.io.out << " (downtime " << num("downtime_ms") << " ms, RAM " << num("ram_bytes") / 1000000
                 << " MB, disk " << num("disk_bytes") / 1000000 << " MB)" << std::endl;
    if (res->contains("warning")) ctx.io.err << "warning: " << Str(*res, "warning") << std::endl;
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// vm cp: files into and out of a VM, one chunk per request (proto/guest_file.h);
// a directory travels as a tar file made and unpacked inside the guest by its
// tar (guest exec) and on this side by tar(1).

struct CpArgs {
  std::string src, dst;
  bool progress = false;
};

// "VM:PATH" (the VM part names no directory, so "./a:b" is local).
struct CpSide {
  bool remote = false;
  std::string vm, path;
};

CpSide ParseCpSide(const std::string& arg) {
  size_t colon = arg.find(':');
  if (colon == std::string::npos || colon == 0 ||
      arg.substr(0, colon).find('/') != std::string::npos)
    return CpSide{false, "", arg};
  return CpSide{true, arg.substr(0, colon), arg.substr(colon + 1)};
}

std::string BaseName(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  size_t slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string DirName(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  size_t slash = p.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : p.substr(0, slash);
}

Error LocalError(ErrorCode code, const std::string& what) {
  return MakeError(code, what + ": " + std::strerror(errno));
}

// Errors carry their own message; only the transport's get Fail()'s hints
// (the token, an unreachable controller).
int FailCp(Ctx& ctx, const Error& e) {
  if (e.code == ErrorCode::kUnauthenticated || e.code == ErrorCode::kUnavailable ||
      e.code == ErrorCode::kTimeout)
    return Fail(ctx, e, "vm");
  ctx.io.err << "error: " << e.message << std::endl;
  return ExitCodeForError(e.code);
}

class CpProgress {
 public:
  CpProgress(Ctx& ctx, bool forced, std::string what)
      : io_{ctx.io.out, ctx.io.err, ctx.io.err_is_tty || forced},
        line_(io_),
        what_(std::move(what)),
        start_(Clock::now()) {}
  void Update(int64_t done, int64_t total) {
    const double elapsed = Seconds(Clock::now() - start_);
    const int pct = total > 0 ? static_cast<int>(done * 100 / total) : 100;
    line_.Update(what_ + " " + std::to_string(pct) + "% " + Mib(done) + "/" + Mib(total) + " MiB " +
                 Mib(elapsed > 0 ? static_cast<int64_t>(done / elapsed) : 0) + " MiB/s");
  }
  void Done(int64_t total) {
    const double elapsed = Seconds(Clock::now() - start_);
    // Only a progress display gets a summary; scripts see nothing on success.
    line_.Finish(io_.err_is_tty ? what_ + ": " + Mib(total) + " MiB in " + FormatElapsed(elapsed)
                                : "");
  }
  void Abandon() { line_.Finish(""); }

 private:
  static std::string Mib(int64_t bytes) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.1f", static_cast<double>(bytes) / (1 << 20));
    return buf;
  }
  CliIo io_;
  StatusLine line_;
  std::string what_;
  Clock::time_point start_;
};

// One chunk request; waits its turn while the caller's exec limit is reached.
Result<json> PostChunk(const ApiClient& client, const std::string& url, const json& body) {
  const auto give_up = Clock::now() + std::chrono::seconds(300);
  auto res = client.Post(url, body);
  while (!res.ok() && res.error().code == ErrorCode::kTooManyRequests && Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    res = client.Post(url, body);
  }
  return res;
}

// Sends local regular file `local` to guest file `path` (a guest directory
// takes it under its own name when `into_dir_name` is set). Returns the
// guest path written.
Result<std::string> SendFile(Ctx& ctx, const ApiClient& client, const std::string& vm,
                             const std::string& local, std::string path,
                             const std::string& into_dir_name, bool progress) {
  struct stat st {};
  if (::stat(local.c_str(), &st) != 0) return LocalError(ErrorCode::kNotFound, local);
  if (!S_ISREG(st.st_mode))
    return MakeError(ErrorCode::kInvalidArgument, local + " is not a regular file");
  if (st.st_size > kMaxGuestCopyBytes)
    return MakeError(ErrorCode::kResourceExhausted,
                     local + " is " + std::to_string(st.st_size) + " bytes; vm cp copies at most " +
                         std::to_string(kMaxGuestCopyBytes) + " bytes");
  std::ifstream in(local, std::ios::binary);
  if (!in) return LocalError(ErrorCode::kFailedPrecondition, "cannot open " + local);
  const std::string url = "/v1/vms/" + PathEscape(vm) + "/files/write";
  CpProgress shown(ctx, progress, "copying " + BaseName(local) + " to " + vm);
  std::string chunk(static_cast<size_t>(kMaxGuestFileChunk), '\0');
  int64_t offset = 0;
  bool retried_into_dir = into_dir_name.empty();
  for (;;) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    const auto got = static_cast<size_t>(in.gcount());
    if (in.bad()) {
      shown.Abandon();
      return LocalError(ErrorCode::kInternal, "reading " + local);
    }
    GuestFileWrite w{path, offset, chunk.substr(0, got)};
    auto res = PostChunk(client, url, ToJson(w));
    // A destination that is a directory takes the file under its own name.
    if (!res.ok() && offset == 0 && !retried_into_dir &&
        res.error().message.find("Is a directory") != std::string::npos) {
      retried_into_dir = true;
      path += "/" + into_dir_name;
      in.clear();
      in.seekg(0);
      continue;
    }
    if (!res.ok()) {
      shown.Abandon();
      return res.error();
    }
    offset += static_cast<int64_t>(got);
    shown.Update(offset, st.st_size);
    if (got < chunk.size()) break;
  }
  shown.Done(offset);
  return path;
}

// Fetches guest file `path` into `out`, starting from its `first` chunk.
Status FetchFile(Ctx& ctx, const ApiClient& client, const std::string& vm, const std::string& path,
                 GuestFileChunk chunk, std::ostream& out, bool progress) {
  const std::string url = "/v1/vms/" + PathEscape(vm) + "/files/read";
  CpProgress shown(ctx, progress, "copying " + BaseName(path) + " from " + vm);
  int64_t offset = 0;
  for (;;) {
    out.write(chunk.data.data(), static_cast<std::streamsize>(chunk.data.size()));
    if (!out) {
      shown.Abandon();
      return LocalError(ErrorCode::kInternal, "writing the copy of " + path);
    }
    offset += static_cast<int64_t>(chunk.data.size());
    shown.Update(offset, chunk.size);
    if (chunk.eof || chunk.data.empty()) break;
    auto next = PostChunk(client, url, ToJson(GuestFileRead{path, offset, kMaxGuestFileChunk}));
    if (!next.ok()) {
      shown.Abandon();
      return next.error();
    }
    auto parsed = GuestFileChunkFromJson(*next);
    if (!parsed.ok()) {
      shown.Abandon();
      return parsed.error().Wrap("the controller's answer");
    }
    chunk = std::move(parsed).value();
  }
  out.flush();
  shown.Done(offset);
  return Status::Ok();
}

Result<GuestFileChunk> FirstChunk(const ApiClient& client, const std::string& vm,
                                  const std::string& path) {
  VMG_ASSIGN_OR_RETURN(json first, PostChunk(client, "/v1/vms/" + PathEscape(vm) + "/files/read",
                                             ToJson(GuestFileRead{path, 0, kMaxGuestFileChunk})));
  auto chunk = GuestFileChunkFromJson(first);
  if (!chunk.ok()) return chunk.error().Wrap("the controller's answer");
  return chunk;
}

// Runs sh -c `script` with `args` ($1...) in the guest; fails unless it exits 0.
Status GuestSh(const ApiClient& client, const std::string& vm, const std::string& script,
               const std::vector<std::string>& args, const std::string& what) {
  std::vector<std::string> argv = {"/bin/sh", "-c", script, "sh"};
  argv.insert(argv.end(), args.begin(), args.end());
  VMG_ASSIGN_OR_RETURN(json r, RunGuestExec(client, vm, {{"argv", argv}, {"timeout_s", 600}}, 600));
  const int64_t code = r.is_object() ? r.value("exit_code", int64_t{-1}) : -1;
  if (code != 0)
    return MakeError(ErrorCode::kFailedPrecondition,
                     what + " in the guest failed (exit " + std::to_string(code) +
                         "): " + (r.is_object() ? r.value("stderr", "") : ""));
  return Status::Ok();
}

// A private directory for this copy's tar file on this side.
class LocalTemp {
 public:
  LocalTemp() {
    const char* tmp = std::getenv("TMPDIR");
    std::string t = std::string(tmp && *tmp ? tmp : "/tmp") + "/vmgrid-cp-XXXXXX";
    if (::mkdtemp(t.data()) != nullptr) dir_ = t;
  }
  ~LocalTemp() {
    if (!dir_.empty()) (void)RemoveTree(dir_);
  }
  LocalTemp(const LocalTemp&) = delete;
  LocalTemp& operator=(const LocalTemp&) = delete;
  bool ok() const { return !dir_.empty(); }
  std::string tar() const { return dir_ + "/copy.tar"; }

 private:
  std::string dir_;
};

// Local directory -> guest: tar here, one file across, unpacked by the guest's
// tar at DST (DST/NAME when DST is a directory already).
Status SendDir(Ctx& ctx, const ApiClient& client, const std::string& local, const CpSide& to,
               bool progress) {
  LocalTemp tmp;
  if (!tmp.ok()) return LocalError(ErrorCode::kInternal, "making a temporary directory");
  auto made = RunProcessChecked({"tar", "-cf", tmp.tar(), "-C", local, "."});
  if (!made.ok()) return made.error().Wrap("tar of " + local);
  const std::string guest_tar = "/tmp/.vmgrid-cp-" + NewId("in") + ".tar";
  VMG_RETURN_IF_ERROR(SendFile(ctx, client, to.vm, tmp.tar(), guest_tar, "", progress));
  return GuestSh(client, to.vm,
                 "t=\"$2\"; [ -d \"$t\" ] && t=\"$t/$3\"; mkdir -p \"$t\" && tar -xf \"$1\" -C "
                 "\"$t\"; rc=$?; rm -f \"$1\"; exit $rc",
                 {guest_tar, to.path, BaseName(local)}, "unpacking into " + to.path);
}

// Guest directory -> here: tar in the guest, one file across, unpacked by
// tar(1) into a staging directory beside the target and renamed into place,
// so a failed copy leaves nothing behind. GNU tar refuses members with ".."
// and absolute names (the guest is not trusted).
Status FetchDir(Ctx& ctx, const ApiClient& client, const CpSide& from, const std::string& local,
                bool progress) {
  const std::string name = BaseName(from.path);
  if (name == "/" || name == "." || name == "..")
    return MakeError(ErrorCode::kInvalidArgument,
                     "guest path " + from.path + " names no directory to copy");
  std::string target = local;
  struct stat st {};
  if ((!target.empty() && target.back() == '/') ||
      (::stat(target.c_str(), &st) == 0 && S_ISDIR(st.st_mode))) {
    if (target.back() != '/') target += '/';
    target += name;
  }
  if (::lstat(target.c_str(), &st) == 0)
    return MakeError(ErrorCode::kAlreadyExists, target + " exists; remove it or name another");
  const std::string guest_tar = "/tmp/.vmgrid-cp-" + NewId("out") + ".tar";
  VMG_RETURN_IF_ERROR(GuestSh(client, from.vm, "tar -cf \"$1\" -C \"$2\" \"./$3\"",
                              {guest_tar, DirName(from.path), name}, "tar of " + from.path));
  LocalTemp tmp;
  Status fetched = tmp.ok()
                       ? Status::Ok()
                       : Status(LocalError(ErrorCode::kInternal, "making a temporary directory"));
  if (fetched.ok()) {
    auto first = FirstChunk(client, from.vm, guest_tar);
    std::ofstream file(tmp.tar(), std::ios::binary | std::ios::trunc);
    fetched = !first.ok() ? Status(first.error())
              : !file     ? Status(LocalError(ErrorCode::kInternal, "writing " + tmp.tar()))
                          : FetchFile(ctx, client, from.vm, guest_tar, *first, file, progress);
  }
  (void)GuestSh(client, from.vm, "rm -f \"$1\"", {guest_tar}, "removing " + guest_tar);
  VMG_RETURN_IF_ERROR(fetched);
  const std::string staging = target + ".vmgrid-cp-partial";
  if (::mkdir(staging.c_str(), 0700) != 0)
    return LocalError(ErrorCode::kFailedPrecondition, staging);
  auto unpacked = RunProcessChecked({"tar", "-xf", tmp.tar(), "-C", staging, "--no-same-owner"});
  Status st2 = Status::Ok();
  if (!unpacked.ok()) {
    st2 = unpacked.error().Wrap("unpacking the copy of " + from.path);
  } else if (std::rename((staging + "/" + name).c_str(), target.c_str()) != 0) {
    st2 = LocalError(ErrorCode::kInternal, "moving the copy to " + target);
  }
  (void)RemoveTree(staging);
  return st2;
}

int CpIn(Ctx& ctx, const ApiClient& client, const std::string& local, const CpSide& to,
         bool progress) {
  struct stat st {};
  if (::stat(local.c_str(), &st) != 0) return FailCp(ctx, LocalError(ErrorCode::kNotFound, local));
  if (S_ISDIR(st.st_mode)) {
    Status sent = SendDir(ctx, client, local, to, progress);
    return sent.ok() ? kExitOk : FailCp(ctx, sent.error());
  }
  std::string path = to.path;
  if (path.back() == '/') path += BaseName(local);
  auto sent = SendFile(ctx, client, to.vm, local, path, BaseName(local), progress);
  return sent.ok() ? kExitOk : FailCp(ctx, sent.error());
}

int CpOut(Ctx& ctx, const ApiClient& client, const CpSide& from, const std::string& local,
          bool progress) {
  const std::string name = BaseName(from.path);
  // The first chunk says whether the file is there before anything local is made.
  auto first = FirstChunk(client, from.vm, from.path);
  if (!first.ok() && first.error().message.find("is a directory") != std::string::npos &&
      local != "-") {
    Status got = FetchDir(ctx, client, from, local, progress);
    return got.ok() ? kExitOk : FailCp(ctx, got.error());
  }
  if (!first.ok()) return FailCp(ctx, first.error());
  if (local == "-") {
    Status got = FetchFile(ctx, client, from.vm, from.path, *first, ctx.io.out, progress);
    return got.ok() ? kExitOk : FailCp(ctx, got.error());
  }
  std::string target = local;
  struct stat st {};
  if ((!target.empty() && target.back() == '/') ||
      (::stat(target.c_str(), &st) == 0 && S_ISDIR(st.st_mode))) {
    // The guest names the file here: it must stay inside the directory.
    if (name.empty() || name == "." || name == ".." || name == "/")
      return FailCp(
          ctx, MakeError(ErrorCode::kInvalidArgument,
                         "guest path " + from.path + " names no file; give the local file's name"));
    if (target.back() != '/') target += '/';
    target += name;
  }
  // Written beside the target and renamed at the end: a failed copy leaves
  // no half-written file.
  const std::string partial = target + ".vmgrid-cp-partial";
  std::ofstream file(partial, std::ios::binary | std::ios::trunc);
  if (!file)
    return FailCp(ctx, LocalError(ErrorCode::kFailedPrecondition, "cannot write " + partial));
  Status got = FetchFile(ctx, client, from.vm, from.path, *first, file, progress);
  file.close();
  if (got.ok() && (!file || std::rename(partial.c_str(), target.c_str()) != 0))
    got = LocalError(ErrorCode::kInternal, "cannot write " + target);
  if (!got.ok()) {
    std::remove(partial.c_str());
    return FailCp(ctx, got.error());
  }
  return kExitOk;
}

int CmdVmCp(Ctx& ctx, const CpArgs& a) {
  CpSide src = ParseCpSide(a.src), dst = ParseCpSide(a.dst);
  if (src.remote == dst.remote) {
    ctx.io.err << "error: exactly one of SRC and DST must be VM:PATH (e.g. `vmgrid vm cp "
                  "./file myvm:/tmp/file` or `vmgrid vm cp myvm:/etc/hostname ./out`)"
               << std::endl;
    return kExitUsage;
  }
  const CpSide& guest = src.remote ? src : dst;
  // Checked here for a clear message; the controller checks it again.
  if (Status st = CheckGuestPath(guest.path); !st.ok()) return FailCp(ctx, st.error());
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  return src.remote ? CpOut(ctx, *client, src, dst.path, a.progress)
                    : CpIn(ctx, *client, src.path, dst, a.progress);
}

// ---------------------------------------------------------------------------

}  // namespace

// The flags of these commands, kept for the parse.
struct AddVmCommandsFlags {
  std::string ref;
  VmCreateArgs create;
  ExecArgs exec;
  ConsoleArgs console;
  CpArgs cp;
  ForwardArgs forward;
  bool no_wait = false;
  bool leave_running = false;
  bool purge_workspace = false;
  bool commit = false;
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
  c->add_option("--data", s.create.data,
                "Attach one of your datasets: NAME[:VERSION][:MOUNT][:ro|rw] (latest version, "
                "/data/NAME, ro by default), or OWNER/NAME, one shared with you (ro only); "
                "repeatable, at most 4 (docs/datasets.md)");
  c->add_option("--new-data", s.create.new_data,
                "Attach a new empty dataset, read-write: NAME[:MOUNT][:SIZE_MB] (/data/NAME, "
                "1024 MiB by default); `vmgrid data commit VM NAME` stores its first version");
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

  t.ListLeaf(g, "List VMs", [&] { return CmdVmList(t.ctx); });
  t.Leaf(g, "show", "Show one VM", [&] { return CmdVmShow(t.ctx, s.ref); })
      ->add_option("REF", s.ref, "VM id or name")
      ->required();
  auto* stop =
      t.Leaf(g, "stop", "Stop a VM", [&] { return CmdVmStop(t.ctx, s.ref, s.commit, s.no_wait); });
  stop->add_option("REF", s.ref, "VM id or name")->required();
  stop->add_flag("--commit", s.commit,
                 "First store each read-write dataset attachment as a new version "
                 "(no stop if one fails)");
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
                    [&] { return CmdVmRm(t.ctx, s.ref, s.purge_workspace, s.commit, s.no_wait); });
  rm->add_option("REF", s.ref, "VM id or name")->required();
  rm->add_flag("--commit", s.commit,
               "First store each read-write dataset attachment as a new version "
               "(no delete if one fails)");
  rm->add_flag("--purge-workspace", s.purge_workspace, "Also delete its workspace");
  rm->add_flag("--no-wait", s.no_wait, "Do not wait");
  auto* mig = t.Leaf(
      g, "migrate",
      "Live-migrate a running VM to another host, or move a stopped VM's disks there (it stays "
      "stopped): vm migrate REF [--to HOST]",
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
  auto* con = t.Leaf(g, "console",
                     "Show the guest's serial console log (ttyS0): its tail, then with --follow "
                     "what comes next until Ctrl-C",
                     [&] { return CmdVmConsole(t.ctx, s.console); });
  con->add_option("REF", s.console.ref, "VM id or name")->required();
  con->add_flag("--follow,-f", s.console.follow, "Keep printing new output (Ctrl-C ends)");
  con->add_option("--bytes", s.console.bytes, "How much of the log's end to show first")
      ->check(CLI::Range(int64_t{1}, kConsoleReadMaxBytes))
      ->capture_default_str();
  auto* copy = t.Leaf(g, "cp",
                      "Copy a file into or out of a running VM through its guest agent: "
                      "vm cp SRC DST, one of them VM:PATH (an absolute guest path; a directory "
                      "travels as a tar file; DST '-' writes to stdout; at most 1 GiB)",
                      [&] { return CmdVmCp(t.ctx, s.cp); });
  copy->add_option("SRC", s.cp.src, "Local file, or VM:PATH")->required();
  copy->add_option("DST", s.cp.dst, "VM:PATH (a trailing / keeps the name), or a local path")
      ->required();
  copy->add_flag("--progress", s.cp.progress, "Show progress on stderr even when it is not a TTY");
}

}  // namespace vmgrid::cli
