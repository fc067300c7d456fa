#include "store/store.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <set>
#include <shared_mutex>

#include "common/base64.h"
#include "common/util.h"
#include "common/vm_state.h"
#include "store/ipam.h"

namespace vmgrid {

namespace {

// A migration's SQL: one text for both databases (a plain string converts),
// or {sqlite, postgres} where a statement has to differ.
struct Migration {
  Migration(const char* both) : sqlite(both), postgres(both) {}  // NOLINT: implicit by design
  Migration(const char* sqlite_sql, const char* postgres_sql)
      : sqlite(sqlite_sql), postgres(postgres_sql) {}
  const char* For(SqlBackend::Dialect d) const {
    return d == SqlBackend::Dialect::kPostgres ? postgres : sqlite;
  }
  const char* sqlite;
  const char* postgres;
};

// Each entry moves the schema from version i to i+1. Never change what a
// released entry does; append a new one. The same text runs on SQLite and
// PostgreSQL: integers are BIGINT (64-bit on PostgreSQL; SQLite gives BIGINT
// and INTEGER the same INTEGER affinity, so databases created before this
// spelling behave identically), booleans are integers. Where a statement has
// to differ, the entry is a {sqlite, postgres} pair (migration 8).
const Migration kMigrations[] = {
    R"sql(
CREATE TABLE users (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  role TEXT NOT NULL CHECK (role IN ('admin','user','agent')),
  created_ms BIGINT NOT NULL
);
CREATE TABLE tokens (
  token_sha256 TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  created_ms BIGINT NOT NULL
);
CREATE TABLE hosts (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  owner_id TEXT NOT NULL,
  url TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('up','down')),
  vcpus BIGINT NOT NULL,
  memory_mb BIGINT NOT NULL,
  disk_mb BIGINT NOT NULL,
  kvm BIGINT NOT NULL,
  last_heartbeat_ms BIGINT NOT NULL,
  created_ms BIGINT NOT NULL
);
CREATE TABLE images (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  owner_id TEXT NOT NULL REFERENCES users(id),
  state TEXT NOT NULL,
  format TEXT NOT NULL,
  dir TEXT NOT NULL,
  size_bytes BIGINT NOT NULL DEFAULT 0,
  virtual_size_bytes BIGINT NOT NULL DEFAULT 0,
  has_kernel BIGINT NOT NULL DEFAULT 0,
  has_initrd BIGINT NOT NULL DEFAULT 0,
  append TEXT NOT NULL DEFAULT '',
  min_memory_mb BIGINT NOT NULL DEFAULT 64,
  ckpt_state TEXT NOT NULL DEFAULT '',
  ckpt_memory_mb BIGINT NOT NULL DEFAULT 0,
  ckpt_vcpus BIGINT NOT NULL DEFAULT 0,
  ckpt_size_bytes BIGINT NOT NULL DEFAULT 0,
  ckpt_error TEXT NOT NULL DEFAULT '',
  created_ms BIGINT NOT NULL,
  UNIQUE (owner_id, name)
);
CREATE TABLE workspaces (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  owner_id TEXT NOT NULL REFERENCES users(id),
  image_id TEXT NOT NULL REFERENCES images(id),
  host_id TEXT NOT NULL REFERENCES hosts(id),
  path TEXT NOT NULL,
  size_bytes BIGINT NOT NULL DEFAULT 0,
  vm_id TEXT NOT NULL DEFAULT '',
  created_ms BIGINT NOT NULL,
  UNIQUE (owner_id, name)
);
CREATE TABLE vms (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  owner_id TEXT NOT NULL REFERENCES users(id),
  image_id TEXT NOT NULL REFERENCES images(id),
  host_id TEXT NOT NULL REFERENCES hosts(id),
  state TEXT NOT NULL,
  vcpus BIGINT NOT NULL,
  memory_mb BIGINT NOT NULL,
  disk TEXT NOT NULL CHECK (disk IN ('clone','persistent')),
  start TEXT NOT NULL CHECK (start IN ('boot','resume')),
  workspace_id TEXT NOT NULL DEFAULT '',
  error TEXT NOT NULL DEFAULT '',
  create_ms BIGINT NOT NULL DEFAULT 0,
  created_ms BIGINT NOT NULL,
  updated_ms BIGINT NOT NULL,
  UNIQUE (owner_id, name)
);
CREATE INDEX vms_host ON vms(host_id);
)sql",
    // 2: attributes the information service queries (docs/infosvc.md).
    R"sql(
ALTER TABLE hosts ADD COLUMN site TEXT NOT NULL DEFAULT 'default';
ALTER TABLE hosts ADD COLUMN network TEXT NOT NULL DEFAULT 'default';
ALTER TABLE hosts ADD COLUMN arch TEXT NOT NULL DEFAULT 'x86_64';
ALTER TABLE vms ADD COLUMN network TEXT NOT NULL DEFAULT 'default';
CREATE TABLE image_cache (
  image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
  host_id TEXT NOT NULL REFERENCES hosts(id),
  first_ms BIGINT NOT NULL,
  PRIMARY KEY (image_id, host_id)
);
CREATE INDEX vms_owner ON vms(owner_id);
)sql",
    // 3: what the information service and placement read on every query,
    // maintained instead of derived (docs/infosvc.md, "Maintained usage"):
    // per-host usage (every VM except a failed one holds its vcpus and
    // memory), written in the same transaction as each VM change; the
    // virtualization relation as a table (one row per VM -> host, vdisk ->
    // image, vdisk -> host cache) with an index on the physical side; and
    // indexes for the usual filters.
    R"sql(
ALTER TABLE hosts ADD COLUMN used_vcpus BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN used_memory_mb BIGINT NOT NULL DEFAULT 0;
UPDATE hosts SET
  used_vcpus = COALESCE((SELECT SUM(v.vcpus) FROM vms v
                         WHERE v.host_id = hosts.id AND v.state <> 'error'), 0),
  used_memory_mb = COALESCE((SELECT SUM(v.memory_mb) FROM vms v
                             WHERE v.host_id = hosts.id AND v.state <> 'error'), 0);
CREATE TABLE virtualization (
  virtual_id TEXT NOT NULL,
  virtual_kind TEXT NOT NULL,
  physical_id TEXT NOT NULL,
  physical_kind TEXT NOT NULL,
  vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
  owner_id TEXT NOT NULL,
  PRIMARY KEY (virtual_id, physical_kind)
);
INSERT INTO virtualization
  SELECT id, 'vm', host_id, 'host', id, owner_id FROM vms
  UNION ALL SELECT 'disk-' || id, 'vdisk', image_id, 'image', id, owner_id FROM vms
  UNION ALL SELECT 'disk-' || id, 'vdisk', host_id, 'host_cache', id, owner_id FROM vms;
CREATE INDEX virtualization_physical ON virtualization(physical_id, physical_kind);
CREATE INDEX virtualization_vm ON virtualization(vm_id);
CREATE INDEX vms_network ON vms(network, memory_mb);
CREATE INDEX hosts_site ON hosts(site);
CREATE INDEX image_cache_host ON image_cache(host_id);
)sql",
    // 4: image server versions an image's files were published as
    // (JSON: kind -> {name, version, digest, size}; docs/chunk-store.md).
    R"sql(
ALTER TABLE images ADD COLUMN blobs TEXT NOT NULL DEFAULT '{}';
)sql",
    // 5: lookups by name (GetByRef's name branch, the admin's `vm show NAME`).
    // Without them SQLite scanned the whole table on every lookup, by id too
    // (the name branch is planned as a scan): placement at 5,000 hosts fell
    // from 1,684/s to 444/s as the grid grew to 20,000 VMs.
    R"sql(
CREATE INDEX vms_name ON vms(name);
CREATE INDEX images_name ON images(name);
CREATE INDEX workspaces_name ON workspaces(name);
)sql",
    // 6: per-user quotas, set by the admin (0 = unlimited; model.h UserQuota).
    // Usage is counted from vms, images and workspaces under a lock of the
    // user's row (CheckQuotaLocked), not kept here.
    R"sql(
ALTER TABLE users ADD COLUMN quota_vms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN quota_vcpus BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN quota_memory_mb BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN quota_image_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN quota_workspace_bytes BIGINT NOT NULL DEFAULT 0;
)sql",
    // 7: the host's disk as a placement resource (docs/security.md,
    // "Disk space"). Hosts report the file system of their state directory;
    // each VM holds disk_bytes there (what its overlay or workspace can grow
    // to plus a memory checkpoint), summed per host in used_disk_bytes like
    // vCPUs and memory (migration 3). Images record `qemu-img measure`.
    // Existing images are bounded by their virtual size, and existing VMs
    // hold that plus their memory.
    R"sql(
ALTER TABLE hosts ADD COLUMN disk_total_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN disk_free_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN used_disk_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN expanded_size_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN max_clone_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN disk_bytes BIGINT NOT NULL DEFAULT 0;
UPDATE images SET max_clone_bytes = virtual_size_bytes;
UPDATE vms SET disk_bytes = memory_mb * 1048576 +
  COALESCE((SELECT i.virtual_size_bytes FROM images i WHERE i.id = vms.image_id), 0);
UPDATE hosts SET used_disk_bytes = COALESCE((SELECT SUM(v.disk_bytes) FROM vms v
                                             WHERE v.host_id = hosts.id AND v.state <> 'error'), 0);
)sql",
    // 8: vms.state holds a state of common/vm_state.h only (the names of
    // ToString(VmState); StoreTest.UnknownVmStateIsRefused checks that every
    // one is accepted). A new state needs a new migration.
    // PostgreSQL: a CHECK constraint, validated against the existing rows.
    // SQLite cannot add a CHECK to an existing table; it documents rebuilding
    // the table instead (CREATE new, copy, DROP, rename). We use triggers that
    // RAISE(ABORT) on an INSERT or an UPDATE of state with any other value:
    // just as strict for every write (the error is a constraint violation,
    // as for a CHECK), and it leaves the table alone. A rebuild would have to
    // spell out every column of vms here (and lose any a later branch adds
    // before it, e.g. sec-disk's disk_bytes), and dropping vms with foreign
    // keys on would cascade-delete its virtualization rows.
    // `UPDATE vms SET state = state` runs the check over the rows already
    // there, so the migration fails rather than keep a bad one.
    {R"sql(
CREATE TRIGGER vms_state_check_insert BEFORE INSERT ON vms
WHEN NEW.state NOT IN ('creating','running','stopping','stopped','checkpointing',
                       'suspended','resuming','deleting','error')
BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: vms.state'); END;
CREATE TRIGGER vms_state_check_update BEFORE UPDATE OF state ON vms
WHEN NEW.state NOT IN ('creating','running','stopping','stopped','checkpointing',
                       'suspended','resuming','deleting','error')
BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: vms.state'); END;
UPDATE vms SET state = state;
)sql",
     R"sql(
ALTER TABLE vms ADD CONSTRAINT vms_state_check
  CHECK (state IN ('creating','running','stopping','stopped','checkpointing',
                   'suspended','resuming','deleting','error'));
)sql"},
    // 9: virtual networks (docs/vnet.md). A user's networks, shared with
    // other users only by the admin; one row per VM NIC with its address
    // (host_index in the subnet, unique per network: the IPAM of
    // store/ipam.h) and MAC (unique in the grid). A VM's NICs go with it.
    // tunnel_key: the network's AEAD key (hex, 32 bytes) for the tunnels
    // between its hosts, rotated (key_epoch + 1) when a host leaves it.
    R"sql(
CREATE TABLE networks (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  owner_id TEXT NOT NULL REFERENCES users(id),
  subnet TEXT NOT NULL,
  egress BIGINT NOT NULL DEFAULT 0,
  vni BIGINT NOT NULL UNIQUE CHECK (vni > 0 AND vni < 16777216),
  tunnel_key TEXT NOT NULL,
  key_epoch BIGINT NOT NULL DEFAULT 1,
  created_ms BIGINT NOT NULL,
  UNIQUE (owner_id, name)
);
CREATE TABLE network_shares (
  network_id TEXT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id),
  PRIMARY KEY (network_id, user_id)
);
CREATE TABLE nics (
  vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
  idx BIGINT NOT NULL,
  network_id TEXT NOT NULL REFERENCES networks(id),
  host_index BIGINT NOT NULL,
  mac TEXT NOT NULL UNIQUE,
  ip TEXT NOT NULL,
  owner_id TEXT NOT NULL,
  PRIMARY KEY (vm_id, idx),
  UNIQUE (network_id, host_index)
);
CREATE INDEX nics_network ON nics(network_id);
CREATE INDEX network_shares_user ON network_shares(user_id);
)sql",
    // 10: where hosts' virtual-network tunnels meet. tunnel_number: a
    // host's number in tunnel headers, unique and never 0 (existing hosts
    // are numbered in id order; a new host gets MAX + 1 when it first
    // reports); tunnel_ip/port: the endpoint its agent reports ('' / 0: none).
    R"sql(
ALTER TABLE hosts ADD COLUMN tunnel_number BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN tunnel_ip TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN tunnel_port BIGINT NOT NULL DEFAULT 0;
UPDATE hosts SET tunnel_number = (SELECT COUNT(*) FROM hosts h2 WHERE h2.id <= hosts.id);
CREATE UNIQUE INDEX hosts_tunnel_number ON hosts(tunnel_number);
)sql",
    // 11: live migration (docs/migration.md). vms.state may be 'migrating'
    // (migration 8's check, redone with the new name), and vm_migrations
    // holds the target of each migration in flight with the room reserved
    // there (the VM's vcpus, memory and disk_bytes, added to the target's
    // used_* when it began): a migrating VM holds room on both hosts.
    {R"sql(
DROP TRIGGER vms_state_check_insert;
DROP TRIGGER vms_state_check_update;
CREATE TRIGGER vms_state_check_insert BEFORE INSERT ON vms
WHEN NEW.state NOT IN ('creating','running','stopping','stopped','checkpointing',
                       'suspended','resuming','deleting','migrating','error')
BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: vms.state'); END;
CREATE TRIGGER vms_state_check_update BEFORE UPDATE OF state ON vms
WHEN NEW.state NOT IN ('creating','running','stopping','stopped','checkpointing',
                       'suspended','resuming','deleting','migrating','error')
BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: vms.state'); END;
CREATE TABLE vm_migrations (
  vm_id TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
  target_host_id TEXT NOT NULL REFERENCES hosts(id),
  vcpus BIGINT NOT NULL,
  memory_mb BIGINT NOT NULL,
  disk_bytes BIGINT NOT NULL,
  started_ms BIGINT NOT NULL
);
)sql",
     R"sql(
ALTER TABLE vms DROP CONSTRAINT vms_state_check;
ALTER TABLE vms ADD CONSTRAINT vms_state_check
  CHECK (state IN ('creating','running','stopping','stopped','checkpointing',
                   'suspended','resuming','deleting','migrating','error'));
CREATE TABLE vm_migrations (
  vm_id TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
  target_host_id TEXT NOT NULL REFERENCES hosts(id),
  vcpus BIGINT NOT NULL,
  memory_mb BIGINT NOT NULL,
  disk_bytes BIGINT NOT NULL,
  started_ms BIGINT NOT NULL
);
)sql"},
    // 12: drain (docs/migration.md, "Drain and maintenance"). A draining
    // host keeps its VMs but is offered to no placement: creates, gangs,
    // checkpoint publishes and migration targets skip it until undrained.
    R"sql(
ALTER TABLE hosts ADD COLUMN draining BIGINT NOT NULL DEFAULT 0;
)sql",
    // 13: the event stream (Store::ListEvents, GET /v1/events). id is the
    // cursor: AUTOINCREMENT / a sequence, so ids are never reused after
    // PruneEvents deleted the oldest. No foreign keys: a VM's history
    // outlives the VM. NULL vm_id/host_id/owner_id: not about one; an event
    // without owner (a host's) is for the admin only.
    {R"sql(
CREATE TABLE events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  time_ms BIGINT NOT NULL,
  kind TEXT NOT NULL,
  vm_id TEXT,
  host_id TEXT,
  owner_id TEXT,
  message TEXT NOT NULL,
  data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_vm ON events(vm_id, id);
CREATE INDEX events_owner ON events(owner_id, id);
)sql",
     R"sql(
CREATE TABLE events (
  id BIGSERIAL PRIMARY KEY,
  time_ms BIGINT NOT NULL,
  kind TEXT NOT NULL,
  vm_id TEXT,
  host_id TEXT,
  owner_id TEXT,
  message TEXT NOT NULL,
  data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_vm ON events(vm_id, id);
CREATE INDEX events_owner ON events(owner_id, id);
)sql"},
    // 14: host failure (docs/host-failure.md). hosts.failed_ms: when the
    // controller declared the host failed (0: not failed; kept after the host
    // returns until its stale VM copies are gone). vms.restart: the VM's
    // restart policy, 'never' or 'on-host-failure'.
    R"sql(
ALTER TABLE hosts ADD COLUMN failed_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN restart TEXT NOT NULL DEFAULT 'never';
)sql",
    // 15: durable workspaces (docs/vm-lifecycle.md). The latest version of
    // each workspace on the image server (durable_version 0: none), what its
    // push sent, the host that pushed it; generation grows when the
    // workspace moves to another host (its grants name it).
    R"sql(
ALTER TABLE workspaces ADD COLUMN durable_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN durable_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE workspaces ADD COLUMN durable_size_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN durable_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN durable_chunks BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN durable_sent_chunks BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN durable_sent_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN durable_host_id TEXT NOT NULL DEFAULT '';
ALTER TABLE workspaces ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;
)sql",
    // 16: controller high availability (docs/ha.md). The one row says which
    // controller runs the background loops (store/leader_lease.h): holder's
    // id and URL, the leadership term (one more at each change of hands) and
    // the expiry in the database's time. Used on PostgreSQL only (a SQLite
    // database has one controller, always the leader).
    R"sql(
CREATE TABLE controller_leader (
  id BIGINT PRIMARY KEY CHECK (id = 1),
  holder TEXT NOT NULL,
  url TEXT NOT NULL,
  term BIGINT NOT NULL,
  expires_ms BIGINT NOT NULL
);
)sql",
    // 17: datasets (docs/datasets.md). A user's named dataset and its
    // immutable versions; each version's bytes are on the image server under
    // the name "ds-ID" with the same version number (blob_digest: its
    // manifest's digest). kind: 'file' (raw bytes) or 'dir' (an ext4 image
    // built without root). chunks: its non-zero chunks; sent_*: what its push
    // sent (the chunks the previous versions lacked).
    R"sql(
CREATE TABLE datasets (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  owner_id TEXT NOT NULL REFERENCES users(id),
  created_ms BIGINT NOT NULL,
  UNIQUE (owner_id, name)
);
CREATE INDEX datasets_name ON datasets(name);
CREATE TABLE dataset_versions (
  dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
  version BIGINT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('file','dir')),
  size_bytes BIGINT NOT NULL,
  blob_digest TEXT NOT NULL,
  chunks BIGINT NOT NULL,
  sent_chunks BIGINT NOT NULL,
  sent_bytes BIGINT NOT NULL,
  created_ms BIGINT NOT NULL,
  PRIMARY KEY (dataset_id, version)
);
)sql",
    // 18: datasets attached to VMs (docs/datasets.md, "Attaching"). vms.data:
    // a JSON array of the VM's attachments as the controller resolved them
    // (dataset id and name, version and its blob, mount point, mode, the
    // size of a new one); '' = none.
    R"sql(
ALTER TABLE vms ADD COLUMN data TEXT NOT NULL DEFAULT '';
)sql",
    // 19: grid jobs (docs/jobs.md). A job and its tasks; the queue is the
    // tasks in state 'queued', in (queued_ms, job_id, idx) order per owner.
    // A task's logs are base64 (NUL-safe on PostgreSQL), capped at 1 MiB of
    // output each.
    R"sql(
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  owner_id TEXT NOT NULL REFERENCES users(id),
  image_id TEXT NOT NULL,
  spec TEXT NOT NULL,
  count BIGINT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('queued','running','succeeded','failed','cancelled')),
  exit_code BIGINT NOT NULL DEFAULT -1,
  created_ms BIGINT NOT NULL,
  finished_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_owner ON jobs(owner_id, created_ms);
CREATE TABLE job_tasks (
  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  idx BIGINT NOT NULL,
  owner_id TEXT NOT NULL,
  state TEXT NOT NULL
    CHECK (state IN ('queued','starting','running','succeeded','failed','cancelled')),
  attempts BIGINT NOT NULL DEFAULT 0,
  vm_id TEXT NOT NULL DEFAULT '',
  host_id TEXT NOT NULL DEFAULT '',
  queued_ms BIGINT NOT NULL,
  started_ms BIGINT NOT NULL DEFAULT 0,
  finished_ms BIGINT NOT NULL DEFAULT 0,
  exit_code BIGINT NOT NULL DEFAULT -1,
  error TEXT NOT NULL DEFAULT '',
  stdout_b64 TEXT NOT NULL DEFAULT '',
  stderr_b64 TEXT NOT NULL DEFAULT '',
  stdout_truncated BIGINT NOT NULL DEFAULT 0,
  stderr_truncated BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (job_id, idx)
);
CREATE INDEX job_tasks_state ON job_tasks(state, owner_id, queued_ms);
)sql",
    // 20: job retries back off and avoid the host that failed (docs/jobs.md,
    // "Retries"). not_before_ms: a queued task is not started before then;
    // last_host_id: the host its last lost attempt ran on.
    R"sql(
ALTER TABLE job_tasks ADD COLUMN not_before_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE job_tasks ADD COLUMN last_host_id TEXT NOT NULL DEFAULT '';
)sql",
    // 21: which hosts cache which dataset versions (docs/datasets.md,
    // "Placement"): a host that exported a version to one of its VMs holds
    // the chunks it read; placement prefers such hosts for VMs and job tasks
    // attaching the dataset, as image_cache does for images.
    R"sql(
CREATE TABLE dataset_cache (
  dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
  version BIGINT NOT NULL,
  host_id TEXT NOT NULL REFERENCES hosts(id),
  first_ms BIGINT NOT NULL,
  PRIMARY KEY (dataset_id, version, host_id)
);
CREATE INDEX dataset_cache_host ON dataset_cache(host_id);
)sql",
    // 22: datasets shared read-only with named users (docs/datasets.md,
    // "Sharing"). A row lets user_id list, show, pull and attach read-only
    // the dataset; removed with the dataset or by `data unshare`.
    R"sql(
CREATE TABLE dataset_shares (
  dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id),
  created_ms BIGINT NOT NULL,
  PRIMARY KEY (dataset_id, user_id)
);
CREATE INDEX dataset_shares_user ON dataset_shares(user_id);
)sql",
    // 23: list pages (docs/api.md, "Paging") read VMs in (created_ms, id)
    // order, a user's own or everybody's, straight from an index.
    R"sql(
DROP INDEX vms_owner;
CREATE INDEX vms_owner_created ON vms(owner_id, created_ms, id);
CREATE INDEX vms_created ON vms(created_ms, id);
)sql",
    // 24: what a clone's disk lies on (Vm::disk_base), so that VMs resumed
    // from a checkpoint can live-migrate (docs/migration.md). Existing
    // records keep '' (not known): booted ones lie on their image.
    R"sql(
ALTER TABLE vms ADD COLUMN disk_base TEXT NOT NULL DEFAULT '';
UPDATE vms SET disk_base = 'image' WHERE start = 'boot' AND disk = 'clone';
)sql",
    // 25: cold migrations of stopped VMs (docs/migration.md): such a VM is
    // `migrating` like a running one and ends `stopped`.
    R"sql(
ALTER TABLE vm_migrations ADD COLUMN cold BIGINT NOT NULL DEFAULT 0;
)sql",
};

const char* kUserCols =
    "id, name, role, created_ms, quota_vms, quota_vcpus, quota_memory_mb, quota_image_bytes, "
    "quota_workspace_bytes";
User ReadUser(const SqlRow& s) {
  return User{s.Text(0), s.Text(1), s.Text(2), s.Int(3),
              UserQuota{s.Int(4), s.Int(5), s.Int(6), s.Int(7), s.Int(8)}};
}

// What a request adds to a user's usage, checked against the quota.
struct QuotaAsk {
  int64_t vms = 0;
  int64_t vcpus = 0;
  int64_t memory_mb = 0;
  int64_t image_bytes = 0;
  int64_t workspace_bytes = 0;
};

bool Limits(const UserQuota& q, const QuotaAsk& ask) {
  return (q.vms > 0 && ask.vms > 0) || (q.vcpus > 0 && ask.vcpus > 0) ||
         (q.memory_mb > 0 && ask.memory_mb > 0) || (q.image_bytes > 0 && ask.image_bytes > 0) ||
         (q.workspace_bytes > 0 && ask.workspace_bytes > 0);
}

// The user's usage as the quota counts it (model.h UserQuota), as `db` sees
// it now. A VM counts in every state but 'error', as in HoldsOnHost.
Result<UserUsage> UsageOf(SqlBackend* db, const std::string& user_id) {
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      db->Query("SELECT v.n, v.c, v.m, i.b, w.b FROM "
                "(SELECT COUNT(*) AS n, CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) AS c, "
                "CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT) AS m FROM vms "
                "WHERE owner_id = ? AND state <> 'error') v, "
                "(SELECT CAST(COALESCE(SUM(CASE WHEN expanded_size_bytes > size_bytes "
                "THEN expanded_size_bytes ELSE size_bytes END), 0) AS BIGINT) AS b FROM images "
                "WHERE owner_id = ? AND state = 'ready') i, "
                "(SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) AS b FROM workspaces "
                "WHERE owner_id = ?) w",
                {user_id, user_id, user_id}));
  if (rows.empty()) return MakeError(ErrorCode::kInternal, "usage query returned no row");
  const SqlRow& r = rows[0];
  return UserUsage{r.Int(0), r.Int(1), r.Int(2), r.Int(3), r.Int(4)};
}

// The first quota of `q` that `use` + `ask` exceeds, as kPermissionDenied
// naming the quota and the numbers.
Status CheckQuota(const std::string& user, const UserQuota& q, const UserUsage& use,
                  const QuotaAsk& ask) {
  auto over = [](int64_t limit, int64_t used, int64_t asked) {
    return limit > 0 && asked > 0 && used + asked > limit;
  };
  auto n = [](int64_t v) { return std::to_string(v); };
  std::string why;
  if (over(q.vms, use.vms, ask.vms))
    why = user + " may run " + n(q.vms) + " VM" + (q.vms == 1 ? "" : "s") + " (" + n(use.vms) +
          " running" + (ask.vms > 1 ? ", " + n(ask.vms) + " more asked" : "") + ")";
  else if (over(q.vcpus, use.vcpus, ask.vcpus))
    why = user + " may use " + n(q.vcpus) + " vCPU(s) (" + n(use.vcpus) + " in use, " +
          n(ask.vcpus) + " more asked)";
  else if (over(q.memory_mb, use.memory_mb, ask.memory_mb))
    why = user + " may use " + n(q.memory_mb) + " MB of memory (" + n(use.memory_mb) +
          " MB in use, " + n(ask.memory_mb) + " MB more asked)";
  else if (over(q.image_bytes, use.image_bytes, ask.image_bytes))
    why = user + " may keep " + n(q.image_bytes) + " bytes of images (" + n(use.image_bytes) +
          " in ready images, this one has " + n(ask.image_bytes) + ")";
  else if (over(q.workspace_bytes, use.workspace_bytes, ask.workspace_bytes))
    why = user + " may keep " + n(q.workspace_bytes) + " bytes of workspaces (" +
          n(use.workspace_bytes) + " in use, this one is " + n(ask.workspace_bytes) + ")";
  if (why.empty()) return Status::Ok();
  return MakeError(ErrorCode::kPermissionDenied,
                   "quota: " + why + "; ask the admin to raise it (`vmgrid user quota`)");
}

// Checks `ask` against the user's quota inside the caller's transaction on
// `db`. A user with a quota that `ask` touches has their row locked first
// (PostgreSQL: FOR NO KEY UPDATE, held to the end of the transaction, which
// neither blocks the foreign-key checks of inserts nor reads; SQLite: the
// write transaction already excludes every other writer), so concurrent
// checks of one user take turns, and each counts, in a statement after the
// lock, what the one before it committed. Under READ COMMITTED a count in
// the same statement as the lock would use the statement's older snapshot.
Status CheckQuotaLocked(SqlBackend* db, const std::string& user_id, const QuotaAsk& ask) {
  const bool pg = db->dialect() == SqlBackend::Dialect::kPostgres;
  VMG_ASSIGN_OR_RETURN(auto users,
                       db->Query(std::string("SELECT ") + kUserCols + " FROM users WHERE id = ?" +
                                     (pg ? " FOR NO KEY UPDATE" : ""),
                                 {user_id}));
  if (users.empty()) return MakeError(ErrorCode::kNotFound, "user " + user_id + " not found");
  const User u = ReadUser(users[0]);
  if (!Limits(u.quota, ask)) return Status::Ok();
  VMG_ASSIGN_OR_RETURN(UserUsage use, UsageOf(db, user_id));
  return CheckQuota(u.name, u.quota, use, ask);
}

// Reservations are maintained per host (used_vcpus, used_memory_mb,
// used_disk_bytes): every VM except a failed one holds its vcpus, memory and
// disk_bytes. Every change of a VM's
// host, state or existence adjusts them in its own transaction (HoldsOnHost,
// AddUsageLocked), so they always equal the sum over the VMs.
const char* kHostSelect =
    "SELECT h.id, h.name, h.url, h.state, h.vcpus, h.memory_mb, h.disk_mb, h.kvm, "
    "h.last_heartbeat_ms, h.created_ms, h.site, h.network, h.arch, h.used_vcpus, h.used_memory_mb, "
    "h.disk_total_bytes, h.disk_free_bytes, h.used_disk_bytes, h.tunnel_number, h.tunnel_ip, "
    "h.tunnel_port, h.draining, h.failed_ms "
    "FROM hosts h";

// Change notifications (PostgreSQL; Store::SetObserver, docs/ha.md): a host
// row whose capacity, state or usage changed, or any VM record on a host,
// names the host on kChangeChannel; a new image-cache row sends "IMAGE HOST"
// on kCacheChannel. Sent by triggers, so in the transaction of the change
// whichever controller (or version of it) writes; PostgreSQL delivers them at
// commit, once per distinct payload per transaction. Heartbeat times alone
// (FlushHeartbeats) send nothing. The hosts trigger compares whole rows (as
// JSON, without the heartbeat time) rather than naming columns: a trigger
// that names a column keeps any later migration from dropping it.
constexpr char kChangeChannel[] = "vmgrid_hosts";
constexpr char kCacheChannel[] = "vmgrid_image_cache";
// A batch naming more hosts than this is read as one snapshot.
constexpr size_t kMaxHostReads = 64;
const char* kChangeTriggers = R"sql(
CREATE OR REPLACE FUNCTION vmgrid_notify_host() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('vmgrid_hosts', NEW.id);
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER vmgrid_host_added AFTER INSERT ON hosts
  FOR EACH ROW EXECUTE FUNCTION vmgrid_notify_host();
CREATE OR REPLACE TRIGGER vmgrid_host_changed AFTER UPDATE ON hosts FOR EACH ROW
  WHEN ((to_jsonb(OLD) - 'last_heartbeat_ms') IS DISTINCT FROM (to_jsonb(NEW) - 'last_heartbeat_ms'))
  EXECUTE FUNCTION vmgrid_notify_host();
CREATE OR REPLACE FUNCTION vmgrid_notify_vm() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'INSERT' THEN PERFORM pg_notify('vmgrid_hosts', OLD.host_id); END IF;
  IF TG_OP <> 'DELETE' THEN PERFORM pg_notify('vmgrid_hosts', NEW.host_id); END IF;
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER vmgrid_vm_changed AFTER INSERT OR UPDATE OR DELETE ON vms
  FOR EACH ROW EXECUTE FUNCTION vmgrid_notify_vm();
CREATE OR REPLACE FUNCTION vmgrid_notify_cache() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('vmgrid_image_cache', NEW.image_id || ' ' || NEW.host_id);
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER vmgrid_cache_added AFTER INSERT ON image_cache
  FOR EACH ROW EXECUTE FUNCTION vmgrid_notify_cache();
CREATE OR REPLACE FUNCTION vmgrid_notify_dataset_cache() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('vmgrid_image_cache', 'dataset:' || NEW.dataset_id || ' ' || NEW.host_id);
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER vmgrid_dataset_cache_added AFTER INSERT ON dataset_cache
  FOR EACH ROW EXECUTE FUNCTION vmgrid_notify_dataset_cache();
)sql";

// Whether a VM in this state holds its vcpus and memory on its host.
// (HoldsReservation; a state that does not parse cannot be in the table.)
bool HoldsOnHost(const std::string& state) {
  auto s = ParseVmState(state);
  return !s.ok() || HoldsReservation(*s);
}

// The host's disk has room for the VM's disk_bytes (bound to the second
// `?`; the UPDATE's first binds what is added). Hosts that do not report
// their disk (disk_total_bytes 0: agents before migration 7) are not limited.
// The free space is as last reported, and already-written bytes of placed
// VMs count there and in their reservation: conservative, never over.
const char* kDiskRoom = "(disk_total_bytes = 0 OR disk_free_bytes - used_disk_bytes >= ?)";
// Takes a VM's room on a host if the host is up, not draining (docs/migration.md,
// "Drain and maintenance") and has it: one conditional UPDATE that checks and
// takes atomically. Every placement and every migration's target reservation
// goes through it. Binds: vcpus, memory_mb, disk_bytes (added), host id,
// vcpus, memory_mb, disk_bytes (asked).
const std::string kTakeRoom =
    std::string(
        "UPDATE hosts SET used_vcpus = used_vcpus + ?, used_memory_mb = used_memory_mb + ?, "
        "used_disk_bytes = used_disk_bytes + ? WHERE id = ? AND state = 'up' AND draining = 0 "
        "AND failed_ms = 0 "
        "AND vcpus - used_vcpus >= ? AND memory_mb - used_memory_mb >= ? AND ") +
    kDiskRoom;
// A VM back from 'error' on the host it was on (its host reports it running
// again) takes its room back only if the room is still there: it went free
// with the error and may be another VM's now. Whatever the host's state.
const std::string kTakeRoomBack =
    std::string(
        "UPDATE hosts SET used_vcpus = used_vcpus + ?, used_memory_mb = used_memory_mb + ?, "
        "used_disk_bytes = used_disk_bytes + ? WHERE id = ? "
        "AND vcpus - used_vcpus >= ? AND memory_mb - used_memory_mb >= ? AND ") +
    kDiskRoom;
std::vector<SqlValue> TakeRoomParams(const Vm& vm, const std::string& host_id) {
  return {int64_t{vm.vcpus}, vm.memory_mb, vm.disk_bytes, host_id,
          int64_t{vm.vcpus}, vm.memory_mb, vm.disk_bytes};
}
bool HasDiskRoom(const Host& h, int64_t disk_bytes) {
  return h.disk_total_bytes == 0 || h.disk_free_bytes - h.reserved_disk_bytes >= disk_bytes;
}

// Whole MiB, rounded up (a placement message, not accounting).
std::string MiB(int64_t bytes) {
  return std::to_string((bytes + (int64_t{1} << 20) - 1) >> 20) + " MiB";
}

Error NoRoom(const Vm& vm, size_t checked) {
  return MakeError(ErrorCode::kResourceExhausted,
                   "no host has room for " + std::to_string(vm.vcpus) + " vCPU(s), " +
                       std::to_string(vm.memory_mb) + " MB and " + MiB(vm.disk_bytes) +
                       " of disk (checked " + std::to_string(checked) + " host(s))");
}
Host ReadHost(const SqlRow& s) {
  Host h;
  h.id = s.Text(0);
  h.name = s.Text(1);
  h.url = s.Text(2);
  h.state = s.Text(3);
  h.vcpus = static_cast<int>(s.Int(4));
  h.memory_mb = s.Int(5);
  h.disk_mb = s.Int(6);
  h.kvm = s.Int(7) != 0;
  h.last_heartbeat_ms = s.Int(8);
  h.created_ms = s.Int(9);
  h.site = s.Text(10);
  h.network = s.Text(11);
  h.arch = s.Text(12);
  h.reserved_vcpus = static_cast<int>(s.Int(13));
  h.reserved_memory_mb = s.Int(14);
  h.disk_total_bytes = s.Int(15);
  h.disk_free_bytes = s.Int(16);
  h.reserved_disk_bytes = s.Int(17);
  h.tunnel_number = s.Int(18);
  h.tunnel_ip = s.Text(19);
  h.tunnel_port = s.Int(20);
  h.draining = s.Int(21) != 0;
  h.failed_ms = s.Int(22);
  return h;
}

const char* kImageCols =
    "id, name, owner_id, state, format, dir, size_bytes, virtual_size_bytes, has_kernel, "
    "has_initrd, append, min_memory_mb, ckpt_state, ckpt_memory_mb, ckpt_vcpus, "
    "ckpt_size_bytes, ckpt_error, created_ms, blobs, expanded_size_bytes, max_clone_bytes";
Image ReadImage(const SqlRow& s) {
  Image i;
  i.id = s.Text(0);
  i.name = s.Text(1);
  i.owner_id = s.Text(2);
  i.state = s.Text(3);
  i.format = s.Text(4);
  i.dir = s.Text(5);
  i.size_bytes = s.Int(6);
  i.virtual_size_bytes = s.Int(7);
  i.has_kernel = s.Int(8) != 0;
  i.has_initrd = s.Int(9) != 0;
  i.append = s.Text(10);
  i.min_memory_mb = s.Int(11);
  i.ckpt_state = s.Text(12);
  i.ckpt_memory_mb = s.Int(13);
  i.ckpt_vcpus = static_cast<int>(s.Int(14));
  i.ckpt_size_bytes = s.Int(15);
  i.ckpt_error = s.Text(16);
  i.created_ms = s.Int(17);
  i.blobs = s.Text(18);
  i.expanded_size_bytes = s.Int(19);
  i.max_clone_bytes = s.Int(20);
  return i;
}
std::vector<SqlValue> ImageValues(const Image& i) {
  return {i.id,
          i.name,
          i.owner_id,
          i.state,
          i.format,
          i.dir,
          i.size_bytes,
          i.virtual_size_bytes,
          int64_t{i.has_kernel},
          int64_t{i.has_initrd},
          i.append,
          i.min_memory_mb,
          i.ckpt_state,
          i.ckpt_memory_mb,
          int64_t{i.ckpt_vcpus},
          i.ckpt_size_bytes,
          i.ckpt_error,
          i.created_ms,
          i.blobs,
          i.expanded_size_bytes,
          i.max_clone_bytes};
}

const char* kVmCols =
    "id, name, owner_id, image_id, host_id, state, vcpus, memory_mb, disk, start, "
    "workspace_id, error, create_ms, created_ms, updated_ms, network, disk_bytes, restart, data, "
    "disk_base";
Vm ReadVm(const SqlRow& s) {
  Vm v;
  v.id = s.Text(0);
  v.name = s.Text(1);
  v.owner_id = s.Text(2);
  v.image_id = s.Text(3);
  v.host_id = s.Text(4);
  v.state = s.Text(5);
  v.vcpus = static_cast<int>(s.Int(6));
  v.memory_mb = s.Int(7);
  v.disk = s.Text(8);
  v.start = s.Text(9);
  v.workspace_id = s.Text(10);
  v.error = s.Text(11);
  v.create_ms = s.Int(12);
  v.created_ms = s.Int(13);
  v.updated_ms = s.Int(14);
  v.network = s.Text(15);
  v.disk_bytes = s.Int(16);
  v.restart = s.Text(17);
  v.data = s.Text(18);
  v.disk_base = s.Text(19);
  return v;
}
std::vector<SqlValue> VmValues(const Vm& v) {
  return {v.id,           v.name,           v.owner_id,  v.image_id,   v.host_id,
          v.state,        int64_t{v.vcpus}, v.memory_mb, v.disk,       v.start,
          v.workspace_id, v.error,          v.create_ms, v.created_ms, v.updated_ms,
          v.network,      v.disk_bytes,     v.restart,   v.data,       v.disk_base};
}

const char* kWsCols =
    "id, name, owner_id, image_id, host_id, path, size_bytes, vm_id, created_ms, "
    "durable_version, durable_digest, durable_size_bytes, durable_ms, durable_chunks, "
    "durable_sent_chunks, durable_sent_bytes, durable_host_id, generation";
// The columns a new workspace is inserted with (the durable ones default).
const char* kWsInsertCols =
    "id, name, owner_id, image_id, host_id, path, size_bytes, vm_id, created_ms";
Workspace ReadWs(const SqlRow& s) {
  Workspace w{s.Text(0), s.Text(1), s.Text(2), s.Text(3), s.Text(4),
              s.Text(5), s.Int(6),  s.Text(7), s.Int(8)};
  w.durable_version = s.Int(9);
  w.durable_digest = s.Text(10);
  w.durable_size_bytes = s.Int(11);
  w.durable_ms = s.Int(12);
  w.durable_chunks = s.Int(13);
  w.durable_sent_chunks = s.Int(14);
  w.durable_sent_bytes = s.Int(15);
  w.durable_host_id = s.Text(16);
  w.generation = s.Int(17);
  return w;
}
std::vector<SqlValue> WsValues(const Workspace& w) {
  return {w.id,   w.name,       w.owner_id, w.image_id,  w.host_id,
          w.path, w.size_bytes, w.vm_id,    w.created_ms};
}

std::string Placeholders(size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += i ? ",?" : "?";
  return s;
}

// Runs `sql` with params and collects rows with `read`.
template <typename T, typename F>
Result<std::vector<T>> Query(SqlBackend* db, const std::string& sql,
                             const std::vector<SqlValue>& params, F read) {
  VMG_ASSIGN_OR_RETURN(auto rows, db->Query(sql, params));
  std::vector<T> out;
  out.reserve(rows.size());
  for (const SqlRow& row : rows) out.push_back(read(row));
  return out;
}

// One page of a listing in (sort, id) order (common/paging.h): `sql` ends in
// a WHERE clause (at least "WHERE 1=1"); `int_sort`: the sort column is a
// number, whose cursor key is a NumberKey. Reads one row past the limit to
// know whether there is a next page.
template <typename T, typename F, typename K>
Result<Page<T>> QueryPage(SqlBackend* db, std::string sql, std::vector<SqlValue> params,
                          const PageRequest& page, const std::string& sort, bool int_sort,
                          const std::string& id, F read, K key) {
  if (page.has_after()) {
    SqlValue after = page.after_key;
    if (int_sort) {
      int64_t n = 0;
      const std::string& k = page.after_key;
      if (k.empty() || k.size() > 20 || k.find_first_not_of("0123456789") != std::string::npos)
        return MakeError(ErrorCode::kInvalidArgument,
                         "cursor is not one this server issued for this list");
      for (char c : k) n = n * 10 + (c - '0');
      after = n;
    }
    sql += " AND (" + sort + " > ? OR (" + sort + " = ? AND " + id + " > ?))";
    params.push_back(after);
    params.push_back(after);
    params.emplace_back(page.after_id);
  }
  sql += " ORDER BY " + sort + ", " + id;
  if (page.limit > 0) sql += " LIMIT " + std::to_string(page.limit + 1);
  Page<T> out;
  VMG_ASSIGN_OR_RETURN(out.items, Query<T>(db, sql, params, read));
  if (page.limit > 0 && static_cast<int64_t>(out.items.size()) > page.limit) {
    out.items.pop_back();
    const T& last = out.items.back();
    out.next = EncodeCursor(key(last), last.id);
  }
  return out;
}

// Looks an object up by id, or by name within the owner's objects. For the
// admin (empty owner) a name must be unambiguous.
template <typename T, typename F>
Result<T> GetByRef(SqlBackend* db, const std::string& table, const std::string& cols,
                   const std::string& kind, const std::string& ref, const OwnerFilter& owner,
                   F read) {
  // One statement: by id, else (the id matched nothing) by name. The name
  // branch's NOT EXISTS is evaluated once, so a hit by id reads one row.
  std::string where = owner.empty() ? "" : " AND owner_id = ?";
  std::vector<SqlValue> params{ref};
  if (!owner.empty()) params.push_back(owner);
  params.push_back(ref);
  if (!owner.empty()) params.push_back(owner);
  params.push_back(ref);
  if (!owner.empty()) params.push_back(owner);
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      Query<T>(db,
               "SELECT " + cols + " FROM " + table + " WHERE id = ?" + where +
                   " UNION ALL SELECT " + cols + " FROM " + table + " WHERE name = ?" + where +
                   " AND NOT EXISTS (SELECT 1 FROM " + table + " WHERE id = ?" + where + ")",
               params, read));
  if (rows.empty()) return MakeError(ErrorCode::kNotFound, kind + " '" + ref + "' not found");
  if (rows.size() > 1)
    return MakeError(ErrorCode::kInvalidArgument,
                     kind + " name '" + ref + "' is used by several owners; use the id");
  return rows[0];
}

}  // namespace

Result<std::unique_ptr<Store>> Store::Open(const std::string& target) {
  VMG_ASSIGN_OR_RETURN(auto db, OpenSqlBackend(target));
  std::unique_ptr<Store> store(new Store(std::move(db)));
  store->path_ = target;
  store->db_->SetAfterCommit([s = store.get()] {
    if (!s->events_written_.exchange(false)) return;
    {
      std::lock_guard<std::mutex> l(s->bell_mu_);
      ++s->bell_;
    }
    s->bell_cv_.notify_all();
  });
  VMG_RETURN_IF_ERROR(store->Migrate());
  if (store->db_->dialect() == SqlBackend::Dialect::kPostgres) {
    // PostgreSQL storage settings (not schema; re-applied at every start).
    // `hosts` is rewritten every few seconds (heartbeat times, usage): with
    // full pages every update was a new tuple in every index, and the dead
    // versions outran autovacuum (56,000 dead for 10,000 live hosts after a
    // 70 s setup of the benchmark; a 1,000-host join then read 4,660 index
    // entries and 1,068 heap pages and took 31.6 ms, 9.3 ms after VACUUM).
    // Room in each page lets updates stay HOT (no new index entries, pruned
    // in place), and vacuum runs after 2% of the rows changed, not 20%. (In
    // bench/infosvc, which measures through the query role and row-level
    // security, the join moved only from 18.5 to 17.9 ms quiet.)
    // `virtualization` only grows in bursts: vacuum it after 2% new rows so
    // its visibility map lets index-only scans skip the heap.
    VMG_RETURN_IF_ERROR(store->db_->ExecScript(
        "ALTER TABLE hosts SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.02, "
        "autovacuum_analyze_scale_factor = 0.05); "
        "ALTER TABLE virtualization SET (autovacuum_vacuum_insert_scale_factor = 0.02); "
        "ALTER TABLE vms SET (fillfactor = 80, autovacuum_vacuum_insert_scale_factor = 0.02)"));
  }
  // Reads that are not part of a write go to connections of their own, so
  // they do not wait behind a transaction (PostgreSQL: its round trips,
  // placement at 5,000 hosts 205 -> 314/s) and, on SQLite, never see a
  // write batch that has not committed yet. They read what was committed,
  // which includes every write this Store has returned.
  if (store->db_->dialect() == SqlBackend::Dialect::kPostgres)
    VMG_RETURN_IF_ERROR(store->InstallChangeTriggers());
  const bool sqlite = store->db_->dialect() == SqlBackend::Dialect::kSqlite;
  const bool in_memory =
      sqlite && (target.empty() || target == ":memory:" || target.starts_with("file:"));
  store->group_commit_ = !in_memory;
  if (!in_memory) {
    for (int i = 0; i < kReaders; ++i) {
      VMG_ASSIGN_OR_RETURN(auto reader, OpenSqlBackend(target));
      store->readers_.push_back(std::make_unique<Reader>());
      store->readers_.back()->db = std::move(reader);
    }
  }
  return store;
}

Store::ReadLease Store::Read() {
  if (readers_.empty()) return {Exclusive(), db_.get()};
  const size_t n = readers_.size();
  const size_t first = next_reader_.fetch_add(1) % n;
  for (size_t i = 0; i < n; ++i) {
    Reader& r = *readers_[(first + i) % n];
    std::unique_lock<std::mutex> l(r.mu, std::try_to_lock);
    if (l.owns_lock()) return {std::move(l), r.db.get()};
  }
  Reader& r = *readers_[first];
  return {std::unique_lock<std::mutex>(r.mu), r.db.get()};
}

// --- group commit ---------------------------------------------------------------
//
// A commit costs more than the statements of a VM's update: on SQLite the
// WAL frames written, and every 1,000 pages a checkpoint, under the store's
// lock; on PostgreSQL with durable commits a WAL flush and its round trip,
// while every other write on db_ waits for the lock (placement at 1,000
// hosts: 8 creates waiting in AppendEvent and 5 in ModifyVm in every sample
// of the controller's threads). The hot writes (placing a VM on SQLite,
// updating one, its events) therefore share transactions: a writer that
// finds the batch open adds its statements to it under a savepoint of its
// own (rolled back alone if it fails); if more writers are waiting for the
// lock it leaves the batch open for them and waits, else it commits the
// batch, for everyone in it. So a lone writer commits at once, and under
// load one commit serves up to kMaxBatch writes. No caller returns before
// its write has committed; readers use their own connections and see only
// committed batches; any other method commits the open batch before it
// starts (Exclusive).
//
// On PostgreSQL a batch holds its rows' locks until it commits, so a write
// in it can meet another transaction in a deadlock that none of them would
// have met alone (another controller's batch, a placement's transaction on
// a side connection), which the server breaks only after deadlock_timeout
// (1 s; only a superuser may lower it). A write in a batch therefore waits
// at most kBatchLockTimeout for a row lock (SET LOCAL lock_timeout; not
// its COMMIT, which waits for the notification queue's lock); a
// statement that fails so, or as a deadlock (SQLSTATE 55P03, 40P01:
// kUnavailable from the backend), is rolled back to its savepoint and, once
// the batch has committed, the write runs again in a transaction of its own
// without the limit, so it fails only if it fails alone.

namespace {
constexpr char kBatchLockTimeout[] = "SET LOCAL lock_timeout = '50ms'";
constexpr char kBatchLockTimeoutOff[] = "SET LOCAL lock_timeout = 0";
}  // namespace

std::unique_lock<std::mutex> Store::Exclusive() {
  std::unique_lock<std::mutex> lock(mu_);
  CommitBatchLocked();
  return lock;
}

void Store::CommitBatchLocked() {
  if (!batch_) return;
  std::shared_ptr<Batch> b = std::move(batch_);
  batch_.reset();
  if (b->status.ok()) {
    // The lock limit is for the batch's writes, not its COMMIT: a commit
    // that notifies waits for the server's notification queue lock, held by
    // every other notifying commit until its WAL is flushed.
    if (db_->InTransaction() && db_->dialect() == SqlBackend::Dialect::kPostgres)
      b->status = db_->Defer(kBatchLockTimeoutOff);
    if (b->status.ok())
      b->status =
          db_->InTransaction()
              ? db_->Commit()
              : MakeError(ErrorCode::kInternal, "the write batch was rolled back by the database");
  }
  if (db_->InTransaction()) (void)db_->Rollback();
  if (b->status.ok() && observer_)
    for (auto& event : b->events) event(*observer_);
  b->done = true;
  batch_done_.notify_all();
}

Status Store::Batched(const std::function<Status()>& body) {
  if (!group_commit_) {
    auto lock = Exclusive();
    pending_.clear();
    SqlTransaction tx(db_.get());
    VMG_RETURN_IF_ERROR(tx.begin_status());
    VMG_RETURN_IF_ERROR(body());
    return CommitLocked(tx);
  }
  batch_waiters_.fetch_add(1);
  std::unique_lock<std::mutex> lock(mu_);
  batch_waiters_.fetch_sub(1);
  pending_.clear();
  if (batch_ && !db_->InTransaction()) {
    // The database ended the transaction (e.g. a full disk): fail the batch.
    batch_->status =
        MakeError(ErrorCode::kInternal, "the write batch was rolled back by the database");
    CommitBatchLocked();
  }
  const bool pg = db_->dialect() == SqlBackend::Dialect::kPostgres;
  if (!batch_) {
    VMG_RETURN_IF_ERROR(db_->Begin());
    // A deadlock costs the server's deadlock_timeout (1 s) before it is
    // broken; a write of a batch waits this long for a lock, then runs alone.
    if (pg) VMG_RETURN_IF_ERROR(db_->Defer(kBatchLockTimeout));
    batch_ = std::make_shared<Batch>();
  }
  std::shared_ptr<Batch> mine = batch_;
  Status st = db_->Defer("SAVEPOINT op");
  if (st.ok()) {
    st = body();
    if (st.ok()) st = db_->Defer("RELEASE op");
    if (!st.ok() && db_->InTransaction()) {
      if (!db_->ExecScript("ROLLBACK TO op").ok() || !db_->ExecScript("RELEASE op").ok())
        mine->status = MakeError(ErrorCode::kInternal,
                                 "cannot roll back a failed write: " + st.error().message);
    }
  }
  if (st.ok())
    for (auto& event : pending_) mine->events.push_back(std::move(event));
  pending_.clear();
  if (++mine->ops < kMaxBatch && batch_waiters_.load() > 0)
    batch_done_.wait(lock, [&] { return mine->done; });
  else
    CommitBatchLocked();
  if (!st.ok() && st.error().code == ErrorCode::kUnavailable && pg) {
    // A deadlock, a lock not granted within kBatchLockTimeout, or a lost
    // connection: again, in a transaction of its own.
    CommitBatchLocked();  // one another writer may have opened meanwhile
    pending_.clear();
    SqlTransaction tx(db_.get());
    VMG_RETURN_IF_ERROR(tx.begin_status());
    VMG_RETURN_IF_ERROR(body());
    return CommitLocked(tx);
  }
  VMG_RETURN_IF_ERROR(st);
  return mine->status;
}

Status Store::Migrate() {
  auto lock = Exclusive();
  VMG_RETURN_IF_ERROR(
      db_->ExecScript("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"));
  const int64_t target = static_cast<int64_t>(std::size(kMigrations));
  // One step per transaction. The lock makes controllers that start together
  // on one PostgreSQL database take turns; each re-reads the version.
  while (true) {
    SqlTransaction tx(db_.get());
    VMG_RETURN_IF_ERROR(tx.begin_status());
    VMG_RETURN_IF_ERROR(db_->LockTable("schema_version"));
    VMG_ASSIGN_OR_RETURN(auto rows, Query<int64_t>(db_.get(), "SELECT version FROM schema_version",
                                                   {}, [](const SqlRow& s) { return s.Int(0); }));
    int64_t version = rows.empty() ? 0 : rows[0];
    if (version > target)
      return MakeError(ErrorCode::kFailedPrecondition,
                       "database schema version " + std::to_string(version) +
                           " is newer than this vmgrid (" + std::to_string(target) + ")");
    if (version == target) break;
    VMG_RETURN_IF_ERROR(db_->ExecScript(kMigrations[version].For(db_->dialect())));
    VMG_RETURN_IF_ERROR(db_->Exec("DELETE FROM schema_version"));
    VMG_RETURN_IF_ERROR(db_->Exec("INSERT INTO schema_version VALUES (?)", {version + 1}));
    VMG_RETURN_IF_ERROR(tx.Commit());
  }
  schema_version_ = static_cast<int>(target);
  return Status::Ok();
}

// --- users -------------------------------------------------------------------

Result<std::pair<User, std::string>> Store::CreateUser(const std::string& name,
                                                       const std::string& role) {
  auto lock = Exclusive();
  User u{NewId("usr"), name, role, NowMs(), UserQuota{}};
  std::string token = NewToken();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  auto r = db_->Exec("INSERT INTO users (id, name, role, created_ms) VALUES (?,?,?,?)",
                     {u.id, u.name, u.role, u.created_ms});
  if (!r.ok()) {
    if (r.error().code == ErrorCode::kAlreadyExists)
      return MakeError(ErrorCode::kAlreadyExists, "user '" + name + "' already exists");
    return r.error();
  }
  VMG_RETURN_IF_ERROR(
      db_->Exec("INSERT INTO tokens VALUES (?,?,?)", {Sha256Hex(token), u.id, u.created_ms}));
  VMG_RETURN_IF_ERROR(tx.Commit());
  return std::make_pair(u, token);
}

Status Store::AddToken(const std::string& user_id, const std::string& token) {
  auto lock = Exclusive();
  auto r = db_->Exec("INSERT INTO tokens VALUES (?,?,?) ON CONFLICT DO NOTHING",
                     {Sha256Hex(token), user_id, NowMs()});
  if (!r.ok()) return r.error();
  return Status::Ok();
}

Result<User> Store::AuthenticateToken(const std::string& token) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      Query<User>(read.db,
                  "SELECT u.id, u.name, u.role, u.created_ms, u.quota_vms, u.quota_vcpus, "
                  "u.quota_memory_mb, u.quota_image_bytes, u.quota_workspace_bytes FROM users u "
                  "JOIN tokens t ON t.user_id = u.id WHERE t.token_sha256 = ?",
                  {Sha256Hex(token)}, ReadUser));
  if (rows.empty()) return MakeError(ErrorCode::kUnauthenticated, "unknown token");
  return rows[0];
}

Result<std::vector<User>> Store::ListUsers() {
  auto read = Read();
  return Query<User>(read.db,
                     std::string("SELECT ") + kUserCols + " FROM users ORDER BY created_ms", {},
                     ReadUser);
}

Result<User> Store::GetUserById(const std::string& id) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      Query<User>(read.db, std::string("SELECT ") + kUserCols + " FROM users WHERE id = ?", {id},
                  ReadUser));
  if (rows.empty()) return MakeError(ErrorCode::kNotFound, "user " + id + " not found");
  return rows[0];
}

Result<User> Store::GetUserByName(const std::string& name) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      Query<User>(read.db, std::string("SELECT ") + kUserCols + " FROM users WHERE name = ?",
                  {name}, ReadUser));
  if (rows.empty()) return MakeError(ErrorCode::kNotFound, "no user named '" + name + "'");
  return rows[0];
}

Result<User> Store::SetUserQuota(const std::string& name, const UserQuota& quota) {
  auto lock = Exclusive();
  VMG_ASSIGN_OR_RETURN(
      int64_t changed,
      db_->Exec("UPDATE users SET quota_vms = ?, quota_vcpus = ?, quota_memory_mb = ?, "
                "quota_image_bytes = ?, quota_workspace_bytes = ? WHERE name = ?",
                {quota.vms, quota.vcpus, quota.memory_mb, quota.image_bytes, quota.workspace_bytes,
                 name}));
  if (changed == 0) return MakeError(ErrorCode::kNotFound, "user '" + name + "' not found");
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      Query<User>(db_.get(), std::string("SELECT ") + kUserCols + " FROM users WHERE name = ?",
                  {name}, ReadUser));
  if (rows.empty()) return MakeError(ErrorCode::kNotFound, "user '" + name + "' not found");
  return rows[0];
}

Result<UserUsage> Store::GetUserUsage(const std::string& user_id) {
  auto read = Read();
  return UsageOf(read.db, user_id);
}

Result<bool> Store::HasUserWithRole(const std::string& role) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(auto rows,
                       Query<int64_t>(read.db, "SELECT COUNT(*) FROM users WHERE role = ?", {role},
                                      [](const SqlRow& s) { return s.Int(0); }));
  return rows[0] > 0;
}

// --- hosts ---------------------------------------------------------------------

namespace {

// Free disk moves by less than this between heartbeats without a write:
// a host's logs and caches change it every time, and a full write of every
// heartbeat would undo the in-memory path below. Placement therefore sees
// the free space with this much slack (docs/security.md, "Disk space").
constexpr int64_t kDiskFreeSlack = int64_t{256} << 20;

// Whether a heartbeat of an up host changes nothing but its time.
bool SameRegistration(const Host& h, const std::string& url, const HostCapacity& c) {
  return h.state == "up" && h.url == url && h.vcpus == c.vcpus && h.memory_mb == c.memory_mb &&
         std::abs(h.disk_mb - c.disk_mb) < (kDiskFreeSlack >> 20) &&
         h.disk_total_bytes == c.disk_total_bytes &&
         std::abs(h.disk_free_bytes - c.disk_free_bytes) < kDiskFreeSlack && h.kvm == c.kvm &&
         h.site == c.site && h.network == c.network && h.arch == c.arch &&
         h.tunnel_ip == c.tunnel_ip && h.tunnel_port == c.tunnel_port;
}

}  // namespace

Result<Host> Store::HeartbeatHost(const std::string& name, const std::string& url,
                                  const HostCapacity& cap) {
  int64_t now = NowMs();
  {
    std::lock_guard<std::mutex> beat(beat_mu_);
    auto it = beat_written_.find(name);
    const int64_t refresh = heartbeat_refresh_ms_.load();
    if (it != beat_written_.end() && SameRegistration(it->second, url, cap) &&
        (refresh <= 0 || now - it->second.last_heartbeat_ms < refresh)) {
      beat_pending_[it->second.id] = now;
      it->second.last_heartbeat_ms = now;  // when this Store last heard it
      return it->second;
    }
  }
  // Written in full: in the write queue, where the first writer waiting
  // writes every heartbeat queued behind it in one transaction (a savepoint
  // each), as LevelDB's writers do. Hosts that register or come back all at
  // once (10,000 after a controller fell behind) then cost one commit per
  // batch, not one each: a durable commit on PostgreSQL is milliseconds.
  auto mine = std::make_shared<BeatWrite>();
  mine->name = name;
  mine->url = url;
  mine->cap = cap;
  std::unique_lock<std::mutex> queue(beat_queue_mu_);
  beat_queue_.push_back(mine);
  beat_queue_cv_.wait(queue, [&] { return mine->done || beat_queue_.front() == mine; });
  if (mine->done) return mine->result;
  const size_t n = std::min(beat_queue_.size(), kMaxBeatBatch);
  std::vector<std::shared_ptr<BeatWrite>> batch(beat_queue_.begin(),
                                                beat_queue_.begin() + static_cast<long>(n));
  queue.unlock();
  WriteBeats(batch);
  queue.lock();
  for (size_t i = 0; i < n; ++i) {
    beat_queue_.front()->done = true;
    beat_queue_.pop_front();
  }
  beat_queue_cv_.notify_all();
  return mine->result;
}

void Store::WriteBeats(const std::vector<std::shared_ptr<BeatWrite>>& batch) {
  auto lock = Exclusive();
  pending_.clear();
  auto fail_all = [&](const Status& st) {
    for (auto& w : batch) w->result = st.error();
  };
  SqlTransaction tx(db_.get());
  if (!tx.begin_status().ok()) return fail_all(tx.begin_status());
  const int64_t now = NowMs();
  for (auto& w : batch) {
    Status st = db_->Defer("SAVEPOINT beat");
    if (st.ok()) {
      w->result = WriteBeatLocked(w->name, w->url, w->cap, now);
      st = w->result.ok() ? db_->Defer("RELEASE beat") : Status(w->result.error());
      if (!st.ok() && db_->InTransaction() &&
          (!db_->ExecScript("ROLLBACK TO beat").ok() || !db_->ExecScript("RELEASE beat").ok()))
        return fail_all(st);
    }
    if (!st.ok()) w->result = st.error();
  }
  if (Status st = CommitLocked(tx); !st.ok()) return fail_all(st);
  std::lock_guard<std::mutex> beat(beat_mu_);
  for (auto& w : batch) {
    if (!w->result.ok()) continue;
    beat_written_[w->name] = *w->result;
    beat_pending_.erase(w->result->id);
  }
}

Result<Host> Store::WriteBeatLocked(const std::string& name, const std::string& url,
                                    const HostCapacity& cap, int64_t now) {
  VMG_ASSIGN_OR_RETURN(auto was, db_->Query("SELECT state FROM hosts WHERE name=?", {name}));
  VMG_ASSIGN_OR_RETURN(
      int64_t changed,
      db_->Exec("UPDATE hosts SET url=?, state='up', vcpus=?, memory_mb=?, disk_mb=?, kvm=?, "
                "last_heartbeat_ms=?, site=?, network=?, arch=?, disk_total_bytes=?, "
                "disk_free_bytes=?, tunnel_ip=?, tunnel_port=? WHERE name=?",
                {url, int64_t{cap.vcpus}, cap.memory_mb, cap.disk_mb, int64_t{cap.kvm}, now,
                 cap.site, cap.network, cap.arch, cap.disk_total_bytes, cap.disk_free_bytes,
                 cap.tunnel_ip, cap.tunnel_port, name}));
  if (changed == 0) {
    VMG_RETURN_IF_ERROR(db_->Exec(
        "INSERT INTO hosts (id, name, owner_id, url, state, vcpus, memory_mb, disk_mb, kvm, "
        "last_heartbeat_ms, created_ms, site, network, arch, disk_total_bytes, disk_free_bytes, "
        "tunnel_ip, tunnel_port, tunnel_number) "
        "VALUES (?,?,'admin',?,'up',?,?,?,?,?,?,?,?,?,?,?,?,?,"
        "(SELECT COALESCE(MAX(tunnel_number), 0) + 1 FROM hosts))",
        {NewId("host"), name, url, int64_t{cap.vcpus}, cap.memory_mb, cap.disk_mb, int64_t{cap.kvm},
         now, now, cap.site, cap.network, cap.arch, cap.disk_total_bytes, cap.disk_free_bytes,
         cap.tunnel_ip, cap.tunnel_port}));
  }
  ++network_generation_;  // a host's tunnel endpoint may have changed
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      Query<Host>(db_.get(), std::string(kHostSelect) + " WHERE h.name = ?", {name}, ReadHost));
  if (rows.empty()) return MakeError(ErrorCode::kInternal, "host " + name + " vanished");
  Host host = rows[0];
  if (was.empty() || was[0].Text(0) != "up")
    RecordEventLocked(Event{
        0, 0, "host.up", "", host.id, "",
        "host " + name + (was.empty() ? " registered" : " is up again"),
        nlohmann::json{{"url", url}, {"vcpus", cap.vcpus}, {"memory_mb", cap.memory_mb}}.dump()});
  Notify([host](StoreObserver& o) { o.OnHost(host); });
  return host;
}

Status Store::FlushHeartbeats() {
  auto lock = Exclusive();
  return FlushHeartbeatsLocked();
}

// GCC 12 reports a false -Wmaybe-uninitialized in std::variant's move
// (SqlValue) when it inlines the vector's growth here; whether it does
// depends on the rest of this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
Status Store::FlushHeartbeatsLocked() {
  std::vector<std::pair<std::string, int64_t>> beats;
  {
    std::lock_guard<std::mutex> beat(beat_mu_);
    beats.assign(beat_pending_.begin(), beat_pending_.end());
    beat_pending_.clear();
  }
  if (beats.empty()) return Status::Ok();
  auto restore = [&] {  // kept for the next flush if this one fails
    std::lock_guard<std::mutex> beat(beat_mu_);
    for (const auto& [id, ms] : beats) beat_pending_.try_emplace(id, ms);
  };
  SqlTransaction tx(db_.get());
  if (!tx.begin_status().ok()) {
    restore();
    return tx.begin_status();
  }
  // A few hundred hosts per statement. Only hosts still up: one marked down
  // meanwhile (by another controller sharing the database) is forgotten
  // here, so that its next heartbeat is written in full and brings it up.
  constexpr size_t kChunk = 250;
  std::vector<std::string> not_up;
  for (size_t at = 0; at < beats.size(); at += kChunk) {
    size_t end = std::min(beats.size(), at + kChunk);
    std::string sql = "UPDATE hosts SET last_heartbeat_ms = CASE id";
    std::vector<SqlValue> params;
    for (size_t i = at; i < end; ++i) {
      sql += " WHEN ? THEN CAST(? AS BIGINT)";
      params.push_back(beats[i].first);
      params.push_back(beats[i].second);
    }
    sql +=
        " ELSE last_heartbeat_ms END WHERE state = 'up' AND id IN (" + Placeholders(end - at) + ")";
    for (size_t i = at; i < end; ++i) params.push_back(beats[i].first);
    auto changed = db_->Exec(sql, params);
    if (!changed.ok()) {
      restore();
      return changed.error();
    }
    if (static_cast<size_t>(*changed) < end - at) {
      std::vector<SqlValue> ids(params.end() - static_cast<long>(end - at), params.end());
      VMG_ASSIGN_OR_RETURN(auto rows,
                           db_->Query("SELECT id FROM hosts WHERE state <> 'up' AND id IN (" +
                                          Placeholders(end - at) + ")",
                                      ids));
      for (const auto& r : rows) not_up.push_back(r.Text(0));
    }
  }
  if (auto st = tx.Commit(); !st.ok()) {
    restore();
    return st;
  }
  if (!not_up.empty()) {
    std::lock_guard<std::mutex> beat(beat_mu_);
    std::sort(not_up.begin(), not_up.end());
    std::erase_if(beat_written_, [&](const auto& e) {
      return std::binary_search(not_up.begin(), not_up.end(), e.second.id);
    });
  }
  return Status::Ok();
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

void Store::OverlayBeats(std::vector<Host>& hosts) {
  std::lock_guard<std::mutex> beat(beat_mu_);
  if (beat_pending_.empty()) return;
  for (Host& h : hosts)
    if (auto it = beat_pending_.find(h.id); it != beat_pending_.end())
      h.last_heartbeat_ms = std::max(h.last_heartbeat_ms, it->second);
}

void Store::Notify(std::function<void(StoreObserver&)> event) {
  if (observer_) pending_.push_back(std::move(event));
}

Status Store::CommitLocked(SqlTransaction& tx) {
  Status st = tx.Commit();
  if (st.ok() && observer_)
    for (auto& event : pending_) event(*observer_);
  pending_.clear();
  return st;
}

Store::~Store() { listener_.reset(); }

Status Store::SetObserver(StoreObserver* observer) {
  if (db_->dialect() == SqlBackend::Dialect::kPostgres) {
    listener_.reset();  // outside the locks: its thread may be waiting for them
    if (observer) {
      // Listening before the snapshot below: no change falls in between.
      VMG_ASSIGN_OR_RETURN(
          listener_,
          PgListener::Start(
              path_, {kChangeChannel, kCacheChannel},
              [this](const std::vector<PgNotification>& batch) { ApplyRemoteChanges(batch); },
              [this] {
                if (Status st = Resync(); !st.ok())
                  spdlog::warn("capacity index after a lost notification connection: {}",
                               st.error().message);
              },
              [this](int pid) { return IsOwnSession(pid); }));
    }
  }
  std::lock_guard<ObserverGate> gate(gate_);
  auto lock = Exclusive();
  observer_ = observer;
  pending_.clear();
  return observer_ ? SnapshotLocked() : Status::Ok();
}

Status Store::Resync() {
  std::lock_guard<ObserverGate> gate(gate_);
  auto lock = Exclusive();
  return observer_ ? SnapshotLocked() : Status::Ok();
}

// --- other controllers' changes (PostgreSQL; docs/ha.md, "Capacity indexes") ----------

void Store::ObserverGate::lock_shared() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return !writer_ && writers_waiting_ == 0; });
  ++shared_;
}

void Store::ObserverGate::unlock_shared() {
  std::lock_guard<std::mutex> l(mu_);
  if (--shared_ == 0) cv_.notify_all();
}

void Store::ObserverGate::lock() {
  std::unique_lock<std::mutex> l(mu_);
  ++writers_waiting_;
  cv_.wait(l, [&] { return !writer_ && shared_ == 0; });
  --writers_waiting_;
  writer_ = true;
}

void Store::ObserverGate::unlock() {
  std::lock_guard<std::mutex> l(mu_);
  writer_ = false;
  cv_.notify_all();
}

Status Store::InstallChangeTriggers() {
  auto lock = Exclusive();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  // Controllers starting together take turns (CREATE OR REPLACE of one
  // function concurrently fails with "tuple concurrently updated").
  VMG_RETURN_IF_ERROR(db_->LockTable("schema_version"));
  VMG_RETURN_IF_ERROR(db_->ExecScript(kChangeTriggers));
  return tx.Commit();
}

bool Store::IsOwnSession(int pid) const {
  if (pid == 0) return false;
  if (db_->SessionPid() == pid) return true;
  for (const auto& r : readers_)
    if (r->db->SessionPid() == pid) return true;
  return false;
}

void Store::ApplyRemoteChanges(const std::vector<PgNotification>& batch) {
  std::set<std::string> hosts;
  std::vector<std::pair<std::string, std::string>> cached;  // (image, host)
  for (const auto& n : batch) {
    if (n.channel == kChangeChannel) {
      hosts.insert(n.payload);
    } else if (n.channel == kCacheChannel) {
      const size_t space = n.payload.find(' ');
      if (space != std::string::npos)
        cached.emplace_back(n.payload.substr(0, space), n.payload.substr(space + 1));
    }
  }
  std::lock_guard<ObserverGate> gate(gate_);
  auto lock = Exclusive();
  if (!observer_) return;
  Status st = Status::Ok();
  if (hosts.size() > kMaxHostReads) {
    st = SnapshotLocked();  // one read of everything beats many of one row
  } else {
    for (const auto& id : hosts) {
      auto rows =
          Query<Host>(db_.get(), std::string(kHostSelect) + " WHERE h.id = ?", {id}, ReadHost);
      if (!rows.ok()) {
        st = rows.error();
        break;
      }
      if (!rows->empty()) observer_->OnHost(rows->front());
    }
    if (st.ok())
      for (const auto& [image, host] : cached) observer_->OnImageCached(image, host);
  }
  if (!st.ok()) {
    // The periodic Resync repairs what this missed.
    spdlog::warn("capacity index: reading other controllers' changes: {}", st.error().message);
    return;
  }
  remote_changes_applied_.fetch_add(1);
}

Status Store::SnapshotLocked() {
  VMG_ASSIGN_OR_RETURN(auto hosts, Query<Host>(db_.get(), kHostSelect, {}, ReadHost));
  using Pair = std::pair<std::string, std::string>;
  VMG_ASSIGN_OR_RETURN(
      auto cached,
      Query<Pair>(db_.get(),
                  "SELECT image_id, host_id FROM image_cache UNION "
                  "SELECT DISTINCT 'dataset:' || dataset_id, host_id FROM dataset_cache",
                  {}, [](const SqlRow& r) {
                    return Pair{r.Text(0), r.Text(1)};
                  }));
  observer_->OnSnapshot(hosts, cached);
  return Status::Ok();
}

Result<std::vector<Host>> Store::ListHosts() {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(
      auto hosts,
      Query<Host>(read.db, std::string(kHostSelect) + " ORDER BY h.name", {}, ReadHost));
  OverlayBeats(hosts);
  return hosts;
}

Result<Page<Host>> Store::ListHostsPage(const PageRequest& page) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(auto hosts, QueryPage<Host>(read.db, std::string(kHostSelect) + " WHERE 1=1",
                                                   {}, page, "h.name", false, "h.id", ReadHost,
                                                   [](const Host& h) { return h.name; }));
  OverlayBeats(hosts.items);
  return hosts;
}

Result<Host> Store::GetHost(const std::string& ref) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(
      auto rows, Query<Host>(read.db, std::string(kHostSelect) + " WHERE h.id = ? OR h.name = ?",
                             {ref, ref}, ReadHost));
  if (rows.empty()) return MakeError(ErrorCode::kNotFound, "host '" + ref + "' not found");
  OverlayBeats(rows);
  return rows[0];
}

Result<Host> Store::SetHostDraining(const std::string& ref, bool draining) {
  auto lock = Exclusive();
  pending_.clear();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(
      auto rows, Query<Host>(db_.get(), std::string(kHostSelect) + " WHERE h.id = ? OR h.name = ?",
                             {ref, ref}, ReadHost));
  if (rows.empty()) return MakeError(ErrorCode::kNotFound, "host '" + ref + "' not found");
  Host host = rows[0];
  if (host.draining == draining) return host;  // idempotent: nothing to write
  VMG_RETURN_IF_ERROR(
      db_->Exec("UPDATE hosts SET draining = ? WHERE id = ?", {int64_t{draining}, host.id}));
  host.draining = draining;
  RecordEventLocked(Event{0, 0, draining ? "host.drain" : "host.undrain", "", host.id, "",
                          "host " + host.name + (draining ? " draining" : " undrained"), "{}"});
  Notify([host](StoreObserver& o) { o.OnHost(host); });
  VMG_RETURN_IF_ERROR(CommitLocked(tx));
  // A heartbeat that changes nothing returns the host as last written.
  std::lock_guard<std::mutex> beat(beat_mu_);
  if (auto it = beat_written_.find(host.name); it != beat_written_.end())
    it->second.draining = draining;
  return host;
}

Result<bool> Store::MarkHostDown(const std::string& id) {
  auto lock = Exclusive();
  pending_.clear();
  VMG_RETURN_IF_ERROR(FlushHeartbeatsLocked());
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(
      int64_t changed,
      db_->Exec("UPDATE hosts SET state='down' WHERE state='up' AND id = ?", {id}));
  if (changed == 0) return false;
  RecordEventLocked(Event{0, 0, "host.down", "", id, "",
                          "host " + id + " missed its heartbeats: suspect (no new placements)",
                          "{}"});
  Notify([id](StoreObserver& o) { o.OnHostDown(id); });
  VMG_RETURN_IF_ERROR(CommitLocked(tx));
  // Its next heartbeat is written in full (state up).
  std::lock_guard<std::mutex> beat(beat_mu_);
  beat_pending_.erase(id);
  std::erase_if(beat_written_, [&](const auto& e) { return e.second.id == id; });
  return true;
}

Result<bool> Store::MarkHostFailed(const std::string& id) {
  auto lock = Exclusive();
  pending_.clear();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(
      int64_t changed,
      db_->Exec("UPDATE hosts SET failed_ms = ? WHERE id = ? AND state = 'down' AND failed_ms = 0",
                {NowMs(), id}));
  if (changed == 0) return false;
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      Query<Host>(db_.get(), std::string(kHostSelect) + " WHERE h.id = ?", {id}, ReadHost));
  RecordEventLocked(Event{0, 0, "host.failed", "", id, "",
                          "host " + (rows.empty() ? id : rows[0].name) +
                              " declared failed: its VMs are recovered by their restart policy",
                          "{}"});
  if (!rows.empty()) Notify([host = rows[0]](StoreObserver& o) { o.OnHost(host); });
  VMG_RETURN_IF_ERROR(CommitLocked(tx));
  return true;
}

Status Store::ClearHostFailed(const std::string& id) {
  auto lock = Exclusive();
  pending_.clear();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_RETURN_IF_ERROR(db_->Exec("UPDATE hosts SET failed_ms = 0 WHERE id = ?", {id}));
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      Query<Host>(db_.get(), std::string(kHostSelect) + " WHERE h.id = ?", {id}, ReadHost));
  if (rows.empty()) return MakeError(ErrorCode::kNotFound, "host '" + id + "' not found");
  RecordEventLocked(Event{0, 0, "host.returned", "", id, "",
                          "host " + rows[0].name + " is back; its stale VM copies are gone", "{}"});
  Notify([host = rows[0]](StoreObserver& o) { o.OnHost(host); });
  VMG_RETURN_IF_ERROR(CommitLocked(tx));
  // A heartbeat that changes nothing returns the host as last written.
  std::lock_guard<std::mutex> beat(beat_mu_);
  if (auto it = beat_written_.find(rows[0].name); it != beat_written_.end())
    it->second.failed_ms = 0;
  return Status::Ok();
}

Result<std::vector<std::string>> Store::MarkStaleHostsDown(int64_t cutoff_ms) {
  auto lock = Exclusive();
  pending_.clear();
  VMG_RETURN_IF_ERROR(FlushHeartbeatsLocked());  // decide on the latest times
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(auto stale, db_->Query("SELECT id, name FROM hosts WHERE state='up' AND "
                                              "last_heartbeat_ms < ?",
                                              {cutoff_ms}));
  std::vector<std::string> ids;
  for (const auto& row : stale) ids.push_back(row.Text(0));
  VMG_RETURN_IF_ERROR(db_->Exec(
      "UPDATE hosts SET state='down' WHERE state='up' AND last_heartbeat_ms < ?", {cutoff_ms}));
  for (const auto& row : stale) {
    const std::string id = row.Text(0);
    RecordEventLocked(Event{0, 0, "host.down", "", id, "",
                            "host " + row.Text(1) + " missed its heartbeats: down",
                            nlohmann::json{{"last_heartbeat_before_ms", cutoff_ms}}.dump()});
    Notify([id](StoreObserver& o) { o.OnHostDown(id); });
  }
  VMG_RETURN_IF_ERROR(CommitLocked(tx));
  if (!ids.empty()) {  // their next heartbeat is written in full (state up)
    std::vector<std::string> sorted = ids;
    std::sort(sorted.begin(), sorted.end());
    std::lock_guard<std::mutex> beat(beat_mu_);
    for (const auto& id : ids) beat_pending_.erase(id);
    std::erase_if(beat_written_, [&](const auto& e) {
      return std::binary_search(sorted.begin(), sorted.end(), e.second.id);
    });
  }
  return ids;
}

// --- images --------------------------------------------------------------------

Status Store::InsertImage(const Image& image) {
  auto lock = Exclusive();
  auto r = db_->Exec(
      std::string("INSERT INTO images (") + kImageCols + ") VALUES (" + Placeholders(21) + ")",
      ImageValues(image));
  if (!r.ok()) {
    if (r.error().code == ErrorCode::kAlreadyExists)
      return MakeError(ErrorCode::kAlreadyExists,
                       "an image named '" + image.name + "' already exists");
    return r.error();
  }
  return Status::Ok();
}

Status Store::UpdateImage(const Image& i) {
  auto lock = Exclusive();
  return UpdateImageLocked(i);
}

Status Store::FinalizeImage(const Image& i) {
  auto lock = Exclusive();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(auto rows, db_->Query("SELECT state FROM images WHERE id = ?", {i.id}));
  if (rows.empty()) return MakeError(ErrorCode::kNotFound, "image " + i.name + " not found");
  if (rows[0].Text(0) != "ready")
    VMG_RETURN_IF_ERROR(
        CheckQuotaLocked(db_.get(), i.owner_id, QuotaAsk{0, 0, 0, i.QuotaBytes(), 0}));
  VMG_RETURN_IF_ERROR(UpdateImageLocked(i));
  return tx.Commit();
}

Status Store::UpdateImageLocked(const Image& i) {
  auto vals = ImageValues(i);
  vals.erase(vals.begin());  // id goes last
  vals.push_back(i.id);
  VMG_RETURN_IF_ERROR(db_->Exec(
      "UPDATE images SET name=?, owner_id=?, state=?, format=?, dir=?, size_bytes=?, "
      "virtual_size_bytes=?, has_kernel=?, has_initrd=?, append=?, min_memory_mb=?, ckpt_state=?, "
      "ckpt_memory_mb=?, ckpt_vcpus=?, ckpt_size_bytes=?, ckpt_error=?, created_ms=?, blobs=?, "
      "expanded_size_bytes=?, max_clone_bytes=? WHERE id=?",
      vals));
  return Status::Ok();
}

Result<Image> Store::GetImage(const std::string& ref, const OwnerFilter& owner) {
  auto read = Read();
  return GetByRef<Image>(read.db, "images", kImageCols, "image", ref, owner, ReadImage);
}

Result<std::vector<Image>> Store::ListImages(const OwnerFilter& owner) {
  auto read = Read();
  if (owner.empty())
    return Query<Image>(read.db,
                        std::string("SELECT ") + kImageCols + " FROM images ORDER BY created_ms",
                        {}, ReadImage);
  return Query<Image>(
      read.db,
      std::string("SELECT ") + kImageCols + " FROM images WHERE owner_id = ? ORDER BY created_ms",
      {owner}, ReadImage);
}

Result<std::vector<Image>> Store::ListPublicImages() {
  auto read = Read();
  return Query<Image>(read.db,
                      std::string("SELECT ") + kImageCols +
                          " FROM images WHERE owner_id IN (SELECT id FROM users WHERE role = "
                          "'admin') ORDER BY created_ms",
                      {}, ReadImage);
}

Status Store::DeleteImage(const std::string& id) {
  auto lock = Exclusive();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(auto users,
                       Query<int64_t>(db_.get(),
                                      "SELECT (SELECT COUNT(*) FROM vms WHERE image_id=?) + "
                                      "(SELECT COUNT(*) FROM workspaces WHERE image_id=?)",
                                      {id, id}, [](const SqlRow& s) { return s.Int(0); }));
  if (users[0] > 0)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "image is used by " + std::to_string(users[0]) +
                         " VM(s) or workspace(s); remove them first");
  VMG_RETURN_IF_ERROR(db_->Exec("DELETE FROM images WHERE id = ?", {id}));
  return tx.Commit();
}

// --- VMs ------------------------------------------------------------------------

Status Store::AddUsageLocked(const std::string& host_id, int64_t vcpus, int64_t memory_mb,
                             int64_t disk_bytes) {
  if (vcpus == 0 && memory_mb == 0 && disk_bytes == 0) return Status::Ok();
  VMG_RETURN_IF_ERROR(db_->Exec(
      "UPDATE hosts SET used_vcpus = used_vcpus + ?, used_memory_mb = used_memory_mb + ?, "
      "used_disk_bytes = used_disk_bytes + ? WHERE id = ?",
      {vcpus, memory_mb, disk_bytes, host_id}));
  Notify([host_id, vcpus, memory_mb, disk_bytes](StoreObserver& o) {
    o.OnUsage(host_id, vcpus, memory_mb, disk_bytes);
  });
  return Status::Ok();
}

Result<bool> Store::TryTakeRoomLocked(const Vm& vm, const std::string& host_id) {
  VMG_ASSIGN_OR_RETURN(int64_t taken, db_->Exec(kTakeRoom, TakeRoomParams(vm, host_id)));
  if (taken == 0) return false;
  Notify([host_id, v = int64_t{vm.vcpus}, m = vm.memory_mb, d = vm.disk_bytes](StoreObserver& o) {
    o.OnUsage(host_id, v, m, d);
  });
  return true;
}

Status Store::InsertVmLocked(const Vm& vm, bool reserved) {
  auto r =
      db_->Exec(std::string("INSERT INTO vms (") + kVmCols + ") VALUES (" + Placeholders(20) + ")",
                VmValues(vm));
  if (!r.ok()) {
    if (r.error().code == ErrorCode::kAlreadyExists)
      return MakeError(ErrorCode::kAlreadyExists, "a VM named '" + vm.name + "' already exists");
    return r.error();
  }
  VMG_RETURN_IF_ERROR(db_->Exec(
      "INSERT INTO virtualization (virtual_id, virtual_kind, physical_id, physical_kind, vm_id, "
      "owner_id) VALUES (?, 'vm', ?, 'host', ?, ?), (?, 'vdisk', ?, 'image', ?, ?), "
      "(?, 'vdisk', ?, 'host_cache', ?, ?)",
      {vm.id, vm.host_id, vm.id, vm.owner_id, "disk-" + vm.id, vm.image_id, vm.id, vm.owner_id,
       "disk-" + vm.id, vm.host_id, vm.id, vm.owner_id}));
  VMG_RETURN_IF_ERROR(AllocateNicsLocked(db_.get(), vm));
  if (!reserved && HoldsOnHost(vm.state))
    VMG_RETURN_IF_ERROR(AddUsageLocked(vm.host_id, vm.vcpus, vm.memory_mb, vm.disk_bytes));
  Notify([host = vm.host_id](StoreObserver& o) { o.OnVmChanged(host); });
  return Status::Ok();
}

// IPAM: each NIC gets the lowest free host index of its network from
// kFirstVmIndex on (store/ipam.h), in the VM's transaction on `db`. On
// PostgreSQL the network's row is locked first (placements run on several
// connections, and controllers may share the database); on SQLite the
// Store's write lock serializes them. UNIQUE (network_id, host_index) backs
// both.
Status Store::AllocateNicsLocked(SqlBackend* db, const Vm& vm) {
  // (Also when the transaction then rolls back: a plan computed once more.)
  if (!vm.net_ids.empty()) ++network_generation_;
  for (size_t i = 0; i < vm.net_ids.size(); ++i)
    VMG_RETURN_IF_ERROR(AllocateNicLocked(db, vm, static_cast<int>(i), vm.net_ids[i]));
  return Status::Ok();
}

Status Store::AllocateNicLocked(SqlBackend* db, const Vm& vm, int index,
                                const std::string& network_id) {
  using SubnetVni = std::pair<std::string, int64_t>;
  auto read_net = [](const SqlRow& r) { return SubnetVni{r.Text(0), r.Int(1)}; };
  // On `db`, the connection of the caller's transaction: db_ may be in use by
  // another thread (PostgreSQL placements run on side connections).
  VMG_ASSIGN_OR_RETURN(
      auto nets, Query<SubnetVni>(db, "SELECT subnet, vni FROM networks WHERE id = ?", {network_id},
                                  read_net));
  if (nets.empty())
    return MakeError(ErrorCode::kNotFound, "network '" + network_id + "' not found");
  VMG_ASSIGN_OR_RETURN(Subnet subnet, ParseSubnet(nets[0].first));
  VMG_ASSIGN_OR_RETURN(auto taken,
                       Query<int64_t>(db,
                                      "SELECT host_index FROM nics WHERE network_id = ? "
                                      "ORDER BY host_index",
                                      {network_id}, [](const SqlRow& r) { return r.Int(0); }));
  int64_t pick = kFirstVmIndex;
  for (int64_t t : taken) {
    if (t < pick) continue;
    if (t > pick) break;
    ++pick;
  }
  if (pick > static_cast<int64_t>(subnet.last_vm_index()))
    return MakeError(ErrorCode::kResourceExhausted,
                     "network " + network_id + " (" + nets[0].first + ") has no free address");
  const auto host_index = static_cast<uint32_t>(pick);
  std::vector<SqlValue> values{vm.id,
                               int64_t{index},
                               network_id,
                               pick,
                               NicMac(nets[0].second, host_index),
                               HostAddress(subnet, host_index),
                               vm.owner_id};
  auto r = db->Exec(
      "INSERT INTO nics (vm_id, idx, network_id, host_index, mac, ip, owner_id) "
      "VALUES (?, ?, ?, ?, ?, ?, ?)",
      values);
  if (!r.ok()) return r.error();  // a taken address (another controller): UNIQUE
  // The virtualization relation: the NIC is a virtual link on the network.
  auto x = db->Exec(
      "INSERT INTO virtualization (virtual_id, virtual_kind, physical_id, physical_kind, vm_id, "
      "owner_id) VALUES (?, 'nic', ?, 'network', ?, ?)",
      {"nic-" + vm.id + "-" + std::to_string(index), network_id, vm.id, vm.owner_id});
  if (!x.ok()) return x.error();
  return Status::Ok();
}

Result<Vm> Store::PlaceAndInsertVm(Vm vm, const std::vector<std::string>& candidates) {
  if (!HoldsOnHost(vm.state))
    return MakeError(ErrorCode::kInvalidArgument,
                     "a VM in state " + vm.state + " holds no room to place");
  if (db_->dialect() == SqlBackend::Dialect::kPostgres) {
    // One autocommit statement per candidate, safe on any connection (as
    // between controllers sharing the database): it runs on a side
    // connection, so placements do not queue behind the writes on db_
    // (placement at 5,000 hosts 734 -> median 1,069/s of 7 runs). Running the follow-up
    // writes (ModifyVm) on side connections too measured no faster: the
    // server's CPU is the limit then.
    // A user with a VM quota takes the slower path: a transaction that
    // locks the user's row, counts, and places (CheckQuotaLocked). A quota
    // set while this runs may not apply to it: it is ordered before the
    // quota, like the VMs the user already holds.
    // Shared until the observer is told: a re-read of this host by
    // ApplyRemoteChanges is ordered before the statement or after the call.
    std::shared_lock<ObserverGate> gate(gate_);
    auto conn = Read();
    const QuotaAsk ask{1, vm.vcpus, vm.memory_mb, 0, 0};
    VMG_ASSIGN_OR_RETURN(
        auto users,
        Query<User>(conn.db, std::string("SELECT ") + kUserCols + " FROM users WHERE id = ?",
                    {vm.owner_id}, ReadUser));
    // A VM with NICs takes a transaction too: its addresses are allocated
    // with it (AllocateNicsLocked), all or nothing.
    std::optional<SqlTransaction> tx;
    const bool quota = !users.empty() && Limits(users[0].quota, ask);
    if (quota || !vm.net_ids.empty()) {
      tx.emplace(conn.db);
      VMG_RETURN_IF_ERROR(tx->begin_status());
    }
    if (quota) VMG_RETURN_IF_ERROR(CheckQuotaLocked(conn.db, vm.owner_id, ask));
    VMG_ASSIGN_OR_RETURN(Vm placed, PlaceAndInsertVmPg(conn.db, std::move(vm), candidates));
    VMG_RETURN_IF_ERROR(AllocateNicsLocked(conn.db, placed));
    if (tx) VMG_RETURN_IF_ERROR(tx->Commit());
    if (observer_) {
      observer_->OnUsage(placed.host_id, placed.vcpus, placed.memory_mb, placed.disk_bytes);
      observer_->OnVmChanged(placed.host_id);
    }
    return placed;
  }
  // The reservation is one conditional UPDATE of the host's usage: it checks
  // and takes the room atomically.
  VMG_RETURN_IF_ERROR(Batched([&]() -> Status {
    VMG_RETURN_IF_ERROR(
        CheckQuotaLocked(db_.get(), vm.owner_id, QuotaAsk{1, vm.vcpus, vm.memory_mb, 0, 0}));
    for (const auto& host_id : candidates) {
      VMG_ASSIGN_OR_RETURN(bool taken, TryTakeRoomLocked(vm, host_id));
      if (!taken) continue;
      vm.host_id = host_id;
      return InsertVmLocked(vm, /*reserved=*/true);
    }
    return NoRoom(vm, candidates.size());
  }));
  return vm;
}

// PostgreSQL: the reservation, the VM row and its virtualization rows are
// one statement per candidate (data-modifying CTEs), so one round trip and
// atomic without BEGIN/COMMIT: the conditional UPDATE holds the host's row,
// and the inserts happen only if it took the room.
Result<Vm> Store::PlaceAndInsertVmPg(SqlBackend* db, Vm vm,
                                     const std::vector<std::string>& candidates) {
  const std::string reserve = "WITH r AS (" + kTakeRoom;
  const std::string insert = std::string("v AS (INSERT INTO vms (") + kVmCols + ") SELECT " +
                             Placeholders(20) + " FROM r RETURNING id), ";
  const std::string sql = reserve + " RETURNING id), " + insert +
                          "x AS (INSERT INTO virtualization (virtual_id, virtual_kind, "
                          "physical_id, physical_kind, vm_id, "
                          "owner_id) SELECT ?, 'vm', ?, 'host', v.id, ? FROM v UNION ALL "
                          "SELECT ?, 'vdisk', ?, 'image', v.id, ? FROM v UNION ALL "
                          "SELECT ?, 'vdisk', ?, 'host_cache', v.id, ? FROM v) "
                          "SELECT COUNT(*) FROM v";
  for (const auto& host_id : candidates) {
    vm.host_id = host_id;
    std::vector<SqlValue> params = TakeRoomParams(vm, host_id);
    for (auto& v : VmValues(vm)) params.push_back(std::move(v));
    for (auto v :
         std::initializer_list<SqlValue>{vm.id, host_id, vm.owner_id, "disk-" + vm.id, vm.image_id,
                                         vm.owner_id, "disk-" + vm.id, host_id, vm.owner_id})
      params.push_back(std::move(v));
    auto rows = db->Query(sql, params);
    if (!rows.ok()) {
      if (rows.error().code == ErrorCode::kAlreadyExists)
        return MakeError(ErrorCode::kAlreadyExists, "a VM named '" + vm.name + "' already exists");
      return rows.error();
    }
    if (rows->empty() || (*rows)[0].Int(0) == 0) continue;
    return vm;
  }
  return NoRoom(vm, candidates.size());
}

Result<std::vector<Vm>> Store::PlaceAndInsertGang(
    std::vector<Vm> vms, const std::vector<std::vector<std::string>>& groups) {
  auto lock = Exclusive();
  pending_.clear();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  // The quota first: every lock order is the user's row, then hosts.
  QuotaAsk ask;
  for (const auto& vm : vms) {
    if (vm.owner_id != vms[0].owner_id)
      return MakeError(ErrorCode::kInvalidArgument, "a gang's VMs have one owner");
    ++ask.vms;
    ask.vcpus += vm.vcpus;
    ask.memory_mb += vm.memory_mb;
  }
  if (!vms.empty()) VMG_RETURN_IF_ERROR(CheckQuotaLocked(db_.get(), vms[0].owner_id, ask));
  // Gangs take turns (across controllers sharing a PostgreSQL database too):
  // the usage read below stays true until the inserts commit. Locking
  // `hosts` before any of its rows keeps gangs and single placements (which
  // lock one host row each) free of lock-order cycles.
  VMG_RETURN_IF_ERROR(db_->LockTable("hosts"));
  std::sort(vms.begin(), vms.end(),
            [](const Vm& a, const Vm& b) { return a.memory_mb > b.memory_mb; });
  for (const auto& group : groups) {
    std::vector<Host> hosts;
    for (const auto& id : group) {
      VMG_ASSIGN_OR_RETURN(
          auto rows,
          Query<Host>(db_.get(), std::string(kHostSelect) + " WHERE h.id = ?", {id}, ReadHost));
      if (!rows.empty() && rows[0].state == "up" && !rows[0].draining) hosts.push_back(rows[0]);
    }
    bool all = true;
    std::vector<Vm> placed = vms;
    for (auto& vm : placed) {
      bool fit = false;
      for (auto& h : hosts) {
        if (h.vcpus - h.reserved_vcpus >= vm.vcpus &&
            h.memory_mb - h.reserved_memory_mb >= vm.memory_mb && HasDiskRoom(h, vm.disk_bytes)) {
          h.reserved_vcpus += vm.vcpus;
          h.reserved_memory_mb += vm.memory_mb;
          h.reserved_disk_bytes += vm.disk_bytes;
          vm.host_id = h.id;
          fit = true;
          break;
        }
      }
      if (!fit) {
        all = false;
        break;
      }
    }
    if (!all) continue;
    for (const auto& vm : placed) VMG_RETURN_IF_ERROR(InsertVmLocked(vm, /*reserved=*/false));
    VMG_RETURN_IF_ERROR(CommitLocked(tx));
    return placed;
  }
  return MakeError(ErrorCode::kResourceExhausted,
                   "no group of hosts has room for all " + std::to_string(vms.size()) + " VMs");
}

Status Store::InsertVmRecord(const Vm& vm) {
  auto lock = Exclusive();
  pending_.clear();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_RETURN_IF_ERROR(InsertVmLocked(vm, /*reserved=*/false));
  RecordVmStateLocked(vm, "", "");
  return CommitLocked(tx);
}

Result<Vm> Store::GetVmLocked(const std::string& ref, const OwnerFilter& owner) {
  return GetByRef<Vm>(db_.get(), "vms", kVmCols, "VM", ref, owner, ReadVm);
}

Result<Vm> Store::GetVm(const std::string& ref, const OwnerFilter& owner) {
  auto read = Read();
  return GetByRef<Vm>(read.db, "vms", kVmCols, "VM", ref, owner, ReadVm);
}

Result<std::vector<Vm>> Store::ListVms(const OwnerFilter& owner) {
  auto read = Read();
  if (owner.empty())
    return Query<Vm>(read.db, std::string("SELECT ") + kVmCols + " FROM vms ORDER BY created_ms",
                     {}, ReadVm);
  return Query<Vm>(
      read.db,
      std::string("SELECT ") + kVmCols + " FROM vms WHERE owner_id = ? ORDER BY created_ms",
      {owner}, ReadVm);
}

Result<Page<Vm>> Store::ListVmsPage(const OwnerFilter& owner, const PageRequest& page) {
  auto read = Read();
  std::string sql = std::string("SELECT ") + kVmCols + " FROM vms WHERE 1=1";
  std::vector<SqlValue> params;
  if (!owner.empty()) {
    sql += " AND owner_id = ?";
    params.emplace_back(owner);
  }
  return QueryPage<Vm>(read.db, sql, std::move(params), page, "created_ms", true, "id", ReadVm,
                       [](const Vm& v) { return NumberKey(v.created_ms); });
}

Result<std::vector<Vm>> Store::ListVmsOnHost(const std::string& host_id) {
  auto read = Read();
  return Query<Vm>(read.db, std::string("SELECT ") + kVmCols + " FROM vms WHERE host_id = ?",
                   {host_id}, ReadVm);
}

Result<std::map<std::string, int64_t>> Store::CountVmsByState() {
  auto read = Read();
  using Row = std::pair<std::string, int64_t>;
  VMG_ASSIGN_OR_RETURN(auto rows,
                       Query<Row>(read.db, "SELECT state, COUNT(*) FROM vms GROUP BY state", {},
                                  [](const SqlRow& s) {
                                    return Row{s.Text(0), s.Int(1)};
                                  }));
  return std::map<std::string, int64_t>(rows.begin(), rows.end());
}

Result<std::optional<Store::VmPlacement>> Store::GetVmPlacementLocked(const std::string& id) {
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query("SELECT host_id, state, vcpus, memory_mb, disk_bytes FROM vms WHERE id = ?",
                 {id}));
  if (rows.empty()) return std::optional<VmPlacement>();
  return std::optional<VmPlacement>(VmPlacement{rows[0].Text(0), rows[0].Text(1), rows[0].Int(2),
                                                rows[0].Int(3), rows[0].Int(4)});
}

Status Store::MoveUsageLocked(const VmPlacement& before, const std::string& host_id,
                              const std::string& state) {
  const bool held = HoldsOnHost(before.state), holds = HoldsOnHost(state);
  if (held == holds && before.host_id == host_id) return Status::Ok();
  if (held)
    VMG_RETURN_IF_ERROR(
        AddUsageLocked(before.host_id, -before.vcpus, -before.memory_mb, -before.disk_bytes));
  if (holds && !held && before.host_id == host_id) {
    VMG_ASSIGN_OR_RETURN(
        int64_t taken,
        db_->Exec(kTakeRoomBack, {before.vcpus, before.memory_mb, before.disk_bytes, host_id,
                                  before.vcpus, before.memory_mb, before.disk_bytes}));
    if (taken == 0)
      return MakeError(ErrorCode::kResourceExhausted,
                       "host " + host_id + " has no room left for the VM to take back (" +
                           std::to_string(before.vcpus) + " vCPUs, " +
                           std::to_string(before.memory_mb) + " MiB)");
    Notify([host_id, v = before.vcpus, m = before.memory_mb,
            d = before.disk_bytes](StoreObserver& o) { o.OnUsage(host_id, v, m, d); });
    return Status::Ok();
  }
  if (holds)
    VMG_RETURN_IF_ERROR(AddUsageLocked(host_id, before.vcpus, before.memory_mb, before.disk_bytes));
  return Status::Ok();
}

Status Store::UpdateVmLocked(const Vm& v, const VmPlacement& before, bool* raced) {
  VMG_ASSIGN_OR_RETURN(
      int64_t changed,
      db_->Exec("UPDATE vms SET host_id=?, state=?, workspace_id=?, error=?, create_ms=?, "
                "disk_base=?, updated_ms=? WHERE id=? AND host_id=? AND state=?",
                {v.host_id, v.state, v.workspace_id, v.error, v.create_ms, v.disk_base, NowMs(),
                 v.id, before.host_id, before.state}));
  if (changed == 0) {
    *raced = true;
    return Status::Ok();
  }
  VMG_RETURN_IF_ERROR(MoveUsageLocked(before, v.host_id, v.state));
  RecordVmStateLocked(v, before.state, before.host_id);
  if (before.state == "migrating" && v.state != "migrating")
    VMG_RETURN_IF_ERROR(ReleaseMigrationLocked(v.id));
  if (v.host_id != before.host_id)
    VMG_RETURN_IF_ERROR(
        db_->Exec("UPDATE virtualization SET physical_id=? WHERE vm_id=? AND physical_kind IN "
                  "('host','host_cache')",
                  {v.host_id, v.id}));
  Notify([host = before.host_id](StoreObserver& o) { o.OnVmChanged(host); });
  if (v.host_id != before.host_id)
    Notify([host = v.host_id](StoreObserver& o) { o.OnVmChanged(host); });
  return Status::Ok();
}

Status Store::UpdateVm(const Vm& v) {
  return ModifyVm(v.id, [&v](Vm& vm) {
    vm.host_id = v.host_id;
    vm.state = v.state;
    vm.workspace_id = v.workspace_id;
    vm.error = v.error;
    vm.create_ms = v.create_ms;
  });
}

Status Store::ModifyVm(const std::string& id, const std::function<void(Vm&)>& change) {
  // Compare-and-set on the host and state read here, so that the usage moved
  // matches what was replaced even if another controller writes the row in
  // between (PostgreSQL); retried a few times if it did.
  for (int attempt = 0; attempt < 5; ++attempt) {
    bool raced = false;
    VMG_RETURN_IF_ERROR(Batched([&]() -> Status {
      auto vm = GetVmLocked(id, "");
      if (!vm.ok())
        return vm.error().code == ErrorCode::kNotFound ? Status::Ok() : Status(vm.error());
      const VmPlacement before{vm->host_id, vm->state, vm->vcpus, vm->memory_mb, vm->disk_bytes};
      change(*vm);
      return UpdateVmLocked(*vm, before, &raced);
    }));
    if (!raced) return Status::Ok();
  }
  return MakeError(ErrorCode::kUnavailable, "VM " + id + " keeps changing concurrently; retry");
}

Result<Vm> Store::TransitionVm(const std::string& id, const std::vector<std::string>& from,
                               const std::string& to) {
  auto lock = Exclusive();
  pending_.clear();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(Vm vm, GetVmLocked(id, ""));
  bool allowed = false;
  for (const auto& f : from) allowed = allowed || vm.state == f;
  if (!allowed)
    return MakeError(
        ErrorCode::kFailedPrecondition,
        "VM " + vm.id + " is " + vm.state + "; this needs it to be " + [&] {
          std::string s;
          for (size_t i = 0; i < from.size(); ++i) s += (i ? " or " : "") + from[i];
          return s;
        }());
  const std::string seen = vm.state;
  vm.state = to;
  vm.updated_ms = NowMs();
  if (to != "error") vm.error.clear();
  // The state (and host) re-checked in the UPDATE keep this a compare-and-set
  // where another controller may write between the read and the write
  // (PostgreSQL).
  VMG_ASSIGN_OR_RETURN(
      int64_t changed,
      db_->Exec(
          "UPDATE vms SET state=?, error=?, updated_ms=? WHERE id=? AND state=? AND host_id=?",
          {vm.state, vm.error, vm.updated_ms, vm.id, seen, vm.host_id}));
  if (changed == 0)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + vm.id + " changed state concurrently; retry");
  VMG_RETURN_IF_ERROR(MoveUsageLocked(
      VmPlacement{vm.host_id, seen, vm.vcpus, vm.memory_mb, vm.disk_bytes}, vm.host_id, vm.state));
  RecordVmStateLocked(vm, seen, vm.host_id);
  Notify([host = vm.host_id](StoreObserver& o) { o.OnVmChanged(host); });
  VMG_RETURN_IF_ERROR(CommitLocked(tx));
  return vm;
}

Result<Vm> Store::TransitionVm(const std::string& id, VmOp op) {
  // Every row of one operation moves to the same transitional state
  // (VmStateTest.OneTransitionalStatePerOp), so one compare-and-set does.
  const std::vector<VmState> states = FromStates(op);
  std::optional<VmTransition> t;
  if (!states.empty()) {
    VMG_ASSIGN_OR_RETURN(t, LookupTransition(states.front(), op));
  }
  if (!t || !t->transitional)
    return MakeError(ErrorCode::kInternal,
                     std::string(ToString(op)) + " is not a state change of an existing VM");
  std::vector<std::string> from;
  for (VmState s : states) from.push_back(ToString(s));
  return TransitionVm(id, from, ToString(*t->transitional));
}

Status Store::DeleteVm(const std::string& id) {
  auto lock = Exclusive();
  for (int attempt = 0; attempt < 5; ++attempt) {  // compare-and-set, as in UpdateVm
    pending_.clear();
    SqlTransaction tx(db_.get());
    VMG_RETURN_IF_ERROR(tx.begin_status());
    VMG_RETURN_IF_ERROR(db_->Exec("UPDATE workspaces SET vm_id='' WHERE vm_id=?", {id}));
    VMG_ASSIGN_OR_RETURN(auto before, GetVmPlacementLocked(id));
    if (!before) return tx.Commit();
    VMG_ASSIGN_OR_RETURN(auto who, db_->Query("SELECT name, owner_id FROM vms WHERE id=?", {id}));
    VMG_RETURN_IF_ERROR(ReleaseMigrationLocked(id));
    VMG_ASSIGN_OR_RETURN(
        auto nets, Query<std::string>(db_.get(), "SELECT network_id FROM nics WHERE vm_id=?", {id},
                                      [](const SqlRow& r) { return r.Text(0); }));
    // Its virtualization rows and NICs go with it (ON DELETE CASCADE).
    VMG_ASSIGN_OR_RETURN(int64_t changed,
                         db_->Exec("DELETE FROM vms WHERE id=? AND host_id=? AND state=?",
                                   {id, before->host_id, before->state}));
    if (changed == 0) continue;
    if (!who.empty()) {
      const std::string name = who[0].Text(0);
      RecordEventLocked(Event{0, 0, "vm.deleted", id, before->host_id, who[0].Text(1),
                              "VM " + name + " deleted (was " + before->state + ")",
                              nlohmann::json{{"from", before->state}}.dump()});
    }
    VMG_RETURN_IF_ERROR(RekeyNetworksLeftLocked(nets, before->host_id));
    if (!nets.empty()) ++network_generation_;
    if (HoldsOnHost(before->state))
      VMG_RETURN_IF_ERROR(
          AddUsageLocked(before->host_id, -before->vcpus, -before->memory_mb, -before->disk_bytes));
    Notify([host = before->host_id](StoreObserver& o) { o.OnVmChanged(host); });
    return CommitLocked(tx);
  }
  return MakeError(ErrorCode::kUnavailable, "VM " + id + " keeps changing concurrently; retry");
}

// A host that no longer carries a network must not read its traffic any
// more: the network gets a new tunnel key (docs/vnet.md, "Keys").
Status Store::RekeyNetworksLeftLocked(const std::vector<std::string>& nets,
                                      const std::string& host_id) {
  for (const auto& net : nets) {
    VMG_ASSIGN_OR_RETURN(auto left,
                         Query<int64_t>(db_.get(),
                                        "SELECT COUNT(*) FROM nics n JOIN vms v ON v.id = n.vm_id "
                                        "WHERE n.network_id = ? AND v.host_id = ?",
                                        {net, host_id}, [](const SqlRow& r) { return r.Int(0); }));
    if (left.at(0) == 0)
      VMG_RETURN_IF_ERROR(
          db_->Exec("UPDATE networks SET tunnel_key = ?, key_epoch = key_epoch + 1 WHERE id = ?",
                    {Sha256Hex(RandomBytes(32)), net}));
  }
  return Status::Ok();
}

// --- live migration ---------------------------------------------------------------

namespace {
struct MigrationRow {
  std::string target;
  int64_t vcpus = 0, memory_mb = 0, disk_bytes = 0;
  bool cold = false;
};
MigrationRow ReadMigrationRow(const SqlRow& r) {
  return MigrationRow{r.Text(0), r.Int(1), r.Int(2), r.Int(3), r.Int(4) != 0};
}
constexpr const char* kMigrationSelect =
    "SELECT target_host_id, vcpus, memory_mb, disk_bytes, cold FROM vm_migrations WHERE vm_id = ?";
}  // namespace

Status Store::ReleaseMigrationLocked(const std::string& id) {
  VMG_ASSIGN_OR_RETURN(auto rows,
                       Query<MigrationRow>(db_.get(), kMigrationSelect, {id}, ReadMigrationRow));
  if (rows.empty()) return Status::Ok();
  VMG_RETURN_IF_ERROR(db_->Exec("DELETE FROM vm_migrations WHERE vm_id = ?", {id}));
  VMG_RETURN_IF_ERROR(
      AddUsageLocked(rows[0].target, -rows[0].vcpus, -rows[0].memory_mb, -rows[0].disk_bytes));
  Notify([host = rows[0].target](StoreObserver& o) { o.OnVmChanged(host); });
  return Status::Ok();
}

Result<std::pair<Vm, std::string>> Store::BeginMigration(
    const std::string& id, const std::vector<std::string>& candidates) {
  auto lock = Exclusive();
  pending_.clear();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(Vm vm, GetVmLocked(id, ""));
  VMG_ASSIGN_OR_RETURN(VmState state, ParseVmState(vm.state));
  VMG_RETURN_IF_ERROR(
      LookupTransition(state, state == VmState::kStopped ? VmOp::kColdMigrate : VmOp::kMigrate));
  const std::string seen = vm.state;
  vm.state = ToString(VmState::kMigrating);
  vm.error.clear();
  vm.updated_ms = NowMs();
  VMG_ASSIGN_OR_RETURN(
      int64_t changed,
      db_->Exec(
          "UPDATE vms SET state=?, error=?, updated_ms=? WHERE id=? AND state=? AND host_id=?",
          {vm.state, vm.error, vm.updated_ms, vm.id, seen, vm.host_id}));
  if (changed == 0)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + vm.id + " changed state concurrently; retry");
  // The same conditional UPDATE that places a VM takes the room.
  for (const auto& host_id : candidates) {
    if (host_id == vm.host_id) continue;
    VMG_ASSIGN_OR_RETURN(bool taken, TryTakeRoomLocked(vm, host_id));
    if (!taken) continue;
    VMG_RETURN_IF_ERROR(
        db_->Exec("INSERT INTO vm_migrations (vm_id, target_host_id, vcpus, memory_mb, disk_bytes, "
                  "started_ms, cold) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  {vm.id, host_id, int64_t{vm.vcpus}, vm.memory_mb, vm.disk_bytes, vm.updated_ms,
                   int64_t{seen == "stopped" ? 1 : 0}}));
    RecordVmStateLocked(vm, seen, vm.host_id);
    Notify([host = vm.host_id](StoreObserver& o) { o.OnVmChanged(host); });
    Notify([host_id](StoreObserver& o) { o.OnVmChanged(host_id); });
    VMG_RETURN_IF_ERROR(CommitLocked(tx));
    return std::make_pair(vm, host_id);
  }
  return NoRoom(vm, candidates.size());  // the transaction rolls back: still running
}

Result<Vm> Store::RelocateVm(const std::string& id, const std::string& from,
                             const std::vector<std::string>& candidates, const std::string& note,
                             const std::string& to_state) {
  if (to_state != "creating" && to_state != "stopped")
    return MakeError(ErrorCode::kInternal, "RelocateVm: to " + to_state);
  auto lock = Exclusive();
  pending_.clear();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(Vm vm, GetVmLocked(id, ""));
  if (vm.state != "error" || vm.host_id != from)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + vm.state + " and no longer in error on host " + from);
  for (const auto& host_id : candidates) {
    if (host_id == from) continue;
    VMG_ASSIGN_OR_RETURN(bool taken, TryTakeRoomLocked(vm, host_id));
    if (!taken) continue;
    vm.host_id = host_id;
    vm.state = to_state;
    vm.error = note;
    vm.updated_ms = NowMs();
    VMG_ASSIGN_OR_RETURN(int64_t changed,
                         db_->Exec("UPDATE vms SET host_id=?, state=?, error=?, updated_ms=? WHERE "
                                   "id=? AND state='error' AND host_id=?",
                                   {vm.host_id, vm.state, vm.error, vm.updated_ms, id, from}));
    if (changed == 0)
      return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " changed concurrently");
    VMG_RETURN_IF_ERROR(
        db_->Exec("UPDATE virtualization SET physical_id=? WHERE vm_id=? AND physical_kind IN "
                  "('host','host_cache')",
                  {host_id, id}));
    ++network_generation_;  // its NICs are planned on the new host
    if (!vm.workspace_id.empty()) {
      // Its workspace goes with it (restarted from its durable version):
      // the new generation locks the failed host out of its versions.
      VMG_RETURN_IF_ERROR(db_->Exec(
          "UPDATE workspaces SET host_id=?, generation=generation+1 WHERE id=? AND host_id=?",
          {host_id, vm.workspace_id, from}));
    }
    RecordEventLocked(Event{0, 0, "vm.recovered", id, host_id, vm.owner_id,
                            "VM " + vm.name +
                                (to_state == "stopped" ? " moves, stopped, to another host: "
                                                       : " restarts on another host: ") +
                                note,
                            nlohmann::json{{"from_host", from}, {"to_host", host_id}}.dump()});
    Notify([from](StoreObserver& o) { o.OnVmChanged(from); });
    Notify([host_id](StoreObserver& o) { o.OnVmChanged(host_id); });
    VMG_RETURN_IF_ERROR(CommitLocked(tx));
    return vm;
  }
  return NoRoom(vm, candidates.size());
}

Result<std::string> Store::MigrationTarget(const std::string& id) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(auto rows,
                       Query<MigrationRow>(read.db, kMigrationSelect, {id}, ReadMigrationRow));
  return rows.empty() ? std::string() : rows[0].target;
}

Result<std::vector<Store::PendingMigration>> Store::ListMigrations() {
  auto read = Read();
  return Query<PendingMigration>(
      read.db,
      "SELECT vm_id, target_host_id, started_ms, cold FROM vm_migrations ORDER BY started_ms, "
      "vm_id",
      {}, [](const SqlRow& r) {
        return PendingMigration{r.Text(0), r.Text(1), r.Int(2), r.Int(3) != 0};
      });
}

Result<Vm> Store::FinishMigration(const std::string& id) {
  auto lock = Exclusive();
  pending_.clear();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(Vm vm, GetVmLocked(id, ""));
  VMG_ASSIGN_OR_RETURN(auto rows,
                       Query<MigrationRow>(db_.get(), kMigrationSelect, {id}, ReadMigrationRow));
  if (vm.state != "migrating" || rows.empty())
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + vm.id + " is " + vm.state + ", not migrating");
  const std::string source = vm.host_id, target = rows[0].target;
  vm.host_id = target;
  vm.state = ToString(rows[0].cold ? VmState::kStopped : VmState::kRunning);
  vm.error.clear();
  vm.updated_ms = NowMs();
  VMG_ASSIGN_OR_RETURN(int64_t changed,
                       db_->Exec("UPDATE vms SET host_id=?, state=?, error=?, updated_ms=? "
                                 "WHERE id=? AND state='migrating' AND host_id=?",
                                 {vm.host_id, vm.state, vm.error, vm.updated_ms, vm.id, source}));
  if (changed == 0)
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + vm.id + " changed state concurrently");
  // The target's reservation becomes the VM's own; the source's goes.
  VMG_RETURN_IF_ERROR(db_->Exec("DELETE FROM vm_migrations WHERE vm_id = ?", {id}));
  VMG_RETURN_IF_ERROR(AddUsageLocked(source, -vm.vcpus, -vm.memory_mb, -vm.disk_bytes));
  VMG_RETURN_IF_ERROR(
      db_->Exec("UPDATE virtualization SET physical_id=? WHERE vm_id=? AND physical_kind IN "
                "('host','host_cache')",
                {target, id}));
  VMG_RETURN_IF_ERROR(db_->Exec("UPDATE workspaces SET host_id=? WHERE vm_id=?", {target, id}));
  RecordVmStateLocked(vm, "migrating", source);
  // NICs are keyed by VM: the host change moves them in every plan.
  VMG_ASSIGN_OR_RETURN(
      auto nets, Query<std::string>(db_.get(), "SELECT network_id FROM nics WHERE vm_id=?", {id},
                                    [](const SqlRow& r) { return r.Text(0); }));
  VMG_RETURN_IF_ERROR(RekeyNetworksLeftLocked(nets, source));
  if (!nets.empty()) ++network_generation_;
  Notify([source](StoreObserver& o) { o.OnVmChanged(source); });
  Notify([target](StoreObserver& o) { o.OnVmChanged(target); });
  VMG_RETURN_IF_ERROR(CommitLocked(tx));
  return vm;
}

Status Store::AbortMigration(const std::string& id, const std::string& state,
                             const std::string& error) {
  return ModifyVm(id, [&](Vm& vm) {
    if (vm.state != "migrating") return;
    // Leaving `migrating` releases the target's room (UpdateVmLocked).
    vm.state = state;
    vm.error = error;
  });
}

Status Store::NoteImageCached(const std::string& image_id, const std::string& host_id) {
  auto lock = Exclusive();
  VMG_ASSIGN_OR_RETURN(int64_t added,
                       db_->Exec("INSERT INTO image_cache VALUES (?,?,?) ON CONFLICT DO NOTHING",
                                 {image_id, host_id, NowMs()}));
  if (added > 0 && observer_) observer_->OnImageCached(image_id, host_id);
  return Status::Ok();
}

std::string DatasetCacheKey(const std::string& dataset_id) { return "dataset:" + dataset_id; }

Status Store::NoteDatasetCached(const std::string& dataset_id, int64_t version,
                                const std::string& host_id) {
  auto lock = Exclusive();
  VMG_ASSIGN_OR_RETURN(
      int64_t added, db_->Exec("INSERT INTO dataset_cache VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                               {dataset_id, version, host_id, NowMs()}));
  if (added > 0 && observer_) observer_->OnImageCached(DatasetCacheKey(dataset_id), host_id);
  return Status::Ok();
}

Result<std::vector<DatasetCacheRow>> Store::ListDatasetCache(const std::string& dataset_id) {
  auto read = Read();
  return Query<DatasetCacheRow>(
      read.db,
      "SELECT dataset_id, version, host_id, first_ms FROM dataset_cache WHERE dataset_id = ? "
      "ORDER BY version, host_id",
      {dataset_id}, [](const SqlRow& r) {
        return DatasetCacheRow{r.Text(0), r.Int(1), r.Text(2), r.Int(3)};
      });
}

// --- workspaces --------------------------------------------------------------------

Status Store::InsertWorkspace(const Workspace& ws) {
  auto lock = Exclusive();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_RETURN_IF_ERROR(
      CheckQuotaLocked(db_.get(), ws.owner_id, QuotaAsk{0, 0, 0, 0, ws.size_bytes}));
  auto r = db_->Exec(std::string("INSERT INTO workspaces (") + kWsInsertCols + ") VALUES (" +
                         Placeholders(9) + ")",
                     WsValues(ws));
  if (!r.ok()) {
    if (r.error().code == ErrorCode::kAlreadyExists)
      return MakeError(ErrorCode::kAlreadyExists,
                       "a workspace named '" + ws.name + "' already exists");
    return r.error();
  }
  return tx.Commit();
}

Status Store::UpdateWorkspace(const Workspace& w) {
  auto lock = Exclusive();
  VMG_RETURN_IF_ERROR(
      db_->Exec("UPDATE workspaces SET path=?, size_bytes=?, vm_id=?, host_id=? WHERE id=?",
                {w.path, w.size_bytes, w.vm_id, w.host_id, w.id}));
  return Status::Ok();
}

Result<bool> Store::RecordDurableVersion(const Workspace& v) {
  auto lock = Exclusive();
  VMG_ASSIGN_OR_RETURN(
      int64_t changed,
      db_->Exec("UPDATE workspaces SET durable_version=?, durable_digest=?, durable_size_bytes=?, "
                "durable_ms=?, durable_chunks=?, durable_sent_chunks=?, durable_sent_bytes=?, "
                "durable_host_id=? WHERE id=? AND host_id=? AND durable_version < ?",
                {v.durable_version, v.durable_digest, v.durable_size_bytes, v.durable_ms,
                 v.durable_chunks, v.durable_sent_chunks, v.durable_sent_bytes, v.durable_host_id,
                 v.id, v.durable_host_id, v.durable_version}));
  return changed > 0;
}

Result<Workspace> Store::GetWorkspace(const std::string& ref, const OwnerFilter& owner) {
  auto read = Read();
  return GetByRef<Workspace>(read.db, "workspaces", kWsCols, "workspace", ref, owner, ReadWs);
}

Result<std::optional<Workspace>> Store::FindWorkspaceByName(const std::string& owner_id,
                                                            const std::string& name) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(auto rows,
                       Query<Workspace>(read.db,
                                        std::string("SELECT ") + kWsCols +
                                            " FROM workspaces WHERE owner_id=? AND name=?",
                                        {owner_id, name}, ReadWs));
  if (rows.empty()) return std::optional<Workspace>();
  return std::optional<Workspace>(rows[0]);
}

Result<std::vector<Workspace>> Store::ListWorkspaces(const OwnerFilter& owner) {
  auto read = Read();
  if (owner.empty())
    return Query<Workspace>(read.db, std::string("SELECT ") + kWsCols + " FROM workspaces", {},
                            ReadWs);
  return Query<Workspace>(read.db,
                          std::string("SELECT ") + kWsCols + " FROM workspaces WHERE owner_id=?",
                          {owner}, ReadWs);
}

Status Store::DeleteWorkspace(const std::string& id) {
  auto lock = Exclusive();
  VMG_RETURN_IF_ERROR(db_->Exec("DELETE FROM workspaces WHERE id=?", {id}));
  return Status::Ok();
}

// --- datasets ----------------------------------------------------------------------

namespace {

const char* kDatasetCols = "id, name, owner_id, created_ms";
Dataset ReadDataset(const SqlRow& r) { return Dataset{r.Text(0), r.Text(1), r.Text(2), r.Int(3)}; }
const char* kDatasetVersionCols =
    "dataset_id, version, kind, size_bytes, blob_digest, chunks, sent_chunks, sent_bytes, "
    "created_ms";
DatasetVersion ReadDatasetVersion(const SqlRow& r) {
  DatasetVersion v;
  v.dataset_id = r.Text(0);
  v.version = r.Int(1);
  v.kind = r.Text(2);
  v.size_bytes = r.Int(3);
  v.blob_digest = r.Text(4);
  v.chunks = r.Int(5);
  v.sent_chunks = r.Int(6);
  v.sent_bytes = r.Int(7);
  v.created_ms = r.Int(8);
  return v;
}

}  // namespace

Result<Dataset> Store::CreateDataset(const std::string& owner_id, const std::string& name) {
  auto lock = Exclusive();
  Dataset d{NewId("ds"), name, owner_id, NowMs()};
  auto r = db_->Exec(std::string("INSERT INTO datasets (") + kDatasetCols + ") VALUES (?,?,?,?)",
                     {d.id, d.name, d.owner_id, d.created_ms});
  if (!r.ok()) {
    if (r.error().code == ErrorCode::kAlreadyExists)
      return MakeError(ErrorCode::kAlreadyExists, "a dataset named '" + name + "' already exists");
    return r.error();
  }
  return d;
}

Result<Dataset> Store::GetDataset(const std::string& ref, const OwnerFilter& owner) {
  auto read = Read();
  return GetByRef<Dataset>(read.db, "datasets", kDatasetCols, "dataset", ref, owner, ReadDataset);
}

Result<std::optional<Dataset>> Store::FindDatasetByName(const std::string& owner_id,
                                                        const std::string& name) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(auto rows, Query<Dataset>(read.db,
                                                 std::string("SELECT ") + kDatasetCols +
                                                     " FROM datasets WHERE owner_id=? AND name=?",
                                                 {owner_id, name}, ReadDataset));
  if (rows.empty()) return std::optional<Dataset>();
  return std::optional<Dataset>(rows[0]);
}

Result<std::vector<Dataset>> Store::ListDatasets(const OwnerFilter& owner) {
  auto read = Read();
  std::string sql = std::string("SELECT ") + kDatasetCols + " FROM datasets";
  if (owner.empty()) return Query<Dataset>(read.db, sql + " ORDER BY name, id", {}, ReadDataset);
  return Query<Dataset>(read.db, sql + " WHERE owner_id=? ORDER BY name", {owner}, ReadDataset);
}

Status Store::AddDatasetVersion(const DatasetVersion& v) {
  auto lock = Exclusive();
  auto r = db_->Exec(std::string("INSERT INTO dataset_versions (") + kDatasetVersionCols +
                         ") VALUES (" + Placeholders(9) + ")",
                     {v.dataset_id, v.version, v.kind, v.size_bytes, v.blob_digest, v.chunks,
                      v.sent_chunks, v.sent_bytes, v.created_ms});
  if (!r.ok()) {
    if (r.error().code == ErrorCode::kAlreadyExists)
      return MakeError(ErrorCode::kAlreadyExists,
                       "version " + std::to_string(v.version) + " of the dataset already exists");
    return r.error();
  }
  return Status::Ok();
}

Result<std::vector<DatasetVersion>> Store::ListDatasetVersions(const std::string& dataset_id) {
  auto read = Read();
  return Query<DatasetVersion>(read.db,
                               std::string("SELECT ") + kDatasetVersionCols +
                                   " FROM dataset_versions WHERE dataset_id=? ORDER BY version",
                               {dataset_id}, ReadDatasetVersion);
}

Result<bool> Store::DeleteDatasetVersion(const std::string& dataset_id, int64_t version) {
  auto lock = Exclusive();
  VMG_ASSIGN_OR_RETURN(int64_t n,
                       db_->Exec("DELETE FROM dataset_versions WHERE dataset_id=? AND version=?",
                                 {dataset_id, version}));
  return n > 0;
}

Status Store::DeleteDataset(const std::string& id) {
  auto lock = Exclusive();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_RETURN_IF_ERROR(db_->Exec("DELETE FROM dataset_versions WHERE dataset_id=?", {id}));
  VMG_RETURN_IF_ERROR(db_->Exec("DELETE FROM dataset_shares WHERE dataset_id=?", {id}));
  VMG_RETURN_IF_ERROR(db_->Exec("DELETE FROM datasets WHERE id=?", {id}));
  return tx.Commit();
}

Result<std::optional<Dataset>> Store::FindDatasetByOwnerName(const std::string& owner_name,
                                                             const std::string& name) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(
      auto rows, Query<Dataset>(read.db,
                                "SELECT d.id, d.name, d.owner_id, d.created_ms FROM datasets d "
                                "JOIN users u ON u.id = d.owner_id WHERE u.name=? AND d.name=?",
                                {owner_name, name}, ReadDataset));
  if (rows.empty()) return std::optional<Dataset>();
  return std::optional<Dataset>(rows[0]);
}

Status Store::ShareDataset(const std::string& dataset_id, const std::string& user_id) {
  auto lock = Exclusive();
  auto r = db_->Exec("INSERT INTO dataset_shares (dataset_id, user_id, created_ms) VALUES (?,?,?)",
                     {dataset_id, user_id, NowMs()});
  if (!r.ok() && r.error().code != ErrorCode::kAlreadyExists) return r.error();
  return Status::Ok();
}

Result<bool> Store::UnshareDataset(const std::string& dataset_id, const std::string& user_id) {
  auto lock = Exclusive();
  VMG_ASSIGN_OR_RETURN(int64_t n,
                       db_->Exec("DELETE FROM dataset_shares WHERE dataset_id=? AND user_id=?",
                                 {dataset_id, user_id}));
  return n > 0;
}

Result<bool> Store::IsDatasetSharedWith(const std::string& dataset_id, const std::string& user_id) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      Query<int64_t>(read.db,
                     "SELECT COUNT(*) FROM dataset_shares WHERE dataset_id=? AND user_id=?",
                     {dataset_id, user_id}, [](const SqlRow& r) { return r.Int(0); }));
  return !rows.empty() && rows[0] > 0;
}

Result<std::vector<User>> Store::ListDatasetShares(const std::string& dataset_id) {
  auto read = Read();
  return Query<User>(read.db,
                     std::string("SELECT ") + kUserCols +
                         " FROM users WHERE id IN (SELECT user_id FROM dataset_shares WHERE "
                         "dataset_id=?) ORDER BY name",
                     {dataset_id}, ReadUser);
}

Result<std::vector<Dataset>> Store::ListDatasetsSharedWith(const std::string& user_id) {
  auto read = Read();
  return Query<Dataset>(read.db,
                        "SELECT d.id, d.name, d.owner_id, d.created_ms FROM datasets d "
                        "JOIN dataset_shares s ON s.dataset_id = d.id WHERE s.user_id=? "
                        "ORDER BY d.owner_id, d.name",
                        {user_id}, ReadDataset);
}

// --- virtual networks -------------------------------------------------------------

namespace {

const char* kNetworkCols =
    "id, name, owner_id, subnet, egress, vni, created_ms, tunnel_key, key_epoch";
Network ReadNetwork(const SqlRow& r) {
  Network n;
  n.id = r.Text(0);
  n.name = r.Text(1);
  n.owner_id = r.Text(2);
  n.subnet = r.Text(3);
  n.egress = r.Int(4) != 0;
  n.vni = r.Int(5);
  n.created_ms = r.Int(6);
  n.tunnel_key_hex = r.Text(7);
  n.key_epoch = r.Int(8);
  return n;
}

Status FillShares(SqlBackend* db, std::vector<Network>& nets) {
  for (auto& n : nets) {
    VMG_ASSIGN_OR_RETURN(n.shared_with,
                         Query<std::string>(db,
                                            "SELECT user_id FROM network_shares WHERE "
                                            "network_id = ? ORDER BY user_id",
                                            {n.id}, [](const SqlRow& r) { return r.Text(0); }));
  }
  return Status::Ok();
}

const char* kNicCols =
    "n.vm_id, n.idx, n.network_id, w.name, n.mac, n.ip, w.subnet FROM nics n "
    "JOIN networks w ON w.id = n.network_id";
Nic ReadNic(const SqlRow& r) {
  Nic n;
  n.vm_id = r.Text(0);
  n.index = static_cast<int>(r.Int(1));
  n.network_id = r.Text(2);
  n.network = r.Text(3);
  n.mac = r.Text(4);
  n.ip = r.Text(5);
  auto subnet = ParseSubnet(r.Text(6));
  n.prefix = subnet.ok() ? subnet->prefix : 0;
  return n;
}

}  // namespace

Result<Network> Store::CreateNetwork(const std::string& owner_id, const std::string& name,
                                     const std::string& subnet, bool egress) {
  VMG_ASSIGN_OR_RETURN(Subnet parsed, ParseSubnet(subnet));
  auto lock = Exclusive();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(
      auto next, Query<int64_t>(db_.get(), "SELECT COALESCE(MAX(vni), 0) + 1 FROM networks", {},
                                [](const SqlRow& r) { return r.Int(0); }));
  if (next[0] >= (int64_t{1} << 24))
    return MakeError(ErrorCode::kResourceExhausted, "no tunnel id left for a new network");
  Network n{NewId("net"),
            name,
            owner_id,
            FormatSubnet(parsed),
            egress,
            next[0],
            NowMs(),
            {},
            Sha256Hex(RandomBytes(32)),  // the tunnel key: 32 random bytes, hex
            1};
  auto r = db_->Exec(
      "INSERT INTO networks (" + std::string(kNetworkCols) + ") VALUES (" + Placeholders(9) + ")",
      {n.id, n.name, n.owner_id, n.subnet, int64_t{n.egress}, n.vni, n.created_ms, n.tunnel_key_hex,
       n.key_epoch});
  if (!r.ok()) {
    if (r.error().code == ErrorCode::kAlreadyExists)
      return MakeError(ErrorCode::kAlreadyExists, "a network named '" + name + "' already exists");
    return r.error();
  }
  VMG_RETURN_IF_ERROR(tx.Commit());
  return n;
}

Result<Network> Store::GetNetwork(const std::string& ref, const std::string& user_id, bool admin) {
  auto read = Read();
  // By id, or by name among the user's own (the admin: anyone's, if the
  // name is unambiguous); then only if the user may use it.
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      Query<Network>(read.db,
                     "SELECT " + std::string(kNetworkCols) +
                         " FROM networks WHERE id = ? UNION ALL SELECT " + kNetworkCols +
                         " FROM networks WHERE name = ? AND (? <> 0 OR owner_id = ?) AND "
                         "NOT EXISTS (SELECT 1 FROM networks WHERE id = ?)",
                     {ref, ref, int64_t{admin}, user_id, ref}, ReadNetwork));
  if (rows.size() > 1)
    return MakeError(ErrorCode::kInvalidArgument,
                     "network name '" + ref + "' is used by several owners; use the id");
  if (!rows.empty()) VMG_RETURN_IF_ERROR(FillShares(read.db, rows));
  const bool visible =
      !rows.empty() && (admin || rows[0].owner_id == user_id ||
                        std::find(rows[0].shared_with.begin(), rows[0].shared_with.end(),
                                  user_id) != rows[0].shared_with.end());
  if (!visible) return MakeError(ErrorCode::kNotFound, "network '" + ref + "' not found");
  return rows[0];
}

Result<std::vector<Network>> Store::ListNetworks(const std::string& user_id, bool admin) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(
      auto rows,
      Query<Network>(read.db,
                     "SELECT " + std::string(kNetworkCols) +
                         " FROM networks WHERE ? <> 0 OR owner_id = ? OR id IN (SELECT "
                         "network_id FROM network_shares WHERE user_id = ?) ORDER BY created_ms",
                     {int64_t{admin}, user_id, user_id}, ReadNetwork));
  VMG_RETURN_IF_ERROR(FillShares(read.db, rows));
  return rows;
}

Status Store::ShareNetwork(const std::string& network_id, const std::string& user_id) {
  auto lock = Exclusive();
  auto r = db_->Exec("INSERT INTO network_shares (network_id, user_id) VALUES (?, ?)",
                     {network_id, user_id});
  if (!r.ok() && r.error().code == ErrorCode::kAlreadyExists) return Status::Ok();
  if (!r.ok()) return r.error();
  return Status::Ok();
}

Result<Network> Store::RotateNetworkKey(const std::string& id) {
  auto lock = Exclusive();
  ++network_generation_;
  VMG_ASSIGN_OR_RETURN(int64_t n, db_->Exec("UPDATE networks SET tunnel_key = ?, key_epoch = "
                                            "key_epoch + 1 WHERE id = ?",
                                            {Sha256Hex(RandomBytes(32)), id}));
  if (n == 0) return MakeError(ErrorCode::kNotFound, "network '" + id + "' not found");
  VMG_ASSIGN_OR_RETURN(auto rows, Query<Network>(db_.get(),
                                                 "SELECT " + std::string(kNetworkCols) +
                                                     " FROM networks WHERE id = ?",
                                                 {id}, ReadNetwork));
  if (rows.empty()) return MakeError(ErrorCode::kNotFound, "network '" + id + "' not found");
  return rows[0];
}

Status Store::DeleteNetwork(const std::string& id) {
  auto lock = Exclusive();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  VMG_ASSIGN_OR_RETURN(auto users,
                       Query<std::string>(db_.get(),
                                          "SELECT DISTINCT v.name FROM nics n JOIN vms v ON v.id = "
                                          "n.vm_id WHERE n.network_id = ? ORDER BY v.name",
                                          {id}, [](const SqlRow& r) { return r.Text(0); }));
  if (!users.empty()) {
    std::string names;
    for (size_t i = 0; i < users.size() && i < 5; ++i) names += (i ? ", " : "") + users[i];
    if (users.size() > 5) names += ", ...";
    return MakeError(ErrorCode::kFailedPrecondition, "network is used by " +
                                                         std::to_string(users.size()) + " VM(s) (" +
                                                         names + "); remove them first");
  }
  VMG_ASSIGN_OR_RETURN(int64_t n, db_->Exec("DELETE FROM networks WHERE id = ?", {id}));
  if (n == 0) return MakeError(ErrorCode::kNotFound, "network '" + id + "' not found");
  ++network_generation_;
  return tx.Commit();
}

Result<std::vector<Nic>> Store::ListVmNics(const std::string& vm_id) {
  auto read = Read();
  return Query<Nic>(read.db,
                    std::string("SELECT ") + kNicCols + " WHERE n.vm_id = ? ORDER BY n.idx",
                    {vm_id}, ReadNic);
}

Result<std::vector<Nic>> Store::ListNetworkNics(const std::string& network_id) {
  auto read = Read();
  return Query<Nic>(
      read.db, std::string("SELECT ") + kNicCols + " WHERE n.network_id = ? ORDER BY n.host_index",
      {network_id}, ReadNic);
}

Result<NetworkPlanInputs> Store::NetworkPlanInputsForHost(const std::string& host_id) {
  auto read = Read();
  NetworkPlanInputs in;
  const std::string on_host =
      "SELECT DISTINCT n2.network_id FROM nics n2 JOIN vms v2 ON v2.id = n2.vm_id "
      "WHERE v2.host_id = ?";
  VMG_ASSIGN_OR_RETURN(in.networks,
                       Query<Network>(read.db,
                                      "SELECT " + std::string(kNetworkCols) +
                                          " FROM networks WHERE id IN (" + on_host + ")",
                                      {host_id}, ReadNetwork));
  if (in.networks.empty()) return in;
  VMG_ASSIGN_OR_RETURN(
      in.nics, Query<PlacedNic>(read.db,
                                "SELECT n.vm_id, n.idx, n.network_id, w.name, n.mac, n.ip, "
                                "w.subnet, v.host_id, v.name FROM nics n JOIN networks w ON "
                                "w.id = n.network_id JOIN vms v ON v.id = n.vm_id WHERE "
                                "n.network_id IN (" +
                                    on_host + ") ORDER BY n.network_id, n.host_index",
                                {host_id}, [](const SqlRow& r) {
                                  // ReadNic's 7 columns, then the VM's host and name.
                                  return PlacedNic{ReadNic(r), r.Text(7), r.Text(8)};
                                }));
  VMG_ASSIGN_OR_RETURN(
      auto hosts,
      Query<Host>(read.db,
                  std::string(kHostSelect) +
                      " WHERE h.tunnel_port > 0 AND h.id IN (SELECT DISTINCT v.host_id FROM nics n "
                      "JOIN vms v ON v.id = n.vm_id WHERE n.network_id IN (" +
                      on_host + "))",
                  {host_id}, ReadHost));
  for (const auto& h : hosts)
    in.endpoints[h.id] = {static_cast<uint32_t>(h.tunnel_number), h.tunnel_ip,
                          static_cast<int>(h.tunnel_port)};
  return in;
}

// --- the event stream -------------------------------------------------------------

namespace {

constexpr const char* kEventCols =
    "id, time_ms, kind, COALESCE(vm_id, ''), COALESCE(host_id, ''), COALESCE(owner_id, ''), "
    "message, data";
Event ReadEvent(const SqlRow& r) {
  return Event{r.Int(0),  r.Int(1),  r.Text(2), r.Text(3),
               r.Text(4), r.Text(5), r.Text(6), r.Text(7)};
}
SqlValue OrNull(const std::string& s) { return s.empty() ? SqlValue(nullptr) : SqlValue(s); }
constexpr const char* kEventInsert =
    "INSERT INTO events (time_ms, kind, vm_id, host_id, owner_id, message, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)";
std::vector<SqlValue> EventValues(const Event& e) {
  return {e.time_ms,
          e.kind,
          OrNull(e.vm_id),
          OrNull(e.host_id),
          OrNull(e.owner_id),
          e.message,
          e.data.empty() ? std::string("{}") : e.data};
}

}  // namespace

void Store::RecordEventLocked(Event event) {
  if (event.time_ms == 0) event.time_ms = NowMs();
  Status st = db_->Defer("SAVEPOINT event");
  if (st.ok()) {
    auto inserted = db_->Exec(kEventInsert, EventValues(event));
    st = inserted.ok() ? db_->Defer("RELEASE event") : Status(inserted.error());
    if (!inserted.ok() && db_->InTransaction()) {
      (void)db_->ExecScript("ROLLBACK TO event");
      (void)db_->ExecScript("RELEASE event");
    }
  }
  if (st.ok()) {
    events_written_ = true;
    return;
  }
  // The change it records goes on: an event is history, not state.
  ++event_write_failures_;
  spdlog::warn("event {} ({}) not recorded: {}", event.kind, event.message, st.error().message);
}

void Store::RecordVmStateLocked(const Vm& vm, const std::string& from_state,
                                const std::string& from_host) {
  if (vm.state == from_state && vm.host_id == from_host) return;
  nlohmann::json data = {{"from", from_state}, {"to", vm.state}, {"host", vm.host_id}};
  std::string message =
      "VM " + vm.name + ": " + (from_state.empty() ? "-" : from_state) + " -> " + vm.state;
  if (vm.host_id != from_host && !from_host.empty()) {
    data["from_host"] = from_host;
    message += " (host " + from_host + " -> " + vm.host_id + ")";
  }
  if (!vm.error.empty()) {
    data["error"] = vm.error;
    message += ": " + vm.error;
  }
  RecordEventLocked(Event{0, 0, vm.state == "error" ? "vm.failed" : "vm.state", vm.id, vm.host_id,
                          vm.owner_id, std::move(message), data.dump()});
}

Result<int64_t> Store::AppendEvent(Event event) {
  if (event.time_ms == 0) event.time_ms = NowMs();
  // In the write batch (group commit on SQLite), like the VM writes it
  // follows: a create's event must not force a commit of its own.
  int64_t id = 0;
  VMG_RETURN_IF_ERROR(Batched([&]() -> Status {
    VMG_ASSIGN_OR_RETURN(
        auto rows, db_->Query(std::string(kEventInsert) + " RETURNING id", EventValues(event)));
    if (rows.empty()) return MakeError(ErrorCode::kInternal, "event insert returned no id");
    id = rows[0].Int(0);
    events_written_ = true;
    return Status::Ok();
  }));
  return id;
}

uint64_t Store::EventBell() const {
  std::lock_guard<std::mutex> l(bell_mu_);
  return bell_;
}

void Store::WaitEventBell(uint64_t seen, std::chrono::milliseconds at_most) const {
  std::unique_lock<std::mutex> l(bell_mu_);
  bell_cv_.wait_for(l, at_most, [&] { return bell_ != seen; });
}

Result<std::vector<Event>> Store::ListEvents(const EventQuery& q) {
  std::string sql = std::string("SELECT ") + kEventCols + " FROM events WHERE id > ?";
  std::vector<SqlValue> args{q.after};
  if (!q.vm_id.empty()) {
    sql += " AND vm_id = ?";
    args.emplace_back(q.vm_id);
  }
  if (!q.owner.empty()) {
    sql += " AND owner_id = ?";
    args.emplace_back(q.owner);
  }
  sql += q.newest ? " ORDER BY id DESC LIMIT ?" : " ORDER BY id LIMIT ?";
  args.emplace_back(std::max<int64_t>(1, q.limit));
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(auto events, Query<Event>(read.db, sql, args, ReadEvent));
  if (q.newest) std::reverse(events.begin(), events.end());
  return events;
}

Result<int64_t> Store::PruneEvents(int64_t keep) {
  auto lock = Exclusive();
  VMG_ASSIGN_OR_RETURN(auto rows, db_->Query("SELECT COALESCE(MAX(id), 0) FROM events"));
  const int64_t below = rows.at(0).Int(0) - std::max<int64_t>(0, keep);
  if (below <= 0) return int64_t{0};
  return db_->Exec("DELETE FROM events WHERE id <= ?", {below});
}

// --- jobs (docs/jobs.md) ------------------------------------------------------------

namespace {

const char* kJobCols =
    "id, owner_id, image_id, spec, count, state, exit_code, created_ms, finished_ms";
Job ReadJob(const SqlRow& r) {
  return Job{r.Text(0), r.Text(1), r.Text(2), r.Text(3), r.Int(4),
             r.Text(5), r.Int(6),  r.Int(7),  r.Int(8)};
}
const char* kTaskCols =
    "job_id, idx, owner_id, state, attempts, vm_id, host_id, queued_ms, started_ms, finished_ms, "
    "exit_code, error, not_before_ms, last_host_id";
JobTask ReadTask(const SqlRow& r) {
  JobTask t;
  t.job_id = r.Text(0);
  t.index = r.Int(1);
  t.owner_id = r.Text(2);
  t.state = r.Text(3);
  t.attempts = r.Int(4);
  t.vm_id = r.Text(5);
  t.host_id = r.Text(6);
  t.queued_ms = r.Int(7);
  t.started_ms = r.Int(8);
  t.finished_ms = r.Int(9);
  t.exit_code = r.Int(10);
  t.error = r.Text(11);
  t.not_before_ms = r.Int(12);
  t.last_host_id = r.Text(13);
  return t;
}
const char* kUnfinishedTask = "state IN ('queued','starting','running')";

}  // namespace

Status Store::InsertJob(const Job& job, int64_t max_unfinished) {
  auto lock = Exclusive();
  SqlTransaction tx(db_.get());
  VMG_RETURN_IF_ERROR(tx.begin_status());
  // Concurrent submits of one owner (on several controllers) take turns.
  VMG_RETURN_IF_ERROR(db_->LockTable("job_tasks"));
  VMG_ASSIGN_OR_RETURN(auto n,
                       Query<int64_t>(db_.get(),
                                      std::string("SELECT COUNT(*) FROM job_tasks WHERE "
                                                  "owner_id=? AND ") +
                                          kUnfinishedTask,
                                      {job.owner_id}, [](const SqlRow& r) { return r.Int(0); }));
  const int64_t unfinished = n.empty() ? 0 : n[0];
  if (unfinished + job.count > max_unfinished)
    return MakeError(ErrorCode::kResourceExhausted,
                     "you have " + std::to_string(unfinished) +
                         " unfinished tasks; a user may have at most " +
                         std::to_string(max_unfinished) + " (this job adds " +
                         std::to_string(job.count) + "); wait for some to end or cancel a job");
  VMG_RETURN_IF_ERROR(
      db_->Exec(std::string("INSERT INTO jobs (") + kJobCols + ") VALUES (" + Placeholders(9) + ")",
                {job.id, job.owner_id, job.image_id, job.spec, job.count, job.state, job.exit_code,
                 job.created_ms, job.finished_ms}));
  for (int64_t i = 0; i < job.count; ++i) {
    VMG_RETURN_IF_ERROR(
        db_->Exec("INSERT INTO job_tasks (job_id, idx, owner_id, state, queued_ms) "
                  "VALUES (?,?,?,'queued',?)",
                  {job.id, i, job.owner_id, job.created_ms}));
  }
  RecordEventLocked(Event{0, job.created_ms, "job.queued", "", "", job.owner_id,
                          "job " + job.id + ": " + std::to_string(job.count) + " tasks queued",
                          nlohmann::json{{"job", job.id}, {"count", job.count}}.dump()});
  return tx.Commit();
}

Result<Job> Store::GetJob(const std::string& id, const OwnerFilter& owner) {
  auto read = Read();
  std::string sql = std::string("SELECT ") + kJobCols + " FROM jobs WHERE id=?";
  std::vector<SqlValue> args{id};
  if (!owner.empty()) {
    sql += " AND owner_id=?";
    args.emplace_back(owner);
  }
  VMG_ASSIGN_OR_RETURN(auto rows, Query<Job>(read.db, sql, args, ReadJob));
  if (rows.empty()) return MakeError(ErrorCode::kNotFound, "job '" + id + "' not found");
  return rows[0];
}

Result<std::vector<Job>> Store::ListJobs(const OwnerFilter& owner, bool unfinished_only) {
  auto read = Read();
  std::string sql = std::string("SELECT ") + kJobCols + " FROM jobs WHERE 1=1";
  std::vector<SqlValue> args;
  if (!owner.empty()) {
    sql += " AND owner_id=?";
    args.emplace_back(owner);
  }
  if (unfinished_only) sql += " AND state IN ('queued','running')";
  return Query<Job>(read.db, sql + " ORDER BY created_ms, id", args, ReadJob);
}

Result<Page<Job>> Store::ListJobsPage(const OwnerFilter& owner, const PageRequest& page) {
  auto read = Read();
  std::string sql = std::string("SELECT ") + kJobCols + " FROM jobs WHERE 1=1";
  std::vector<SqlValue> params;
  if (!owner.empty()) {
    sql += " AND owner_id=?";
    params.emplace_back(owner);
  }
  return QueryPage<Job>(read.db, sql, std::move(params), page, "created_ms", true, "id", ReadJob,
                        [](const Job& j) { return NumberKey(j.created_ms); });
}

Result<std::vector<JobTask>> Store::ListJobTasks(const std::string& job_id) {
  auto read = Read();
  return Query<JobTask>(
      read.db, std::string("SELECT ") + kTaskCols + " FROM job_tasks WHERE job_id=? ORDER BY idx",
      {job_id}, ReadTask);
}

Result<std::vector<JobTask>> Store::ListJobTasksInState(const std::string& state) {
  auto read = Read();
  return Query<JobTask>(read.db,
                        std::string("SELECT ") + kTaskCols +
                            " FROM job_tasks WHERE state=? ORDER BY queued_ms, job_id, idx",
                        {state}, ReadTask);
}

Result<std::vector<JobTask>> Store::QueuedTaskHeads(int64_t per_owner, int64_t now_ms) {
  auto read = Read();
  // Window functions: SQLite 3.25+ and PostgreSQL. A task backing off is
  // not a head: its owner's next one may start meanwhile.
  return Query<JobTask>(
      read.db,
      std::string("SELECT ") + kTaskCols + " FROM (SELECT " + kTaskCols +
          ", ROW_NUMBER() OVER (PARTITION BY owner_id ORDER BY queued_ms, job_id, idx) AS rn "
          "FROM job_tasks WHERE state='queued' AND not_before_ms <= ?) q WHERE rn <= ? "
          "ORDER BY owner_id, queued_ms, job_id, idx",
      {now_ms, std::max<int64_t>(1, per_owner)}, ReadTask);
}

Result<std::map<std::string, int64_t>> Store::ActiveJobTasksByOwner() {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(auto rows,
                       read.db->Query("SELECT owner_id, COUNT(*) FROM job_tasks WHERE state IN "
                                      "('starting','running') GROUP BY owner_id"));
  std::map<std::string, int64_t> out;
  for (const auto& r : rows) out[r.Text(0)] = r.Int(1);
  return out;
}

Result<JobTask> Store::GetJobTaskLogs(const std::string& job_id, int64_t index) {
  auto read = Read();
  VMG_ASSIGN_OR_RETURN(
      auto rows, read.db->Query(std::string("SELECT ") + kTaskCols +
                                    ", stdout_b64, stderr_b64, stdout_truncated, stderr_truncated "
                                    "FROM job_tasks WHERE job_id=? AND idx=?",
                                {job_id, index}));
  if (rows.empty())
    return MakeError(ErrorCode::kNotFound,
                     "job " + job_id + " has no task " + std::to_string(index));
  JobTask t = ReadTask(rows[0]);
  auto out = Base64Decode(rows[0].Text(14));
  auto err = Base64Decode(rows[0].Text(15));
  if (!out.ok() || !err.ok()) return MakeError(ErrorCode::kInternal, "a task's logs are corrupt");
  t.stdout_data = std::move(*out);
  t.stderr_data = std::move(*err);
  t.stdout_truncated = rows[0].Int(16) != 0;
  t.stderr_truncated = rows[0].Int(17) != 0;
  return t;
}

Result<bool> Store::UpdateJobTask(const JobTask& t, const std::string& from_state,
                                  const std::string& from_vm_id) {
  auto lock = Exclusive();
  std::string sql =
      "UPDATE job_tasks SET state=?, attempts=?, vm_id=?, host_id=?, queued_ms=?, started_ms=?, "
      "finished_ms=?, exit_code=?, error=?, not_before_ms=?, last_host_id=?";
  std::vector<SqlValue> args{t.state,     t.attempts,      t.vm_id,       t.host_id,
                             t.queued_ms, t.started_ms,    t.finished_ms, t.exit_code,
                             t.error,     t.not_before_ms, t.last_host_id};
  // Logs are written once, when the task ends with them.
  if (t.state == "succeeded" || t.state == "failed") {
    sql += ", stdout_b64=?, stderr_b64=?, stdout_truncated=?, stderr_truncated=?";
    args.emplace_back(Base64Encode(t.stdout_data));
    args.emplace_back(Base64Encode(t.stderr_data));
    args.emplace_back(int64_t{t.stdout_truncated});
    args.emplace_back(int64_t{t.stderr_truncated});
  }
  sql += " WHERE job_id=? AND idx=? AND state=? AND vm_id=?";
  args.emplace_back(t.job_id);
  args.emplace_back(t.index);
  args.emplace_back(from_state);
  args.emplace_back(from_vm_id);
  VMG_ASSIGN_OR_RETURN(int64_t n, db_->Exec(sql, args));
  return n > 0;
}

Result<bool> Store::SetJobState(const std::string& id, const std::vector<std::string>& from,
                                const std::string& state, int64_t exit_code, int64_t finished_ms) {
  auto lock = Exclusive();
  std::string in;
  std::vector<SqlValue> args{state, exit_code, finished_ms, id};
  for (const auto& f : from) {
    in += in.empty() ? "?" : ",?";
    args.emplace_back(f);
  }
  VMG_ASSIGN_OR_RETURN(int64_t n,
                       db_->Exec("UPDATE jobs SET state=?, exit_code=?, finished_ms=? WHERE id=? "
                                 "AND state IN (" +
                                     in + ")",
                                 args));
  return n > 0;
}

}  // namespace vmgrid
