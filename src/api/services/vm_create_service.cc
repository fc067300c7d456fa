#include "api/services/vm_create_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "api/agent_client.h"
#include "api/controller_metrics.h"
#include "api/op_queue.h"
#include "api/placement.h"
#include "api/services/agent_spec.h"
#include "api/services/api_views.h"
#include "api/services/image_service.h"
#include "api/services/network_service.h"
#include "api/services/vm_service.h"
#include "api/services/workspace_service.h"
#include "common/http_json.h"
#include "common/util.h"
#include "proto/checkpoint_ref.h"
#include "proto/vm_spec.h"

namespace vmgrid {

using nlohmann::json;

VmCreateService::VmCreateService(Store& store, const CapacityIndex& index, AgentClient& agents,
                                 OpQueue& ops, const Clock& clock, Admission& creates,
                                 Admission& long_ops, VmService& vms, ImageService& images,
                                 NetworkService& networks, WorkspaceService& workspaces,
                                 ApiViews& views, bool image_server)
    : store_(store),
      index_(index),
      agents_(agents),
      ops_(ops),
      clock_(clock),
      creates_(creates),
      long_ops_(long_ops),
      vms_(vms),
      images_(images),
      networks_(networks),
      workspaces_(workspaces),
      views_(views),
      image_server_(image_server) {}

Result<json> VmCreateService::Create(const Caller& c, const CreateVmRequest& r) {
  const int64_t started = clock_.NowMs();
  Vm vm;
  vm.id = NewId("vm");
  vm.name = r.name.empty() ? vm.id : r.name;
  vm.owner_id = c.user.id;
  vm.disk = r.disk;
  vm.start = r.start;
  vm.restart = r.restart;
  vm.state = "creating";
  vm.created_ms = vm.updated_ms = started;
  vm.network = r.network;
  // Network cards: the caller's (or shared) virtual networks, one card each;
  // the Store gives each its address with the VM's insert.
  VMG_ASSIGN_OR_RETURN(vm.net_ids, networks_.Resolve(c, r.nets));

  VMG_ASSIGN_OR_RETURN(Source src, ResolveSource(c, r));
  const Image& image = src.image;
  vm.image_id = image.id;
  VMG_RETURN_IF_ERROR(Size(r, src, vm));
  vm.disk_base =
      vm.disk != "clone"
          ? ""
          : src.disk_base.value_or(DiskBaseFor(
                vm, image,
                vm.start == "resume" && src.checkpoint_dir == image.dir + "/checkpoint"));
  // Datasets to attach (docs/datasets.md, "Attaching"): the caller's own,
  // resolved to their versions now; a new one is created with the VM.
  std::vector<VmDataAttachment> data;
  if (!r.data.empty()) {
    if (!image_server_)
      return MakeError(ErrorCode::kFailedPrecondition,
                       "datasets live on the image server; this controller has none "
                       "(--image-server)");
    VMG_ASSIGN_OR_RETURN(data, ResolveDataRequests(store_, c.user.id, r.data));
    for (const VmDataAttachment& d : data) {
      if (r.gang() && d.rw)
        return MakeError(
            ErrorCode::kInvalidArgument,
            "the VMs of a gang attach datasets read-only; dataset " + d.dataset + " is read-write");
      // What a read-write overlay can grow to is held on the host.
      if (d.rw) vm.disk_bytes += d.blank_mb > 0 ? d.blank_mb << 20 : d.size_bytes;
    }
  }
  std::vector<std::string> candidates = src.candidates;
  VMG_ASSIGN_OR_RETURN(WorkspaceClaim claim, ClaimWorkspace(c, r, vm, image, started, candidates));

  if (!r.future_host.empty()) {
    if (!candidates.empty() && candidates[0] != r.future_host)
      return MakeError(ErrorCode::kInvalidArgument,
                       "the workspace lives on another host than the future");
    if (!store_.GetHost(r.future_host).ok())
      return MakeError(ErrorCode::kNotFound,
                       "future " + r.future + " is no longer valid: its host is gone");
    candidates = {r.future_host};
  }
  // Held until the agent has answered for every VM of this create.
  VMG_ASSIGN_OR_RETURN(Admission::SlotPtr slot, creates_.Acquire(c.user.id, r.count, c.admin()));
  // Publishing a checkpoint is a long operation of its own.
  Admission::SlotPtr publish_slot;
  if (src.publish_from) {
    VMG_ASSIGN_OR_RETURN(publish_slot, long_ops_.Acquire(c.user.id, 1, c.admin()));
  }
  vm.data = VmDataJson(data);
  if (r.gang()) {
    if (claim.workspace || !r.from_checkpoint.empty() || !r.future.empty())
      return MakeError(ErrorCode::kInvalidArgument,
                       "a gang (count) takes non-persistent VMs of an image; drop "
                       "disk=persistent, workspace, from_checkpoint and from_future");
    return CreateGang(r, vm, image, src.checkpoint_dir, started, slot);
  }
  // Placement ranks the hosts of the capacity index (api/placement.h); the
  // store re-checks and reserves.
  // Why the candidates are what they are (the vm.placed event).
  const std::string pinned = !r.future_host.empty() ? "pinned to the host of future " + r.future
                             : claim.workspace      ? "pinned to the host of its workspace"
                             : !candidates.empty()  ? "limited to the hosts holding its source"
                                                    : "";
  if (candidates.empty()) {
    PlacementRequest want{image.id, vm.vcpus, vm.memory_mb,   vm.disk_bytes,
                          r.policy, r.site,   r.host_network, {}};
    // Hosts already caching its datasets first (docs/datasets.md, "Placement").
    for (const VmDataAttachment& d : data)
      if (d.version > 0) want.datasets.push_back(d.dataset_id);
    candidates = index_.Rank(want);
    if (candidates.empty() && resync_when_empty_) {
      const int64_t now = clock_.NowMs();
      int64_t last = last_resync_ms_.load();
      if (now - last >= 500 && last_resync_ms_.compare_exchange_strong(last, now) &&
          store_.Resync().ok())
        candidates = index_.Rank(want);
    }
    std::stable_partition(candidates.begin(), candidates.end(), [&](const std::string& h) {
      return std::find(r.avoid_hosts.begin(), r.avoid_hosts.end(), h) == r.avoid_hosts.end();
    });
    if (candidates.empty()) {
      VMG_ASSIGN_OR_RETURN(auto hosts, store_.ListHosts());
      if (hosts.empty())
        return MakeError(ErrorCode::kResourceExhausted,
                         "no host has registered; start an agent (`vmgrid agent`)");
      std::vector<std::string> all;
      for (const auto& h : hosts) all.push_back(h.id);
      Error why = ExplainNoPlacement(vm, all, r.site, r.host_network);
      if (metrics_) metrics_->CountPlacement("single", why);
      return why;
    }
  }
  VMG_RETURN_IF_ERROR(CreateNewDatasets(store_, c.user.id, data));
  vm.data = VmDataJson(data);
  auto placed = store_.PlaceAndInsertVm(vm, candidates);
  if (!placed.ok()) DropNewDatasets(store_, data);
  if (metrics_) metrics_->CountPlacement("single", placed.ok() ? Status::Ok() : placed.error());
  if (!placed.ok()) {
    if (placed.error().code != ErrorCode::kResourceExhausted) return placed.error();
    Error why = ExplainNoPlacement(vm, candidates, "", "");
    if (!r.future_host.empty()) why = why.Wrap("future " + r.future + " is no longer valid");
    return why;
  }
  vm = *placed;
  VMG_RETURN_IF_ERROR(LinkWorkspace(vm, claim));
  auto host = store_.GetHost(vm.host_id);
  RecordPlaced(vm, candidates, pinned.empty() ? r.policy : "", pinned,
               host.ok() ? &*host : nullptr);
  json answer = views_.VmJson(vm, &image, host.ok() ? &*host : nullptr);
  if (!src.publish_from) {
    Launch(vm, image, src.checkpoint_dir, claim, started, host.ok() ? &*host : nullptr, slot);
    return answer;
  }
  // The VM is `creating` while its source's checkpoint is published; the
  // publish is an operation of its own, named in the answer.
  OpQueue::Operation op;
  op.kind = "checkpoint_publish";
  op.owner_id = c.user.id;
  op.vm_id = src.publish_vm;
  answer["operation"] = ops_.Start(op);
  ops_.Run(vm.id, [this, op_id = op.id, src_host = *src.publish_from, src_id = src.publish_vm, vm,
                   image = src.image, claim, started, h = host.ok() ? *host : Host{}, slot,
                   publish_slot]() mutable {
    auto dir = agents_.Checkpoint(src_host, src_id, /*publish=*/true, 600);
    json blobs = json::parse(image.blobs, nullptr, false);
    if (dir.ok() && !blobs.is_object())
      dir = MakeError(ErrorCode::kInternal,
                      "host " + src_host.name + " did not publish the checkpoint of VM " + src_id);
    publish_slot.reset();
    if (!dir.ok()) {
      Error e = dir.error().Wrap("checkpoint of VM " + src_id);
      ops_.Finish(op_id, e);
      ReleaseWorkspace(claim);
      vms_.RecordOutcome(vm.id, e, "error", started, true);
      return;
    }
    json published = ToJson(*dir);
    published.erase("dir");  // the operation's result: the two versions
    ops_.Finish(op_id, published);
    blobs.update(published);  // this create's copy of the image only, not stored
    image.blobs = blobs.dump();
    RunCreate(vm, image, dir->dir, claim, started, h);
  });
  return answer;
}

Result<VmCreateService::Source> VmCreateService::ResolveSource(const Caller& c,
                                                               const CreateVmRequest& r) {
  Source src;
  if (!r.from_checkpoint.empty()) {
    // A checkpoint of one of the caller's VMs.
    if (r.start != "resume")
      return MakeError(ErrorCode::kInvalidArgument, "from_checkpoint implies start=resume");
    VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(r.from_checkpoint, c.owner()));
    if (!vm.data.empty())
      return MakeError(ErrorCode::kFailedPrecondition,
                       "VM " + vm.name +
                           " has datasets attached; its checkpoint holds their mounts, so it "
                           "cannot be cloned (attach the datasets to the new VM instead)");
    VMG_ASSIGN_OR_RETURN(Host host, store_.GetHost(vm.host_id));
    VMG_ASSIGN_OR_RETURN(src.image, store_.GetImage(vm.image_id, ""));
    src.ckpt_vcpus = vm.vcpus;
    src.ckpt_memory_mb = vm.memory_mb;
    // A quick question (is there a checkpoint, where); nothing is copied.
    auto dir = agents_.Checkpoint(host, vm.id, /*publish=*/false, 30);
    if (!dir.ok()) return dir.error().Wrap("checkpoint of VM " + vm.name);
    src.checkpoint_dir = dir->dir;
    if (image_server_) {
      // Any host can resume it once published (by Create, on the operation pool).
      src.publish_from = host;
      src.publish_vm = vm.id;
      // Its published disk is rebased onto the image's export (HostImages::
      // MaterializeCheckpoint), and copied into the clone's top layer.
      src.disk_base = "image";
    } else {
      src.candidates.push_back(vm.host_id);  // without an image server it lives there only
      // The copy keeps the backing file of the VM's own disk.
      src.disk_base = vm.disk_base;
    }
    return src;
  }
  // An image: boot it or resume its post-boot checkpoint.
  VMG_ASSIGN_OR_RETURN(src.image, images_.VisibleImage(c, r.image));
  const Image& image = src.image;
  if (image.state != "ready")
    return MakeError(ErrorCode::kFailedPrecondition, "image " + image.name + " is still uploading");
  if (r.start == "resume") {
    if (image.ckpt_state != "ready")
      return MakeError(ErrorCode::kFailedPrecondition, "image " + image.name +
                                                           " has no post-boot checkpoint; make one "
                                                           "with `vmgrid image checkpoint " +
                                                           image.name + "` or boot instead");
    src.checkpoint_dir = image.dir + "/checkpoint";
    src.ckpt_vcpus = image.ckpt_vcpus;
    src.ckpt_memory_mb = image.ckpt_memory_mb;
  }
  return src;
}

Status VmCreateService::Size(const CreateVmRequest& r, const Source& src, Vm& vm) {
  const Image& image = src.image;
  const int64_t ckpt_mem = src.ckpt_memory_mb;
  vm.vcpus = static_cast<int>(r.vcpus ? r.vcpus : (src.ckpt_vcpus ? src.ckpt_vcpus : 1));
  vm.memory_mb = r.memory_mb ? r.memory_mb
                             : (ckpt_mem ? ckpt_mem : std::max<int64_t>(256, image.min_memory_mb));
  if (vm.start == "resume" && (vm.vcpus != src.ckpt_vcpus || vm.memory_mb != ckpt_mem))
    return MakeError(ErrorCode::kInvalidArgument,
                     "the checkpoint was taken with " + std::to_string(src.ckpt_vcpus) +
                         " vCPU(s) and " + std::to_string(ckpt_mem) +
                         " MB; a resumed VM must have the same (omit vcpus and memory_mb)");
  if (vm.memory_mb < image.min_memory_mb)
    return MakeError(ErrorCode::kInvalidArgument, "image " + image.name + " needs at least " +
                                                      std::to_string(image.min_memory_mb) +
                                                      " MB of memory");
  // The host disk it holds: its overlay or workspace can grow to a fully
  // allocated copy of the image's disk, and a checkpoint writes its memory.
  vm.disk_bytes = image.CloneBoundBytes() + (vm.memory_mb << 20);
  return Status::Ok();
}

// Persistent disks are the user's workspace, pinned to the host holding it.
Result<VmCreateService::WorkspaceClaim> VmCreateService::ClaimWorkspace(
    const Caller& c, const CreateVmRequest& r, const Vm& vm, const Image& image, int64_t started,
    std::vector<std::string>& candidates) {
  WorkspaceClaim claim;
  if (vm.disk != "persistent") {
    if (!r.workspace.empty())
      return MakeError(ErrorCode::kInvalidArgument, "workspace needs disk=persistent");
    return claim;
  }
  const std::string wsn = r.workspace.empty() ? vm.name : r.workspace;
  VMG_RETURN_IF_ERROR(ValidateName("workspace", wsn));
  VMG_ASSIGN_OR_RETURN(auto found, store_.FindWorkspaceByName(c.user.id, wsn));
  if (!found.has_value()) {
    // It holds a copy of the image's disk: what that copy can grow to (a
    // fully allocated qcow2 of its virtual size, `qemu-img measure`) is
    // what it takes of the workspace_bytes quota.
    claim.created = true;
    claim.workspace = Workspace{
        NewId("ws"), wsn, c.user.id, image.id, "", "", image.CloneBoundBytes(), vm.id, started};
    return claim;
  }
  const Workspace& ws = *found;
  if (workspaces_.BeingDeleted(ws.id))
    return MakeError(ErrorCode::kFailedPrecondition, "workspace " + wsn + " is being deleted");
  if (!ws.vm_id.empty())
    return MakeError(ErrorCode::kFailedPrecondition,
                     "workspace " + wsn + " is in use by VM " + ws.vm_id);
  if (ws.image_id != image.id)
    return MakeError(ErrorCode::kInvalidArgument,
                     "workspace " + wsn + " holds a copy of another image");
  if (vm.start == "resume")
    return MakeError(ErrorCode::kFailedPrecondition,
                     "workspace " + wsn +
                         " exists; resuming a checkpoint into it would "
                         "overwrite it. Boot it, or pick a new workspace name");
  candidates = {ws.host_id};
  claim.workspace = ws;
  return claim;
}

Status VmCreateService::LinkWorkspace(Vm& vm, WorkspaceClaim& claim) {
  if (!claim.workspace) return Status::Ok();
  Workspace& ws = *claim.workspace;
  vm.workspace_id = ws.id;
  if (claim.created) {
    ws.host_id = vm.host_id;
    ws.path = ws.owner_id + "/" + ws.id + ".qcow2";
    if (auto st = store_.InsertWorkspace(ws); !st.ok()) {
      // Left behind, the record stays `creating` until reconciliation
      // marks it failed (its host never heard of it); failed VMs hold no room.
      failed_writes_.Count(store_.DeleteVm(vm.id),
                           "removing VM " + vm.id + " after " + st.error().message);
      return st;
    }
  } else {
    ws.vm_id = vm.id;
  }
  // The workspace is claimed by the VM, and the VM names the workspace;
  // without both a later delete would not release it, so either write
  // failing undoes the create.
  Status linked = claim.created ? Status::Ok() : store_.UpdateWorkspace(ws);
  if (linked.ok()) linked = store_.UpdateVm(vm);
  if (!linked.ok()) {
    ReleaseWorkspace(claim);
    failed_writes_.Count(store_.DeleteVm(vm.id),
                         "removing VM " + vm.id + " after " + linked.error().message);
    return linked;
  }
  return Status::Ok();
}

void VmCreateService::Launch(const Vm& vm, const Image& image, const std::string& checkpoint_dir,
                             const WorkspaceClaim& claim, int64_t started, const Host* known_host,
                             Admission::SlotPtr slot) {
  auto host = known_host && known_host->id == vm.host_id ? Result<Host>(*known_host)
                                                         : store_.GetHost(vm.host_id);
  Host h = host.ok() ? *host : Host{};
  ops_.Run(vm.id, [this, h, vm, image, checkpoint_dir, claim, started, slot] {
    RunCreate(vm, image, checkpoint_dir, claim, started, h);
  });
}

void VmCreateService::RunCreate(const Vm& vm, const Image& image, const std::string& checkpoint_dir,
                                const WorkspaceClaim& claim, int64_t started, const Host& h,
                                const std::string& state_on_error) {
  auto spec =
      AgentVmSpec(vm, image, claim.workspace ? claim.workspace->path : "",
                  vm.start == "resume" && checkpoint_dir == image.dir + "/checkpoint", networks_);
  Result<VmStatus> r = VmStatus{};
  if (!spec.ok()) {
    r = spec.error();
  } else {
    spec->checkpoint_dir = checkpoint_dir;
    if (claim.workspace) AddDurable(*spec, *claim.workspace, h.name, durable_);
    r = agents_.CreateVm(h, *spec);
  }
  if (!r.ok() && state_on_error == "error") ReleaseWorkspace(claim);
  // Only placement's preference for hosts with a warm cache depends on it.
  if (r.ok() && !index_.IsCached(vm.image_id, vm.host_id))
    failed_writes_.Count(store_.NoteImageCached(vm.image_id, vm.host_id),
                         "noting image " + vm.image_id + " cached on host " + vm.host_id);
  vms_.RecordOutcome(vm.id, r, state_on_error, started, true);
}

Status VmCreateService::StartFromDurable(const Vm& vm, int64_t started) {
  VMG_ASSIGN_OR_RETURN(Image image, store_.GetImage(vm.image_id, ""));
  VMG_ASSIGN_OR_RETURN(Workspace ws, store_.GetWorkspace(vm.workspace_id, ""));
  if (!durable_.enabled() || ws.durable_version == 0)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "its workspace has no durable version to start from");
  VMG_ASSIGN_OR_RETURN(Host h, store_.GetHost(vm.host_id));
  Vm booted = vm;
  booted.start = "boot";
  WorkspaceClaim claim;
  claim.workspace = ws;
  const std::string note = vm.error;
  ops_.Run(vm.id, [this, booted, image, claim, started, h, note] {
    RunCreate(booted, image, "", claim, started, h, "stopped");
    // Still stopped: the next start tries again (the mark kept).
    failed_writes_.Count(store_.ModifyVm(booted.id,
                                         [&](Vm& v) {
                                           if (v.state != "stopped") return;
                                           v.error = "starting it on " + h.name +
                                                     " failed: " + v.error + "; " + note;
                                         }),
                         "recording the failed start of VM " + booted.id);
  });
  return Status::Ok();
}

Status VmCreateService::Relaunch(const Vm& vm) {
  if (vm.state != "creating")
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + vm.id + " is " + vm.state);
  if (vm.disk != "clone" || vm.start != "boot")
    return MakeError(ErrorCode::kFailedPrecondition,
                     "only a clone booted from its image can be created again (its checkpoint "
                     "or workspace claim went with the controller that accepted it)");
  VMG_ASSIGN_OR_RETURN(Image image, store_.GetImage(vm.image_id, ""));
  VMG_ASSIGN_OR_RETURN(Host h, store_.GetHost(vm.host_id));
  const int64_t started = clock_.NowMs();
  ops_.Run(vm.id, [this, vm, image, h, started] {
    auto spec = AgentVmSpec(vm, image, "", false, networks_);
    Result<VmStatus> r = spec.ok() ? agents_.CreateVm(h, *spec) : Result<VmStatus>(spec.error());
    // The first call reached the agent after all: its report settles the record.
    if (!r.ok() && r.error().code == ErrorCode::kAlreadyExists) return;
    if (r.ok() && !index_.IsCached(vm.image_id, vm.host_id))
      failed_writes_.Count(store_.NoteImageCached(vm.image_id, vm.host_id),
                           "noting image " + vm.image_id + " cached on host " + vm.host_id);
    vms_.RecordOutcome(vm.id, r, "error", started, true);
  });
  return Status::Ok();
}

Status VmCreateService::Recover(const Vm& failed, const std::string& note, bool keep_stopped) {
  const int64_t started = clock_.NowMs();
  VMG_ASSIGN_OR_RETURN(Image image, store_.GetImage(failed.image_id, ""));
  std::string checkpoint_dir;
  Vm vm = failed;
  if (vm.start == "resume" && image.ckpt_state == "ready" && image.ckpt_vcpus == vm.vcpus &&
      image.ckpt_memory_mb == vm.memory_mb) {
    checkpoint_dir = image.dir + "/checkpoint";
  } else {
    vm.start = "boot";  // this create's only: its checkpoint was on the failed host
  }
  // A persistent VM restarts from its workspace's latest durable version
  // (the target host fetches it with a grant of its own), else not at all.
  if (vm.disk == "persistent") {
    VMG_ASSIGN_OR_RETURN(Workspace ws, store_.GetWorkspace(vm.workspace_id, ""));
    if (!durable_.enabled() || ws.durable_version == 0)
      return MakeError(ErrorCode::kFailedPrecondition,
                       "its workspace has no durable version to restart from");
    checkpoint_dir.clear();
    vm.start = "boot";
  }
  std::vector<std::string> candidates =
      index_.Rank({image.id, vm.vcpus, vm.memory_mb, vm.disk_bytes, "spread", "", "", {}});
  std::erase(candidates, failed.host_id);
  if (candidates.empty())
    return MakeError(ErrorCode::kResourceExhausted, "no other host has room for it");
  VMG_ASSIGN_OR_RETURN(Vm placed, store_.RelocateVm(failed.id, failed.host_id, candidates, note,
                                                    keep_stopped ? "stopped" : "creating"));
  placed.start = vm.start;
  // Its new disk lies on the image, or on the image's checkpoint as it is now.
  placed.disk_base = DiskBaseFor(placed, image, !checkpoint_dir.empty());
  failed_writes_.Count(store_.ModifyVm(placed.id, [&](Vm& v) { v.disk_base = placed.disk_base; }),
                       "recording what the disk of VM " + placed.id + " lies on");
  auto host = store_.GetHost(placed.host_id);
  Host h = host.ok() ? *host : Host{};
  if (keep_stopped) {
    spdlog::info("VM {} ({}) moves, stopped, to host {} after its host failed", placed.name,
                 placed.id, h.name);
    return Status::Ok();
  }
  spdlog::info("VM {} ({}) restarts on host {} after its host failed", placed.name, placed.id,
               h.name);
  WorkspaceClaim claim;
  if (placed.disk == "persistent") {
    // RelocateVm moved the workspace to the new host (a new generation).
    auto ws = store_.GetWorkspace(placed.workspace_id, "");
    if (ws.ok()) claim.workspace = *ws;
  }
  ops_.Run(placed.id, [this, h, placed, image, checkpoint_dir, started, note, claim] {
    RunCreate(placed, image, checkpoint_dir, claim, started, h);
    // The outcome recorded by RunCreate, with what happened before it.
    failed_writes_.Count(store_.ModifyVm(placed.id,
                                         [&](Vm& v) {
                                           v.error = v.state == "running"
                                                         ? note + " (now running on " + h.name + ")"
                                                         : note + "; the restart on " + h.name +
                                                               " failed: " + v.error;
                                         }),
                         "recording the recovery of VM " + placed.id);
  });
  return Status::Ok();
}

// Gang co-allocation: `count` VMs like `proto`, all on hosts sharing `same`
// (site or network segment), with an optional bound on their total memory.
// All are placed and recorded in one transaction, or none is.
Result<json> VmCreateService::CreateGang(const CreateVmRequest& r, const Vm& proto,
                                         const Image& image, const std::string& checkpoint_dir,
                                         int64_t started, Admission::SlotPtr slot) {
  const int64_t count = r.count;
  const std::string same = r.same.value_or("");
  int64_t memory = proto.memory_mb;
  if (r.total_memory) {
    const TotalMemory& t = *r.total_memory;
    // Without an explicit size, split the lower bound evenly.
    if (!r.memory_named && proto.start != "resume")
      memory = std::max<int64_t>(image.min_memory_mb, (t.min + count - 1) / count);
    if (memory * count < t.min || memory * count > t.max)
      return MakeError(ErrorCode::kInvalidArgument,
                       std::to_string(count) + " VMs of " + std::to_string(memory) + " MB total " +
                           std::to_string(memory * count) + " MB, outside total_memory_mb [" +
                           std::to_string(t.min) + ", " + std::to_string(t.max) + "]");
  }
  std::vector<Vm> vms;
  for (int64_t i = 0; i < count; ++i) {
    Vm vm = proto;
    vm.id = NewId("vm");
    vm.name = (proto.name == proto.id ? vm.id : proto.name + "-" + std::to_string(i + 1));
    vm.memory_mb = memory;
    vm.disk_bytes = image.CloneBoundBytes() + (memory << 20);
    vms.push_back(vm);
  }
  VMG_ASSIGN_OR_RETURN(auto groups, index_.Groups(same, r.policy));
  auto placed = store_.PlaceAndInsertGang(vms, groups);
  if (metrics_) metrics_->CountPlacement("gang", placed.ok() ? Status::Ok() : placed.error());
  if (!placed.ok()) {
    if (placed.error().code != ErrorCode::kResourceExhausted) return placed.error();
    return MakeError(
        ErrorCode::kResourceExhausted,
        "no " + (same.empty() ? std::string("set of hosts") : same) + " has room for all " +
            std::to_string(count) + " VMs (" + std::to_string(count) + " x " +
            std::to_string(proto.vcpus) + " vCPU, " + std::to_string(memory) + " MB, " +
            std::to_string((vms[0].disk_bytes + (1 << 20) - 1) >> 20) + " MiB of disk; " +
            std::to_string(groups.size()) + " group(s) of up hosts checked); none was created");
  }
  json out = json::array();
  for (const auto& vm : *placed) {
    out.push_back(views_.VmJson(vm, &image));
    // A gang's hosts come from one group (`same`), in the policy's order.
    const auto group = std::find_if(groups.begin(), groups.end(), [&](const auto& g) {
      return std::find(g.begin(), g.end(), vm.host_id) != g.end();
    });
    RecordPlaced(vm, group != groups.end() ? *group : std::vector<std::string>{}, r.policy,
                 "gang of " + std::to_string(count) +
                     (same.empty() ? std::string() : ", all on one " + same),
                 nullptr);
  }
  for (const auto& vm : *placed)
    Launch(vm, image, checkpoint_dir, WorkspaceClaim{}, started, nullptr, slot);
  return json{{"vms", out}};
}

Error VmCreateService::ExplainNoPlacement(const Vm& vm, const std::vector<std::string>& candidates,
                                          const std::string& site, const std::string& network) {
  int down = 0, draining = 0, cpu = 0, mem = 0, disk = 0, checked = 0, wrong_site = 0,
      wrong_net = 0;
  for (const auto& id : candidates) {
    auto h = store_.GetHost(id);
    if (!h.ok()) continue;
    ++checked;
    if (h->state != "up") {
      ++down;
      continue;
    }
    if (h->draining) {
      ++draining;
      continue;
    }
    if (!site.empty() && h->site != site) ++wrong_site;
    if (!network.empty() && h->network != network) ++wrong_net;
    if (h->vcpus - h->reserved_vcpus < vm.vcpus) ++cpu;
    if (h->memory_mb - h->reserved_memory_mb < vm.memory_mb) ++mem;
    if (h->disk_total_bytes > 0 && h->disk_free_bytes - h->reserved_disk_bytes < vm.disk_bytes)
      ++disk;
  }
  const std::string disk_mib = std::to_string((vm.disk_bytes + (1 << 20) - 1) >> 20);
  std::string msg = "no host can run " + std::to_string(vm.vcpus) + " vCPU(s) with " +
                    std::to_string(vm.memory_mb) + " MB and " + disk_mib + " MiB of disk: of " +
                    std::to_string(checked) + " host(s) checked, " + std::to_string(down) +
                    " are down, " + std::to_string(cpu) + " lack " + std::to_string(vm.vcpus) +
                    " free vCPU(s), " + std::to_string(mem) + " lack " +
                    std::to_string(vm.memory_mb) + " MB of free memory, " + std::to_string(disk) +
                    " lack " + disk_mib +
                    " MiB of free disk (what the VM's disk can grow to plus a memory checkpoint)";
  if (draining > 0)
    msg += ", " + std::to_string(draining) + " are draining (`vmgrid host undrain`)";
  if (!site.empty()) msg += ", " + std::to_string(wrong_site) + " are not in site " + site;
  if (!network.empty()) msg += ", " + std::to_string(wrong_net) + " are not on network " + network;
  return MakeError(ErrorCode::kResourceExhausted, msg);
}

void VmCreateService::ReleaseWorkspace(const WorkspaceClaim& claim) {
  if (!claim.workspace) return;
  const Workspace& ws = *claim.workspace;
  if (claim.created) {
    // A workspace record left behind names a file that was never made;
    // deleting the workspace clears it.
    failed_writes_.Count(store_.DeleteWorkspace(ws.id), "removing workspace " + ws.id);
    return;
  }
  // Left behind, the workspace stays claimed by the failed VM; deleting
  // that VM releases it.
  Workspace w = ws;
  w.vm_id.clear();
  failed_writes_.Count(store_.UpdateWorkspace(w), "releasing workspace " + ws.id);
}

// How many of the VM's attached datasets its host had cached when placed.
int64_t VmCreateService::DatasetsCached(const Vm& vm) const {
  auto data = VmDataFromJson(vm.data);
  int64_t n = 0;
  if (data.ok())
    for (const VmDataAttachment& d : *data)
      n += d.version > 0 && index_.IsCached(DatasetCacheKey(d.dataset_id), vm.host_id) ? 1 : 0;
  return n;
}

void VmCreateService::RecordPlaced(const Vm& vm, const std::vector<std::string>& candidates,
                                   const std::string& policy, const std::string& why,
                                   const Host* host) {
  const auto at = std::find(candidates.begin(), candidates.end(), vm.host_id);
  const int64_t rank = at == candidates.end() ? -1 : at - candidates.begin();
  json data = {{"host_id", vm.host_id},
               {"candidates", candidates.size()},
               {"rank", rank},
               {"image_id", vm.image_id},
               {"image_cached", index_.IsCached(vm.image_id, vm.host_id)},
               {"datasets_cached", DatasetsCached(vm)},
               {"vcpus", vm.vcpus},
               {"memory_mb", vm.memory_mb},
               {"disk_bytes", vm.disk_bytes}};
  std::string reason;
  if (!policy.empty()) {
    data["policy"] = policy;
    // The ranking (api/placement.h): hosts holding the image first, then
    // by free memory (spread: most, pack: least); the store took the first
    // of them with room.
    reason = "placement policy " + policy + ": host ranked " + std::to_string(rank + 1) + " of " +
             std::to_string(candidates.size()) + " eligible" +
             (data["image_cached"].get<bool>() ? ", image cached there" : ", image not cached");
    if (const int64_t n = data["datasets_cached"].get<int64_t>(); n > 0)
      reason += ", " + std::to_string(n) + " of its datasets cached there";
    if (rank > 0) reason += " (" + std::to_string(rank) + " ranked higher had no room left)";
  }
  if (!why.empty()) reason = reason.empty() ? why : why + "; " + reason;
  data["reason"] = reason;
  std::string host_name = vm.host_id;
  if (host) {
    host_name = host->name;
    data["host"] = host->name;
    data["host_free_vcpus"] = host->vcpus - host->reserved_vcpus;
    data["host_free_memory_mb"] = host->memory_mb - host->reserved_memory_mb;
  }
  auto id = store_.AppendEvent(
      Event{0, clock_.NowMs(), "vm.placed", vm.id, vm.host_id, vm.owner_id,
            "VM " + vm.name + " placed on host " + host_name + ": " + reason, data.dump()});
  // The VM is placed either way: a lost event is counted, not returned.
  if (!id.ok()) failed_writes_.Count(id.error(), "event vm.placed of VM " + vm.id);
}

}  // namespace vmgrid
