#include "api/services/host_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <utility>

#include "api/host_credentials.h"
#include "api/placement.h"
#include "api/services/agent_spec.h"
#include "api/services/host_failure_service.h"
#include "api/vnet_plan.h"
#include "common/host_port.h"
#include "common/http_json.h"
#include "common/tls.h"
#include "common/util.h"
#include "common/vm_state.h"
#include "proto/blob_ref.h"
#include "proto/checkpoint_ref.h"

namespace vmgrid {

using nlohmann::json;

HostService::HostService(Store& store, CapacityIndex& index, const HostCredentials& credentials,
                         const Clock& clock, InFlightFn in_flight, bool tls)
    : store_(store),
      index_(index),
      credentials_(credentials),
      clock_(clock),
      in_flight_(std::move(in_flight)),
      tls_(tls) {}

Result<json> HostService::Register(const std::string& name) {
  VMG_RETURN_IF_ERROR(ValidateName("host", name));
  auto existing = store_.GetHost(name);
  if (existing.ok() && existing->state == "up")
    return MakeError(ErrorCode::kAlreadyExists,
                     "host '" + name +
                         "' is registered and up; its agent already holds its "
                         "credentials (STATE/host-credentials.json)");
  spdlog::info("host {} registered with the join token", name);
  return json{{"name", name},
              {"host_token", credentials_.HostToken(name)},
              {"agent_api_token", credentials_.AgentApiToken(name)}};
}

Status HostService::CheckAgentUrl(const std::string& url) const {
  const bool https = url.rfind("https://", 0) == 0;
  if (!https && url.rfind("http://", 0) != 0)
    return MakeError(ErrorCode::kInvalidArgument, "agent url must be http(s)://HOST:PORT[/PATH]");
  // HOST:PORT, then an optional path prefix (simulated hosts: /sim/NAME).
  std::string rest = url.substr(https ? 8 : 7);
  rest = rest.substr(0, rest.find('/'));
  auto where = ParseHostPort(rest, "agent url");
  if (!where.ok())
    return MakeError(ErrorCode::kInvalidArgument, "agent url must be http(s)://HOST:PORT[/PATH]");
  if (tls_ && !https && !IsLoopbackHost(where->host))
    return MakeError(ErrorCode::kInvalidArgument,
                     "this controller talks to agents over TLS: the agent url must be https:// "
                     "(plain http only on loopback)");
  return Status::Ok();
}

Result<HeartbeatReply> HostService::Heartbeat(const std::string& caller, const HostReport& report,
                                              const std::string& peer_ip) {
  if (report.name != caller)
    return MakeError(ErrorCode::kPermissionDenied,
                     "this credential belongs to host '" + caller + "', not '" + report.name + "'");
  VMG_RETURN_IF_ERROR(CheckAgentUrl(report.url));
  // The VM list: in full (kept with its digest for the next heartbeats), or
  // named by the digest this controller gave it. Checked before anything is
  // written: a refused heartbeat counts for nothing, and the agent sends
  // the list in full at once.
  std::shared_ptr<const std::vector<VmStatus>> reported;
  std::string digest;
  if (!report.vms_same_as.empty()) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = reported_.find(report.name);
    if (it == reported_.end() || it->second.digest != report.vms_same_as) {
      ++beats_unknown_digest_;
      return MakeError(ErrorCode::kFailedPrecondition,
                       "this controller does not know the VM list with digest " +
                           report.vms_same_as + " of host " + report.name +
                           "; send the list in full");
    }
    reported = it->second.vms;
    digest = it->second.digest;
    ++beats_same_as_;
  } else {
    json all = json::array();
    for (const auto& v : report.vms) all.push_back(ToJson(v));
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016zx", std::hash<std::string>{}(all.dump()));
    digest = hex;
    reported = std::make_shared<const std::vector<VmStatus>>(report.vms);
    std::lock_guard<std::mutex> l(mu_);
    reported_[report.name] = {digest, reported};
    ++beats_full_;
  }
  const HostCapacityReport& cap = report.capacity;
  HostCapacity hc{cap.vcpus, cap.memory_mb, cap.disk_mb, cap.kvm};
  hc.disk_total_bytes = cap.disk_total_bytes;
  hc.disk_free_bytes = cap.disk_free_bytes;
  hc.site = cap.site;
  hc.network = cap.network;
  hc.arch = cap.arch;
  if (report.tunnel) {
    // The peers will send this network's traffic there: only to the
    // address this host speaks from (a dual-stack listener names IPv4
    // peers ::ffff:a.b.c.d).
    const std::string from = peer_ip.starts_with("::ffff:") ? peer_ip.substr(7) : peer_ip;
    if (report.tunnel->ip == from) {
      hc.tunnel_ip = report.tunnel->ip;
      hc.tunnel_port = report.tunnel->port;
    } else {
      std::lock_guard<std::mutex> l(mu_);
      if (std::exchange(refused_tunnels_[report.name], report.tunnel->ip) != report.tunnel->ip)
        spdlog::warn(
            "host {}: ignoring its tunnel address {}: its heartbeats come from {} (an agent's "
            "--tunnel-listen must be the address it reaches the controller from)",
            report.name, report.tunnel->ip, from);
    }
  }
  VMG_ASSIGN_OR_RETURN(Host host, store_.HeartbeatHost(report.name, report.url, hc));
  // The lease first (docs/host-failure.md); a failed host that returned is
  // told which VMs are no longer its own, and those are not reconciled.
  HostFailureService::Renewal renewal;
  if (failures_) {
    VMG_ASSIGN_OR_RETURN(renewal, failures_->Renew(host, *reported));
  }
  std::vector<VmStatus> own;
  for (const auto& v : *reported)
    if (std::find(renewal.stale_vms.begin(), renewal.stale_vms.end(), v.id) ==
        renewal.stale_vms.end())
      own.push_back(v);
  // A report that already matched the records, while no record on the host
  // changed since, needs no reconciling (most heartbeats of a steady grid).
  // Without stale VMs the list is the whole report, whose digest is known.
  size_t own_digest = std::hash<std::string>{}(digest);
  if (own.size() != reported->size()) {
    json vms = json::array();
    for (const auto& v : own) vms.push_back(ToJson(v));
    own_digest = std::hash<std::string>{}(vms.dump());
  }
  const uint64_t version = index_.VmVersion(host.id);
  bool same;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = reconciled_.find(host.id);
    same = it != reconciled_.end() && it->second == std::make_pair(own_digest, version) &&
           version != 0;
  }
  std::vector<std::string> unrecorded;
  if (!same) {
    bool clean = Reconcile(host, own, clock_.NowMs(), &unrecorded) && renewal.stale_vms.empty();
    std::lock_guard<std::mutex> l(mu_);
    if (clean)
      reconciled_[host.id] = {own_digest, version};
    else
      reconciled_.erase(host.id);
  }
  if (report.images.is_object()) NoteHostImages(host.id, report.images);
  if (report.networks.is_object()) {
    std::lock_guard<std::mutex> l(mu_);
    host_networks_[host.id] = report.networks;
  }
  HeartbeatReply reply{host.id, std::nullopt};
  reply.lease_ms = renewal.lease_ms;
  reply.stale_vms = std::move(renewal.stale_vms);
  reply.stale_vms.insert(reply.stale_vms.end(), unrecorded.begin(), unrecorded.end());
  reply.vms_digest = digest;
  // Without its plan a host keeps the last one it had: say nothing rather
  // than something wrong.
  if (auto plan = NetworkPlanFor(host); plan.ok())
    reply.networks = std::move(*plan);
  else
    spdlog::warn("no network plan for host {}: {}", host.name, plan.error().message);
  return reply;
}

Result<HostNetworkPlan> HostService::NetworkPlanFor(const Host& host) {
  // A safety net for what the generation cannot see (another controller
  // writing the same database).
  constexpr int64_t kReplanMs = 30'000;
  const int64_t generation = store_.network_generation();
  const int64_t now = clock_.NowMs();
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = plans_.find(host.id);
    if (it != plans_.end() && it->second.generation == generation &&
        now - it->second.computed_ms < kReplanMs &&
        it->second.plan.host_number == static_cast<uint32_t>(host.tunnel_number))
      return it->second.plan;
  }
  VMG_ASSIGN_OR_RETURN(NetworkPlanInputs in, store_.NetworkPlanInputsForHost(host.id));
  HostNetworkPlan out;
  out.host_number = static_cast<uint32_t>(host.tunnel_number);
  auto planned = PlanNetworks(in.networks, in.nics, in.endpoints);
  for (const PlannedNetwork& pn : planned[host.id]) {
    NetworkPlan n;
    n.vni = pn.vni;
    n.name = pn.name;
    n.subnet = pn.subnet;
    n.egress = pn.egress;
    n.key_epoch = pn.key_epoch;
    n.key_hex = pn.key_hex;
    for (const auto& p : pn.peers)
      n.peers.push_back({p.endpoint.host_number, p.endpoint.ip, p.endpoint.port});
    for (const auto& r : pn.remote_nics) {
      auto ep = in.endpoints.find(r.host_id);
      if (ep == in.endpoints.end()) continue;  // PlanNetworks only lists NICs of peers
      n.remote_nics.push_back({r.nic.mac, r.nic.ip, r.vm_name, ep->second.host_number});
    }
    out.networks.push_back(std::move(n));
  }
  std::lock_guard<std::mutex> l(mu_);
  plans_[host.id] = {generation, now, out};
  return out;
}

// Keeps the host's cache counters for `host show`, and records which images
// and dataset versions the host has exported (so it caches their chunks) in
// image_cache and dataset_cache.
void HostService::NoteHostImages(const std::string& host_id, const json& report) {
  std::vector<std::string> images;
  std::vector<std::pair<std::string, int64_t>> datasets;  // (id, version)
  if (auto ex = report.find("exports"); ex != report.end() && ex->is_array())
    for (const auto& e : *ex) {
      if (!e.is_object() || !e.contains("name") || !e["name"].is_string()) continue;
      const std::string name = e["name"].get<std::string>();
      if (auto ref = ParseExportRef(name); ref && ref->kind == "disk") {
        images.push_back(ref->image_id);
      } else if (name.rfind("ds-", 0) == 0 && ValidateName("dataset", name).ok() &&
                 e.contains("version") && e["version"].is_number_integer() &&
                 e["version"].get<int64_t>() > 0) {
        datasets.emplace_back(name, e["version"].get<int64_t>());
      }
    }
  std::vector<std::string> fresh;
  std::vector<std::pair<std::string, int64_t>> fresh_data;
  {
    std::lock_guard<std::mutex> l(mu_);
    host_images_[host_id] = report;
    for (const auto& i : images)
      if (noted_cached_.insert({i, host_id}).second) fresh.push_back(i);
    for (const auto& [d, v] : datasets)
      if (noted_cached_.insert({d + "@" + std::to_string(v), host_id}).second)
        fresh_data.emplace_back(d, v);
  }
  for (const auto& [d, v] : fresh_data) {
    const std::string key = d + "@" + std::to_string(v);
    // A report naming a dataset that is not there (deleted meanwhile, or a
    // host making one up) notes nothing: the row needs the dataset.
    if (auto ds = store_.GetDataset(d, ""); !ds.ok() || ds->id != d) continue;
    Status st = store_.NoteDatasetCached(d, v, host_id);
    if (!st.ok()) {
      failed_writes_.Count(st, "noting dataset " + key + " cached on host " + host_id);
      std::lock_guard<std::mutex> l(mu_);
      noted_cached_.erase({key, host_id});
    }
  }
  for (const auto& i : fresh) {
    if (!store_.GetImage(i, "").ok()) continue;  // an image deleted meanwhile
    Status st = store_.NoteImageCached(i, host_id);
    if (!st.ok()) {
      // Only placement's preference for hosts with a warm cache suffers;
      // forget that it was noted, so the next heartbeat tries again.
      failed_writes_.Count(st, "noting image " + i + " cached on host " + host_id);
      std::lock_guard<std::mutex> l(mu_);
      noted_cached_.erase({i, host_id});
    }
  }
}

bool HostService::Reconcile(const Host& host, const std::vector<VmStatus>& reported,
                            int64_t received_ms, std::vector<std::string>* destroy) {
  std::map<std::string, VmStatus> by_id;
  for (const auto& v : reported) by_id[v.id] = v;
  auto records = store_.ListVmsOnHost(host.id);
  if (!records.ok()) return false;
  bool clean = true;
  for (Vm vm : *records) {
    // A record changed in the last seconds may be newer than this report.
    // A migrating VM's outcome is MigrationService's to record (its
    // operation, or RecoverInterrupted after a restart): both hosts may
    // report it meanwhile.
    if (in_flight_(vm.id) || vm.updated_ms > received_ms - 5000 || vm.state == "migrating") {
      clean = false;
      by_id.erase(vm.id);  // known here: not an unrecorded VM
      continue;
    }
    auto it = by_id.find(vm.id);
    if (it == by_id.end()) {
      // Moved stopped off a failed host: created here only when started.
      if (vm.state == "error" || StartsFromDurable(vm)) continue;
      clean = false;
      if (vm.state == "deleting") {
        // The delete finished while we were away. A failed write leaves
        // the record `deleting`, and the next heartbeat tries again.
        failed_writes_.Count(store_.DeleteVm(vm.id), "deleting the record of VM " + vm.id);
        continue;
      }
      if (vm.state == "creating" && relaunch_) {
        // Accepted by a controller that stopped before it reached the agent
        // (this one, restarted, or another one on the database): done now.
        Status again = relaunch_(vm);
        if (again.ok()) {
          spdlog::info("reconcile: VM {}'s create was interrupted; creating it again on host {}",
                       vm.id, host.name);
          continue;
        }
        spdlog::warn("reconcile: VM {}'s create was interrupted: {}", vm.id, again.error().message);
      }
      vm.error = vm.state == "creating" ? "the create was interrupted (controller restart)"
                                        : "the VM is not on host " + host.name + " any more";
      vm.state = "error";
      spdlog::warn("reconcile: VM {} missing on host {}", vm.id, host.name);
      // Not clean: the next heartbeat tries again.
      failed_writes_.Count(store_.UpdateVm(vm), "marking VM " + vm.id + " failed");
      continue;
    }
    const VmStatus report = std::move(it->second);
    by_id.erase(it);  // matched: what is left in by_id afterwards has no record on this host
    // A durable version the host pushed (at an interval, or one whose
    // stop/checkpoint answer was lost); only the workspace's holder counts.
    if (!report.durable.empty() && report.durable.ref.name == vm.workspace_id) {
      auto rec = store_.RecordDurableVersion(DurableRecord(host.id, report.durable));
      failed_writes_.Count(rec.ok() ? Status::Ok() : Status(rec.error()),
                           "VM " + vm.id + ": recording its durable version");
    }
    // Agent still busy (or reporting a state that is none of ours: wait).
    if (auto s = ParseVmState(report.state); !s.ok() || IsTransitional(*s)) {
      clean = false;
      continue;
    }
    if (vm.state == "deleting") {
      // An accepted delete that did not reach the host (VmService::Delete
      // leaves the record so): the host destroys the VM now, and the next
      // heartbeat that no longer reports it deletes the record (above).
      clean = false;
      if (destroy) {
        spdlog::info("reconcile: VM {} is being deleted but still on host {}: destroying it", vm.id,
                     host.name);
        destroy->push_back(vm.id);
      }
      continue;
    }
    if (report.state != vm.state) {
      clean = false;
      spdlog::info("reconcile: VM {} is {} on host {} (record said {})", vm.id, report.state,
                   host.name, vm.state);
      const std::string was = vm.state;
      vm.state = report.state;
      vm.error = report.error;
      if (vm.create_ms == 0) vm.create_ms = report.ready_ms;
      Status st = store_.UpdateVm(vm);
      if (!st.ok() && st.error().code == ErrorCode::kResourceExhausted && was == "error") {
        // Back from `error`, but its room went to another VM meanwhile: this
        // copy is stopped (a workspace file stays) rather than run outside
        // any reservation; the record stays `error` and says why.
        spdlog::warn("reconcile: VM {} runs again on host {} but {}: destroying this copy", vm.id,
                     host.name, st.error().message);
        const std::string why = "it ran again on host " + host.name +
                                " after an error, but its room there had been given to other "
                                "VMs; that copy was stopped";
        failed_writes_.Count(store_.ModifyVm(vm.id,
                                             [&](Vm& v) {
                                               if (v.state == "error") v.error = why;
                                             }),
                             "noting why VM " + vm.id + " stays in error");
        if (destroy) destroy->push_back(vm.id);
        continue;
      }
      // Not clean: the next heartbeat tries again.
      failed_writes_.Count(st, "recording VM " + vm.id + "'s state");
    }
  }
  // What is left runs on the host without a record here. A record on
  // another host is that host's business (a failed host's stale copies are
  // HostFailureService's); a VM with no record at all holds memory outside
  // any reservation, and nothing would ever stop it.
  std::map<std::string, int64_t> unrecorded;
  for (const auto& [id, v] : by_id) {
    if (IsImageCheckpointVm(id) || in_flight_(id)) continue;
    auto record = store_.GetVm(id, "");
    if (!record.ok() && record.error().code == ErrorCode::kNotFound) unrecorded[id] = received_ms;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    auto& seen = unrecorded_[host.id];
    for (auto& [id, first] : unrecorded)
      if (auto it = seen.find(id); it != seen.end()) first = it->second;
    seen = unrecorded;  // a VM no longer reported is forgotten
    if (seen.empty()) unrecorded_.erase(host.id);
  }
  for (const auto& [id, first] : unrecorded) {
    clean = false;  // looked at again at every heartbeat until it is gone
    if (received_ms - first >= kUnrecordedGraceMs && destroy) {
      spdlog::warn("reconcile: host {} runs VM {} that has had no record for {} s: destroying it",
                   host.name, id, (received_ms - first) / 1000);
      destroy->push_back(id);
    } else if (first == received_ms) {
      spdlog::warn(
          "reconcile: host {} runs VM {} that has no record; it is destroyed if it still "
          "has none in {} s",
          host.name, id, kUnrecordedGraceMs / 1000);
    }
  }
  return clean;
}

Result<json> HostService::List(bool admin, const PageRequest& page) {
  VMG_ASSIGN_OR_RETURN(auto hosts, store_.ListHostsPage(page));
  json out = json::array();
  for (const auto& h : hosts.items) out.push_back(HostJson(h, admin));
  json answer{{"hosts", std::move(out)}};
  AddNext(answer, hosts.next);
  return answer;
}

Result<json> HostService::Get(const std::string& ref, bool admin) {
  VMG_ASSIGN_OR_RETURN(Host h, store_.GetHost(ref));
  return HostJson(h, admin);
}

json HostService::HostJson(const Host& h, bool admin) {
  json j = {{"id", h.id},
            {"name", h.name},
            // Store "down" is suspect until declared failed (docs/host-failure.md);
            // a failed host that heartbeats again is "returning" until its
            // stale VM copies are gone.
            {"state", h.failed_ms > 0 ? (h.state == "up" ? "returning" : "failed")
                                      : (h.state == "down" ? "suspect" : h.state)},
            {"draining", h.draining},
            {"vcpus", h.vcpus},
            {"memory_mb", h.memory_mb},
            {"disk_mb", h.disk_mb},
            {"kvm", h.kvm},
            {"site", h.site},
            {"network", h.network},
            {"arch", h.arch},
            {"free_vcpus", std::max(0, h.vcpus - h.reserved_vcpus)},
            {"free_memory_mb", std::max<int64_t>(0, h.memory_mb - h.reserved_memory_mb)},
            {"disk_total_bytes", h.disk_total_bytes},
            {"disk_free_bytes", h.disk_free_bytes},
            {"reserved_disk_bytes", h.reserved_disk_bytes},
            {"last_heartbeat", FormatTimeMs(h.last_heartbeat_ms)}};
  if (h.failed_ms > 0) j["failed_at"] = FormatTimeMs(h.failed_ms);
  if (admin) {
    j["url"] = h.url;
    // Where its agent's virtual-network tunnels listen (number 0: not yet numbered).
    j["tunnel"] = {{"number", h.tunnel_number}, {"ip", h.tunnel_ip}, {"port", h.tunnel_port}};
    auto vms = store_.ListVmsOnHost(h.id);
    j["vm_count"] = vms.ok() ? vms->size() : 0;
    // A drain running now: its operation, with each VM's progress.
    if (drain_status_)
      if (json drain = drain_status_(h.id); !drain.is_null()) j["drain"] = std::move(drain);
    std::lock_guard<std::mutex> l(mu_);
    if (auto it = host_images_.find(h.id); it != host_images_.end()) j["images"] = it->second;
    if (auto it = host_networks_.find(h.id); it != host_networks_.end()) j["networks"] = it->second;
  }
  return j;
}

}  // namespace vmgrid
