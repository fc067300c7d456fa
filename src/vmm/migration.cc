#include "vmm/migration.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <map>
#include <vector>

#include "common/util.h"
#include "vmm/json_util.h"
#include "vmm/migration_tunnel.h"
#include "vmm/unique_fd.h"
#include "vmm/unix_stream.h"

namespace vmgrid {

namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using vmm::Clock;
using vmm::Deadline;
using vmm::DeadlineAfter;
using vmm::GetBool;
using vmm::GetInt;
using vmm::GetString;
using vmm::MillisUntil;
using vmm::UniqueFd;

constexpr char kCredsId[] = "vmg-mig-tls";
constexpr char kNbdNode[] = "vmg-mig-nbd";
constexpr char kMirrorJob[] = "vmg-mig-mirror";
constexpr char kExportId[] = "vmg-mig-export";
constexpr char kNbdListenFd[] = "vmg-mig-nbd-listen";
constexpr char kStreamFd[] = "vmg-mig-stream";  // QEMU's end of the tunnel's socketpair
constexpr int64_t kUnthrottled = int64_t{1} << 40;
constexpr milliseconds kCleanupTimeout(5000);
// The longest nap between polls. Some waits run while the guest is paused
// (pre-switchover, the mirror's completion, the target before `cont`), so a
// nap there is downtime.
constexpr milliseconds kMaxNap(10);

// RFC 7919's ffdhe2048 group. Without DIR/dh-params.pem a tls-creds-psk
// server generates 2048-bit DH parameters when it is created (QEMU 7.2's
// qcrypto_tls_creds_get_dh_params_file): 0.2-0.7 s measured by bench/migrate
// on two loaded cores, against ~2 ms with this file. A published fixed group
// is what RFC 7919 recommends anyway.
constexpr char kDhParams[] =
    "-----BEGIN DH PARAMETERS-----\n"
    "MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz\n"
    "+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a\n"
    "87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7\n"
    "YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi\n"
    "7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD\n"
    "ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==\n"
    "-----END DH PARAMETERS-----\n";

milliseconds Left(Deadline deadline) {
  return milliseconds(std::max<int64_t>(MillisUntil(deadline), 1));
}

int64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t).count();
}

Error ErrnoError(const std::string& what, int err) {
  return MakeError(ErrorCode::kInternal, what + ": " + std::strerror(err));
}

bool ValidIdentity(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

// Creates `file` (0600, must not exist) holding `content`, owned by uid/gid
// when uid >= 0.
Status WriteFileFor(const std::string& file, const std::string& content, int uid, int gid) {
  UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid()) return ErrnoError("create " + file, errno);
  if (::write(fd.get(), content.data(), content.size()) != static_cast<ssize_t>(content.size()))
    return ErrnoError("write " + file, errno);
  if (uid >= 0 && ::fchown(fd.get(), static_cast<uid_t>(uid), static_cast<gid_t>(gid)) != 0)
    return ErrnoError("chown " + file, errno);
  return Status::Ok();
}

// Writes KEY_DIR/keys.psk for QEMU's user (and, for a server, the DH
// parameters), creates the tls-creds-psk object (QEMU reads the files now)
// and removes what QEMU no longer needs.
Status AddCredentials(QmpClient& qmp, const MigrationKey& key, const std::string& key_dir, int uid,
                      int gid, bool server, Deadline deadline) {
  VMG_RETURN_IF_ERROR(ValidateMigrationKey(key));
  if (::mkdir(key_dir.c_str(), 0700) != 0) return ErrnoError("mkdir " + key_dir, errno);
  const std::string file = key_dir + "/keys.psk";
  const std::string dh_file = key_dir + "/dh-params.pem";
  auto remove_all = [&] {
    ::unlink(file.c_str());
    ::unlink(dh_file.c_str());
    ::rmdir(key_dir.c_str());
  };
  Status st = WriteFileFor(file, key.identity + ":" + key.key_hex + "\n", uid, gid);
  if (st.ok() && server) st = WriteFileFor(dh_file, kDhParams, uid, gid);
  if (st.ok() && uid >= 0 &&
      ::chown(key_dir.c_str(), static_cast<uid_t>(uid), static_cast<gid_t>(gid)) != 0)
    st = ErrnoError("chown " + key_dir, errno);
  if (!st.ok()) {
    remove_all();
    return st;
  }
  json args = {{"qom-type", "tls-creds-psk"},
               {"id", kCredsId},
               {"endpoint", server ? "server" : "client"},
               {"dir", key_dir},
               {"verify-peer", true}};
  if (!server) args["username"] = key.identity;
  Result<json> r = qmp.Execute("object-add", args, Left(deadline));
  // A client reads its key now; gnutls's server side reads the key file at
  // each handshake, so the target's stays until FinishIncoming. The DH
  // parameters are read once, now.
  if (!r.ok() || !server) {
    remove_all();
  } else {
    ::unlink(dh_file.c_str());
  }
  if (!r.ok()) return r.error().Wrap("TLS credentials");
  return Status::Ok();
}

void DropCredentials(QmpClient& qmp) {
  (void)qmp.Execute("migrate-set-parameters", {{"tls-creds", ""}}, kCleanupTimeout);
  (void)qmp.Execute("object-del", {{"id", kCredsId}}, kCleanupTimeout);
}

Result<std::string> NodeNameOf(QmpClient& qmp, const std::string& device, Deadline deadline) {
  VMG_ASSIGN_OR_RETURN(json blocks, qmp.Execute("query-block", json::object(), Left(deadline)));
  if (blocks.is_array()) {
    for (const json& b : blocks) {
      if (GetString(b, "device") != device) continue;
      const json* inserted = vmm::FindField(b, "inserted");
      if (inserted == nullptr) break;
      if (auto node = GetString(*inserted, "node-name")) return *node;
    }
  }
  return MakeError(ErrorCode::kNotFound, "no block device '" + device + "' with a medium");
}

// Per mirrored drive: the source's NBD client node and mirror job, the
// target's export. Cleanup finds them by the prefixes (an agent restarted
// mid-migration no longer knows the drives).
std::string NodeFor(const std::string& device) { return std::string(kNbdNode) + "-" + device; }
std::string JobFor(const std::string& device) { return std::string(kMirrorJob) + "-" + device; }
std::string ExportIdFor(const std::string& device) { return std::string(kExportId) + "-" + device; }

// Our mirror jobs as query-block-jobs shows them, by job id.
Result<std::map<std::string, json>> MirrorJobs(QmpClient& qmp, Deadline deadline) {
  VMG_ASSIGN_OR_RETURN(json jobs, qmp.Execute("query-block-jobs", json::object(), Left(deadline)));
  std::map<std::string, json> out;
  if (jobs.is_array())
    for (const json& j : jobs) {
      std::string id = GetString(j, "device").value_or("");
      if (id.starts_with(kMirrorJob)) out[id] = j;
    }
  return out;
}

// Our NBD client nodes (query-named-block-nodes), by node name.
std::vector<std::string> MigrationNodes(QmpClient& qmp) {
  std::vector<std::string> out;
  Result<json> nodes = qmp.Execute("query-named-block-nodes", {{"flat", true}}, kCleanupTimeout);
  if (!nodes.ok() || !nodes->is_array()) return out;
  for (const json& n : *nodes) {
    std::string name = GetString(n, "node-name").value_or("");
    if (name.starts_with(kNbdNode)) out.push_back(name);
  }
  return out;
}

void DeleteMigrationNodes(QmpClient& qmp) {
  for (const std::string& n : MigrationNodes(qmp))
    (void)qmp.Execute("blockdev-del", {{"node-name", n}}, kCleanupTimeout);
}

// Sleeps a growing nap, or fails once `deadline` would pass; wakes early when
// QEMU sends an event named `event` (a MIGRATION status change, with the
// `events` capability on; a JOB_STATUS_CHANGE): the caller polls again at
// once instead of after the rest of the nap. While the vCPUs are stopped
// (pre-switchover, the mirror's completion) every millisecond of a nap is
// downtime. A stale event only costs one early poll.
Status NapUntilEvent(QmpClient& qmp, const char* event, milliseconds* nap, Deadline deadline,
                     const std::string& what) {
  if (Clock::now() + *nap >= deadline) return MakeError(ErrorCode::kTimeout, what + " at deadline");
  Result<json> e = qmp.WaitEventIf(
      [event](const json& ev) { return GetString(ev, "event").value_or("") == event; }, *nap);
  // A broken connection shows in the caller's next command.
  (void)e;
  *nap = std::min(*nap * 2, kMaxNap);
  return Status::Ok();
}

// Cancels every mirror of ours (forcefully: no completion wanted) and waits
// until they are gone; best effort.
void CancelMirrors(QmpClient& qmp) {
  Deadline deadline = DeadlineAfter(milliseconds(10000));
  Result<std::map<std::string, json>> jobs = MirrorJobs(qmp, deadline);
  if (!jobs.ok()) return;
  for (const auto& [id, job] : *jobs)
    (void)qmp.Execute("block-job-cancel", {{"device", id}, {"force", true}}, kCleanupTimeout);
  milliseconds nap(5);
  for (;;) {
    jobs = MirrorJobs(qmp, deadline);
    if (!jobs.ok() || jobs->empty()) break;
    bool pending = false;
    for (const auto& [id, job] : *jobs) {
      if (GetString(job, "status") == "concluded")
        (void)qmp.Execute("job-dismiss", {{"id", id}}, kCleanupTimeout);
      else
        pending = true;
    }
    if (!pending) break;
    if (!NapUntilEvent(qmp, "JOB_STATUS_CHANGE", &nap, deadline, "mirror cancel").ok()) break;
  }
}

// migrate-set-capabilities for the capabilities named, all to `state`.
Result<json> SetCapabilities(QmpClient& qmp, std::initializer_list<const char*> names, bool state,
                             milliseconds timeout) {
  json caps = json::array();
  for (const char* n : names) caps.push_back({{"capability", n}, {"state", state}});
  return qmp.Execute("migrate-set-capabilities", {{"capabilities", std::move(caps)}}, timeout);
}

void ResetMigrationSettings(QmpClient& qmp) {
  (void)SetCapabilities(qmp, {"pause-before-switchover", "events"}, false, kCleanupTimeout);
  (void)qmp.Execute("migrate-set-parameters", {{"max-bandwidth", kUnthrottled}}, kCleanupTimeout);
  DropCredentials(qmp);
}

// Undoes what MigrateOut started, in reverse order; each step is best effort
// (QEMU may be busy, the target gone) and must not stop the next. Leaves the
// source running.
void CleanUpOutgoing(QmpClient& qmp, bool migrating, bool mirror, bool node, bool resume = true) {
  if (migrating) {
    (void)qmp.Execute("migrate_cancel", json::object(), kCleanupTimeout);
    Deadline d = DeadlineAfter(milliseconds(10000));
    milliseconds nap(5);
    for (;;) {
      Result<json> info = qmp.Execute("query-migrate", json::object(), kCleanupTimeout);
      std::string s = info.ok() ? GetString(*info, "status").value_or("") : "";
      if (!info.ok() || s == "cancelled" || s == "failed" || s == "completed" || s.empty()) break;
      if (!NapUntilEvent(qmp, "MIGRATION", &nap, d, "migrate_cancel").ok()) break;
    }
  }
  if (mirror) CancelMirrors(qmp);
  if (node) DeleteMigrationNodes(qmp);
  ResetMigrationSettings(qmp);
  if (!resume) return;
  if (Result<json> s = qmp.Execute("query-status", json::object(), kCleanupTimeout); s.ok()) {
    std::string now = GetString(*s, "status").value_or("");
    if (now != "running") {
      Result<json> c = qmp.Execute("cont", json::object(), kCleanupTimeout);
      if (!c.ok())
        spdlog::error("migration failed and the source ({}) did not resume: {}", now,
                      c.error().message);
    }
  }
}

// Connects to each of the target's exports and starts a mirror of each
// device into it (sync=top), then waits until all are ready. *have_node and
// *have_mirror say what there is to clean up on failure.
Status StartMirrorsAndWaitReady(QmpClient& qmp, const OutgoingParams& p, Deadline deadline,
                                bool* have_node, bool* have_mirror,
                                const std::function<void(MigrationPhase)>& phase) {
  if (p.target.nbd_port <= 0)
    return MakeError(ErrorCode::kInvalidArgument, "the target has no NBD export");
  for (const std::string& device : p.devices) {
    if (std::find(p.target.nbd_exports.begin(), p.target.nbd_exports.end(), device) ==
        p.target.nbd_exports.end())
      return MakeError(ErrorCode::kInvalidArgument, "the target does not export disk " + device);
    Result<json> r = qmp.Execute(
        "blockdev-add",
        {{"driver", "nbd"},
         {"node-name", NodeFor(device)},
         {"server",
          {{"type", "inet"}, {"host", p.target.host}, {"port", std::to_string(p.target.nbd_port)}}},
         {"export", device},
         {"tls-creds", kCredsId}},
        Left(deadline));
    if (!r.ok()) return r.error().Wrap("connect to the target's disk " + device);
    *have_node = true;
    r = qmp.Execute("blockdev-mirror",
                    {{"job-id", JobFor(device)},
                     {"device", device},
                     {"target", NodeFor(device)},
                     {"sync", "top"},
                     {"auto-dismiss", false}},
                    Left(deadline));
    if (!r.ok()) return r.error().Wrap("start the mirror of disk " + device);
    *have_mirror = true;
  }
  phase(MigrationPhase::kMirrorStarted);
  milliseconds nap(5);
  for (;;) {
    VMG_ASSIGN_OR_RETURN(auto jobs, MirrorJobs(qmp, deadline));
    size_t ready = 0;
    for (const std::string& device : p.devices) {
      auto job = jobs.find(JobFor(device));
      if (job == jobs.end())
        return MakeError(ErrorCode::kInternal, "the mirror of disk " + device + " vanished");
      if (GetString(job->second, "status") == "concluded")
        return MakeError(ErrorCode::kInternal,
                         "the mirror of disk " + device +
                             " failed: " + GetString(job->second, "error").value_or("(no reason)"));
      if (GetBool(job->second, "ready").value_or(false)) ++ready;
    }
    if (ready == p.devices.size()) return Status::Ok();
    VMG_RETURN_IF_ERROR(NapUntilEvent(qmp, "JOB_STATUS_CHANGE", &nap, deadline,
                                      "the disk mirror is still not ready"));
  }
}

// At pre-switchover (vCPUs stopped, disks active): cancels each ready
// mirror, which completes it without pivoting, and waits until all have
// concluded without error; adds their offsets to *bytes.
Status CompleteMirrors(QmpClient& qmp, const std::vector<std::string>& devices, Deadline deadline,
                       int64_t* bytes) {
  Result<std::map<std::string, json>> jobs = MirrorJobs(qmp, deadline);
  if (!jobs.ok()) return jobs.error();
  for (const std::string& device : devices) {
    auto job = jobs->find(JobFor(device));
    if (job == jobs->end() || GetString(job->second, "status") == "concluded")
      return MakeError(ErrorCode::kInternal,
                       "the mirror of disk " + device + " failed before switchover: " +
                           (job == jobs->end() ? std::string("gone")
                                               : GetString(job->second, "error").value_or("?")));
    Result<json> c = qmp.Execute("block-job-cancel", {{"device", JobFor(device)}}, Left(deadline));
    if (!c.ok()) return c.error();
  }
  milliseconds nap(2);
  for (;;) {
    jobs = MirrorJobs(qmp, deadline);
    if (!jobs.ok()) return jobs.error();
    size_t concluded = 0;
    for (const std::string& device : devices) {
      auto job = jobs->find(JobFor(device));
      if (job == jobs->end())
        return MakeError(ErrorCode::kInternal, "the mirror of disk " + device + " vanished");
      if (GetString(job->second, "status") == "concluded") ++concluded;
    }
    if (concluded == devices.size()) break;
    VMG_RETURN_IF_ERROR(NapUntilEvent(qmp, "JOB_STATUS_CHANGE", &nap, deadline,
                                      "the disk mirror did not complete"));
  }
  for (const std::string& device : devices) {
    const json& job = jobs->at(JobFor(device));
    *bytes += GetInt(job, "offset").value_or(0);
    if (auto err = GetString(job, "error"))
      return MakeError(ErrorCode::kInternal,
                       "the mirror of disk " + device + " failed at switchover: " + *err);
    (void)qmp.Execute("job-dismiss", {{"id", JobFor(device)}}, Left(deadline));
  }
  return Status::Ok();
}

}  // namespace

Result<bool> RecoverOutgoing(QmpClient& qmp) {
  VMG_ASSIGN_OR_RETURN(json info, qmp.Execute("query-migrate", json::object(), kCleanupTimeout));
  VMG_ASSIGN_OR_RETURN(json status, qmp.Execute("query-status", json::object(), kCleanupTimeout));
  if (GetString(info, "status") == "completed" && GetString(status, "status") == "postmigrate") {
    // The target may hold the VM (paused until FinishIncoming): only the
    // controller knows which copy lives on.
    DeleteMigrationNodes(qmp);
    ResetMigrationSettings(qmp);
    return true;
  }
  CleanUpOutgoing(qmp, true, true, true);
  return false;
}

const char* ToString(MigrationPhase phase) {
  switch (phase) {
    case MigrationPhase::kMirrorStarted:
      return "mirror-started";
    case MigrationPhase::kMirrorReady:
      return "mirror-ready";
    case MigrationPhase::kMigrating:
      return "migrating";
    case MigrationPhase::kSwitchover:
      return "switchover";
  }
  return "?";
}

Result<MigrationKey> NewMigrationKey(const std::string& identity) {
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof raw) != 1) return MakeError(ErrorCode::kInternal, "RAND_bytes failed");
  MigrationKey key{identity, HexEncode(std::string_view(reinterpret_cast<char*>(raw), sizeof raw))};
  VMG_RETURN_IF_ERROR(ValidateMigrationKey(key));
  return key;
}

Status ValidateMigrationKey(const MigrationKey& key) {
  if (!ValidIdentity(key.identity))
    return MakeError(ErrorCode::kInvalidArgument,
                     "migration key identity must match [A-Za-z0-9._-]{1,64}");
  if (key.key_hex.size() != 64 || !std::all_of(key.key_hex.begin(), key.key_hex.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
      }))
    return MakeError(ErrorCode::kInvalidArgument, "migration key must be 64 lowercase hex digits");
  return Status::Ok();
}

Result<IncomingEndpoint> StartIncoming(QmpClient& qmp, const IncomingParams& p,
                                       milliseconds timeout,
                                       std::unique_ptr<MigrationTunnel>* tunnel) {
  Deadline deadline = DeadlineAfter(timeout);
  IncomingEndpoint out;
  out.host = p.listen_host;
  auto fail = [](const Error& e) { return e.Wrap("prepare incoming migration"); };
  Result<json> status = qmp.Execute("query-status", json::object(), Left(deadline));
  if (!status.ok()) return fail(status.error());
  const std::string run_state = GetString(*status, "status").value_or("");
  // A cold migration's target is started the same way (its disks inactive,
  // so the export may write them under the guest's device) and never gets
  // the stream.
  if (run_state != "inmigrate")
    return fail(
        MakeError(ErrorCode::kFailedPrecondition, "QEMU is not waiting for an incoming migration"));
  if (Status st = AddCredentials(qmp, p.key, p.key_dir, p.qemu_uid, p.qemu_gid, true, deadline);
      !st.ok())
    return fail(st.error());
  if (!p.devices.empty()) {
    Result<UniqueFd> listener = ListenTcp(p.listen_host, &out.nbd_port);
    if (!listener.ok()) return fail(listener.error());
    Result<json> r =
        qmp.ExecuteWithFd("getfd", {{"fdname", kNbdListenFd}}, listener->get(), Left(deadline));
    if (!r.ok()) return fail(r.error());
    r = qmp.Execute(
        "nbd-server-start",
        {{"addr", {{"type", "fd"}, {"data", {{"str", kNbdListenFd}}}}}, {"tls-creds", kCredsId}},
        Left(deadline));
    if (!r.ok()) return fail(r.error());
    for (const std::string& device : p.devices) {
      Result<std::string> node = NodeNameOf(qmp, device, deadline);
      if (!node.ok()) return fail(node.error());
      r = qmp.Execute("block-export-add",
                      {{"type", "nbd"},
                       {"id", ExportIdFor(device)},
                       {"node-name", *node},
                       {"name", device},
                       {"writable", true}},
                      Left(deadline));
      if (!r.ok()) return fail(r.error().Wrap("export " + device));
      out.nbd_exports.push_back(device);
    }
  }
  if (!p.stream) return out;  // a cold migration: the disks are all
  // The stream arrives through our tunnel (migration_tunnel.h), which writes
  // it in clear into QEMU's end of a socketpair.
  UniqueFd qemu_end;
  Result<std::unique_ptr<MigrationTunnel>> t =
      MigrationTunnel::Listen(p.listen_host, p.key, &qemu_end);
  if (!t.ok()) return fail(t.error());
  // `events`: FinishIncoming sees the completion at once (the guest waits,
  // stopped, until its `cont`).
  Result<json> r = SetCapabilities(qmp, {"events"}, true, Left(deadline));
  if (!r.ok()) return fail(r.error());
  r = qmp.ExecuteWithFd("getfd", {{"fdname", kStreamFd}}, qemu_end.get(), Left(deadline));
  if (!r.ok()) return fail(r.error());
  r = qmp.Execute("migrate-incoming", {{"uri", std::string("fd:") + kStreamFd}}, Left(deadline));
  if (!r.ok()) return fail(r.error());
  out.migration_port = (*t)->port();
  *tunnel = std::move(*t);
  return out;
}

Result<MigrationStats> MigrateOut(QmpClient& qmp, const OutgoingParams& p, milliseconds timeout) {
  const auto started = Clock::now();
  Deadline deadline = DeadlineAfter(timeout);
  MigrationStats stats;
  auto phase = [&](MigrationPhase ph) {
    spdlog::debug("migration: {}", ToString(ph));
    if (p.on_phase) p.on_phase(ph);
  };
  Result<json> status = qmp.Execute("query-status", json::object(), Left(deadline));
  if (!status.ok()) return status.error().Wrap("migrate");
  if (GetString(*status, "status") != "running")
    return MakeError(
        ErrorCode::kFailedPrecondition,
        "migrate: the source is " + GetString(*status, "status").value_or("?") + ", not running");

  // Under TCG, QEMU 7.2 loses guest stores during live RAM migration (its
  // dirty-bitmap fast path clears bits without re-arming TCG's TLB write
  // tracking; fixed upstream in 9.0 by 03bfc2188f "physmem: Fix migration
  // dirty bitmap coherency with TCG memory access"): pages written after a
  // bitmap sync may never be sent again, and the target's guest runs on with
  // stale memory (seen as kernel oopses and crashed processes right after the
  // switch, docs/migration.md). With the vCPUs stopped no TCG store can be
  // missed (device DMA marks its pages itself), so under TCG the RAM moves
  // with the guest paused; the disk mirror still runs live before that.
  // QEMU 9.0 and later have the fix, so only an older QEMU under TCG pauses
  // (QEMU 10.0.2 from bookworm-backports, scripts/setup.sh
  // VMGRID_QEMU_BACKPORTS=1: 40 of 40 live migrations of a writing tiny guest
  // kept it intact; 7.2 live: 1 of 10 broke).
  Result<json> kvm = qmp.Execute("query-kvm", json::object(), Left(deadline));
  if (!kvm.ok()) return kvm.error().Wrap("migrate");
  Result<json> version = qmp.Execute("query-version", json::object(), Left(deadline));
  if (!version.ok()) return version.error().Wrap("migrate");
  const json* qemu_version = vmm::FindField(*version, "qemu");
  const int64_t qemu_major = qemu_version ? GetInt(*qemu_version, "major").value_or(0) : 0;
  const bool pause_for_ram = !GetBool(*kvm, "enabled").value_or(false) && qemu_major < 9;

  bool have_node = false, have_mirror = false, migrating = false;
  auto fail = [&](const Error& e) -> Error {
    CleanUpOutgoing(qmp, migrating, have_mirror, have_node);
    return e.Wrap("migrate");
  };

  Status st = AddCredentials(qmp, p.key, p.key_dir, p.qemu_uid, p.qemu_gid, false, deadline);
  if (!st.ok()) return fail(st.error());

  if (!p.devices.empty()) {
    Status mirrored = StartMirrorsAndWaitReady(qmp, p, deadline, &have_node, &have_mirror, phase);
    if (!mirrored.ok()) return fail(mirrored.error());
    stats.mirror_ms = MsSince(started);
    phase(MigrationPhase::kMirrorReady);
  }

  // `events`: QEMU announces each status change (MIGRATION), so the loop
  // below sees pre-switchover, when the vCPUs have just stopped, at once.
  Result<json> r =
      SetCapabilities(qmp, {"pause-before-switchover", "events"}, true, Left(deadline));
  if (!r.ok()) return fail(r.error());
  Clock::time_point paused_at{};
  if (pause_for_ram) {
    // On failure CleanUpOutgoing's `cont` runs the guest again.
    r = qmp.Execute("stop", json::object(), Left(deadline));
    if (!r.ok()) return fail(r.error().Wrap("pause the guest for a TCG migration"));
    paused_at = Clock::now();
  }
  r = qmp.Execute("migrate-set-parameters",
                  {{"max-bandwidth", p.max_bandwidth > 0 ? p.max_bandwidth : kUnthrottled}},
                  Left(deadline));
  if (!r.ok()) return fail(r.error());
  // QEMU writes the stream in clear into a socketpair; the tunnel carries it
  // to the target over TLS with the migration key (migration_tunnel.h).
  UniqueFd qemu_end;
  Result<std::unique_ptr<MigrationTunnel>> tunnel = MigrationTunnel::Connect(
      p.target.host, p.target.migration_port, p.key, Left(deadline), &qemu_end);
  if (!tunnel.ok()) return fail(tunnel.error());
  r = qmp.ExecuteWithFd("getfd", {{"fdname", kStreamFd}}, qemu_end.get(), Left(deadline));
  if (!r.ok()) return fail(r.error());
  qemu_end.Reset();  // QEMU holds its copy: the stream ends when QEMU closes it
  r = qmp.Execute("migrate", {{"uri", std::string("fd:") + kStreamFd}}, Left(deadline));
  if (!r.ok()) return fail(r.error());
  migrating = true;
  phase(MigrationPhase::kMigrating);

  json final_info;
  bool switched = false;
  milliseconds nap(5);
  for (;;) {
    Result<json> info = qmp.Execute("query-migrate", json::object(), Left(deadline));
    if (!info.ok()) return fail(info.error());
    std::string s = GetString(*info, "status").value_or("");
    if (s == "completed") {
      final_info = *info;
      break;
    }
    if (s == "failed" || s == "cancelled")
      return fail(MakeError(ErrorCode::kInternal,
                            "migration " + s + ": " +
                                GetString(*info, "error-desc").value_or("(QEMU gave no reason)")));
    if (s == "pre-switchover" && !switched) {
      switched = true;
      phase(MigrationPhase::kSwitchover);
      if (have_mirror) {
        // vCPUs are stopped and the disks still active: completing the ready
        // mirrors now leaves the target with every write the guest made.
        Status done = CompleteMirrors(qmp, p.devices, deadline, &stats.disk_bytes);
        if (!done.ok()) return fail(done.error());
        have_mirror = false;
      }
      Result<json> c =
          qmp.Execute("migrate-continue", {{"state", "pre-switchover"}}, Left(deadline));
      if (!c.ok()) return fail(c.error());
      nap = milliseconds(2);
      continue;
    }
    if (Status n = NapUntilEvent(qmp, "MIGRATION", &nap, deadline, "migration still " + s); !n.ok())
      return fail(n.error());
  }
  // QEMU has written its last byte into the socketpair; the tunnel may still
  // hold some: the target completes only once it has them all.
  if (!(*tunnel)->WaitDone(Left(deadline)))
    return fail(MakeError(
        ErrorCode::kUnavailable,
        "the migration stream did not reach the target: " +
            ((*tunnel)->error().empty() ? std::string("timed out") : (*tunnel)->error())));
  // The guest waits, stopped, until the target's `cont`: tidying the source
  // (the NBD node, the capabilities, the key) is left to ResumeSource, in
  // case it lives on, or to its quit (about 20 ms less downtime).
  stats.total_ms = MsSince(started);
  stats.qemu_total_ms = GetInt(final_info, "total-time").value_or(0);
  stats.downtime_ms = GetInt(final_info, "downtime").value_or(0);
  // QEMU counts from its own stop at completion; the guest stopped earlier.
  if (pause_for_ram) stats.downtime_ms = std::max(stats.downtime_ms, MsSince(paused_at));
  if (const json* ram = vmm::FindField(final_info, "ram"))
    stats.ram_bytes = GetInt(*ram, "transferred").value_or(0);
  return stats;
}

Result<MigrationStats> MirrorDisksOut(QmpClient& qmp, const OutgoingParams& p,
                                      milliseconds timeout) {
  const auto started = Clock::now();
  Deadline deadline = DeadlineAfter(timeout);
  MigrationStats stats;
  auto phase = [&](MigrationPhase ph) {
    spdlog::debug("cold migration: {}", ToString(ph));
    if (p.on_phase) p.on_phase(ph);
  };
  Result<json> status = qmp.Execute("query-status", json::object(), Left(deadline));
  if (!status.ok()) return status.error().Wrap("cold migrate");
  const std::string run_state = GetString(*status, "status").value_or("");
  if (run_state != "prelaunch" && run_state != "paused")
    return MakeError(ErrorCode::kFailedPrecondition,
                     "cold migrate: the source is " + run_state + "; its guest must not run");
  if (p.devices.empty())
    return MakeError(ErrorCode::kInvalidArgument, "cold migrate: no disk to move");
  bool have_node = false, have_mirror = false;
  auto fail = [&](const Error& e) -> Error {
    CleanUpOutgoing(qmp, false, have_mirror, have_node, /*resume=*/false);
    return e.Wrap("cold migrate");
  };
  Status st = AddCredentials(qmp, p.key, p.key_dir, p.qemu_uid, p.qemu_gid, false, deadline);
  if (!st.ok()) return fail(st.error());
  st = StartMirrorsAndWaitReady(qmp, p, deadline, &have_node, &have_mirror, phase);
  if (!st.ok()) return fail(st.error());
  stats.mirror_ms = MsSince(started);
  phase(MigrationPhase::kMirrorReady);
  // Nothing writes (the guest never ran): completing now leaves the target
  // with the whole top layer of every disk.
  st = CompleteMirrors(qmp, p.devices, deadline, &stats.disk_bytes);
  if (!st.ok()) return fail(st.error());
  have_mirror = false;
  DeleteMigrationNodes(qmp);
  DropCredentials(qmp);
  stats.total_ms = MsSince(started);
  return stats;
}

Status FinishDiskExport(QmpClient& qmp, const std::string& key_dir, milliseconds timeout) {
  RemoveKeyDir(key_dir);
  Result<json> r = qmp.Execute("nbd-server-stop", json::object(), timeout);
  if (!r.ok() && r.error().message.find("not running") == std::string::npos)
    return r.error().Wrap("finish the cold migration: nbd-server-stop");
  DropCredentials(qmp);
  return Status::Ok();
}

void RemoveKeyDir(const std::string& key_dir) {
  ::unlink((key_dir + "/keys.psk").c_str());
  ::unlink((key_dir + "/dh-params.pem").c_str());
  ::rmdir(key_dir.c_str());
}

Status FinishIncoming(QmpClient& qmp, const std::string& key_dir, milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  RemoveKeyDir(key_dir);  // the source's connections are all made by now
  milliseconds nap(2);
  for (;;) {
    Result<json> info = qmp.Execute("query-migrate", json::object(), Left(deadline));
    if (!info.ok()) return info.error().Wrap("finish incoming migration");
    std::string s = GetString(*info, "status").value_or("");
    if (s == "completed") break;
    if (s == "failed" || s == "cancelled")
      return MakeError(ErrorCode::kInternal, "incoming migration " + s);
    if (Status n = NapUntilEvent(qmp, "MIGRATION", &nap, deadline,
                                 "incoming migration still " + (s.empty() ? "waiting" : s));
        !n.ok())
      return n.error();
  }
  // Stopping the server also removes its export; the source dropped its client.
  Result<json> r = qmp.Execute("nbd-server-stop", json::object(), Left(deadline));
  if (!r.ok() && r.error().message.find("not running") == std::string::npos)
    return r.error().Wrap("finish incoming migration: nbd-server-stop");
  r = qmp.Execute("cont", json::object(), Left(deadline));
  if (!r.ok()) return r.error().Wrap("finish incoming migration: cont");
  // Only new connections need them; after `cont` so the guest waits for less.
  DropCredentials(qmp);
  (void)SetCapabilities(qmp, {"events"}, false, kCleanupTimeout);
  return Status::Ok();
}

Status ResumeSource(QmpClient& qmp) {
  // What MigrateOut left for after the switchover; best effort (gone already
  // when MigrateOut failed or RecoverOutgoing ran).
  DeleteMigrationNodes(qmp);
  ResetMigrationSettings(qmp);
  Result<json> s = qmp.Execute("query-status", json::object(), kCleanupTimeout);
  if (!s.ok()) return s.error().Wrap("resume the migration source");
  if (GetString(*s, "status") == "running") return Status::Ok();
  Result<json> r = qmp.Execute("cont", json::object(), kCleanupTimeout);
  if (!r.ok()) return r.error().Wrap("resume the migration source");
  return Status::Ok();
}

}  // namespace vmgrid
