#include "api/services/migration_service.h"

#include <spdlog/spdlog.h>

#include "api/admission.h"
#include "api/agent_client.h"
#include "api/controller_metrics.h"
#include "api/op_queue.h"
#include "api/placement.h"
#include "api/services/agent_spec.h"
#include "api/services/image_service.h"
#include "api/services/network_service.h"
#include "vmm/migration.h"

namespace vmgrid {

using nlohmann::json;

std::string HostOfUrl(const std::string& url) {
  std::string rest = url;
  if (auto scheme = rest.find("://"); scheme != std::string::npos) rest = rest.substr(scheme + 3);
  if (auto slash = rest.find('/'); slash != std::string::npos) rest = rest.substr(0, slash);
  if (!rest.empty() && rest[0] == '[') {
    auto close = rest.find(']');
    return close == std::string::npos ? rest.substr(1) : rest.substr(1, close - 1);
  }
  if (auto colon = rest.find(':'); colon != std::string::npos) rest = rest.substr(0, colon);
  return rest;
}

MigrationService::MigrationService(Store& store, const CapacityIndex& index, AgentClient& agents,
                                   NetworkService& networks, OpQueue& ops, const Clock& clock,
                                   Admission& long_ops)
    : store_(store),
      index_(index),
      agents_(agents),
      networks_(networks),
      ops_(ops),
      clock_(clock),
      long_ops_(long_ops) {}

Result<VmSpec> MigrationService::SpecFor(const Vm& vm, const Host& target) {
  VMG_ASSIGN_OR_RETURN(Image image, store_.GetImage(vm.image_id, ""));
  std::string workspace_path;
  Workspace ws;
  if (!vm.workspace_id.empty()) {
    VMG_ASSIGN_OR_RETURN(ws, store_.GetWorkspace(vm.workspace_id, ""));
    workspace_path = ws.path;
  }
  VMG_ASSIGN_OR_RETURN(VmSpec spec, MigrationTargetSpec(vm, image, workspace_path, networks_));
  // Durable workspaces: the target pushes its versions once it holds the
  // workspace (same generation: the source's copy is destroyed on success).
  // Its disk arrives by the mirror, never from a durable version.
  if (!ws.id.empty()) AddDurable(spec, ws, target.name, durable_);
  spec.blobs.erase("workspace");
  return spec;
}

Result<json> MigrationService::Migrate(const Caller& c, const std::string& vm_ref,
                                       const std::string& to_host, DoneFn done) {
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(vm_ref, c.owner()));
  if (auto s = ParseVmState(vm.state);
      !s.ok() || (!Allows(*s, VmOp::kMigrate) && !Allows(*s, VmOp::kColdMigrate)))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + vm.name + " is " + vm.state + "; migrate needs it to be " +
                         DescribeFromStates(VmOp::kMigrate) + " (live) or " +
                         DescribeFromStates(VmOp::kColdMigrate) + " (its disks move)");
  {
    // Refuses, before anything changes, a VM whose disk base is not known.
    VMG_ASSIGN_OR_RETURN(Image image, store_.GetImage(vm.image_id, ""));
    VMG_RETURN_IF_ERROR(CheckDiskBase(vm, image));
  }
  VMG_ASSIGN_OR_RETURN(Host source, store_.GetHost(vm.host_id));
  std::vector<std::string> candidates;
  if (!to_host.empty()) {
    VMG_ASSIGN_OR_RETURN(Host target, store_.GetHost(to_host));
    if (target.id == source.id)
      return MakeError(ErrorCode::kInvalidArgument,
                       "VM " + vm.name + " is already on host " + source.name);
    if (target.state != "up")
      return MakeError(ErrorCode::kFailedPrecondition,
                       "host " + target.name + " is " + target.state);
    if (target.draining)
      return MakeError(ErrorCode::kFailedPrecondition,
                       "host " + target.name + " is draining (`vmgrid host undrain` first)");
    candidates = {target.id};
  } else {
    PlacementRequest r;
    r.image_id = vm.image_id;
    r.vcpus = vm.vcpus;
    r.memory_mb = vm.memory_mb;
    r.disk_bytes = vm.disk_bytes;
    for (auto& id : index_.Rank(r))
      if (id != source.id) candidates.push_back(id);
    if (candidates.empty())
      return MakeError(ErrorCode::kResourceExhausted, "no other host has room for VM " + vm.name +
                                                          " (" + std::to_string(vm.vcpus) +
                                                          " vCPU(s), " +
                                                          std::to_string(vm.memory_mb) + " MB)");
  }
  VMG_ASSIGN_OR_RETURN(auto slot, long_ops_.Acquire(c.user.id, 1, c.admin()));
  // Moves the record and reserves the target's room, or changes nothing.
  // A stopped VM moves cold: its disks only (docs/migration.md).
  const bool cold = vm.state == "stopped";
  auto begun = store_.BeginMigration(vm.id, candidates);
  if (!begun.ok()) {
    if (begun.error().code == ErrorCode::kResourceExhausted && !to_host.empty())
      return MakeError(ErrorCode::kResourceExhausted,
                       "host " + to_host + " has no room for VM " + vm.name + " (" +
                           std::to_string(vm.vcpus) + " vCPU(s), " + std::to_string(vm.memory_mb) +
                           " MB, its disk)");
    return begun.error();
  }
  vm = begun->first;
  auto target = store_.GetHost(begun->second);
  if (!target.ok()) {
    failed_writes_.Count(store_.AbortMigration(vm.id, cold ? "stopped" : "running", ""),
                         "VM " + vm.id);
    return target.error();
  }
  OpQueue::Operation op;
  op.kind = "migrate";
  op.owner_id = c.user.id;
  op.vm_id = vm.id;
  json answer = ops_.Start(op);
  answer["from"] = source.name;
  answer["to"] = target->name;
  ops_.Run(vm.id, [this, id = op.id, vm, source, t = *target, slot = std::move(slot),
                   done = std::move(done), cold]() mutable {
    auto r = Run(id, vm, source, t, cold);
    if (metrics_)
      metrics_->CountMigration(r.ok() ? Status::Ok() : r.error(),
                               r.ok() ? r->value("controller_ms", 0) / 1000.0 : 0,
                               r.ok() ? r->value("downtime_ms", 0) / 1000.0 : 0);
    slot.reset();
    ops_.Finish(id, r);
    if (done) done(r);
  });
  return answer;
}

Result<json> MigrationService::Run(const std::string& op_id, const Vm& vm, const Host& source,
                                   const Host& target, bool cold) {
  const int64_t started = clock_.NowMs();
  bool prepared = false, sent = false;
  // Puts everything back: the VM runs on its source.
  auto fail = [&](const Error& e) -> Error {
    spdlog::warn("migration of VM {} from {} to {}: {}", vm.id, source.name, target.name,
                 e.message);
    if (prepared) {
      Status st = agents_.AbortIncoming(target, vm.id);
      if (!st.ok() && st.error().code != ErrorCode::kNotFound)
        spdlog::warn("VM {}: aborting the incoming migration on {}: {}", vm.id, target.name,
                     st.error().message);
    }
    if (sent) {
      // A MigrateOut that failed has put the source back already (then
      // this is refused as "has not migrated out"); one that completed
      // left it paused, and this resumes it.
      Status st = agents_.ConfirmMigrateOut(source, vm.id, false);
      if (!st.ok())
        spdlog::info("VM {}: confirm-migrate-out(false) on {}: {}", vm.id, source.name,
                     st.error().message);
    }
    // The state the source reports after the failure wins (QEMU may have
    // died); else the VM runs on (or stays stopped).
    std::string state = cold ? "stopped" : "running";
    if (auto now = agents_.HostStatus(source); now.ok())
      for (const auto& v : now->vms)
        if (v.id == vm.id)
          if (auto s = ParseVmState(v.state); s.ok() && !IsTransitional(*s)) state = v.state;
    failed_writes_.Count(store_.AbortMigration(vm.id, state, "migration failed: " + e.message),
                         "VM " + vm.id + ": recording a failed migration");
    RecordEvent(Event{0, clock_.NowMs(), "vm.migration_failed", vm.id, source.id, vm.owner_id,
                      "VM " + vm.name + ": migration from host " + source.name + " to host " +
                          target.name + " failed: " + e.message,
                      json{{"from", source.name},
                           {"to", target.name},
                           {"to_host_id", target.id},
                           {"error", e.message}}
                          .dump()});
    return e;
  };

  ops_.SetProgress(op_id, "prepare", 5);
  auto spec = SpecFor(vm, target);
  if (!spec.ok()) return fail(spec.error());
  auto key = NewMigrationKey("vmgrid-" + vm.id);
  if (!key.ok()) return fail(key.error());
  const MigrationCredential credential{key->identity, key->key_hex};
  IncomingRequest incoming{*spec, credential, HostOfUrl(target.url), cold};
  // The target continues the guest's generation: a new vmgenid would tell the
  // guest it was cloned. An agent that does not report it (older) leaves the
  // target to pick one, as before.
  if (!cold) {
    auto report = agents_.HostStatus(source);
    if (!report.ok()) return fail(report.error().Wrap("asking host " + source.name));
    for (const auto& v : report->vms)
      if (v.id == vm.id) incoming.vmgenid = v.vmgenid;
  }
  prepared = true;  // a failed PrepareIncoming removes what it made; an abort is harmless
  auto info = agents_.PrepareIncoming(target, incoming);
  if (!info.ok()) return fail(info.error().Wrap("preparing host " + target.name));

  ops_.SetProgress(op_id, "migrate", 20);
  sent = true;
  auto result = agents_.MigrateOut(source, vm.id, MigrateOutRequest{*info, credential, 0});
  if (!result.ok()) return fail(result.error().Wrap("migrating from host " + source.name));

  ops_.SetProgress(op_id, "finish", 90);
  auto finished = agents_.FinishIncoming(target, vm.id);
  if (!finished.ok()) return fail(finished.error().Wrap("starting on host " + target.name));

  // The VM runs on the target: the record follows before the source's copy
  // goes, so a failure below leaves only a paused leftover on the source.
  auto moved = store_.FinishMigration(vm.id);
  if (!moved.ok()) {
    // The agents have switched; a record still on the source would be
    // wrong either way. Reconciliation cannot fix this one: say so.
    failed_writes_.Count(moved.error(), "VM " + vm.id + ": recording its new host " + target.name);
    return moved.error().Wrap("VM " + vm.id + " runs on host " + target.name +
                              " but its record could not be moved");
  }
  json out = ToJson(*result);
  Status confirmed = agents_.ConfirmMigrateOut(source, vm.id, true);
  if (!confirmed.ok()) {
    spdlog::warn("VM {}: removing the migrated-out copy on {}: {}", vm.id, source.name,
                 confirmed.error().message);
    out["warning"] =
        "the paused copy on host " + source.name + " was not removed: " + confirmed.error().message;
  }
  out.erase("forwards");  // the source's; the answer names those made on the target
  if (confirmed.ok()) AddForwardsOnTarget(vm, target, *result, out);
  out["vm_id"] = vm.id;
  out["from"] = source.name;
  out["to"] = target.name;
  out["controller_ms"] = clock_.NowMs() - started;
  out["cold"] = cold;
  // The state change is in the stream already (the store's); this adds
  // what only the migration knows.
  RecordEvent(Event{
      0, clock_.NowMs(), "vm.migrated", vm.id, target.id, vm.owner_id,
      "VM " + vm.name + " migrated from host " + source.name + " to host " + target.name +
          (cold ? std::string(" (stopped: its disks moved)")
                : " (downtime " + std::to_string(out.value("downtime_ms", int64_t{0})) + " ms)"),
      json{{"from", source.name},
           {"to", target.name},
           {"from_host_id", source.id},
           {"downtime_ms", out.value("downtime_ms", int64_t{0})},
           {"controller_ms", out["controller_ms"]}}
          .dump()});
  return out;
}

void MigrationService::AddForwardsOnTarget(const Vm& vm, const Host& target,
                                           const MigrationResult& result, json& out) {
  // After the source's copy is gone (and its listeners with it), the same
  // guest ports are forwarded on the target, on the same listen port when
  // it is free there. One that cannot be made is a warning: the VM runs.
  // A cold-migrated (stopped) VM's forwards are recorded on the target with
  // their ports and open when it starts there.
  json added = json::array();
  std::string failed;
  for (const ForwardInfo& f : result.forwards) {
    auto made = agents_.AddForward(target, vm.id,
                                   ForwardRequest{f.nic, f.guest_port, f.listen_ip, f.listen_port});
    if (!made.ok() && f.listen_port != 0)  // the port is taken there: any free one
      made = agents_.AddForward(target, vm.id, ForwardRequest{f.nic, f.guest_port, f.listen_ip, 0});
    if (made.ok()) {
      added.push_back(ToJson(*made));
    } else {
      failed += (failed.empty() ? "" : "; ") + std::string("guest port ") +
                std::to_string(f.guest_port) + ": " + made.error().message;
    }
  }
  out["forwards"] = added;
  if (!failed.empty()) {
    spdlog::warn("VM {}: forwards not made again on {}: {}", vm.id, target.name, failed);
    std::string w = "forwards not made again on host " + target.name + ": " + failed;
    out["warning"] = out.contains("warning") ? out["warning"].get<std::string>() + "; " + w : w;
  }
}

int MigrationService::RecoverInterrupted(int64_t interrupted_before_ms, int64_t stale_after_ms) {
  auto rows = store_.ListMigrations();
  if (!rows.ok()) {
    spdlog::warn("interrupted migrations: {}", rows.error().message);
    return 0;
  }
  int settled = 0;
  const int64_t now = clock_.NowMs();
  for (const auto& m : *rows) {
    if (m.started_ms >= interrupted_before_ms && now - m.started_ms <= stale_after_ms) continue;
    if (ops_.InFlight(m.vm_id)) continue;  // its operation still runs
    if (Status st = Recover(m); st.ok()) {
      ++settled;
    } else {
      spdlog::warn("interrupted migration of VM {}: {}; trying again later", m.vm_id,
                   st.error().message);
    }
  }
  return settled;
}

Result<std::string> MigrationService::ReportedState(const Host& host, const std::string& id) {
  VMG_ASSIGN_OR_RETURN(HostReport report, agents_.HostStatus(host));
  for (const auto& v : report.vms)
    if (v.id == id) return v.state;
  return std::string();
}

Status MigrationService::Recover(const Store::PendingMigration& m) {
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(m.vm_id, ""));
  if (vm.state != "migrating") return Status::Ok();  // settled meanwhile (deleted, finished)
  VMG_ASSIGN_OR_RETURN(Host source, store_.GetHost(vm.host_id));
  VMG_ASSIGN_OR_RETURN(Host target, store_.GetHost(m.target_host_id));
  auto on_target = ReportedState(target, vm.id);
  if (!on_target.ok())
    return on_target.error().Wrap("asking target host " + target.name + " about the VM");
  if (*on_target == "running" || (m.cold && *on_target == "stopped")) {
    // FinishIncoming ran: the target's copy is the VM now; the source's
    // (paused since the switchover) goes.
    if (auto moved = store_.FinishMigration(vm.id); !moved.ok()) return moved.error();
    if (Status st = agents_.ConfirmMigrateOut(source, vm.id, true); !st.ok())
      spdlog::warn("VM {}: removing the migrated-out copy on {}: {}", vm.id, source.name,
                   st.error().message);
    spdlog::info("interrupted migration of VM {}: it runs on {}, its new host", vm.id, target.name);
    return Status::Ok();
  }
  // Not started on the target: the source's copy lives on. The incoming
  // copy goes first, so a MigrateOut still under way cannot complete.
  if (!on_target->empty())
    if (Status st = agents_.AbortIncoming(target, vm.id);
        !st.ok() && st.error().code != ErrorCode::kNotFound)
      return st.error().Wrap("aborting the incoming copy on host " + target.name);
  Status resumed = agents_.ConfirmMigrateOut(source, vm.id, false);
  if (!resumed.ok() && resumed.error().code != ErrorCode::kFailedPrecondition &&
      resumed.error().code != ErrorCode::kNotFound)
    spdlog::warn("VM {}: resuming it on {}: {}", vm.id, source.name, resumed.error().message);
  std::string state = m.cold ? "stopped" : "running";
  if (auto now = ReportedState(source, vm.id); now.ok())
    if (auto s = ParseVmState(*now); s.ok() && !IsTransitional(*s)) state = *now;
  VMG_RETURN_IF_ERROR(store_.AbortMigration(
      vm.id, state,
      "the migration to host " + target.name + " was interrupted; the VM stays on " + source.name));
  spdlog::info("interrupted migration of VM {}: it stays on {}", vm.id, source.name);
  return Status::Ok();
}

void MigrationService::RecordEvent(Event event) {
  // The migration has happened (or failed) either way: a lost event is
  // counted, not returned.
  auto id = store_.AppendEvent(event);
  if (!id.ok()) failed_writes_.Count(id.error(), "event " + event.kind + " of VM " + event.vm_id);
}

}  // namespace vmgrid
