// fuzz_qga: GuestAgentClient against a hostile qemu-guest-agent (the guest
// controls every byte). See scripted_peer.h for the input format; the sync id
// the client chose is "@a.id@". The first call of every input resyncs
// (guest-sync-delimited, 0xFF delimiter). Ops:
//   s Sync   p Ping   c Call(guest-get-osinfo)
//   x Exec(sh -c ..., stdin)   X Exec(true, no stdin)
//   r ReadFile(max 64 B)   R ReadFile(max 1 MiB)   z ReadFile(max 0 B)
//   w WriteFile(11 B)   W WriteFile(empty)   n ReseedRandom (writes 64 B)
// With no ops the input is run as "p".
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "scripted_peer.h"
#include "vmm/guest_agent_client.h"
#include "vmm/json_util.h"

namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using vmgrid::ExecResult;
using vmgrid::GuestAgentClient;
using vmgrid::Result;
using vmgrid::Status;

constexpr milliseconds kTimeout(5000);

void Consume(const char* op, const Status& st) {
  vmgrid::fuzz::Trace(op, st.ok(), st.ok() ? "" : st.error().message);
  if (!st.ok()) FUZZ_CHECK(!st.error().message.empty(), "error without message");
}

void CheckRead(const Result<std::string>& r, size_t max_bytes) {
  vmgrid::fuzz::Trace("read_file", r.ok(), r.ok() ? *r : r.error().message);
  if (!r.ok()) {
    FUZZ_CHECK(!r.error().message.empty(), "error without message");
    return;
  }
  FUZZ_CHECK(r->size() <= max_bytes,
             "ReadFile returned more than max_bytes: " + std::to_string(r->size()));
}

void CheckExec(const Result<ExecResult>& r) {
  vmgrid::fuzz::Trace(
      "exec", r.ok(),
      r.ok() ? "exit " + std::to_string(r->exit_code) + " out=" + r->out + " err=" + r->err
             : r.error().message);
  if (!r.ok()) {
    FUZZ_CHECK(!r.error().message.empty(), "error without message");
    return;
  }
  // The decoded output is handed to the API as JSON strings.
  json out = {{"exit_code", r->exit_code}, {"stdout", r->out}, {"stderr", r->err}};
  (void)out.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool init = (vmgrid::fuzz::QuietLogging(), true);
  (void)init;
  vmgrid::fuzz::Script script = vmgrid::fuzz::ParseScript(data, size);
  if (script.ops.empty()) script.ops = "p";
  vmgrid::fuzz::ScriptedPeer peer(std::move(script.chunks));
  vmgrid::fuzz::ActivePeer active(&peer);
  GuestAgentClient qga(peer.TakeClientStream());

  for (char op : script.ops) {
    switch (op) {
      case 's':
        Consume("sync", qga.Sync(kTimeout));
        break;
      case 'p':
        Consume("ping", qga.Ping(kTimeout));
        break;
      case 'c': {
        Result<json> r = qga.Call("guest-get-osinfo", json::object(), kTimeout);
        if (r.ok()) {
          auto dumped = vmgrid::vmm::DumpJson(*r);
          FUZZ_CHECK(dumped.ok(), dumped.ok() ? "" : dumped.error().message);
          vmgrid::fuzz::Trace("call", true, *dumped);
        } else {
          vmgrid::fuzz::Trace("call", false, r.error().message);
        }
        break;
      }
      case 'x':
        CheckExec(qga.Exec({"/bin/sh", "-c", "cat; echo done"}, "input\n", kTimeout));
        break;
      case 'X':
        CheckExec(qga.Exec({"true"}, "", kTimeout));
        break;
      case 'r':
        CheckRead(qga.ReadFile("/etc/hostname", 64, kTimeout), 64);
        break;
      case 'R':
        CheckRead(qga.ReadFile("/var/log/syslog", 1 << 20, kTimeout), 1 << 20);
        break;
      case 'z':
        CheckRead(qga.ReadFile("/etc/machine-id", 0, kTimeout), 0);
        break;
      case 'w':
        Consume("write_file", qga.WriteFile("/tmp/fuzz", "hello world", kTimeout));
        break;
      case 'W':
        Consume("write_empty", qga.WriteFile("/tmp/empty", "", kTimeout));
        break;
      case 'n':
        Consume("reseed", qga.ReseedRandom(kTimeout));
        break;
      default:
        break;
    }
  }
  return 0;
}
