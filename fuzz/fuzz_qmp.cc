// fuzz_qmp: QmpClient (and the machine_ops that interpret its replies) against
// a hostile QEMU monitor. See scripted_peer.h for the input format. Ops:
//   e Execute(query-status)      a Execute(device_del, args)   f ExecuteWithFd(getfd)
//   w WaitEvent(SHUTDOWN)        i WaitEventIf(data.status)    d DrainEvents
//   b broken()                   c Close()
//   s QueryStatus  C Cont  P Stop  S SaveStateToFile  R ResumeFromFile
//   B BackupDiskTop  K CheckpointToFiles
// With no ops the input still covers the greeting and qmp_capabilities.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>

#include "fuzz_common.h"
#include "scripted_peer.h"
#include "vmm/json_util.h"
#include "vmm/machine_ops.h"
#include "vmm/qmp_client.h"

namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using vmgrid::ErrorCode;
using vmgrid::QmpClient;
using vmgrid::Result;
using vmgrid::Status;

constexpr milliseconds kTimeout(5000);

struct Env {
  int devnull = -1;
  std::string state_path, resume_path, backup_path, ckpt_disk, ckpt_state;
};

const Env& GetEnv() {
  static const Env env = [] {
    vmgrid::fuzz::QuietLogging();
    Env e;
    e.devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    const std::string& dir = vmgrid::fuzz::ScratchDir();
    e.state_path = dir + "/state";
    e.resume_path = dir + "/resume.state";
    e.backup_path = dir + "/backup.qcow2";
    e.ckpt_disk = dir + "/ckpt-disk.qcow2";
    e.ckpt_state = dir + "/ckpt-state";
    std::ofstream(e.resume_path) << "QEVM";
    return e;
  }();
  return env;
}

void Consume(const char* op, const Result<json>& r) {
  if (!r.ok()) {
    vmgrid::fuzz::Trace(op, false, r.error().message);
    FUZZ_CHECK(!r.error().message.empty(), "error without message");
    return;
  }
  // Whatever QEMU sent is re-serialized upstream (logs, API replies).
  auto dumped = vmgrid::vmm::DumpJson(*r);
  FUZZ_CHECK(dumped.ok(), dumped.ok() ? "" : dumped.error().message);
  vmgrid::fuzz::Trace(op, true, *dumped);
}

void Consume(const char* op, const Status& st) {
  vmgrid::fuzz::Trace(op, st.ok(), st.ok() ? "" : st.error().message);
  if (!st.ok()) FUZZ_CHECK(!st.error().message.empty(), "error without message");
}

void CheckEvent(const json& e, const char* where) {
  FUZZ_CHECK(e.is_object() && vmgrid::vmm::FindField(e, "event") != nullptr, where);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Env& env = GetEnv();
  vmgrid::fuzz::Script script = vmgrid::fuzz::ParseScript(data, size);
  vmgrid::fuzz::ScriptedPeer peer(std::move(script.chunks));
  vmgrid::fuzz::ActivePeer active(&peer);

  auto connected =
      QmpClient::FromStream(peer.TakeClientStream(), vmgrid::vmm::DeadlineAfter(kTimeout));
  vmgrid::fuzz::Trace("connect", connected.ok(), connected.ok() ? "" : connected.error().message);
  if (!connected.ok()) return 0;
  QmpClient& qmp = **connected;
  FUZZ_CHECK(qmp.greeting().is_object(), "greeting is not an object");
  if (const json* v = vmgrid::vmm::FindField(qmp.greeting(), "version")) {
    if (const json* q = vmgrid::vmm::FindField(*v, "qemu")) (void)vmgrid::vmm::GetInt(*q, "major");
  }

  bool closed = false;
  for (char op : script.ops) {
    switch (op) {
      case 'e':
        Consume("execute", qmp.Execute("query-status", json::object(), kTimeout));
        break;
      case 'a':
        Consume("device_del", qmp.Execute("device_del", {{"id", "disk1"}}, kTimeout));
        break;
      case 'f':
        Consume("getfd", qmp.ExecuteWithFd("getfd", {{"fdname", "fuzzfd"}}, env.devnull, kTimeout));
        break;
      case 'w': {
        Result<json> e = qmp.WaitEvent("SHUTDOWN", kTimeout);
        if (e.ok()) {
          CheckEvent(*e, "WaitEvent returned a non-event");
          FUZZ_CHECK(vmgrid::vmm::GetString(*e, "event") == "SHUTDOWN", e->dump());
        }
        Consume("wait_event", e);
        break;
      }
      case 'i': {
        Result<json> e = qmp.WaitEventIf(
            [](const json& ev) {
              const json* d = vmgrid::vmm::FindField(ev, "data");
              return d != nullptr && vmgrid::vmm::GetString(*d, "status") == "completed";
            },
            kTimeout);
        if (e.ok()) CheckEvent(*e, "WaitEventIf returned a non-event");
        Consume("wait_event_if", e);
        break;
      }
      case 'd': {
        auto events = qmp.DrainEvents();
        FUZZ_CHECK(events.size() <= QmpClient::kMaxQueuedEvents, std::to_string(events.size()));
        for (const json& e : events) {
          CheckEvent(e, "queued a non-event");
          Consume("drained", e);
        }
        break;
      }
      case 'b':
        (void)qmp.broken();
        break;
      case 'c':
        qmp.Close();
        closed = true;
        break;
      case 's': {
        auto st = vmgrid::QueryStatus(qmp);
        vmgrid::fuzz::Trace("query_status", st.ok(), st.ok() ? *st : st.error().message);
        if (!st.ok()) FUZZ_CHECK(!st.error().message.empty(), "error without message");
        break;
      }
      case 'C':
        Consume("cont", vmgrid::Cont(qmp));
        break;
      case 'P':
        Consume("stop", vmgrid::Stop(qmp));
        break;
      case 'S':
        Consume("save_state", vmgrid::SaveStateToFile(qmp, env.state_path, kTimeout));
        break;
      case 'R':
        Consume("resume", vmgrid::ResumeFromFile(qmp, env.resume_path, kTimeout));
        break;
      case 'B':
        Consume("backup", vmgrid::BackupDiskTop(qmp, "disk0", env.backup_path, false, kTimeout));
        ::unlink(env.backup_path.c_str());
        break;
      case 'K':
        Consume("checkpoint", vmgrid::CheckpointToFiles(qmp, "disk0", env.ckpt_disk, false,
                                                        env.ckpt_state, kTimeout));
        ::unlink(env.ckpt_disk.c_str());
        break;
      default:
        break;
    }
    if (closed) {
      FUZZ_CHECK(qmp.broken(), "closed client is not broken");
      auto r = qmp.Execute("query-status", json::object(), kTimeout);
      FUZZ_CHECK(!r.ok() && r.error().code == ErrorCode::kUnavailable, "closed client executed");
    }
  }
  return 0;
}
