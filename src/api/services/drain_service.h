// DrainService: taking a host out of service for maintenance
// (docs/migration.md, "Drain and maintenance"), in the manner of OpenStack's
// "disable + live-evacuate". Drain sets the host's persistent draining flag
// (from its commit on, no placement chooses the host: creates, gangs,
// checkpoint publishes, migration targets, the information service's
// futures) and runs a polled `drain` operation that live-migrates the
// host's VMs away through MigrationService, at most `parallel` at once,
// placement choosing each target. A VM that cannot move (not running,
// resumed from a checkpoint, no room elsewhere, a failed migration) is
// reported in the operation and stays where it is, as it was. Undrain
// clears the flag; VMs moved away stay where they went.
//
// Failure and restart: the flag is in the database, the operation in memory.
// A controller restart mid-drain forgets the operation (each migration in
// flight ends as a restart leaves any migration); the host stays drained,
// and the next leader resumes the drain (ResumeInterrupted) with a new
// operation for what is left. Thread-safe: every method.
#pragma once

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "api/routes/route.h"
#include "common/result.h"
#include "store/store.h"

namespace vmgrid {

class MigrationService;
class OpQueue;

class DrainService {
 public:
  static constexpr int kDefaultParallel = 2;
  static constexpr int kMaxParallel = 16;

  // All references must outlive the service.
  DrainService(Store& store, MigrationService& migrations, OpQueue& ops);

  // Drains host `host_ref` (id or name): sets its flag and answers the
  // `drain` operation (202), {.., host, parallel}. Idempotent: while a
  // drain of the host runs, its operation is answered again; on a drained
  // host, a new operation moves what is still there (possibly nothing).
  // The operation's progress and result list every VM that was on the host
  // ({id, name, state: waiting|migrating|moved|not_moved, to, error});
  // its result counts `moved` and `not_moved`. Refusals change nothing:
  // kPermissionDenied (not the admin), kNotFound (unknown host),
  // kInvalidArgument (`parallel` outside 1..kMaxParallel).
  Result<nlohmann::json> Drain(const Caller& c, const std::string& host_ref, int parallel);

  // Clears the flag (idempotent) and returns the host. A drain still
  // running starts no further migration (the VMs it has not reached are
  // reported as not moved); those under way finish.
  Result<Host> Undrain(const Caller& c, const std::string& host_ref);

  // The drain of `host_id` running now as the admin polls it (the
  // operation: id, state, progress with each VM's state), or null.
  nlohmann::json Running(const std::string& host_id) const;

  // For a controller that has just become the leader (started, or taken
  // over from one that died): the drains the old leader ran died with its
  // memory. Starts a drain (as the first admin user, kDefaultParallel) of
  // every draining host that still has a running VM and no drain running
  // here, and returns the operations' answers. A VM that could not move
  // before is tried once more; a host with nothing running is left alone.
  std::vector<nlohmann::json> ResumeInterrupted();

 private:
  Result<nlohmann::json> Run(const std::string& op_id, const Caller& c, const Host& host,
                             int parallel);

  Store& store_;
  MigrationService& migrations_;
  OpQueue& ops_;

  mutable std::mutex mu_;
  // Host id -> its drain's operation, while it runs; guarded by mu_.
  std::map<std::string, nlohmann::json> running_;
};

}  // namespace vmgrid
