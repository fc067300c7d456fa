// `vmgrid host list|show`.
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
  return {Str(h, "id"),
          Str(h, "name"),
          Str(h, "state"),
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

}  // namespace

void AddHostCommands(CommandTree& t) {
  auto& ref = t.Keep<std::string>();
  auto* g = t.Group(&t.app, "host", "Hosts of the grid");
  g->group("Client commands");
  t.Leaf(g, "list", "List hosts", [&t] { return CmdHostList(t.ctx); });
  t.Leaf(g, "show", "Show one host", [&t, &ref] { return CmdHostShow(t.ctx, ref); })
      ->add_option("REF", ref, "Host id or name")
      ->required();
}

}  // namespace vmgrid::cli
