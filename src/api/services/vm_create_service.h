// VmCreateService: making VMs (POST /v1/vms). One VM, from an image (boot,
// or resume its post-boot checkpoint), from a checkpoint of one of the
// caller's VMs, or realizing a future of the information service; or a gang
// of VMs of an image placed all together or not at all. Placement ranks the
// hosts of the capacity index (api/placement.h) and the store re-checks and
// reserves (Store::PlaceAndInsertVm / PlaceAndInsertGang); when nothing fits
// the refusal says, per requirement, how many hosts failed it.
//
// On success the VMs are recorded `creating` with their reservation and the
// agent calls run on the OpQueue; their answers are recorded by
// VmService::RecordOutcome. On failure before the answer: nothing is left
// behind (no VM record, no workspace record or claim). A create that fails
// later gives its workspace back (a new one is deleted, an existing one
// released) and leaves its VM in `error`, holding no room
// (docs/vm-lifecycle.md).
//
// Dependencies are passed in, so the service runs in unit tests with a fresh
// store and a fake agent. Thread-safe: every method.
#pragma once

#include <atomic>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "api/admission.h"
#include "api/routes/route.h"
#include "api/services/agent_spec.h"
#include "api/services/data_attachments.h"
#include "api/services/failed_writes.h"
#include "common/clock.h"
#include "common/result.h"
#include "store/store.h"

namespace vmgrid {

struct ControllerMetrics;

class AgentClient;
class ApiViews;
class CapacityIndex;
class ImageService;
class NetworkService;
class OpQueue;
class VmService;
class WorkspaceService;

// A gang's bound on its VMs' total memory (MB).
struct TotalMemory {
  int64_t min = 0;
  int64_t max = int64_t{1} << 30;
};

// POST /v1/vms as parsed (api/routes/vm_routes.cc checks types, ranges and
// names; this service checks what needs the store).
struct CreateVmRequest {
  std::string image;            // id or name; with from_future: the future's image id
  std::string from_checkpoint;  // a VM of the caller's (id or name); implies start=resume
  std::string future;           // the from_future id ("" = none), named in errors
  std::string future_host;      // the future's host: the create is pinned there
  std::string name;             // "" = the VM's id
  std::string disk = "clone";   // or "persistent" (a workspace)
  std::string start = "boot";   // or "resume"
  std::string workspace;        // disk=persistent only; "" = the VM's name
  int64_t vcpus = 0;            // 0: the checkpoint's, else 1
  int64_t memory_mb = 0;        // 0: the checkpoint's, else max(256, the image's minimum)
  bool memory_named = false;    // memory_mb was in the request (a gang keeps it)
  std::string network = "default";
  std::vector<std::string> nets;  // virtual networks, one card each
  std::string policy = "spread";  // or "pack"
  std::string site, host_network;
  std::string restart = "never";  // or "on-host-failure" (docs/host-failure.md)
  std::vector<DataRequest> data;  // datasets to attach (docs/datasets.md)
  // Not from the API: hosts ranked last (a job's retry avoids the host its
  // last attempt was lost on, yet takes it when nothing else fits).
  std::vector<std::string> avoid_hosts;
  // A gang: count > 1, or `same` or `total_memory` given.
  int64_t count = 1;
  std::optional<std::string> same;  // "site", "network" or "" (any set of up hosts)
  std::optional<TotalMemory> total_memory;
  bool gang() const { return count > 1 || same.has_value() || total_memory.has_value(); }
};

class VmCreateService {
 public:
  // `creates` bounds each user's VMs being created, `long_ops` their
  // checkpoint publishes; `image_server`: checkpoints are published so that
  // any host can resume them (else they are resumed where they are).
  VmCreateService(Store& store, const CapacityIndex& index, AgentClient& agents, OpQueue& ops,
                  const Clock& clock, Admission& creates, Admission& long_ops, VmService& vms,
                  ImageService& images, NetworkService& networks, WorkspaceService& workspaces,
                  ApiViews& views, bool image_server);

  // Places and records the VM(s) of `r` for the caller and starts creating
  // them. Answers the VM (with "operation" when a checkpoint is published
  // first), or {"vms": [...]} for a gang. kResourceExhausted when no host
  // fits (why, per requirement), kTooManyRequests over the caller's creates,
  // kNotFound for an image or VM the caller cannot see.
  Result<nlohmann::json> Create(const Caller& c, const CreateVmRequest& r);

  // Why no host took `vm`: for each requirement, how many of `candidates`
  // failed it (compare condor_q -better-analyze, Kubernetes'
  // FailedScheduling events). Always kResourceExhausted.
  Error ExplainNoPlacement(const Vm& vm, const std::vector<std::string>& candidates,
                           const std::string& site, const std::string& network);

  // Host failure recovery (docs/host-failure.md): VM `vm`, in `error` on its
  // failed host and holding no room there, is placed elsewhere (the normal
  // ranking and conditional reservation) and created again from its image:
  // resumed from the image's post-boot checkpoint when it was started from
  // one and the sizes match, else booted. Keeps its id and name; `note` stays
  // in its record's error text (with the restart's outcome). On failure
  // (kResourceExhausted: no room) nothing changed.
  // `keep_stopped` (a persistent VM that was stopped or suspended, with a
  // durable version): placed the same way but recorded `stopped` there,
  // not created; StartFromDurable creates it when it is started.
  Status Recover(const Vm& vm, const std::string& note, bool keep_stopped = false);
  // `vm start` of a VM that HostFailureService moved stopped
  // (StartsFromDurable): VM `vm`, `resuming` on its new host with its room,
  // is created there on the operation pool from its workspace's latest
  // durable version (booted; the agent fetches the version on demand). On
  // failure it is `stopped` again, still marked, so the start can be
  // repeated.
  Status StartFromDurable(const Vm& vm, int64_t started);

  // A create accepted by a controller that stopped before the agent call
  // (docs/ha.md): VM `vm`, `creating` on its host with its room reserved, is
  // created there again on the operation pool (same id, so an agent that
  // did get the first call refuses the second, and its report settles the
  // record). Only a clone booted from its image can be: kFailedPrecondition
  // for the others (their checkpoint or workspace claim died with the
  // request), which the caller then marks `error`.
  Status Relaunch(const Vm& vm);

  // Store writes that failed where the create went on (each is logged).
  int64_t failed_writes() const { return failed_writes_.total(); }

  // Where placements are counted (none by default); set before serving.
  void set_metrics(ControllerMetrics* metrics) { metrics_ = metrics; }
  // Durable workspaces (docs/vm-lifecycle.md): persistent VMs are told to
  // push their workspace's versions. Off by default; set before serving.
  void set_durable(DurableOptions options) { durable_ = std::move(options); }
  // Several controllers on one database (docs/ha.md): the capacity index may
  // not know yet what another controller changed (a new host, room freed),
  // so a create that finds no candidate reloads it (at most every 500 ms)
  // and ranks again before refusing. Set before serving.
  void set_resync_when_empty(bool on) { resync_when_empty_ = on; }

 private:
  // What a VM starts from.
  struct Source {
    Image image;
    std::vector<std::string> candidates;  // hosts it must go to (none: any)
    std::string checkpoint_dir;           // with start=resume
    int ckpt_vcpus = 0;
    int64_t ckpt_memory_mb = 0;
    // With an image server, the source host publishes the VM's checkpoint
    // (once; minutes for a large one) on the operation pool before the create.
    std::optional<Host> publish_from;
    std::string publish_vm;
    // What the new clone's disk lies on (Vm::disk_base), when the source
    // decides it (a VM's checkpoint); else DiskBaseFor the image.
    std::optional<std::string> disk_base;
  };
  struct WorkspaceClaim {
    std::optional<Workspace> workspace;
    bool created = false;  // a new workspace (else an existing one, claimed)
  };

  Result<Source> ResolveSource(const Caller& c, const CreateVmRequest& r);
  // Sets the VM's size from the request and the source; refuses a mismatch.
  Status Size(const CreateVmRequest& r, const Source& src, Vm& vm);
  // The persistent disk's workspace: found (then the VM goes to its host) or new.
  Result<WorkspaceClaim> ClaimWorkspace(const Caller& c, const CreateVmRequest& r, const Vm& vm,
                                        const Image& image, int64_t started,
                                        std::vector<std::string>& candidates);
  // Records the workspace with the placed VM (both, or neither).
  Status LinkWorkspace(Vm& vm, WorkspaceClaim& claim);
  Result<nlohmann::json> CreateGang(const CreateVmRequest& r, const Vm& proto, const Image& image,
                                    const std::string& checkpoint_dir, int64_t started,
                                    Admission::SlotPtr slot);
  void Launch(const Vm& vm, const Image& image, const std::string& checkpoint_dir,
              const WorkspaceClaim& claim, int64_t started, const Host* host,
              Admission::SlotPtr slot);
  // A VM create on its host, on the operation pool.
  // `state_on_error`: "error" for creates (a workspace claimed for the VM is
  // released then), "stopped" for StartFromDurable (it stays the VM's).
  void RunCreate(const Vm& vm, const Image& image, const std::string& checkpoint_dir,
                 const WorkspaceClaim& claim, int64_t started, const Host& host,
                 const std::string& state_on_error = "error");
  // A create that did not happen gives its workspace back: deletes the one
  // it created, or releases an existing one (logged and counted on failure).
  void ReleaseWorkspace(const WorkspaceClaim& claim);
  // Adds the vm.placed event: the host, and why it (`policy`'s ranking
  // among `candidates`, and/or `why` the candidates were limited).
  void RecordPlaced(const Vm& vm, const std::vector<std::string>& candidates,
                    const std::string& policy, const std::string& why, const Host* host);
  int64_t DatasetsCached(const Vm& vm) const;

  Store& store_;
  const CapacityIndex& index_;
  AgentClient& agents_;
  OpQueue& ops_;
  const Clock& clock_;
  Admission& creates_;
  Admission& long_ops_;
  VmService& vms_;
  ImageService& images_;
  NetworkService& networks_;
  WorkspaceService& workspaces_;
  ApiViews& views_;
  const bool image_server_;
  ControllerMetrics* metrics_ = nullptr;
  DurableOptions durable_;
  bool resync_when_empty_ = false;
  std::atomic<int64_t> last_resync_ms_{0};
  FailedWrites failed_writes_;
};

}  // namespace vmgrid
