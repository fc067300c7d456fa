// AgentClient: how the controller calls a host's agent, one typed method per
// agent API route (agent/agent_api.h), speaking the protocol types of
// src/proto. HttpAgentClient is the real one (HTTPS with the host's agent
// API token); services take the interface, so their tests use a fake.
// Thread-safe: every method, for every implementation.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"
#include "proto/checkpoint_ref.h"
#include "proto/console_log.h"
#include "proto/guest_file.h"
#include "proto/host_report.h"
#include "proto/migration.h"
#include "proto/network_plan.h"
#include "proto/vm_spec.h"
#include "proto/vm_status.h"
#include "store/store.h"

namespace vmgrid {

class HostCredentials;

class AgentClient {
 public:
  virtual ~AgentClient() = default;

  // Default read timeout: a create waits for the guest to boot, a
  // checkpoint for its memory to be written.
  static constexpr int kLongTimeoutS = 900;

  virtual Result<VmStatus> CreateVm(const Host& host, const VmSpec& spec) = 0;
  // action: "stop", "resume" or "checkpoint" (leave_running for a checkpoint).
  virtual Result<VmStatus> VmAction(const Host& host, const std::string& vm_id,
                                    const std::string& action, bool leave_running) = 0;
  virtual vmgrid::Status DeleteVm(const Host& host, const std::string& vm_id,
                                  bool purge_workspace) = 0;
  // The agent's {"exit_code", "stdout", "stderr"} (read timeout: the
  // exec's own plus a margin).
  virtual Result<nlohmann::json> Exec(const Host& host, const std::string& vm_id,
                                      const nlohmann::json& request, int read_timeout_s) = 0;
  // `vm cp`: one chunk of a file inside the VM's guest (proto/guest_file.h).
  virtual Result<GuestFileChunk> ReadGuestFile(const Host& host, const std::string& vm_id,
                                               const GuestFileRead& request) = 0;
  virtual Result<GuestFileWritten> WriteGuestFile(const Host& host, const std::string& vm_id,
                                                  const GuestFileWrite& request) = 0;
  // The VM's serial console log from `offset` (< 0: its last max_bytes).
  virtual Result<ConsoleLog> ReadConsole(const Host& host, const std::string& vm_id, int64_t offset,
                                         int64_t max_bytes) = 0;
  virtual Result<HostReport> HostStatus(const Host& host) = 0;
  // Where the VM's latest checkpoint is; `publish` first publishes it to the
  // image server (minutes for a large one).
  virtual Result<CheckpointRef> Checkpoint(const Host& host, const std::string& vm_id, bool publish,
                                           int read_timeout_s) = 0;
  virtual Result<ImageCheckpointResult> MakeImageCheckpoint(
      const Host& host, const ImageCheckpointRequest& request) = 0;
  virtual vmgrid::Status DeleteWorkspace(const Host& host, const std::string& path) = 0;
  virtual Result<ForwardInfo> AddForward(const Host& host, const std::string& vm_id,
                                         const ForwardRequest& request) = 0;
  virtual vmgrid::Status RemoveForward(const Host& host, const std::string& vm_id,
                                       int listen_port) = 0;

  // Live migration (proto/migration.h, docs/migration.md): the routes of the
  // target's and the source's agent in the order the controller calls them.
  // Not pure: clients that do not migrate (the services' FakeAgent so far)
  // answer kFailedPrecondition.
  virtual Result<IncomingInfo> PrepareIncoming(const Host& target, const IncomingRequest& request);
  virtual Result<MigrationResult> MigrateOut(const Host& source, const std::string& vm_id,
                                             const MigrateOutRequest& request);
  virtual Result<VmStatus> FinishIncoming(const Host& target, const std::string& vm_id);
  virtual vmgrid::Status AbortIncoming(const Host& target, const std::string& vm_id);
  virtual vmgrid::Status ConfirmMigrateOut(const Host& source, const std::string& vm_id,
                                           bool migrated);

  // Pushes read-write data attachment `index` of VM `vm_id` as the next
  // version of its dataset (`name`: its image server name, "ds-ID"). Not
  // pure, as above.
  virtual Result<DurableVersion> CommitData(const Host& host, const std::string& vm_id,
                                            size_t index, const std::string& name);
};
using AgentClientPtr = std::unique_ptr<AgentClient>;

// Over HTTP(S) with each host's agent API token (api/host_credentials.h);
// `credentials` must outlive it.
AgentClientPtr NewHttpAgentClient(const HostCredentials& credentials);

}  // namespace vmgrid
