// MigrationService: live migration of a running VM to another host
// (docs/migration.md, "The controller"). Migrate checks the request, moves
// the record to `migrating` and reserves the VM's room on the target in one
// transaction (Store::BeginMigration), and runs the agents' sequence on the
// OpQueue as a polled `migrate` operation:
//   target PrepareIncoming -> source MigrateOut -> target FinishIncoming ->
//   record the new host (Store::FinishMigration) -> source ConfirmMigrateOut(true).
// On a failure before the record moves: target AbortIncoming, source
// ConfirmMigrateOut(false), target room released, the VM running on its
// source (or in the state the source reports), the error in the record and
// in the operation.
//
// Dependencies are passed in, so the service runs in unit tests with a
// store, a fake agent and no grid. Thread-safe: every method.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "api/routes/route.h"
#include "api/services/agent_spec.h"
#include "api/services/failed_writes.h"
#include "common/clock.h"
#include "common/result.h"
#include "proto/migration.h"
#include "proto/vm_spec.h"
#include "store/store.h"

namespace vmgrid {

struct ControllerMetrics;

class Admission;
class AgentClient;
class CapacityIndex;
class NetworkService;
class OpQueue;

class MigrationService {
 public:
  // `long_ops` bounds each user's long operations (shared with image
  // finalizes, checkpoint publishes and workspace deletions).
  MigrationService(Store& store, const CapacityIndex& index, AgentClient& agents,
                   NetworkService& networks, OpQueue& ops, const Clock& clock, Admission& long_ops);

  // Starts migrating VM `vm_ref` (id or name) of the caller (the admin: any
  // VM) to host `to_host` (name or id; "" = placement's choice among the
  // other hosts). Answers the `migrate` operation (202), whose result is
  // {vm_id, from, to, controller_ms, and MigrationResult's fields}.
  // Refusals change nothing: kNotFound (another user's VM, unknown host),
  // kFailedPrecondition (VM not running, target down, VM resumed from a
  // checkpoint), kInvalidArgument (target is the VM's host),
  // kResourceExhausted (no room on the target / on any other host),
  // kTooManyRequests (the caller's long operations).
  // `done` (if set) is called with the operation's outcome once it has
  // finished (on the operation's worker, the VM still in flight): how a
  // drain waits for its migrations. It is not called for a refusal.
  // A draining host is never a target (kFailedPrecondition when named).
  using DoneFn = std::function<void(const Result<nlohmann::json>&)>;
  Result<nlohmann::json> Migrate(const Caller& c, const std::string& vm_ref,
                                 const std::string& to_host, DoneFn done = nullptr);

  // Settles migrations whose operation is gone because the controller
  // stopped mid-migration (docs/migration.md, "Interrupted migrations"): a
  // VM its target already runs stays there (recorded as a finished
  // migration, the source's paused copy removed); any other goes back to its
  // source (the target's incoming copy aborted, a paused source resumed, the
  // target's room released). Looks at rows begun before
  // `interrupted_before_ms` (the controller's start) or more than
  // `stale_after_ms` ago, whose VM has no operation in flight. A target that
  // does not answer keeps its row for a later call: only its report tells
  // whether the VM runs there already, and resuming the source before
  // knowing could run the VM twice. Returns how many were settled.
  int RecoverInterrupted(int64_t interrupted_before_ms, int64_t stale_after_ms);

  // The VM's spec as its target agent gets it (what its create had).
  Result<VmSpec> SpecFor(const Vm& vm, const Host& target);

  // Store writes that failed after an agent had acted (each is logged).
  int64_t failed_writes() const { return failed_writes_.total(); }

  // Where migrations are counted (none by default); set before serving.
  void set_metrics(ControllerMetrics* metrics) { metrics_ = metrics; }
  // Durable workspaces: the target of a persistent VM pushes its versions.
  void set_durable(DurableOptions options) { durable_ = std::move(options); }

 private:
  // The sequence, on the operation pool; the operation's outcome.
  // `cold`: the VM was stopped (its disks move, it stays stopped).
  Result<nlohmann::json> Run(const std::string& op_id, const Vm& vm, const Host& source,
                             const Host& target, bool cold);
  // The source's forwards made again on the target; adds `forwards` (as
  // made) and a `warning` for any that could not be to `out`.
  void AddForwardsOnTarget(const Vm& vm, const Host& target, const MigrationResult& result,
                           nlohmann::json& out);
  // Adds an event to the stream (Store::AppendEvent); a failure is counted.
  void RecordEvent(Event event);
  // One interrupted migration (RecoverInterrupted).
  Status Recover(const Store::PendingMigration& m);
  // The state `host` reports for VM `id` ("" if it does not have it).
  Result<std::string> ReportedState(const Host& host, const std::string& id);

  Store& store_;
  const CapacityIndex& index_;
  AgentClient& agents_;
  NetworkService& networks_;
  OpQueue& ops_;
  const Clock& clock_;
  Admission& long_ops_;
  ControllerMetrics* metrics_ = nullptr;
  DurableOptions durable_;
  FailedWrites failed_writes_;
};

// The host part of an agent URL ("https://10.0.0.2:7001" -> "10.0.0.2",
// "http://[::1]:5" -> "::1"): where a target's migration listeners bind.
std::string HostOfUrl(const std::string& url);

}  // namespace vmgrid
