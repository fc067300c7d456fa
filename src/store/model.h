// The controller's domain objects as stored. Every object has an owner (a
// user id); hosts are owned by the admin. These are plain values; the Store
// persists them and the API turns them into JSON.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace vmgrid {

// What a user may hold at once, set by the admin. 0 means unlimited (the
// default). VMs, vCPUs and memory count every VM of the user that holds room
// on a host (all but failed ones); image bytes count the user's ready images
// (each its disk as uploaded or, if more, what its data expands to:
// Image::expanded_size_bytes); workspace bytes what the user's persistent
// workspaces can grow to (their image's Image::max_clone_bytes).
struct UserQuota {
  int64_t vms = 0;
  int64_t vcpus = 0;
  int64_t memory_mb = 0;
  int64_t image_bytes = 0;
  int64_t workspace_bytes = 0;
  bool operator==(const UserQuota&) const = default;
};

// What a user holds now, counted as UserQuota counts it.
struct UserUsage {
  int64_t vms = 0;
  int64_t vcpus = 0;
  int64_t memory_mb = 0;
  int64_t image_bytes = 0;
  int64_t workspace_bytes = 0;
};

struct User {
  std::string id;
  std::string name;
  std::string role;  // "admin", "user" or "agent"
  int64_t created_ms = 0;
  UserQuota quota;
};

struct Host {
  std::string id;
  std::string name;
  std::string url;    // agent endpoint, e.g. http://127.0.0.1:41234
  std::string state;  // "up" or "down" (the API shows "down" as suspect or failed)
  int vcpus = 0;
  int64_t memory_mb = 0;
  int64_t disk_mb = 0;  // free MB of the agent's state directory (legacy; see below)
  // The file system of the agent's state directory, as last reported (0 =
  // not reported: an old agent; its disk is then not a placement resource).
  int64_t disk_total_bytes = 0;
  int64_t disk_free_bytes = 0;
  bool kvm = false;
  std::string site = "default";     // administrative domain
  std::string network = "default";  // network segment
  std::string arch = "x86_64";
  int reserved_vcpus = 0;  // sum over VMs placed on this host
  int64_t reserved_memory_mb = 0;
  int64_t reserved_disk_bytes = 0;  // sum of Vm::disk_bytes over VMs placed here
  int64_t last_heartbeat_ms = 0;
  int64_t created_ms = 0;
  // Virtual networks: the host's number in tunnel headers (assigned when
  // the host first reports, unique, never 0) and where its tunnel socket
  // listens ("" / 0 until its agent reports it).
  int64_t tunnel_number = 0;
  std::string tunnel_ip;
  int64_t tunnel_port = 0;
  // Drained by the admin (docs/migration.md, "Drain and maintenance"): its
  // VMs stay, but no placement (create, gang, migration target) chooses it.
  bool draining = false;
  // When the controller declared the host failed (docs/host-failure.md);
  // 0: not failed. A failed host takes no placement; the mark stays after it
  // heartbeats again until it has destroyed its stale VM copies.
  int64_t failed_ms = 0;
};

struct Image {
  std::string id;
  std::string name;
  std::string owner_id;
  std::string state;   // "uploading", "ready"
  std::string format;  // "raw", "qcow2"
  std::string dir;     // where its files live
  int64_t size_bytes = 0;
  int64_t virtual_size_bytes = 0;
  // `qemu-img measure` at finalize (0 for images finalized before it): the
  // bytes its data takes as an uncompressed qcow2 (what it expands to), and
  // a fully allocated qcow2 of its virtual size (what a clone's overlay or a
  // workspace copy of it can grow to, metadata included).
  int64_t expanded_size_bytes = 0;
  int64_t max_clone_bytes = 0;
  bool has_kernel = false;
  bool has_initrd = false;
  std::string append;
  int64_t min_memory_mb = 64;
  // Post-boot checkpoint ("" state = none).
  std::string ckpt_state;  // "", "creating", "ready", "error"
  int64_t ckpt_memory_mb = 0;
  int ckpt_vcpus = 0;
  int64_t ckpt_size_bytes = 0;
  std::string ckpt_error;
  int64_t created_ms = 0;
  // Image server versions of its files, JSON {kind: {name, version, digest,
  // size}} for kinds disk, kernel, initrd, ckpt_memory, ckpt_disk; "{}" when
  // the controller has no image server.
  std::string blobs = "{}";

  // What a clone or workspace of this image can grow to on a host.
  int64_t CloneBoundBytes() const {
    return max_clone_bytes > 0 ? max_clone_bytes : virtual_size_bytes;
  }
  // What it counts against its owner's image_bytes quota.
  int64_t QuotaBytes() const {
    return expanded_size_bytes > size_bytes ? expanded_size_bytes : size_bytes;
  }
};

struct Vm {
  std::string id;
  std::string name;
  std::string owner_id;
  std::string image_id;
  std::string host_id;
  std::string state;
  int vcpus = 1;
  int64_t memory_mb = 256;
  std::string disk;   // "clone" or "persistent"
  std::string start;  // "boot" or "resume"
  std::string workspace_id;
  std::string network = "default";  // a label, kept for the information service (not a NIC)
  // Virtual networks (ids) it has a NIC on, in NIC order. Given to
  // PlaceAndInsertVm, which allocates each NIC's address in the same
  // transaction (ListVmNics reads them back).
  std::vector<std::string> net_ids;
  // Host disk it holds while placed: what its disk (overlay or workspace)
  // can grow to plus a memory checkpoint (placement reserves and releases it).
  int64_t disk_bytes = 0;
  // Restart policy when its host fails: "never" or "on-host-failure"
  // (docs/host-failure.md).
  std::string restart = "never";
  // Datasets attached (docs/datasets.md): a JSON array as the controller
  // resolved them (api/services/data_attachments.h); "" = none.
  std::string data;
  // What a clone's disk (its top layer) lies on, so that a live migration
  // lays the target's over the same (schema migration 24): "image" (booted,
  // or a clone of another VM's checkpoint, whose disk was copied into the
  // top layer), "image_checkpoint" (the image's post-boot checkpoint files,
  // without an image server), or a JSON object of the image checkpoint's
  // blob versions {"ckpt_memory":…, "ckpt_disk":…}. "" = not recorded
  // (records from before migration 24). Persistent disks lie on nothing.
  std::string disk_base;
  std::string error;
  int64_t create_ms = 0;  // request-to-ready time of the last create/resume
  int64_t created_ms = 0;
  int64_t updated_ms = 0;

  bool operator==(const Vm&) const = default;
};

// A user's virtual network (docs/vnet.md): an IPv4 subnet whose addresses
// the Store assigns (IPAM), and a tunnel id (vni) unique in the grid.
struct Network {
  std::string id;
  std::string name;
  std::string owner_id;
  std::string subnet;  // CIDR, e.g. "10.20.0.0/24" (prefix /16 to /28)
  bool egress = false;
  int64_t vni = 0;
  int64_t created_ms = 0;
  std::vector<std::string> shared_with;  // user ids the admin shared it with
  // The tunnels' AEAD key (64 hex digits) and its epoch. Secret: for the
  // network's hosts only, never in an API answer or a query view.
  std::string tunnel_key_hex;
  int64_t key_epoch = 0;
};

// One NIC of a VM on a virtual network: its address is unique in the
// network, its MAC in the grid (locally administered, derived from the
// network's vni and the address, so it never collides).
struct Nic {
  std::string vm_id;
  int index = 0;  // NIC order in the VM
  std::string network_id;
  std::string network;  // the network's name
  std::string mac;
  std::string ip;
  int prefix = 0;  // of the network's subnet
};

// A NIC with where its VM is (the VM's host and name).
struct PlacedNic {
  Nic nic;
  std::string host_id;
  std::string vm_name;
};

// Where a host's switches meet the others' (reported by its agent).
struct TunnelEndpoint {
  uint32_t host_number = 0;  // the host's id in tunnel headers (not 0)
  std::string ip;            // IPv4
  int port = 0;
};

// What the controller needs to plan one host's virtual networks: every
// network with a NIC on the host, all NICs of those networks with their
// hosts, and the tunnel endpoints of those hosts (host id -> endpoint; a
// host that has not reported one is absent).
struct NetworkPlanInputs {
  std::vector<Network> networks;
  std::vector<PlacedNic> nics;
  std::map<std::string, TunnelEndpoint> endpoints;
};

struct Workspace {
  std::string id;
  std::string name;
  std::string owner_id;
  std::string image_id;
  std::string host_id;
  std::string path;  // on the host
  int64_t size_bytes = 0;
  std::string vm_id;  // attached VM, "" if none
  int64_t created_ms = 0;
  // Durable workspaces (migration 15; docs/vm-lifecycle.md): the latest
  // version on the image server (its name is the workspace id; version 0:
  // none yet), when the disk was copied for it, what its push sent, and the
  // host that pushed it.
  int64_t durable_version = 0;
  std::string durable_digest{};
  int64_t durable_size_bytes = 0;
  int64_t durable_ms = 0;
  int64_t durable_chunks = 0;       // non-zero chunks of the version
  int64_t durable_sent_chunks = 0;  // chunks its push sent (the server lacked them)
  int64_t durable_sent_bytes = 0;
  std::string durable_host_id{};
  // Grows each time the workspace moves to another host; the image server
  // refuses grants of older generations (chunks/workspace_grant.h).
  int64_t generation = 1;
};

// One entry of the event stream (the `events` table, migration 13): what
// happened to a VM or a host, in commit order. `id` is the cursor: it only
// grows (never reused, also after retention deleted older rows). Empty
// vm_id / host_id / owner_id are NULL in the table; an event without an
// owner (a host's) is the admin's only.
struct Event {
  int64_t id = 0;
  int64_t time_ms = 0;
  std::string kind;  // vm.placed, vm.state, vm.failed, vm.deleted, vm.migrated, host.up, ...
  std::string vm_id;
  std::string host_id;
  std::string owner_id;
  std::string message;      // for people
  std::string data = "{}";  // a JSON object, for programs
};

// Which events ListEvents returns: those with id > after, oldest first, at
// most `limit`; of one VM if vm_id is set; of one owner's VMs unless
// `owner` is "" (the admin's view, which includes host events).
struct EventQuery {
  int64_t after = 0;
  std::string vm_id;
  std::string owner;
  int64_t limit = 100;
  bool newest = false;  // the newest `limit` of them instead (still oldest first)
};

// A user's dataset (migration 17; docs/datasets.md): a name unique per
// owner; its versions are immutable.
struct Dataset {
  std::string id;  // "ds-..."; also its name on the image server
  std::string name;
  std::string owner_id;
  int64_t created_ms = 0;
};

// One published version of a dataset: the image server's version of the
// same number under the dataset's id.
struct DatasetVersion {
  std::string dataset_id;
  int64_t version = 0;
  std::string kind;  // "file" (raw bytes) or "dir" (an ext4 image)
  int64_t size_bytes = 0;
  std::string blob_digest;  // the manifest's digest
  int64_t chunks = 0;       // non-zero chunks
  int64_t sent_chunks = 0;  // chunks its push sent (not in an earlier version)
  int64_t sent_bytes = 0;
  int64_t created_ms = 0;
};

// A grid job (migration 19; docs/jobs.md): `count` tasks of one program,
// each run in a fresh clone VM of an image. What the tasks run (argv, size,
// retries, data) is the job's spec, a JSON object written once at submit and
// read by the job service (api/services/job_service.h); what changes is
// relational (the job's state, its tasks' rows).
struct Job {
  std::string id;  // "job-..."
  std::string owner_id;
  std::string image_id;
  std::string spec;  // JSON (JobSpec); immutable
  int64_t count = 0;
  std::string state;       // queued | running | succeeded | failed | cancelled
  int64_t exit_code = -1;  // set when it ends (docs/jobs.md, "Exit codes"); -1 before
  int64_t created_ms = 0;
  int64_t finished_ms = 0;
};

// One task of a job. `attempts` counts the VMs started for it; the current
// attempt's VM is named "<job id>-<index>-a<attempts>" (what the orphan sweep
// recognises). Logs are kept capped (JobTask::kMaxLogBytes each).
// A host that holds (some of) a dataset version's chunks.
struct DatasetCacheRow {
  std::string dataset_id;
  int64_t version = 0;
  std::string host_id;
  int64_t first_ms = 0;  // when it was first noted
};

struct JobTask {
  std::string job_id;
  int64_t index = 0;
  std::string owner_id;
  std::string state;  // queued | starting | running | succeeded | failed | cancelled
  int64_t attempts = 0;
  std::string vm_id;  // the current attempt's VM ("" while none is recorded)
  std::string host_id;
  int64_t queued_ms = 0;  // when it (first) entered the queue: the queue's order
  int64_t started_ms = 0;
  int64_t finished_ms = 0;
  int64_t exit_code = -1;     // the program's exit code; -1: none (it did not run to its end)
  std::string error;          // why it failed without an exit code, or what was retried
  int64_t not_before_ms = 0;  // a retry backing off is not started before then
  std::string last_host_id;   // the host its last lost attempt ran on (a retry avoids it)
  // Read only by Store::GetJobTaskLogs (lists leave them empty).
  std::string stdout_data, stderr_data;
  bool stdout_truncated = false, stderr_truncated = false;
  static constexpr size_t kMaxLogBytes = size_t{1} << 20;
};

}  // namespace vmgrid
