// Store: the controller's persistent state (users, tokens, hosts, images,
// VMs, workspaces) in SQLite (embedded, the default) or PostgreSQL, with
// versioned schema migrations. Every method is a single transaction: either
// all of its effect is recorded or none.
// Thread-safe: one connection for writes, serialized by a mutex (the hot
// writes share transactions: group commit), and connections of their own
// for reads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/paging.h"
#include "common/result.h"
#include "common/vm_state.h"
#include "store/model.h"
#include "store/pg_listener.h"
#include "store/sql_backend.h"

namespace vmgrid {

// Owner filter: "" means every owner (the admin's view).
using OwnerFilter = std::string;

struct HostCapacity {
  int vcpus = 0;
  int64_t memory_mb = 0;
  int64_t disk_mb = 0;
  bool kvm = false;
  std::string site = "default";
  std::string network = "default";
  std::string arch = "x86_64";
  int64_t disk_total_bytes = 0;  // of the agent's state directory; 0 = not reported
  int64_t disk_free_bytes = 0;
  std::string tunnel_ip = "";  // the host's virtual-network tunnel endpoint ("" / 0: none)
  int64_t tunnel_port = 0;
};

// Told of every committed change that an in-memory copy of the hosts'
// capacity needs (placement's CapacityIndex), in commit order. Called with the
// Store's lock held: it must be quick and must not call the Store.
class StoreObserver {
 public:
  virtual ~StoreObserver() = default;
  // Every host and (image, host) cache row, read in one consistent snapshot;
  // the calls below then continue from it.
  virtual void OnSnapshot(const std::vector<Host>& hosts,
                          const std::vector<std::pair<std::string, std::string>>& cached) = 0;
  // A host registered, or its url, capacity, attributes or state changed.
  virtual void OnHost(const Host& host) = 0;
  virtual void OnHostDown(const std::string& host_id) = 0;
  // The usage held on a host changed by this much (negative: released).
  virtual void OnUsage(const std::string& host_id, int64_t vcpus, int64_t memory_mb,
                       int64_t disk_bytes) = 0;
  // A VM record on this host was inserted, changed or deleted.
  virtual void OnVmChanged(const std::string& host_id) = 0;
  // `image_id` is an image's id, or DatasetCacheKey(id) for a dataset.
  virtual void OnImageCached(const std::string& image_id, const std::string& host_id) = 0;
};

// A dataset in the capacity index's cache map (StoreObserver::OnImageCached).
std::string DatasetCacheKey(const std::string& dataset_id);

class Store {
 public:
  // `target` is a SQLite database file (created if missing) or a PostgreSQL
  // connection URI, "postgresql://..." or "postgres://..." (the database must
  // exist; the tables are created in its default schema). Migrates the schema
  // to this version; on failure nothing of the failed migration step remains.
  static Result<std::unique_ptr<Store>> Open(const std::string& target);

  // Schema version after migrations.
  int schema_version() const { return schema_version_; }
  // The target given to Open (a URI may hold a password: see RedactTarget).
  const std::string& path() const { return path_; }

  // Sets the observer (null: none; it must outlive the Store or be reset)
  // and hands it a snapshot.
  // PostgreSQL: writes by other controllers sharing the database reach it
  // too (docs/ha.md, "Capacity indexes"): every commit that changes a host
  // row's capacity, state or usage, or a VM record, or adds an image-cache
  // row, sends a notification (triggers installed by Open, so in the
  // changing transaction whoever writes); a listener thread of this Store
  // re-reads each host named and calls OnHost (OnImageCached), ordered
  // with this Store's own calls so that a re-read never counts a change
  // twice. A lost listening connection is followed by a full snapshot.
  Status SetObserver(StoreObserver* observer);
  // Hands the observer a fresh snapshot.
  Status Resync();
  ~Store();
  // Re-read batches of other controllers' changes applied (PostgreSQL with
  // an observer), for tests and logs.
  int64_t remote_changes_applied() const { return remote_changes_applied_.load(); }

  // --- users and tokens ---------------------------------------------------
  // Creates a user and a first token; returns the plaintext token (only the
  // SHA-256 of a token is stored).
  Result<std::pair<User, std::string>> CreateUser(const std::string& name, const std::string& role);
  Result<User> AuthenticateToken(const std::string& token);
  Result<std::vector<User>> ListUsers();
  Result<bool> HasUserWithRole(const std::string& role);
  Result<User> GetUserById(const std::string& id);
  Result<User> GetUserByName(const std::string& name);
  // Sets the quota of the user named `name` (0 fields: unlimited) and
  // returns the user. It limits what is placed, finalized or created from
  // then on; what the user already holds stays.
  Result<User> SetUserQuota(const std::string& name, const UserQuota& quota);
  // What the user holds now, as the quota counts it (model.h UserQuota).
  Result<UserUsage> GetUserUsage(const std::string& user_id);
  // Adds a token for an existing user (used for the well-known agent token).
  Status AddToken(const std::string& user_id, const std::string& token);

  // --- hosts ----------------------------------------------------------------
  // Registers a host by name, or refreshes its url, capacity and heartbeat.
  // A heartbeat that changes nothing but the time (the host is up with this
  // url and capacity) is not written at once: its time is kept in memory and
  // written, batched with the others, by FlushHeartbeats (and before
  // MarkStaleHostsDown decides). It then returns the host as last written
  // (usage included) with the new heartbeat time.
  Result<Host> HeartbeatHost(const std::string& name, const std::string& url,
                             const HostCapacity& cap);
  // Writes the heartbeat times kept in memory, in one transaction.
  Status FlushHeartbeats();
  // Several controllers on one database (docs/ha.md): a heartbeat that comes
  // `ms` or more after the previous one of the same host on this Store is
  // written in full (and the host read back), since another controller may
  // have declared the host suspect or failed in between. 0 (the default):
  // the in-memory path whatever the gap (one controller sees every change).
  void set_heartbeat_refresh_ms(int64_t ms) { heartbeat_refresh_ms_ = ms; }
  Result<std::vector<Host>> ListHosts();
  // Paged (common/paging.h), in (name, id) order.
  Result<Page<Host>> ListHostsPage(const PageRequest& page);
  Result<Host> GetHost(const std::string& ref);
  // Sets or clears host `ref`'s (id or name) draining flag and returns the
  // host; placement's conditional updates skip a draining host from the
  // commit on. Setting what is already set writes nothing (idempotent).
  Result<Host> SetHostDraining(const std::string& ref, bool draining);
  // Marks hosts whose last heartbeat is older than `cutoff_ms` as down;
  // returns the ids that changed.
  Result<std::vector<std::string>> MarkStaleHostsDown(int64_t cutoff_ms);
  // Marks host `id` down (suspect: docs/host-failure.md) if it is up;
  // returns whether it changed. The failure detector decides when, on its
  // own monotonic clock.
  Result<bool> MarkHostDown(const std::string& id);
  // Declares host `id` failed (docs/host-failure.md): sets failed_ms if it
  // is down and not failed already. Returns whether it changed.
  Result<bool> MarkHostFailed(const std::string& id);
  // The failed host returned and holds no stale VM copies any more: it may
  // take placements again.
  Status ClearHostFailed(const std::string& id);

  // --- images ---------------------------------------------------------------
  Status InsertImage(const Image& image);
  Status UpdateImage(const Image& image);
  // UpdateImage for an image that becomes ready: if it was not ready, its
  // QuotaBytes() (size as uploaded, or expanded if more) plus the owner's ready images must fit the
  // owner's image_bytes quota (kPermissionDenied, nothing written), checked in the same transaction
  // as the write (concurrent finalizes of one user take turns).
  Status FinalizeImage(const Image& image);
  Result<Image> GetImage(const std::string& ref, const OwnerFilter& owner);
  Result<std::vector<Image>> ListImages(const OwnerFilter& owner);
  // Images owned by admins are public: every user may see and use them.
  Result<std::vector<Image>> ListPublicImages();
  // Deletes unless a VM or workspace uses it (kFailedPrecondition).
  Status DeleteImage(const std::string& id);

  // --- virtual networks (docs/vnet.md) ------------------------------------------
  // Creates `name` for `owner_id` (names are unique per owner) on `subnet`
  // (store/ipam.h ParseSubnet: a private IPv4 range, /16 to /28) with a new
  // tunnel id (vni).
  Result<Network> CreateNetwork(const std::string& owner_id, const std::string& name,
                                const std::string& subnet, bool egress);
  // By id, or by name among the user's own; kNotFound unless the user owns
  // it, it is shared with them, or `admin`.
  Result<Network> GetNetwork(const std::string& ref, const std::string& user_id, bool admin);
  // The networks the user may use (the admin: all).
  Result<std::vector<Network>> ListNetworks(const std::string& user_id, bool admin);
  // Lets `user_id` put VMs on the network (admin's decision; idempotent).
  Status ShareNetwork(const std::string& network_id, const std::string& user_id);
  // Deletes unless a VM has a NIC on it (kFailedPrecondition naming them).
  Status DeleteNetwork(const std::string& id);
  // A new tunnel key, epoch + 1 (when a host leaves the network, so that it
  // cannot read or forge the network's traffic from then on).
  Result<Network> RotateNetworkKey(const std::string& id);
  // NICs are allocated with their VM (Vm::net_ids) and deleted with it.
  Result<std::vector<Nic>> ListVmNics(const std::string& vm_id);
  Result<std::vector<Nic>> ListNetworkNics(const std::string& network_id);
  // What planning `host_id`'s virtual networks needs (model.h).
  Result<NetworkPlanInputs> NetworkPlanInputsForHost(const std::string& host_id);
  // Changes whenever something a network plan reads may have changed (a VM
  // with NICs inserted or deleted, a network deleted or rekeyed, a host's
  // registration written). In memory: another controller sharing the
  // database does not move it (planners re-plan periodically as well).
  int64_t network_generation() const { return network_generation_.load(); }

  // --- VMs --------------------------------------------------------------------
  // Atomically places `vm` on the first host in `candidates` (in order) that
  // is up and has room for its vcpus, memory and disk_bytes (on hosts that
  // report their disk: disk_free_bytes - reserved_disk_bytes), and records it. Concurrent
  // calls never oversubscribe a host. Returns the stored VM with host_id set,
  // or kResourceExhausted. The owner's quota (vms, vcpus, memory_mb) is
  // checked in the same transaction as the insert (concurrent placements
  // never exceed it): over it, kPermissionDenied and nothing written.
  Result<Vm> PlaceAndInsertVm(Vm vm, const std::vector<std::string>& candidates);
  // Gang co-allocation: places all of `vms` on hosts of one group (the first
  // group, in order, where they all fit, first-fit decreasing by memory) and
  // records them in one transaction — all or none. All of `vms` have one
  // owner, whose quota must hold all of them (as PlaceAndInsertVm).
  Result<std::vector<Vm>> PlaceAndInsertGang(std::vector<Vm> vms,
                                             const std::vector<std::vector<std::string>>& groups);
  Result<Vm> GetVm(const std::string& ref, const OwnerFilter& owner);
  Result<std::vector<Vm>> ListVms(const OwnerFilter& owner);
  // Paged (common/paging.h), oldest first: (created_ms, id) order.
  Result<Page<Vm>> ListVmsPage(const OwnerFilter& owner, const PageRequest& page);
  Result<std::vector<Vm>> ListVmsOnHost(const std::string& host_id);
  // The number of VMs in each state (states without VMs absent): what
  // /metrics shows, without reading every record.
  Result<std::map<std::string, int64_t>> CountVmsByState();
  // Writes every mutable field of `vm` (host, state, workspace, error,
  // create time) over the record (ModifyVm).
  Status UpdateVm(const Vm& vm);
  // Reads the VM by id, applies `change` and writes it, in one transaction
  // (no other write can slip in between). OK, with nothing written, if the
  // VM is gone.
  Status ModifyVm(const std::string& id, const std::function<void(Vm&)>& change);
  // Compare-and-set on state: fails with kFailedPrecondition if the VM's
  // state is not one of `from`.
  Result<Vm> TransitionVm(const std::string& id, const std::vector<std::string>& from,
                          const std::string& to);
  // The same for the start of `op` (common/vm_state.h): from any state the
  // table allows it from, to its transitional state. kFailedPrecondition
  // names the state and the states that would do; kInternal for an `op`
  // that changes no state (exec).
  Result<Vm> TransitionVm(const std::string& id, VmOp op);
  Status DeleteVm(const std::string& id);
  // Records that `host_id` holds `image_id` (it ran a VM of it).
  Status NoteImageCached(const std::string& image_id, const std::string& host_id);
  // Records that `host_id` holds version `version` of a dataset (it exported
  // it to a VM); the observer hears DatasetCacheKey(dataset_id).
  Status NoteDatasetCached(const std::string& dataset_id, int64_t version,
                           const std::string& host_id);
  // The hosts holding each version of the dataset, by version then host.
  Result<std::vector<DatasetCacheRow>> ListDatasetCache(const std::string& dataset_id);
  // Inserts a VM record as-is (used when an agent reports a VM the controller
  // has no record of, e.g. after restoring an old database).
  Status InsertVmRecord(const Vm& vm);

  // --- live migration (docs/migration.md) ------------------------------------------
  // VM `id` goes from running to migrating (compare-and-set) and its room
  // (vcpus, memory, disk_bytes) is reserved on the first host of
  // `candidates` (other than its own) that is up and has it, in one
  // transaction; vm_migrations remembers the target. Returns the VM as
  // moved and the target's id. kFailedPrecondition (VM not running) or
  // kResourceExhausted (no candidate has room): nothing changed.
  Result<std::pair<Vm, std::string>> BeginMigration(const std::string& id,
                                                    const std::vector<std::string>& candidates);
  // The target host of VM `id`'s migration in flight ("" if none).
  Result<std::string> MigrationTarget(const std::string& id);
  // Every migration in flight (vm_migrations), oldest first.
  struct PendingMigration {
    std::string vm_id, target_host_id;
    int64_t started_ms = 0;
    bool cold = false;  // the VM was stopped: it ends stopped (docs/migration.md)
  };
  Result<std::vector<PendingMigration>> ListMigrations();
  // The VM arrived: it is running on the target (the room reserved there is
  // now its own), the source's room is released, its workspace (if any) is
  // on the target, and its NICs are planned there (network generation
  // moves; a network the source no longer carries is rekeyed, as after a
  // delete). kFailedPrecondition if the VM is not migrating.
  Result<Vm> FinishMigration(const std::string& id);
  // The migration failed: the target's room is released and the VM is
  // `state` on its source host with `error`. OK if no migration is in flight.
  Status AbortMigration(const std::string& id, const std::string& state, const std::string& error);
  // Host failure recovery: VM `id`, in `error` on host `from` (holding no
  // room), is placed on the first of `candidates` with room (the shared
  // conditional UPDATE) and becomes `to_state` there (`creating`, or
  // `stopped` for a stopped VM that its next start creates) with `note` as
  // its error text. kResourceExhausted: no candidate had room, nothing
  // changed; kFailedPrecondition: the VM is no longer in error on `from`.
  Result<Vm> RelocateVm(const std::string& id, const std::string& from,
                        const std::vector<std::string>& candidates, const std::string& note,
                        const std::string& to_state = "creating");

  // --- the event stream (model.h Event; docs/operations.md, "Events") --------------
  // The store itself records, in the transaction that makes the change,
  // every change of a VM's state (vm.state; vm.failed when it becomes
  // error), a VM's deletion (vm.deleted), and a host going up, down,
  // draining or undrained (host.up, host.down, host.drain, host.undrain).
  // Such a record never fails the change: it is written under a savepoint
  // of its own, and a failure is logged and counted (event_write_failures).
  // Services add what only they know with AppendEvent (vm.placed with the
  // reason, vm.migrated with the downtime).
  // Writes `event` (id and, if 0, time_ms are set here); returns its id.
  Result<int64_t> AppendEvent(Event event);
  // Events after q.after, oldest first (model.h EventQuery).
  Result<std::vector<Event>> ListEvents(const EventQuery& q);
  // Deletes all but the newest `keep` events (by id); returns how many went.
  Result<int64_t> PruneEvents(int64_t keep);
  // Records of changes that could not be written (each logged).
  int64_t event_write_failures() const { return event_write_failures_.load(); }
  // A bell for waiters (long polls): its count goes up after each commit
  // of this Store that wrote events, so every recorded change of a VM's
  // state. Take the count, read, and if nothing changed yet wait for a
  // count other than the one taken: a commit between the read and the wait
  // is not missed. Changes written by other controllers (PostgreSQL) and
  // events written outside a transaction do not ring it; waiters therefore
  // also re-read at an interval of their own.
  uint64_t EventBell() const;
  // Returns at once if the count is no longer `seen`, else when it changes
  // or after `at_most`.
  void WaitEventBell(uint64_t seen, std::chrono::milliseconds at_most) const;

  // --- workspaces ---------------------------------------------------------------
  // Inserts unless the owner's workspace_bytes quota cannot hold ws.size_bytes
  // more (kPermissionDenied), checked in the same transaction.
  Status InsertWorkspace(const Workspace& ws);
  Status UpdateWorkspace(const Workspace& ws);
  // Durable workspaces: records `v`'s durable_* fields as the workspace's
  // latest durable version if `v.durable_host_id` holds the workspace and
  // the version is newer than the recorded one; false if nothing changed
  // (an older or repeated report, or a host the workspace has left).
  Result<bool> RecordDurableVersion(const Workspace& v);
  Result<Workspace> GetWorkspace(const std::string& ref, const OwnerFilter& owner);
  Result<std::optional<Workspace>> FindWorkspaceByName(const std::string& owner_id,
                                                       const std::string& name);
  Result<std::vector<Workspace>> ListWorkspaces(const OwnerFilter& owner);
  Status DeleteWorkspace(const std::string& id);

  // --- datasets (migration 17; docs/datasets.md) --------------------------------
  // kAlreadyExists when the owner has a dataset of that name.
  Result<Dataset> CreateDataset(const std::string& owner_id, const std::string& name);
  // By id or the owner's name; another owner's dataset is kNotFound.
  Result<Dataset> GetDataset(const std::string& ref, const OwnerFilter& owner);
  Result<std::optional<Dataset>> FindDatasetByName(const std::string& owner_id,
                                                   const std::string& name);
  Result<std::vector<Dataset>> ListDatasets(const OwnerFilter& owner);
  // Records a published version; kAlreadyExists if that number is taken.
  Status AddDatasetVersion(const DatasetVersion& v);
  // Oldest first.
  Result<std::vector<DatasetVersion>> ListDatasetVersions(const std::string& dataset_id);
  // False when there was no such version.
  Result<bool> DeleteDatasetVersion(const std::string& dataset_id, int64_t version);
  // The dataset, all its versions' records and its shares, in one transaction.
  Status DeleteDataset(const std::string& id);
  // The dataset `name` of the user named `owner_name`, whoever asks (the
  // caller checks who may see it).
  Result<std::optional<Dataset>> FindDatasetByOwnerName(const std::string& owner_name,
                                                        const std::string& name);
  // Sharing (migration 22): read-only access for another user. Sharing
  // twice is one share; Unshare answers false when there was none.
  Status ShareDataset(const std::string& dataset_id, const std::string& user_id);
  Result<bool> UnshareDataset(const std::string& dataset_id, const std::string& user_id);
  Result<bool> IsDatasetSharedWith(const std::string& dataset_id, const std::string& user_id);
  // The users a dataset is shared with, by name.
  Result<std::vector<User>> ListDatasetShares(const std::string& dataset_id);
  // Other users' datasets shared with `user_id`.
  Result<std::vector<Dataset>> ListDatasetsSharedWith(const std::string& user_id);

  // --- jobs (migration 19; docs/jobs.md) ------------------------------------------
  // Records `job` and its `count` tasks, queued, with a job.queued event, in
  // one transaction, unless its owner would then have more than
  // `max_unfinished` unfinished (queued, starting, running) tasks:
  // kResourceExhausted, nothing written.
  Status InsertJob(const Job& job, int64_t max_unfinished);
  // Another owner's job is kNotFound (owner "" sees all).
  Result<Job> GetJob(const std::string& id, const OwnerFilter& owner);
  // Oldest first; `unfinished_only`: queued or running jobs.
  Result<std::vector<Job>> ListJobs(const OwnerFilter& owner, bool unfinished_only);
  // Paged (common/paging.h), oldest first: (created_ms, id) order.
  Result<Page<Job>> ListJobsPage(const OwnerFilter& owner, const PageRequest& page);
  // A job's tasks by index, without their logs.
  Result<std::vector<JobTask>> ListJobTasks(const std::string& job_id);
  // Every task in `state` (all owners), in queue order, without logs.
  Result<std::vector<JobTask>> ListJobTasksInState(const std::string& state);
  // The first `per_owner` queued tasks of each owner, in queue order
  // (queued_ms, job, index): what the fair-share scheduler picks from.
  // Tasks backing off (not_before_ms > now_ms) are left out.
  Result<std::vector<JobTask>> QueuedTaskHeads(int64_t per_owner, int64_t now_ms);
  // Tasks starting or running, per owner (owners with none absent).
  Result<std::map<std::string, int64_t>> ActiveJobTasksByOwner();
  // One task with its logs; kNotFound for a bad index.
  Result<JobTask> GetJobTaskLogs(const std::string& job_id, int64_t index);
  // Compare-and-set: writes `t`'s mutable fields (and its logs when `t`
  // ends succeeded or failed) if the task is still in `from_state` with VM
  // `from_vm_id`; false (nothing written) if it moved meanwhile (cancelled,
  // or settled by another controller).
  Result<bool> UpdateJobTask(const JobTask& t, const std::string& from_state,
                             const std::string& from_vm_id);
  // Compare-and-set of a job's state; false if it was in none of `from`.
  Result<bool> SetJobState(const std::string& id, const std::vector<std::string>& from,
                           const std::string& state, int64_t exit_code, int64_t finished_ms);

 private:
  explicit Store(SqlBackendPtr db) : db_(std::move(db)) {}
  Status Migrate();
  // What of a VM decides the usage it holds on its host.
  struct VmPlacement {
    std::string host_id;
    std::string state;
    int64_t vcpus = 0;
    int64_t memory_mb = 0;
    int64_t disk_bytes = 0;
  };
  // The methods below run inside the caller's transaction; the caller holds mu_.
  // Inserts one VM row and its virtualization rows; a taken name is
  // kAlreadyExists. Adds the VM's usage to its host unless `reserved` (the
  // caller already took it).
  Status InsertVmLocked(const Vm& vm, bool reserved);
  Status AllocateNicsLocked(SqlBackend* db, const Vm& vm);
  Status AllocateNicLocked(SqlBackend* db, const Vm& vm, int index, const std::string& network_id);
  // Takes vm's room (vcpus, memory, disk) on host_id if that host is up and
  // has it, atomically; false when it has not.
  Result<bool> TryTakeRoomLocked(const Vm& vm, const std::string& host_id);
  // Adds (or, negative, releases) usage on a host.
  Status AddUsageLocked(const std::string& host_id, int64_t vcpus, int64_t memory_mb,
                        int64_t disk_bytes);
  // Moves the usage of a VM that was `before` to its new host and state.
  Status MoveUsageLocked(const VmPlacement& before, const std::string& host_id,
                         const std::string& state);
  Result<std::optional<VmPlacement>> GetVmPlacementLocked(const std::string& id);
  // Deletes VM `id`'s vm_migrations row, releasing the room it reserved on
  // the target (a migrating VM that leaves `migrating` any other way than
  // FinishMigration, or is deleted).
  Status ReleaseMigrationLocked(const std::string& id);
  // Networks of `nets` with no NIC left on `host_id` get a new tunnel key.
  Status RekeyNetworksLeftLocked(const std::vector<std::string>& nets, const std::string& host_id);
  // Writes `v` over the row that was `before`; sets *raced (and writes
  // nothing) if the row's host or state is no longer `before`'s.
  Status UpdateVmLocked(const Vm& v, const VmPlacement& before, bool* raced);
  Result<Vm> GetVmLocked(const std::string& ref, const OwnerFilter& owner);
  Status UpdateImageLocked(const Image& image);
  // Records `event` in the caller's transaction on db_ under a savepoint:
  // a failure is rolled back alone, logged and counted, never returned.
  void RecordEventLocked(Event event);
  // A VM's state change (vm.state, or vm.failed when it becomes error).
  void RecordVmStateLocked(const Vm& vm, const std::string& from_state,
                           const std::string& from_host);
  // A connection for reads, held for one method: one of readers_, else
  // (an in-memory SQLite database) the main connection under mu_.
  struct ReadLease {
    std::unique_lock<std::mutex> lock;
    SqlBackend* db;
  };
  ReadLease Read();
  // On `db`, any connection, in the caller's transaction if it has one; the
  // caller tells the observer (thread-safe, attached before any placement)
  // once the VM is committed.
  Result<Vm> PlaceAndInsertVmPg(SqlBackend* db, Vm vm, const std::vector<std::string>& candidates);
  Status SnapshotLocked();
  // PostgreSQL: the triggers that notify kChangeChannel (hosts, vms) and
  // kCacheChannel (image_cache) of each committed change. Idempotent.
  Status InstallChangeTriggers();
  // The listener's batch: re-reads the hosts named and tells the observer.
  void ApplyRemoteChanges(const std::vector<PgNotification>& batch);
  // Whether `pid` is the server process of one of this Store's connections.
  bool IsOwnSession(int pid) const;
  Status FlushHeartbeatsLocked();
  // Heartbeats written in full (HeartbeatHost): queued, and written a batch
  // at a time by the writer at the queue's front.
  struct BeatWrite {
    std::string name, url;
    HostCapacity cap;
    Result<Host> result = MakeError(ErrorCode::kInternal, "not written");
    bool done = false;  // guarded by beat_queue_mu_
  };
  static constexpr size_t kMaxBeatBatch = 256;
  // One transaction for `batch`, a savepoint per heartbeat (one that fails
  // fails alone); sets each result.
  void WriteBeats(const std::vector<std::shared_ptr<BeatWrite>>& batch);
  // One heartbeat's row, in the caller's transaction on db_.
  Result<Host> WriteBeatLocked(const std::string& name, const std::string& url,
                               const HostCapacity& cap, int64_t now);
  // Queues a call to the observer until the transaction commits.
  void Notify(std::function<void(StoreObserver&)> event);
  // Commits and then delivers the queued calls (dropped if it fails).
  Status CommitLocked(SqlTransaction& tx);
  // Overlays heartbeat times not written yet.
  void OverlayBeats(std::vector<Host>& hosts);

  // Group commit (store.cc, "Group commit"): runs `body` (statements on
  // db_, Notify) in the open write batch under a savepoint, and returns once
  // the batch has committed, with body's error or the commit's. Without
  // group commit (an in-memory SQLite database), one transaction of its own.
  Status Batched(const std::function<Status()>& body);
  // mu_, with the open write batch (if any) committed first: for every
  // method that uses db_ in a transaction of its own.
  std::unique_lock<std::mutex> Exclusive();
  void CommitBatchLocked();

  // Orders the observer's calls when this Store reads what others changed
  // (PostgreSQL): a placement on a side connection holds it shared from
  // before its statement until it has told the observer; a re-read of hosts
  // (ApplyRemoteChanges, a snapshot) holds it exclusively, and then mu_, so
  // that every change it reads was already told and every change told
  // later was not yet read. Writer-preferring: re-reads are not starved.
  class ObserverGate {
   public:
    void lock_shared();
    void unlock_shared();
    void lock();
    void unlock();

   private:
    std::mutex mu_;
    std::condition_variable cv_;
    int shared_ = 0;           // guarded by mu_
    int writers_waiting_ = 0;  // guarded by mu_
    bool writer_ = false;      // guarded by mu_
  };
  ObserverGate gate_;

  std::mutex mu_;
  SqlBackendPtr db_;  // guarded by mu_
  static constexpr int kReaders = 4;
  struct Reader {
    std::mutex mu;
    SqlBackendPtr db;  // guarded by mu
  };
  std::vector<std::unique_ptr<Reader>> readers_;  // fixed after Open
  std::atomic<size_t> next_reader_{0};
  struct Batch {
    int ops = 0;
    bool done = false;
    Status status;
    std::vector<std::function<void(StoreObserver&)>> events;  // of the ops that succeeded
  };
  static constexpr int kMaxBatch = 64;
  bool group_commit_ = false;                                 // fixed after Open
  std::shared_ptr<Batch> batch_;                              // the open batch; guarded by mu_
  std::condition_variable batch_done_;                        // with mu_
  std::atomic<int> batch_waiters_{0};                         // Batched callers waiting for mu_
  StoreObserver* observer_ = nullptr;                         // guarded by mu_
  std::vector<std::function<void(StoreObserver&)>> pending_;  // guarded by mu_
  // Heartbeats: the row last written per host name, and times not written
  // yet per host id. Guarded by beat_mu_ (taken after mu_, never before), so
  // a heartbeat that changes nothing does not wait for the store's lock.
  std::mutex beat_mu_;
  std::atomic<int64_t> network_generation_{1};
  std::atomic<int64_t> event_write_failures_{0};
  // EventBell: set with an event written on db_, rung by db_'s next commit.
  std::atomic<bool> events_written_{false};
  mutable std::mutex bell_mu_;
  mutable std::condition_variable bell_cv_;
  uint64_t bell_ = 0;  // guarded by bell_mu_
  std::mutex beat_queue_mu_;
  std::condition_variable beat_queue_cv_;
  std::deque<std::shared_ptr<BeatWrite>> beat_queue_;  // guarded by beat_queue_mu_
  std::unordered_map<std::string, Host> beat_written_;
  std::unordered_map<std::string, int64_t> beat_pending_;
  std::atomic<int64_t> heartbeat_refresh_ms_{0};
  int schema_version_ = 0;
  std::string path_;
  std::atomic<int64_t> remote_changes_applied_{0};
  // PostgreSQL with an observer: other controllers' changes. Last member, so
  // its thread (which calls into the Store) stops before anything else goes.
  PgListenerPtr listener_;
};

}  // namespace vmgrid
