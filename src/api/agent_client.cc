#include "api/agent_client.h"

#include "api/host_credentials.h"
#include "client/api_client.h"
#include "common/util.h"

namespace vmgrid {

using nlohmann::json;

namespace {

class HttpAgentClient : public AgentClient {
 public:
  explicit HttpAgentClient(const HostCredentials& credentials) : credentials_(credentials) {}

  Result<VmStatus> CreateVm(const Host& host, const VmSpec& spec) override {
    VMG_ASSIGN_OR_RETURN(json answer, Client(host).Post("/agent/v1/vms", ToJson(spec)));
    return VmStatusFromJson(answer);
  }

  Result<VmStatus> VmAction(const Host& host, const std::string& vm_id, const std::string& action,
                            bool leave_running) override {
    json body = action == "checkpoint" ? json{{"leave_running", leave_running}} : json::object();
    VMG_ASSIGN_OR_RETURN(json answer,
                         Client(host).Post("/agent/v1/vms/" + vm_id + "/" + action, body));
    return VmStatusFromJson(answer);
  }

  vmgrid::Status DeleteVm(const Host& host, const std::string& vm_id, bool purge) override {
    auto r = Client(host).Delete("/agent/v1/vms/" + vm_id + (purge ? "?purge_workspace=true" : ""));
    if (!r.ok()) return r.error();
    return Status::Ok();
  }

  Result<json> Exec(const Host& host, const std::string& vm_id, const json& request,
                    int read_timeout_s) override {
    return Client(host, read_timeout_s).Post("/agent/v1/vms/" + vm_id + "/exec", request);
  }

  Result<GuestFileChunk> ReadGuestFile(const Host& host, const std::string& vm_id,
                                       const GuestFileRead& request) override {
    VMG_ASSIGN_OR_RETURN(
        json answer,
        Client(host, 120).Post("/agent/v1/vms/" + vm_id + "/files/read", ToJson(request)));
    return GuestFileChunkFromJson(answer);
  }

  Result<GuestFileWritten> WriteGuestFile(const Host& host, const std::string& vm_id,
                                          const GuestFileWrite& request) override {
    VMG_ASSIGN_OR_RETURN(
        json answer,
        Client(host, 120).Post("/agent/v1/vms/" + vm_id + "/files/write", ToJson(request)));
    return GuestFileWrittenFromJson(answer);
  }

  Result<ConsoleLog> ReadConsole(const Host& host, const std::string& vm_id, int64_t offset,
                                 int64_t max_bytes) override {
    std::string path = "/agent/v1/vms/" + vm_id + "/console?max_bytes=" + std::to_string(max_bytes);
    if (offset >= 0) path += "&offset=" + std::to_string(offset);
    VMG_ASSIGN_OR_RETURN(json answer, Client(host).Get(path));
    return ConsoleLogFromJson(answer);
  }

  Result<HostReport> HostStatus(const Host& host) override {
    VMG_ASSIGN_OR_RETURN(json answer, Client(host).Get("/agent/v1/status"));
    VMG_ASSIGN_OR_RETURN(ParsedHostReport parsed, HostReportFromJson(answer));
    return parsed.report;
  }

  Result<CheckpointRef> Checkpoint(const Host& host, const std::string& vm_id, bool publish,
                                   int read_timeout_s) override {
    VMG_ASSIGN_OR_RETURN(json answer, Client(host, read_timeout_s)
                                          .Get("/agent/v1/vms/" + vm_id + "/checkpoint" +
                                               (publish ? "?publish=true" : "")));
    return CheckpointRefFromJson(answer, publish);
  }

  Result<ImageCheckpointResult> MakeImageCheckpoint(const Host& host,
                                                    const ImageCheckpointRequest& req) override {
    VMG_ASSIGN_OR_RETURN(json answer,
                         Client(host).Post("/agent/v1/image-checkpoints", ToJson(req)));
    return ImageCheckpointResultFromJson(answer, !req.push_as.empty());
  }

  vmgrid::Status DeleteWorkspace(const Host& host, const std::string& path) override {
    auto r = Client(host, 60).Delete("/agent/v1/workspaces?path=" + PathEscape(path));
    if (!r.ok()) return r.error();
    return Status::Ok();
  }

  Result<ForwardInfo> AddForward(const Host& host, const std::string& vm_id,
                                 const ForwardRequest& request) override {
    auto r = Client(host, 60).Post("/agent/v1/vms/" + vm_id + "/forwards", ToJson(request));
    if (!r.ok()) return r.error();
    return ForwardInfoFromJson(*r);
  }

  Result<DurableVersion> CommitData(const Host& host, const std::string& vm_id, size_t index,
                                    const std::string& name) override {
    // The copy and push of the whole disk: minutes for a large one.
    auto r = Client(host, 1800)
                 .Post("/agent/v1/vms/" + vm_id + "/data/" + std::to_string(index) + "/commit",
                       {{"name", name}});
    if (!r.ok()) return r.error();
    return DurableVersionFromJson(*r);
  }

  Result<IncomingInfo> PrepareIncoming(const Host& target,
                                       const IncomingRequest& request) override {
    // Builds the VM's disk and starts its QEMU: as long as a create's start.
    auto r = Client(target).Post("/agent/v1/migrations/incoming", ToJson(request));
    if (!r.ok()) return r.error();
    return IncomingInfoFromJson(*r);
  }

  Result<MigrationResult> MigrateOut(const Host& source, const std::string& vm_id,
                                     const MigrateOutRequest& request) override {
    // Disk mirror and RAM: bounded by the agent's own 30 minutes.
    auto r = Client(source, 1900).Post("/agent/v1/vms/" + vm_id + "/migrate-out", ToJson(request));
    if (!r.ok()) return r.error();
    return MigrationResultFromJson(*r);
  }

  Result<VmStatus> FinishIncoming(const Host& target, const std::string& vm_id) override {
    auto r = Client(target).Post("/agent/v1/vms/" + vm_id + "/finish-incoming",
                                 nlohmann::json::object());
    if (!r.ok()) return r.error();
    return VmStatusFromJson(*r);
  }

  vmgrid::Status AbortIncoming(const Host& target, const std::string& vm_id) override {
    auto r = Client(target, 120)
                 .Post("/agent/v1/vms/" + vm_id + "/abort-incoming", nlohmann::json::object());
    if (!r.ok()) return r.error();
    return Status::Ok();
  }

  vmgrid::Status ConfirmMigrateOut(const Host& source, const std::string& vm_id,
                                   bool migrated) override {
    auto r = Client(source, 120)
                 .Post("/agent/v1/vms/" + vm_id + "/confirm-migrate-out", {{"migrated", migrated}});
    if (!r.ok()) return r.error();
    return Status::Ok();
  }

  vmgrid::Status RemoveForward(const Host& host, const std::string& vm_id,
                               int listen_port) override {
    auto r = Client(host, 60).Delete("/agent/v1/vms/" + vm_id + "/forwards/" +
                                     std::to_string(listen_port));
    if (!r.ok()) return r.error();
    return Status::Ok();
  }

 private:
  ApiClient Client(const Host& host, int read_timeout_s = kLongTimeoutS) const {
    ApiClient::Options o;
    o.peer_name = "agent of host " + host.name;
    o.unreachable_hint = "is `vmgrid agent` running there?";
    o.read_timeout_s = read_timeout_s;
    // Kept alive across the seconds between a host's calls (a create, then
    // its delete); the agent keeps idle connections 30 s (agent/agent.cc),
    // these are reused for 20 s. A reused connection saves a mutual-TLS
    // handshake and a TLS context per call. The pool reuses a connection only
    // if the agent has not closed it: one whose agent restarted is readable
    // (its FIN) and dropped, so the call is not lost on it (chaos_grid_test
    // caught that before the pool checked, 2026-12-07).
    o.keep_alive = true;
    o.keep_alive_idle_ms = 20'000;
    return ApiClient(host.url, credentials_.AgentApiToken(host.name), o);
  }

  const HostCredentials& credentials_;
};

}  // namespace

namespace {
Error NoMigration() {
  return MakeError(ErrorCode::kFailedPrecondition, "this agent client does not migrate VMs");
}
}  // namespace

Result<IncomingInfo> AgentClient::PrepareIncoming(const Host&, const IncomingRequest&) {
  return NoMigration();
}
Result<MigrationResult> AgentClient::MigrateOut(const Host&, const std::string&,
                                                const MigrateOutRequest&) {
  return NoMigration();
}
Result<VmStatus> AgentClient::FinishIncoming(const Host&, const std::string&) {
  return NoMigration();
}
vmgrid::Status AgentClient::AbortIncoming(const Host&, const std::string&) { return NoMigration(); }
vmgrid::Status AgentClient::ConfirmMigrateOut(const Host&, const std::string&, bool) {
  return NoMigration();
}

Result<DurableVersion> AgentClient::CommitData(const Host& host, const std::string&, size_t,
                                               const std::string&) {
  return MakeError(ErrorCode::kFailedPrecondition,
                   "host " + host.name + " cannot commit datasets through this client");
}

AgentClientPtr NewHttpAgentClient(const HostCredentials& credentials) {
  return std::make_unique<HttpAgentClient>(credentials);
}

}  // namespace vmgrid
