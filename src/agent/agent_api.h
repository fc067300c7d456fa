// The agent API (/agent/v1/...), installed once and served by the real agent
// (one host per server, agent/agent.h) and by the simulated hosts (many hosts
// under /sim/NAME on one server, sim/sim_hosts.h). Requests are parsed and
// validated here; what a host may open and how it runs VMs are the
// AgentHost's and its VmDriver's. Authentication (the controller's
// per-host agent API token) is the server's pre-routing handler's job.
//
// Routes (relative to the prefix):
//   GET    /agent/v1/status                       host report (heartbeat body)
//   POST   /agent/v1/vms                          create (VmSpec JSON)
//   POST   /agent/v1/vms/ID/{stop,resume}         {}
//   POST   /agent/v1/vms/ID/checkpoint            {"leave_running": bool}
//   GET    /agent/v1/vms/ID/checkpoint[?publish=true]
//   POST   /agent/v1/vms/ID/exec                  {"argv", "input", "timeout_s"}
//   DELETE /agent/v1/vms/ID[?purge_workspace=true]
//   POST   /agent/v1/image-checkpoints            {"image", "blobs", "vcpus", "memory_mb",
//                                                  "target_dir" | "push_as"}
//   DELETE /agent/v1/workspaces?path=REL
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "agent/vm_driver.h"
#include "common/result.h"
#include "proto/checkpoint_ref.h"
#include "proto/host_report.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace vmgrid {

// One host behind the agent API: its driver, its report, and its policy on
// what the controller may name (the controller is trusted to place VMs, not
// to name arbitrary host files).
class AgentHost {
 public:
  virtual ~AgentHost() = default;

  virtual VmDriver& driver() = 0;
  // The host report (GET status, and the body of every heartbeat).
  virtual HostReport Report() = 0;
  // Resolves the host files a VM spec names (image files, checkpoint
  // directory, the workspace, given relative to the host's workspace
  // directory and already checked by CheckWorkspaceName) or refuses them.
  virtual Status PrepareSpec(VmSpec& spec) = 0;
  // The file of workspace `rel` (checked by CheckWorkspaceName).
  virtual Result<std::string> WorkspaceFile(const std::string& rel) = 0;
  // Makes an image's post-boot checkpoint from `spec` (req's image and
  // blobs, prepared by PrepareSpec): pushed to the image server as
  // req.push_as-memory/-disk, or written to the absolute req.target_dir.
  virtual Result<ImageCheckpointResult> ImageCheckpoint(const VmSpec& spec,
                                                        const ImageCheckpointRequest& req) = 0;
};

// A workspace path as the controller sends it: relative, without "..".
Status CheckWorkspaceName(const std::string& rel);

// Finds the host of a request (answering the error itself when there is
// none); `first_id_group` is the index in req.matches of the first capture
// after the prefix's own groups.
using AgentHostResolver = std::function<AgentHost*(const httplib::Request&, httplib::Response&)>;

// Installs the routes above under `prefix` (a path regex; "" for a real
// agent), whose own capture groups number `prefix_groups`.
void InstallAgentApi(httplib::Server& server, const std::string& prefix, int prefix_groups,
                     AgentHostResolver resolve);

}  // namespace vmgrid
