#include "vmm/machine_ops.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

#include "vmm/json_util.h"
#include "vmm/unique_fd.h"
#include "vmm/unix_stream.h"

namespace vmgrid {

namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using vmm::Clock;
using vmm::Deadline;
using vmm::DeadlineAfter;
using vmm::FindField;
using vmm::GetInt;
using vmm::GetString;
using vmm::MillisUntil;
using vmm::UniqueFd;

// The default max-bandwidth (128 MiB/s) throttles even a paused VM's save;
// a local file has no link to protect.
constexpr int64_t kUnthrottled = int64_t{1} << 40;
// Commands that only change state should answer quickly even under TCG.
constexpr milliseconds kCommandTimeout(10000);

Error ErrnoError(const std::string& what, int err) {
  return MakeError(ErrorCode::kInternal, what + ": " + std::strerror(err));
}

milliseconds Left(Deadline deadline) { return milliseconds(MillisUntil(deadline)); }

std::string UniqueName(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  return std::string(prefix) + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

// Polls query-migrate until the migration ends. Returns the final status
// object, or an Error with QEMU's error-desc.
Result<json> WaitMigration(QmpClient& qmp, Deadline deadline, const char* what) {
  milliseconds nap(5);
  for (;;) {
    VMG_ASSIGN_OR_RETURN(json info, qmp.Execute("query-migrate", json::object(), Left(deadline)));
    std::string status = GetString(info, "status").value_or("");
    if (status == "completed") return info;
    if (status == "failed" || status == "cancelled") {
      return MakeError(ErrorCode::kInternal,
                       std::string(what) + " " + status + ": " +
                           GetString(info, "error-desc").value_or("(QEMU gave no reason)"));
    }
    if (Clock::now() + nap >= deadline) {
      return MakeError(ErrorCode::kTimeout, std::string(what) + " still " +
                                                (status.empty() ? "not started" : status) +
                                                " at deadline");
    }
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, milliseconds(50));
  }
}

bool MigrationEnded(const std::string& status) {
  return status == "completed" || status == "failed" || status == "cancelled";
}

// Waits for the MIGRATION event that ends a migration (completed, failed,
// cancelled), asking query-migrate every 200 ms in case an event is missed,
// until `deadline` or the connection fails. The caller then reads the
// outcome with WaitMigration.
void WaitMigrationEnd(QmpClient& qmp, Deadline deadline) {
  auto ended = [](const json& e) {
    if (GetString(e, "event").value_or("") != "MIGRATION") return false;
    const json* data = FindField(e, "data");
    return data != nullptr && MigrationEnded(GetString(*data, "status").value_or(""));
  };
  while (Clock::now() < deadline) {
    Result<json> e = qmp.WaitEventIf(ended, std::min(Left(deadline), milliseconds(200)));
    if (e.ok() || e.error().code != ErrorCode::kTimeout) return;
    Result<json> info = qmp.Execute("query-migrate", json::object(), Left(deadline));
    if (!info.ok() || MigrationEnded(GetString(*info, "status").value_or(""))) return;
  }
}

// Hands `fd` to QEMU under a fresh name for a "fd:NAME" migration URI.
Result<std::string> PassFd(QmpClient& qmp, int fd, Deadline deadline) {
  std::string name = UniqueName("vmg-mig-");
  Result<json> r = qmp.ExecuteWithFd("getfd", {{"fdname", name}}, fd, Left(deadline));
  if (!r.ok()) return r.error();
  return name;
}

void ForgetFd(QmpClient& qmp, const std::string& name) {
  // Fails harmlessly if migrate already consumed the fd.
  (void)qmp.Execute("closefd", {{"fdname", name}}, milliseconds(2000));
}

Status RunWhenLoaded(QmpClient& qmp, Deadline deadline, const std::string& context) {
  Result<json> done = WaitMigration(qmp, deadline, "incoming migration");
  if (!done.ok()) {
    if (done.error().code == ErrorCode::kUnavailable) {
      // QEMU 7.2 exits when loading fails; its reason is in its -D log.
      return MakeError(ErrorCode::kInternal,
                       context + ": QEMU exited while loading the state (its qemu.log says why)");
    }
    return done.error().Wrap(context);
  }
  // A state saved from a paused VM stays paused after loading; one saved while
  // running would already run.
  VMG_ASSIGN_OR_RETURN(std::string status, QueryStatus(qmp));
  if (status != "running") {
    Status st = Cont(qmp);
    if (!st.ok()) return st.error().Wrap(context + ": cont");
  }
  return Status::Ok();
}

}  // namespace

Result<std::string> QueryStatus(QmpClient& qmp) {
  VMG_ASSIGN_OR_RETURN(json info, qmp.Execute("query-status", json::object(), kCommandTimeout));
  std::optional<std::string> status = GetString(info, "status");
  if (!status) return MakeError(ErrorCode::kInternal, "query-status: no status in reply");
  return *status;
}

Result<int64_t> DiskWriteCount(QmpClient& qmp, const std::string& device) {
  VMG_ASSIGN_OR_RETURN(json all, qmp.Execute("query-blockstats", json::object(), kCommandTimeout));
  if (!all.is_array()) return MakeError(ErrorCode::kInternal, "query-blockstats: not a list");
  for (const json& entry : all) {
    if (GetString(entry, "device").value_or("") != device) continue;
    const json* stats = FindField(entry, "stats");
    if (!stats) return MakeError(ErrorCode::kInternal, "query-blockstats: no stats for " + device);
    int64_t total = 0;
    for (const char* key :
         {"wr_operations", "failed_wr_operations", "invalid_wr_operations", "unmap_operations",
          "failed_unmap_operations", "invalid_unmap_operations"}) {
      std::optional<int64_t> n = GetInt(*stats, key);
      if (!n || *n < 0)
        return MakeError(ErrorCode::kInternal,
                         std::string("query-blockstats: no valid ") + key + " for " + device);
      total += *n;
    }
    return total;
  }
  return MakeError(ErrorCode::kNotFound, "query-blockstats: no device " + device);
}

Status Cont(QmpClient& qmp) {
  Result<json> r = qmp.Execute("cont", json::object(), kCommandTimeout);
  if (!r.ok()) return r.error();
  return Status::Ok();
}

Status Stop(QmpClient& qmp) {
  Result<json> r = qmp.Execute("stop", json::object(), kCommandTimeout);
  if (!r.ok()) return r.error();
  return Status::Ok();
}

Status SaveStateToFile(QmpClient& qmp, const std::string& path, milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  VMG_RETURN_IF_ERROR(Stop(qmp));
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return ErrnoError("open " + path, errno);

  auto fail = [&](const Error& e) -> Error {
    ::unlink(path.c_str());
    return e.Wrap("save state to " + path);
  };
  Result<json> params =
      qmp.Execute("migrate-set-parameters", {{"max-bandwidth", kUnthrottled}}, Left(deadline));
  if (!params.ok()) return fail(params.error());
  Result<std::string> name = PassFd(qmp, fd.get(), deadline);
  if (!name.ok()) return fail(name.error());
  Result<json> started = qmp.Execute("migrate", {{"uri", "fd:" + *name}}, Left(deadline));
  if (!started.ok()) {
    ForgetFd(qmp, *name);
    return fail(started.error());
  }
  Result<json> done = WaitMigration(qmp, deadline, "migration");
  if (!done.ok()) {
    if (done.error().code == ErrorCode::kTimeout) {
      (void)qmp.Execute("migrate_cancel", json::object(), milliseconds(2000));
    }
    return fail(done.error());
  }
  // QEMU wrote through its own copy of the fd; ours refers to the same file.
  if (::fsync(fd.get()) != 0) return fail(ErrnoError("fsync", errno));
  return Status::Ok();
}

Status BackupDiskTop(QmpClient& qmp, const std::string& device, const std::string& target_qcow2,
                     bool full, milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  auto context = "backup " + device + " to " + target_qcow2;
  struct stat st;
  if (::lstat(target_qcow2.c_str(), &st) == 0) {
    return MakeError(ErrorCode::kAlreadyExists, context + ": target exists");
  }
  VMG_ASSIGN_OR_RETURN(std::string status, QueryStatus(qmp));
  if (status == "postmigrate") {
    return MakeError(ErrorCode::kFailedPrecondition,
                     context +
                         ": disks were inactivated by a completed migration; back up "
                         "before SaveStateToFile (or cont first)");
  }
  // auto-dismiss=false keeps the concluded job, and its error, visible to
  // query-jobs; polling avoids depending on event delivery order.
  std::string job = UniqueName("vmg-backup-");
  json args = {{"job-id", job},
               {"device", device},
               {"target", target_qcow2},
               {"format", "qcow2"},
               {"sync", full ? "full" : "top"},
               {"mode", "absolute-paths"},
               {"auto-dismiss", false}};
  Result<json> started = qmp.Execute("drive-backup", args, Left(deadline));
  if (!started.ok()) {
    ::unlink(target_qcow2.c_str());  // QEMU may have created it before failing
    return started.error().Wrap(context);
  }

  auto cleanup = [&](const Error& e) -> Error {
    (void)qmp.Execute("job-cancel", {{"id", job}}, milliseconds(2000));
    // The job needs a moment to conclude after cancel before it can be dismissed.
    for (int i = 0; i < 20; ++i) {
      if (qmp.Execute("job-dismiss", {{"id", job}}, milliseconds(2000)).ok()) break;
      std::this_thread::sleep_for(milliseconds(50));
    }
    ::unlink(target_qcow2.c_str());
    return e.Wrap(context);
  };
  milliseconds nap(5);
  for (;;) {
    Result<json> jobs = qmp.Execute("query-jobs", json::object(), Left(deadline));
    if (!jobs.ok()) return cleanup(jobs.error());
    const json* mine = nullptr;
    if (jobs->is_array()) {
      for (const json& j : *jobs) {
        if (GetString(j, "id") == job) mine = &j;
      }
    }
    if (mine == nullptr) {
      return cleanup(MakeError(ErrorCode::kInternal, "job " + job + " disappeared"));
    }
    if (GetString(*mine, "status") == "concluded") {
      std::optional<std::string> error = GetString(*mine, "error");
      (void)qmp.Execute("job-dismiss", {{"id", job}}, Left(deadline));
      if (error) {
        ::unlink(target_qcow2.c_str());
        return MakeError(ErrorCode::kInternal, context + ": " + *error);
      }
      break;
    }
    if (Clock::now() + nap >= deadline) {
      return cleanup(MakeError(ErrorCode::kTimeout, "backup job still running at deadline"));
    }
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, milliseconds(50));
  }
  // QEMU flushed the target when it closed it; fsync also covers the case
  // where its writes are still only in our page cache view of the file.
  UniqueFd fd(::open(target_qcow2.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid() || ::fsync(fd.get()) != 0) return ErrnoError(context + ": fsync", errno);
  return Status::Ok();
}

Status CheckpointToFiles(QmpClient& qmp, const std::string& device, const std::string& disk_target,
                         bool full_disk, const std::string& state_path, milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  VMG_RETURN_IF_ERROR(Stop(qmp));
  if (!device.empty()) {
    VMG_RETURN_IF_ERROR(BackupDiskTop(qmp, device, disk_target, full_disk, Left(deadline)));
  }
  Status st = SaveStateToFile(qmp, state_path, Left(deadline));
  if (!st.ok() && !device.empty()) ::unlink(disk_target.c_str());
  return st;
}

Status ResumeFromFile(QmpClient& qmp, const std::string& path, milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  std::string context = "resume from " + path;
  VMG_ASSIGN_OR_RETURN(std::string status, QueryStatus(qmp));
  if (status != "inmigrate") {
    return MakeError(ErrorCode::kFailedPrecondition,
                     context + ": QEMU is " + status + ", not waiting for an incoming migration");
  }
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return MakeError(errno == ENOENT ? ErrorCode::kNotFound : ErrorCode::kInternal,
                     context + ": " + std::strerror(errno));
  }
  VMG_ASSIGN_OR_RETURN(std::string name, PassFd(qmp, fd.get(), deadline));
  fd.Reset();
  // With the "events" capability QEMU says when loading ends (a MIGRATION
  // event), so the resume goes on at once instead of at the next poll.
  const bool events =
      qmp.Execute("migrate-set-capabilities",
                  {{"capabilities", json::array({{{"capability", "events"}, {"state", true}}})}},
                  Left(deadline))
          .ok();
  (void)qmp.DrainEvents();
  Result<json> started = qmp.Execute("migrate-incoming", {{"uri", "fd:" + name}}, Left(deadline));
  if (!started.ok()) {
    ForgetFd(qmp, name);
    return started.error().Wrap(context);
  }
  if (events) WaitMigrationEnd(qmp, deadline);
  return RunWhenLoaded(qmp, deadline, context);
}

Status FinishResumeAtStart(QmpClient& qmp, milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  const std::string context = "resume from the state given at start";
  // QEMU announces the load's end with a MIGRATION event (x-events on its
  // command line); one sent before this connection existed is lost, so ask
  // first and wait for the event only while the load still runs.
  VMG_ASSIGN_OR_RETURN(json info, qmp.Execute("query-migrate", json::object(), Left(deadline)));
  if (!MigrationEnded(GetString(info, "status").value_or(""))) WaitMigrationEnd(qmp, deadline);
  return RunWhenLoaded(qmp, deadline, context);
}

}  // namespace vmgrid
