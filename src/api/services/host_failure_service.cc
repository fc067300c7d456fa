#include "api/services/host_failure_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "common/util.h"

namespace vmgrid {

Status CheckHostFailureOptions(const HostFailureOptions& o) {
  if (o.suspect_after_ms <= 0 || o.failed_after_ms <= o.suspect_after_ms)
    return MakeError(ErrorCode::kInvalidArgument,
                     "--host-failed-after must be longer than --host-suspect-after (> 0)");
  if (o.lease_ms < 3000)
    return MakeError(ErrorCode::kInvalidArgument,
                     "--host-lease must be at least 3s (agents heartbeat every 2s)");
  if (o.grace_ms < 1000)
    return MakeError(ErrorCode::kInvalidArgument, "--host-lease-grace must be at least 1s");
  if (o.lease_ms + o.grace_ms > o.failed_after_ms)
    return MakeError(ErrorCode::kInvalidArgument,
                     "--host-failed-after must be at least --host-lease + --host-lease-grace "
                     "(a host's VMs are recovered only after its lease ran out and it fenced "
                     "them: docs/host-failure.md)");
  return Status::Ok();
}

bool StartsFromDurable(const Vm& vm) {
  return vm.state == "stopped" && vm.error.find(kStartsFromDurable) != std::string::npos;
}

namespace {

// A recovery that moves the VM stopped (its note says so: also after a
// restart of the controller, from the record's error text).
bool KeepsStopped(const std::string& note) {
  return note.find(kStartsFromDurable) != std::string::npos;
}

}  // namespace

HostFailureService::HostFailureService(Store& store, const Clock& monotonic,
                                       HostFailureOptions options, InFlightFn in_flight,
                                       RecoverFn recover)
    : store_(store),
      monotonic_(monotonic),
      options_(options),
      in_flight_(std::move(in_flight)),
      recover_(std::move(recover)),
      started_ms_(monotonic.NowMs()) {}

bool HostFailureService::FailedLocked(const Host& host) const {
  return host.failed_ms > 0 || declared_.count(host.id) > 0;
}

Result<HostFailureService::Renewal> HostFailureService::Renew(
    const Host& host, const std::vector<VmStatus>& reported) {
  std::lock_guard<std::mutex> l(mu_);
  // Noted before the lease is granted: the controller's count starts after
  // the agent's (which starts when it sent this heartbeat).
  last_heard_[host.id] = monotonic_.NowMs();
  // The time this controller wrote: not another controller's heartbeat.
  seen_heartbeat_[host.id] = host.last_heartbeat_ms;
  Renewal r;
  r.lease_ms = options_.lease_ms;
  if (!FailedLocked(host)) return r;
  // Back after being declared failed: every VM it still runs whose record
  // moved to another host, or was marked failed on this one, is stale.
  for (const auto& v : reported) {
    auto vm = store_.GetVm(v.id, "");
    if (!vm.ok()) continue;  // no record: left alone, as always
    if (vm->host_id != host.id || vm->state == "error") r.stale_vms.push_back(v.id);
  }
  if (r.stale_vms.empty()) {
    VMG_RETURN_IF_ERROR(store_.ClearHostFailed(host.id));
    declared_.erase(host.id);
    // event: host_returned (host.id)
    spdlog::info("host {} is back after its failure and runs no stale VM: it takes VMs again",
                 host.name);
  } else {
    spdlog::warn("host {} is back after its failure: it must destroy {} stale VM copies ({})",
                 host.name, r.stale_vms.size(), r.stale_vms.front());
  }
  return r;
}

void HostFailureService::CountFromNow() {
  std::lock_guard<std::mutex> l(mu_);
  started_ms_ = monotonic_.NowMs();
  last_heard_.clear();
  seen_heartbeat_.clear();
  declared_.clear();
  waiting_room_.clear();
}

std::vector<std::string> HostFailureService::Check(const std::function<bool()>& still_leader) {
  std::vector<std::string> failed_now;
  // The heartbeat times kept in memory (Store::HeartbeatHost) reach the
  // database here; the decisions below use this controller's own times.
  if (Status st = store_.FlushHeartbeats(); !st.ok())
    spdlog::warn("writing heartbeat times: {}", st.error().message);
  auto hosts = store_.ListHosts();
  if (!hosts.ok()) {
    spdlog::warn("host failure check: {}", hosts.error().message);
    return failed_now;
  }
  auto stopping = [&] {
    if (!still_leader || still_leader()) return false;
    spdlog::info("host failure check: stopping this pass (no longer the leader, or stopping)");
    return true;
  };
  // First the hosts that turn suspect. Marking them is a store write each
  // (a durable commit on PostgreSQL), made without mu_: every heartbeat's
  // Renew takes mu_, and with thousands of hosts turning suspect at once
  // (a controller that fell behind) heartbeats queued behind these writes
  // made more hosts suspect in turn. Suspicion grants and takes no lease, so
  // it needs no ordering with Renew; failure (below) does, under mu_.
  std::vector<std::pair<Host*, int64_t>> suspects;  // with how long silent
  {
    std::lock_guard<std::mutex> l(mu_);
    const int64_t now = monotonic_.NowMs();
    for (Host& h : *hosts) {
      // A heartbeat another controller received (and wrote): heard now. The
      // first value seen is only noted (it may be old: count from the start).
      auto seen = seen_heartbeat_.find(h.id);
      if (seen == seen_heartbeat_.end()) {
        seen_heartbeat_[h.id] = h.last_heartbeat_ms;
      } else if (seen->second != h.last_heartbeat_ms) {
        seen->second = h.last_heartbeat_ms;
        last_heard_[h.id] = std::max(last_heard_[h.id], now);
      }
      if (h.state != "up") continue;
      auto it = last_heard_.find(h.id);
      const int64_t silent = now - (it == last_heard_.end() ? started_ms_ : it->second);
      // Suspect: missed heartbeats for suspect_after (placement skips it).
      if (silent >= options_.suspect_after_ms) suspects.emplace_back(&h, silent);
    }
  }
  for (auto [h, silent] : suspects) {
    if (stopping()) return failed_now;
    auto marked = store_.MarkHostDown(h->id);
    if (!marked.ok()) {
      spdlog::warn("marking host {} suspect: {}", h->name, marked.error().message);
      continue;
    }
    if (!*marked) continue;
    h->state = "down";
    // event: host_suspect (h.id)
    spdlog::warn("host {} missed its heartbeats for {} ms: suspect (no new VMs placed there)",
                 h->name, silent);
  }
  // Then failures and recovery, on the times as they are now: a host heard
  // while the marks were written is not failed.
  std::lock_guard<std::mutex> l(mu_);
  const int64_t now = monotonic_.NowMs();
  for (Host& h : *hosts) {
    if (h.state == "up") continue;
    if (stopping()) break;
    auto it = last_heard_.find(h.id);
    const int64_t silent = now - (it == last_heard_.end() ? started_ms_ : it->second);
    if (!FailedLocked(h)) {
      if (silent < options_.failed_after_ms) continue;
      auto marked = store_.MarkHostFailed(h.id);
      if (!marked.ok()) {
        spdlog::warn("declaring host {} failed: {}", h.name, marked.error().message);
        continue;
      }
      if (!*marked) continue;  // it came back meanwhile (its heartbeat waits for us)
      declared_.insert(h.id);
      failed_now.push_back(h.id);
      // event: host_failed (h.id)
      spdlog::error("host {} is failed: no heartbeat for {} ms; recovering its VMs", h.name,
                    silent);
    }
    // The lease the host last got ran out grace ago: its agent fenced its VMs
    // (failed_after >= lease + grace; checked again here, as the safety rests
    // on it).
    if (silent < options_.lease_ms + options_.grace_ms) continue;
    RecoverHostLocked(h, silent);
  }
  return failed_now;
}

std::string HostFailureService::DurableVersionOf(const Vm& vm) const {
  if (vm.workspace_id.empty()) return "";
  auto ws = store_.GetWorkspace(vm.workspace_id, "");
  if (!ws.ok() || ws->durable_version == 0) return "";
  return "durable version " + std::to_string(ws->durable_version) + " (taken at " +
         FormatTimeMs(ws->durable_ms) + ")";
}

void HostFailureService::RecoverHostLocked(const Host& host, int64_t silent_ms) {
  auto vms = store_.ListVmsOnHost(host.id);
  if (!vms.ok()) {
    spdlog::warn("recovering the VMs of host {}: {}", host.name, vms.error().message);
    return;
  }
  const std::string failed =
      "host " + host.name + " failed (no heartbeat for " + std::to_string(silent_ms / 1000) + " s)";
  for (const Vm& vm : *vms) {
    // An operation in flight settles first; a migration is MigrationService's
    // to settle (it fails against a dead host). Both are retried next pass.
    if (in_flight_(vm.id) || vm.state == "migrating") continue;
    if (vm.state == "error") {
      // Waiting for room: known here, or (after a restart of this
      // controller, or another one leading now) by what its record says.
      auto w = waiting_room_.find(vm.id);
      if (w == waiting_room_.end()) {
        const size_t at = vm.error.find(kWaitingForRoom);
        if (vm.restart != "on-host-failure" || at == std::string::npos) continue;
        w = waiting_room_.emplace(vm.id, vm.error.substr(0, at)).first;
      }
      if (recover_(vm, w->second, KeepsStopped(w->second)).ok()) waiting_room_.erase(w);
      continue;
    }
    const bool ran = vm.state != "stopped" && vm.state != "suspended";
    std::string note;
    bool recover = false;
    if (vm.state == "deleting") {
      // Not removed: the record makes the host destroy its copy when it
      // returns (a VM without a record would be left alone there).
      note = failed + " while the VM was being deleted; run `vmgrid vm rm` again";
    } else if (vm.restart != "on-host-failure") {
      note = failed + "; restart policy never: the VM is lost with everything on that host " +
             "(its disk and memory); delete it with `vmgrid vm rm`";
    } else if (vm.disk == "persistent" && DurableVersionOf(vm).empty()) {
      note = failed +
             "; its workspace was on that host's disk and has no durable version on the image "
             "server, so it is lost and the VM was not " +
             (ran ? "restarted" : "kept");
    } else if (vm.disk == "persistent" && !ran) {
      // Kept as it was: stopped, holding room on another host, its workspace
      // restored from the durable version only when it is started.
      note = failed + " while the VM was " + vm.state + "; moved, stopped, to another host " +
             "(restart policy on-host-failure) with its workspace's " + DurableVersionOf(vm) +
             ": its writes on " + host.name + " after that version" +
             (vm.state == "suspended" ? " and its suspended memory state are" : " are") + " lost" +
             kStartsFromDurable;
      recover = true;
    } else if (vm.disk == "persistent") {
      note = failed + "; restarted elsewhere from its workspace's " + DurableVersionOf(vm) +
             " (restart policy on-host-failure): its writes since then on " + host.name +
             " are lost";
      recover = true;
    } else if (!ran) {
      note = failed + " while the VM was " + vm.state + "; its disk" +
             (vm.state == "suspended" ? " and checkpoint were on that host and are"
                                      : " was on that host and is") +
             " lost, so it was not restarted";
    } else {
      note = failed + "; restarted elsewhere from its image (restart policy on-host-failure): " +
             "everything since its start on " + host.name + " is lost";
      recover = true;
    }
    // Out of `error` first: that releases its room on the failed host.
    // Only the record as listed: another controller (a leader whose term
    // ended during this pass, docs/ha.md) may have moved it meanwhile.
    bool changed = false;
    Status st = store_.ModifyVm(vm.id, [&](Vm& v) {
      if (v.host_id != vm.host_id || v.state != vm.state) return;
      v.state = "error";
      v.error = note;
      changed = true;
    });
    if (!st.ok()) {
      spdlog::warn("recording VM {} failed with its host: {}", vm.id, st.error().message);
      continue;
    }
    if (!changed) continue;
    // event: vm_host_failed (vm.id, note)
    spdlog::warn("VM {} ({}): {}", vm.name, vm.id, note);
    if (!recover) continue;
    Vm failed_vm = vm;
    failed_vm.state = "error";
    failed_vm.error = note;
    if (Status r = recover_(failed_vm, note, KeepsStopped(note)); !r.ok()) {
      const std::string waiting = note + kWaitingForRoom + r.error().message;
      (void)store_.ModifyVm(vm.id, [&](Vm& v) { v.error = waiting; });
      waiting_room_[vm.id] = note;
      spdlog::warn("VM {}: no host to restart it on yet: {}", vm.id, r.error().message);
    } else {
      // event: vm_recovered (vm.id)
    }
  }
}

}  // namespace vmgrid
