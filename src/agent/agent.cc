#include "agent/agent.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include "agent/agent_api.h"
#include "agent/agent_metrics.h"
#include "client/api_client.h"
#include "common/host_port.h"
#include "common/http_json.h"
#include "common/http_server.h"
#include "common/signals.h"
#include "common/tls.h"
#include "common/util.h"
#include "images/image_file.h"
#include "images/qcow2_header.h"
#include "vmm/qemu_process.h"

namespace vmgrid {

using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

// The agent API's threads (Agent::Start).
constexpr size_t kHttpThreads = 64;

int64_t MemTotalMb() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemTotal:") return kb / 1024;
  return 0;
}

std::string DefaultRunas() {
  if (geteuid() != 0) return "";
  if (getpwnam("vmgrid-qemu")) return "vmgrid-qemu";
  return "nobody";
}

// Resolves a workspace path sent by the controller: relative, no "..", and
// (symlinks followed) under the workspace directory.
Result<std::string> WorkspacePath(const AllowedPaths& workspaces, const std::string& root,
                                  const std::string& rel) {
  VMG_RETURN_IF_ERROR(CheckWorkspaceName(rel));
  return workspaces.Resolve(root + "/" + rel, "the workspace path");
}

// The local files a spec names that the agent will really open (with an
// image server, the blobs take the place of some of them), resolved under
// the allowed directories; a user's qcow2 is refused if its header names a
// backing or data file, before qemu-img or QEMU opens it.
Status CheckSpecPaths(const AllowedPaths& allowed, bool has_image_server, VmSpec& s) {
  const bool resolved = has_image_server && s.blobs.count("disk");
  if (!resolved) {
    VMG_ASSIGN_OR_RETURN(s.image.disk, allowed.Resolve(s.image.disk, "the image disk"));
    if (s.image.format == "qcow2") {
      auto h = CheckUntrustedQcow2File(s.image.disk, kMaxVirtualDiskBytes);
      if (!h.ok()) return h.error().Wrap("image disk refused");
    }
  }
  if (!s.image.kernel.empty() && !(resolved && s.blobs.count("kernel"))) {
    VMG_ASSIGN_OR_RETURN(s.image.kernel, allowed.Resolve(s.image.kernel, "the kernel"));
  }
  if (!s.image.initrd.empty() && !(resolved && s.blobs.count("initrd"))) {
    VMG_ASSIGN_OR_RETURN(s.image.initrd, allowed.Resolve(s.image.initrd, "the initrd"));
  }
  if (s.start == "resume" && !s.checkpoint_dir.empty() &&
      !(resolved && (s.blobs.count("vm_ckpt_memory") || s.blobs.count("ckpt_memory")))) {
    VMG_ASSIGN_OR_RETURN(s.checkpoint_dir,
                         allowed.Resolve(s.checkpoint_dir, "the checkpoint directory"));
  }
  return Status::Ok();
}

// The tunnel socket's address and port from --tunnel-listen, else from the
// agent's listen address (a wildcard or a name: loopback, with a warning).
Result<std::pair<std::string, int>> TunnelAddress(const AgentOptions& o) {
  std::string spec = o.tunnel_listen;
  bool derived = spec.empty();
  if (derived) spec = o.listen.substr(0, o.listen.rfind(':'));
  std::string ip = spec;
  int port = 0;
  if (!derived && spec.find(':') != std::string::npos) {
    VMG_ASSIGN_OR_RETURN(HostPort where, ParseHostPort(spec, "--tunnel-listen"));
    ip = std::move(where.host);
    port = where.port;
  }
  in_addr a{};
  if (inet_pton(AF_INET, ip.c_str(), &a) != 1 || a.s_addr == 0) {
    if (!derived)
      return MakeError(ErrorCode::kInvalidArgument,
                       "--tunnel-listen needs an IPv4 address other hosts can reach, not '" +
                           o.tunnel_listen + "'");
    spdlog::warn(
        "virtual networks: tunnels listen on 127.0.0.1 (this machine only); set "
        "--tunnel-listen to an address the other hosts reach");
    ip = "127.0.0.1";
  }
  return std::make_pair(ip, port);
}

}  // namespace

Agent::Agent(AgentOptions options) : options_(std::move(options)) {}

Agent::~Agent() {
  Shutdown();
  if (server_thread_.joinable()) server_thread_.join();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  if (durable_thread_.joinable()) durable_thread_.join();
}

HostCapacityReport Agent::Capacity() const {
  // The file system of the state directory holds the VMs' overlays,
  // workspaces and checkpoints: the controller places VMs by its free space.
  struct statvfs vfs;
  int64_t disk_mb = 0, disk_total = 0, disk_free = 0;
  if (statvfs(options_.state_dir.c_str(), &vfs) == 0) {
    disk_free = static_cast<int64_t>(vfs.f_bavail) * static_cast<int64_t>(vfs.f_frsize);
    disk_total = static_cast<int64_t>(vfs.f_blocks) * static_cast<int64_t>(vfs.f_frsize);
    disk_mb = disk_free / (1 << 20);
  }
  int vcpus = options_.vcpus > 0 ? options_.vcpus : static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  int64_t mem =
      options_.memory_mb > 0 ? static_cast<int64_t>(options_.memory_mb) : MemTotalMb() * 8 / 10;
  HostCapacityReport c;
  c.vcpus = vcpus;
  c.memory_mb = mem;
  c.disk_mb = disk_mb;
  c.disk_total_bytes = disk_total;
  c.disk_free_bytes = std::min(disk_free, disk_total);
  c.kvm = KvmUsableBy("qemu-system-x86_64");
  c.site = options_.site;
  c.network = options_.network;
  c.arch = "x86_64";
  return c;
}

HostReport Agent::Report() {
  HostReport r;
  r.name = options_.name;
  r.url = url_;
  r.capacity = Capacity();
  r.vms = runner_->List();
  if (images_) r.images = images_->StatsJson();
  if (networks_) {
    r.tunnel = networks_->Endpoint();
    if (r.tunnel) r.networks = networks_->Stats();
  }
  return r;
}

Status Agent::Start() {
  if (options_.name.empty()) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    options_.name = host;
  }
  if (options_.runas.empty()) options_.runas = DefaultRunas();
  if (options_.token_file.empty()) options_.token_file = options_.state_dir + "/agent.token";
  VMG_RETURN_IF_ERROR(MakeDirs(options_.state_dir, 0755));
  std::error_code ec;
  options_.state_dir = std::filesystem::absolute(options_.state_dir, ec).string();
  workspace_dir_ = options_.state_dir + "/workspaces";
  VMG_RETURN_IF_ERROR(MakeDirs(workspace_dir_, 0755));
  std::vector<std::string> roots = options_.image_dirs;
  roots.push_back(options_.state_dir);
  allowed_ = std::make_unique<AllowedPaths>(roots);
  allowed_workspaces_ = std::make_unique<AllowedPaths>(std::vector<std::string>{workspace_dir_});
  // Mutual TLS: only holders of a certificate of the grid's CA (the
  // controller) reach the agent API, and they still need this host's agent
  // API token. Our certificate is our client identity towards the
  // controller and the image server.
  VMG_ASSIGN_OR_RETURN(auto tls, ServerTls("agent", options_.listen, options_.tls, true));
  VMG_RETURN_IF_ERROR(SetClientTls(options_.tls.files));
  VMG_RETURN_IF_ERROR(LoadOrRegisterCredentials());

  VmRunnerOptions ro;
  ro.state_dir = options_.state_dir;
  ro.runas = options_.runas;
  ro.vm_uid_base = options_.vm_uid_base;
  ro.vm_uid_count = options_.vm_uid_count;
  ro.cgroup_root = options_.cgroup_root;
  ro.max_copy_bytes = int64_t{options_.max_copy_mib} << 20;
  if (!options_.image_server.empty()) {
    HostImages::Options io;
    io.state_dir = options_.state_dir;
    io.server_url = options_.image_server;
    io.cache_bytes = options_.cache_mb << 20;
    io.prefetch = options_.prefetch;
    io.compressed_transfer = options_.compressed_transfer;
    if (!options_.image_server_token_file.empty()) {
      VMG_ASSIGN_OR_RETURN(io.token, ReadTokenFile(options_.image_server_token_file));
    }
    if (!ro.runas.empty())
      if (struct passwd* pw = getpwnam(ro.runas.c_str()))
        io.socket_gid = static_cast<int>(pw->pw_gid);
    VMG_ASSIGN_OR_RETURN(images_, HostImages::Open(io));
    ro.images = images_.get();
  }
  HostNetworksOptions no;
  no.state_dir = options_.state_dir;
  VMG_ASSIGN_OR_RETURN(auto tunnel, TunnelAddress(options_));
  no.tunnel_ip = tunnel.first;
  no.tunnel_port = tunnel.second;
  VMG_ASSIGN_OR_RETURN(networks_, HostNetworks::Open(no));
  ro.networks = networks_.get();
  runner_ = std::make_unique<VmRunner>(ro);
  VMG_RETURN_IF_ERROR(runner_->Recover());

  // The controller keeps a few connections open (ApiClient keep-alive, at
  // most 4 idle per controller, reused for 20 s: api/agent_client.cc), and
  // every connection holds one of these threads; most calls are long (a
  // create answers once its guest runs), so a burst of creates on one host
  // runs at once rather than eight at a time.
  HttpServerLimits limits;
  limits.keep_alive_idle_ms = 30'000;
  server_ = std::make_unique<GuardedServer>(limits, tls);
  server_->new_task_queue = [] { return new httplib::ThreadPool(kHttpThreads); };
  server_->set_tcp_nodelay(true);  // else Nagle + delayed ACK on kept-alive connections
  InstallRoutes();
  VMG_ASSIGN_OR_RETURN(url_, server_->Bind(options_.listen));
  server_thread_ = std::thread([this] { server_->listen_after_bind(); });
  registry_.AddCollector([this] {
    std::optional<HostImages::Counters> images;
    if (images_) images = images_->counters();
    return AgentMetrics(runner_->List(), images ? &*images : nullptr,
                        networks_ ? networks_->totals() : HostNetworks::Totals{});
  });
  if (!options_.metrics_listen.empty()) {
    VMG_ASSIGN_OR_RETURN(metrics_server_, MetricsServer::Start(options_.metrics_listen, registry_));
  }

  ApiClient::Options co;
  co.peer_name = "controller";
  co.read_timeout_s = 10;
  controller_ = std::make_unique<ApiClient>(options_.controller_url, host_token_, co);
  VMG_ASSIGN_OR_RETURN(fence_, LeaseFence::Start());
  heartbeat_thread_ = std::thread([this] { HeartbeatLoop(); });
  // Interval pushes of durable workspaces (docs/vm-lifecycle.md): off the
  // heartbeat thread, which must never wait for an upload.
  if (images_)
    durable_thread_ = std::thread([this] {
      while (!stop_) {
        runner_->PushDueWorkspaces();
        for (int i = 0; i < 50 && !stop_; ++i) std::this_thread::sleep_for(milliseconds(100));
      }
    });
  spdlog::info("agent {} serving at {} (QEMU runs as '{}', KVM {})", options_.name, url_,
               options_.runas.empty() ? "self" : options_.runas,
               KvmUsableBy("qemu-system-x86_64") ? "yes" : "no");
  return Status::Ok();
}

Status Agent::LoadOrRegisterCredentials() {
  const std::string file = options_.state_dir + "/host-credentials.json";
  if (FileExists(file)) {
    VMG_ASSIGN_OR_RETURN(std::string text, ReadFile(file, 64 << 10));
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_object() && j.value("name", "") == options_.name && j.value("host_token", "") != "" &&
        j.value("agent_api_token", "") != "") {
      host_token_ = j["host_token"];
      token_ = j["agent_api_token"];
      return Status::Ok();
    }
    spdlog::warn("{} is not for host '{}'; registering again", file, options_.name);
  }
  auto join = ReadTokenFile(options_.token_file);
  if (!join.ok())
    return MakeError(
        ErrorCode::kUnauthenticated,
        "this host has no credentials yet, and the join token cannot be read from " +
            options_.token_file +
            " (the controller writes it to STATE/agent.token): " + join.error().message);
  ApiClient::Options co;
  co.peer_name = "controller";
  co.read_timeout_s = 10;
  ApiClient controller(options_.controller_url, *join, co);
  // The controller may still be starting: retry for a minute, unless it
  // answers with a refusal.
  Result<nlohmann::json> r = MakeError(ErrorCode::kUnavailable, "not tried");
  for (int attempt = 0; attempt < 120 && !stop_; ++attempt) {
    r = controller.Post("/v1/agent/register", {{"name", options_.name}});
    if (r.ok() ||
        (r.error().code != ErrorCode::kUnavailable && r.error().code != ErrorCode::kTimeout))
      break;
    if (attempt == 0)
      spdlog::info("registering with {}: {}; retrying", options_.controller_url, r.error().message);
    std::this_thread::sleep_for(milliseconds(500));
  }
  if (!r.ok())
    return r.error().Wrap("registering host '" + options_.name + "' with the controller");
  if (!r->is_object() || !(*r)["host_token"].is_string() || !(*r)["agent_api_token"].is_string())
    return MakeError(ErrorCode::kInternal, "the controller's registration answer is malformed");
  host_token_ = (*r)["host_token"];
  token_ = (*r)["agent_api_token"];
  nlohmann::json saved = {
      {"name", options_.name}, {"host_token", host_token_}, {"agent_api_token", token_}};
  VMG_RETURN_IF_ERROR(WriteFileAtomic(file, saved.dump(2) + "\n", 0600));
  spdlog::info("host {} registered; its credentials are in {}", options_.name, file);
  return Status::Ok();
}

void Agent::HeartbeatLoop() {
  bool was_ok = true;
  while (!stop_) {
    // The lease an answer grants counts from here (docs/host-failure.md).
    const auto sent = std::chrono::steady_clock::now();
    HostReport report = Report();
    UpdateFencePids(report.vms);
    // The VM list travels only when it changed since the controller last
    // acknowledged it (docs/infosvc.md, "Heartbeats"); a controller that
    // does not know the digest (restarted, another one) gets it in full.
    auto r = vms_ack_.Send(std::move(report), [this](const nlohmann::json& body) {
      return controller_->Post("/v1/agent/heartbeat", body);
    });
    if (r.ok()) ApplyHeartbeatReply(*r, sent);
    if (!r.ok() && was_ok)
      spdlog::warn("heartbeat to {} failed: {}", options_.controller_url, r.error().message);
    if (r.ok() && !was_ok) spdlog::info("heartbeat to {} works again", options_.controller_url);
    was_ok = r.ok();
    // A guest printing without end must not fill this host's disk.
    runner_->TrimConsoleLogs();
    for (int i = 0; i < 20 && !stop_; ++i) std::this_thread::sleep_for(milliseconds(100));
  }
}

void Agent::UpdateFencePids(const std::vector<VmStatus>& vms) {
  std::map<std::string, pid_t> seen;
  for (const auto& v : vms) {
    // A VM that is never restarted elsewhere cannot run twice: a host cut
    // off from the controller lets it run on. Every other VM (the policy
    // unknown included, a spec from before it was sent) is guarded.
    if (v.restart == "never") continue;
    // The QEMU's own pid file (what it runs as now); else the pid the
    // runner reported; else the last one seen (an operation in flight).
    pid_t pid = 0;
    if (auto text = ReadFile(options_.state_dir + "/vms/" + v.id + "/run/" + kPidFileName, 64);
        text.ok())
      pid = static_cast<pid_t>(std::atoi(text->c_str()));
    if (pid <= 0) pid = static_cast<pid_t>(v.pid);
    if (pid <= 0)
      if (auto it = fence_pids_.find(v.id); it != fence_pids_.end()) pid = it->second;
    if (pid > 0) seen[v.id] = pid;
  }
  if (seen != fence_pids_) spdlog::info("lease fence: guarding {} QEMU process(es)", seen.size());
  fence_pids_ = std::move(seen);
  std::vector<pid_t> pids;
  for (const auto& [id, pid] : fence_pids_) pids.push_back(pid);
  fence_->SetPids(pids);
}

void Agent::ApplyHeartbeatReply(const nlohmann::json& j,
                                std::chrono::steady_clock::time_point sent) {
  auto reply = HeartbeatReplyFromJson(j);
  if (!reply.ok()) {
    spdlog::warn("the controller's heartbeat answer is malformed: {}", reply.error().message);
    return;
  }
  if (reply->lease_ms > 0) fence_->Renew(sent, reply->lease_ms);
  // VMs that are no longer ours (recovered elsewhere while we were cut
  // off, or deleted while we were away): destroyed before anything resumes.
  for (const auto& id : reply->stale_vms) {
    // event: stale_vm_destroyed (id)
    Status st = runner_->Destroy(id, /*purge_workspace=*/false);
    spdlog::warn(
        "VM {} is no longer this host's (recovered elsewhere while this host was declared "
        "failed, or deleted while it was away): destroying this copy{}",
        id, st.ok() ? "" : ": " + st.error().message);
    fence_pids_.erase(id);
  }
  if (!reply->stale_vms.empty()) {
    std::vector<pid_t> pids;
    for (const auto& [id, pid] : fence_pids_) pids.push_back(pid);
    fence_->SetPids(pids);
  }
  // Resumed: what our fence stopped, and what a previous agent's watchdog
  // (an agent killed and restarted) stopped after its lease ran out.
  bool stopped = false;
  for (const auto& [id, pid] : fence_pids_) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const auto close = line.rfind(')');
    if (close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'T')
      stopped = true;
  }
  if (reply->lease_ms > 0 && (fence_->fenced() || stopped)) {
    std::vector<pid_t> pids;
    for (const auto& [id, pid] : fence_pids_) pids.push_back(pid);
    // event: host_unfenced
    spdlog::warn("lease renewed: resuming the {} VM(s) paused when it ran out", pids.size());
    fence_->Resume(pids);
  }
  if (!reply->networks || !networks_) return;
  const bool was_running = networks_->Endpoint().has_value();
  if (Status st = networks_->ApplyPlan(*reply->networks); !st.ok())
    spdlog::warn("virtual networks: the controller's plan applied in part: {}", st.error().message);
  // The switches just started: the VMs adopted at start get their ports.
  if (!was_running && networks_->Endpoint()) runner_->ReattachNics();
}

void Agent::Wait() {
  if (server_thread_.joinable()) server_thread_.join();
}

void Agent::Shutdown() {
  stop_ = true;
  if (server_) server_->stop();
}

void Agent::InstallRoutes() {
  auto& s = *server_;
  s.set_payload_max_length(kMaxJsonBody);
  s.set_read_timeout(30, 0);
  s.set_write_timeout(600, 0);
  // Only the controller (holding the agent token) may call the agent.
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!ConstantTimeEquals(BearerToken(req), token_)) {
      SendError(res, MakeError(ErrorCode::kUnauthenticated, "the agent API needs the agent token"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  InstallAgentApi(s, "", 0, [this](const httplib::Request&, httplib::Response&) { return this; });
  InstallJsonErrorHandlers(s);
}

// --- AgentHost: what the controller may name on this host -----------------------

Status Agent::PrepareSpec(VmSpec& spec) {
  VMG_RETURN_IF_ERROR(CheckSpecPaths(*allowed_, images_ != nullptr, spec));
  if (spec.disk_mode == "persistent") {
    VMG_ASSIGN_OR_RETURN(spec.workspace_path, WorkspaceFile(spec.workspace_path));
  }
  return Status::Ok();
}

Result<std::string> Agent::WorkspaceFile(const std::string& rel) {
  return WorkspacePath(*allowed_workspaces_, workspace_dir_, rel);
}

Result<ImageCheckpointResult> Agent::ImageCheckpoint(const VmSpec& spec,
                                                     const ImageCheckpointRequest& req) {
  const std::string& push_as = req.push_as;
  const int vcpus = req.vcpus;
  const int64_t memory_mb = req.memory_mb;
  if (!push_as.empty()) {
    // Made here, published to the image server (memory state and disk
    // delta as two new versions), then dropped locally.
    if (!images_)
      return MakeError(ErrorCode::kFailedPrecondition, "this agent has no image server");
    std::string dir = options_.state_dir + "/tmp/" + NewId("ickpt");
    Status st = MakeDirs(options_.state_dir + "/tmp", 0755);
    if (st.ok()) st = runner_->MakeImageCheckpoint(spec.image, spec.blobs, vcpus, memory_mb, dir);
    Result<BlobRef> mem = st.ok() ? images_->Push(dir + "/memory.state", push_as + "-memory")
                                  : Result<BlobRef>(st.error());
    Result<BlobRef> disk = mem.ok() ? images_->Push(dir + "/disk.qcow2", push_as + "-disk")
                                    : Result<BlobRef>(mem.error());
    if (Status rm = RemoveTree(dir); !rm.ok())  // a leftover only costs disk; say so
      spdlog::warn("image checkpoint: cannot remove {}: {}", dir, rm.error().message);
    if (!disk.ok()) return disk.error();
    return ImageCheckpointResult{"", *mem, *disk};
  }
  VMG_ASSIGN_OR_RETURN(std::string target, allowed_->Resolve(req.target_dir, "target_dir"));
  VMG_RETURN_IF_ERROR(
      runner_->MakeImageCheckpoint(spec.image, spec.blobs, vcpus, memory_mb, target));
  return ImageCheckpointResult{req.target_dir, {}, {}};
}

// Each egress network holds up to vnet::kMaxEgressSockets slirp sockets,
// each switch port and tunnel a few more: the usual soft limit of 1024 fds
// would run out with a handful of busy networks. Raised to the hard limit.
static void RaiseFileLimit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur >= r.rlim_max) return;
  const rlim_t before = r.rlim_cur;
  r.rlim_cur = r.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &r) == 0)
    spdlog::info("open files limit raised from {} to {}", before, r.rlim_cur);
  else
    spdlog::warn("cannot raise the open files limit from {}: {}", before, strerror(errno));
}

int RunAgent(const AgentOptions& options) {
  InstallTerminationHandlers();
  RaiseFileLimit();
  Agent agent(options);
  Status st = agent.Start();
  if (!st.ok()) {
    spdlog::error("agent: {}", st.error().message);
    return 1;
  }
  WaitForTermination();
  agent.Shutdown();
  agent.Wait();
  spdlog::info("agent stopped; its VMs keep running and are re-adopted at the next start");
  return 0;
}

}  // namespace vmgrid
