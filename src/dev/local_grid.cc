#include "dev/local_grid.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include "common/tls.h"
#include "common/util.h"

namespace vmgrid {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {

// Asks the kernel for a free loopback port. The small race until the
// controller binds it is acceptable for a local grid. A port is never
// handed out twice by this process: the kernel may return a port it just
// freed again, and the second of two servers given one port fails to
// bind (GuardedServer binds without SO_REUSEPORT).
int FreePort() {
  static std::mutex mu;
  static std::set<int> given;
  std::lock_guard<std::mutex> l(mu);
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    int port = ntohs(a.sin_port);
    close(fd);
    if (given.insert(port).second) return port;
  }
}

bool IsPostgresUri(const std::string& s) {
  return s.starts_with("postgresql://") || s.starts_with("postgres://");
}

}  // namespace

Result<nlohmann::json> PollUntil(const ApiClient& client, const std::string& path,
                                 const std::function<bool(const nlohmann::json&)>& done,
                                 milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  Error last = MakeError(ErrorCode::kTimeout, "timed out waiting on " + path);
  while (Clock::now() < deadline) {
    auto r = client.Get(path);
    if (r.ok() && done(*r)) return r;
    if (!r.ok()) last = r.error();
    std::this_thread::sleep_for(milliseconds(100));
  }
  return MakeError(ErrorCode::kTimeout,
                   "timed out waiting on " + path + " (last: " + last.message + ")");
}

Result<nlohmann::json> AwaitOperation(const ApiClient& client, const Result<nlohmann::json>& answer,
                                      milliseconds timeout) {
  if (!answer.ok() || !answer->is_object() || !answer->contains("kind") ||
      !answer->value("id", "").starts_with("op-"))
    return answer;
  const std::string id = (*answer)["id"];
  auto op =
      (*answer)["state"] != "running"
          ? answer
          : PollUntil(
                client, "/v1/operations/" + id,
                [](const nlohmann::json& j) { return j.value("state", "") != "running"; }, timeout);
  if (!op.ok()) return op.error();
  if ((*op)["state"] == "succeeded") return (*op)["result"];
  const nlohmann::json e = op->value("error", nlohmann::json::object());
  return MakeError(ErrorCodeFromApiString(e.value("code", "")),
                   e.value("message", "operation " + id + " failed"));
}

LocalGrid::LocalGrid(LocalGridOptions options) : options_(std::move(options)) {
  if (options_.vmgrid_binary.empty()) options_.vmgrid_binary = SelfExecutable();
  std::error_code ec;
  options_.state_dir = std::filesystem::absolute(options_.state_dir, ec).string();
  if (options_.port == 0) options_.port = FreePort();
  scheme_ = options_.tls ? "https://" : "http://";
  url_ = scheme_ + "127.0.0.1:" + std::to_string(options_.port);
  std::string servers = "127.0.0.1";  // where agents reach the controller and image server
  if (options_.host_namespaces) {
    auto ns = HostNamespaces::Create(options_.hosts);
    if (ns.ok()) {
      netns_ = std::move(ns).value();
      servers = netns_->root_ip();
      options_.agent_listener = true;  // the main listener stays on loopback
    } else {
      netns_status_ = ns.error().Wrap("host namespaces");
    }
  }
  servers_ = servers;
  options_.controllers = std::max(1, options_.controllers);
  controllers_.resize(static_cast<size_t>(options_.controllers));
  controller_ports_.push_back(options_.port);
  for (int i = 1; i < options_.controllers; ++i) controller_ports_.push_back(FreePort());
  // Agents heartbeat to the controllers' listeners of their own.
  if (options_.agent_listener) {
    for (int i = 0; i < options_.controllers; ++i) {
      agent_listener_ports_.push_back(FreePort());
      const std::string u = scheme_ + servers + ":" + std::to_string(agent_listener_ports_.back());
      if (i == 0) agent_controller_url_ = u;
      agent_controller_urls_ += (i == 0 ? "" : ",") + u;
    }
  }
  image_server_host_ = servers;
  agents_.resize(static_cast<size_t>(options_.hosts));
  // Agents keep their address across restarts, as on real hosts.
  for (int i = 0; i < options_.hosts; ++i) agent_ports_.push_back(FreePort());
  if (options_.image_server && options_.image_server_port == 0)
    options_.image_server_port = FreePort();
  if (options_.metrics)
    for (int i = 0; i < 2 + options_.hosts; ++i) metrics_ports_.push_back(FreePort());
}

std::string LocalGrid::image_server_url() const {
  if (!options_.image_server) return "";
  return scheme_ + image_server_host_ + ":" + std::to_string(options_.image_server_port);
}

Status LocalGrid::EnsurePki() {
  VMG_RETURN_IF_ERROR(netns_status_);
  if (!options_.tls || pki_ready_) return Status::Ok();
  std::vector<std::string> names = {"controller", "image-server", "operator"};
  for (int i = 0; i < options_.hosts; ++i) names.push_back("host-" + std::to_string(i + 1));
  VMG_ASSIGN_OR_RETURN(
      auto files,
      EnsureLocalPki(tls_dir(), names, netns_ ? netns_->all_ips() : std::vector<std::string>{}));
  // This process talks to every role as the grid's operator: it trusts the
  // CA and presents a client certificate (the agents' API asks for one).
  VMG_RETURN_IF_ERROR(SetClientTls(files[2]));
  pki_ready_ = true;
  return Status::Ok();
}

std::vector<std::string> LocalGrid::TlsArgs(const std::string& role) const {
  if (!options_.tls) return {"--plain-http"};
  return {"--tls-cert", tls_dir() + "/" + role + ".pem",
          "--tls-key",  tls_dir() + "/" + role + ".key",
          "--ca",       ca_file()};
}

std::vector<std::string> LocalGrid::RoleArgs(const std::string& role) const {
  std::vector<std::string> args = TlsArgs(role);
  args.insert(args.end(), {"--log-format", options_.log_format});
  return args;
}

Status LocalGrid::StartImageServer(milliseconds timeout) {
  if (!options_.image_server) return Status::Ok();
  VMG_RETURN_IF_ERROR(EnsurePki());
  VMG_RETURN_IF_ERROR(MakeDirs(log_dir()));
  if (!FileExists(image_server_token_file()))
    VMG_RETURN_IF_ERROR(WriteFileAtomic(image_server_token_file(), NewToken() + "\n", 0600));
  if (!FileExists(image_server_grant_key_file()))
    VMG_RETURN_IF_ERROR(WriteFileAtomic(image_server_grant_key_file(), NewToken() + "\n", 0600));
  std::vector<std::string> argv = {
      options_.vmgrid_binary,
      "image-server",
      "--listen",
      image_server_host_ + ":" + std::to_string(options_.image_server_port),
      "--dir",
      image_server_dir(),
      "--token-file",
      image_server_token_file(),
      "--grant-key-file",
      image_server_grant_key_file()};
  for (auto& a : RoleArgs("image-server")) argv.push_back(a);
  if (options_.metrics)
    argv.insert(argv.end(), {"--metrics-listen", image_server_metrics_url().substr(7)});
  VMG_ASSIGN_OR_RETURN(image_server_, ChildProcess::Spawn(argv, log_dir() + "/image-server.log"));
  ApiClient probe(image_server_url(), "");
  probe.set_read_timeout_s(2);  // a probe that hangs must not outlast `timeout`
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (!image_server_->Running())
      return MakeError(ErrorCode::kInternal,
                       "the image server exited; see " + log_dir() + "/image-server.log");
    auto r = probe.Get("/v1/stats");
    if (r.ok() || r.error().code == ErrorCode::kUnauthenticated) return Status::Ok();
    std::this_thread::sleep_for(milliseconds(50));
  }
  return MakeError(ErrorCode::kTimeout,
                   "the image server did not come up; see " + log_dir() + "/image-server.log");
}

void LocalGrid::StopImageServer(bool hard) {
  if (!image_server_) return;
  if (hard) image_server_->KillHard();
  image_server_.reset();
}

LocalGrid::~LocalGrid() {
  for (auto& a : agents_) a.reset();
  for (auto& c : controllers_) c.reset();
  image_server_.reset();
  netns_.reset();  // after the processes that use the links
}

std::string LocalGrid::host_address(int index) const {
  return netns_ ? netns_->host_ip(index) : "127.0.0.1";
}

std::string LocalGrid::agent_state_dir(int index) const {
  return options_.state_dir + "/host-" + std::to_string(index + 1);
}

std::string LocalGrid::admin_token() const {
  auto t = ReadTokenFile(controller_state_dir() + "/admin.token");
  return t.ok() ? *t : "";
}

ApiClient LocalGrid::Admin() const { return ApiClient(urls(), admin_token()); }

std::string LocalGrid::controller_url(int index) const {
  return scheme_ + "127.0.0.1:" + std::to_string(controller_ports_[static_cast<size_t>(index)]);
}

std::string LocalGrid::urls() const {
  std::string out;
  for (int i = 0; i < options_.controllers; ++i) out += (i == 0 ? "" : ",") + controller_url(i);
  return out;
}

Status LocalGrid::StartController(milliseconds timeout) {
  if (options_.controllers > 1 && !IsPostgresUri(options_.database))
    return MakeError(ErrorCode::kInvalidArgument,
                     "several controllers need one PostgreSQL database (--database "
                     "postgresql://...; docs/ha.md)");
  // One after the other: the first creates the tokens and keys they share.
  for (int i = 0; i < options_.controllers; ++i)
    if (!controllers_[static_cast<size_t>(i)]) VMG_RETURN_IF_ERROR(StartOneController(i, timeout));
  return Status::Ok();
}

Status LocalGrid::StartOneController(int index, milliseconds timeout) {
  VMG_RETURN_IF_ERROR(EnsurePki());
  VMG_RETURN_IF_ERROR(MakeDirs(log_dir()));
  const size_t i = static_cast<size_t>(index);
  std::vector<std::string> argv = {options_.vmgrid_binary,
                                   "controller",
                                   "--listen",
                                   "127.0.0.1:" + std::to_string(controller_ports_[i]),
                                   "--state-dir",
                                   controller_state_dir()};
  for (auto& a : RoleArgs("controller")) argv.push_back(a);
  if (!options_.database.empty()) argv.insert(argv.end(), {"--database", options_.database});
  if (options_.image_server)
    argv.insert(argv.end(), {"--image-server", image_server_url(), "--image-server-token-file",
                             image_server_token_file(), "--image-server-grant-key-file",
                             image_server_grant_key_file()});
  if (!agent_listener_ports_.empty())
    argv.insert(argv.end(),
                {"--agent-listen", servers_ + ":" + std::to_string(agent_listener_ports_[i])});
  if (options_.metrics && index == 0)
    argv.insert(argv.end(), {"--metrics-listen", controller_metrics_url().substr(7)});
  argv.insert(argv.end(), options_.controller_args.begin(), options_.controller_args.end());
  const std::string log =
      log_dir() +
      (index == 0 ? "/controller.log" : "/controller-" + std::to_string(index + 1) + ".log");
  auto& controller = controllers_[i];
  VMG_ASSIGN_OR_RETURN(controller, ChildProcess::Spawn(argv, log));
  ApiClient anon(controller_url(index), "");
  anon.set_read_timeout_s(2);  // a probe that hangs must not outlast `timeout`
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (!controller->Running())
      return MakeError(ErrorCode::kInternal, "the controller exited; see " + log);
    if (anon.Get("/v1/health").ok() && !admin_token().empty()) return Status::Ok();
    std::this_thread::sleep_for(milliseconds(50));
  }
  return MakeError(ErrorCode::kTimeout, "the controller did not come up; see " + log);
}

void LocalGrid::StopController(bool hard) {
  for (int i = 0; i < options_.controllers; ++i) StopControllerAt(i, hard);
}

void LocalGrid::StopControllerAt(int index, bool hard) {
  auto& c = controllers_[static_cast<size_t>(index)];
  if (!c) return;
  if (hard) c->KillHard();
  c.reset();
}

pid_t LocalGrid::controller_pid(int index) const {
  const auto& c = controllers_[static_cast<size_t>(index)];
  return c ? c->pid() : 0;
}

Status LocalGrid::StartAgent(int index, milliseconds timeout) {
  VMG_RETURN_IF_ERROR(EnsurePki());
  std::string name = "host-" + std::to_string(index + 1);
  const std::string address =
      host_address(index) + ":" + std::to_string(agent_ports_[static_cast<size_t>(index)]);
  std::vector<std::string> argv = {
      options_.vmgrid_binary, "agent", "--listen", address, "--controller",
      agent_controller_urls_.empty() ? urls() : agent_controller_urls_, "--token-file",
      controller_state_dir() + "/agent.token", "--state-dir", agent_state_dir(index), "--name",
      name,
      // Without an image server the controller names image files by path.
      "--image-dir", controller_state_dir() + "/images"};
  for (auto& a : RoleArgs(name)) argv.push_back(a);
  if (options_.host_vcpus > 0)
    argv.insert(argv.end(), {"--vcpus", std::to_string(options_.host_vcpus)});
  if (options_.host_memory_mb > 0)
    argv.insert(argv.end(), {"--memory-mb", std::to_string(options_.host_memory_mb)});
  if (options_.image_server) {
    std::string url = options_.agent_image_server_url.empty() ? image_server_url()
                                                              : options_.agent_image_server_url;
    argv.insert(argv.end(),
                {"--image-server", url, "--image-server-token-file", image_server_token_file()});
    if (!options_.agent_prefetch) argv.push_back("--no-prefetch");
    if (!options_.agent_compressed_transfer) argv.push_back("--no-compressed-transfer");
  }
  if (options_.metrics)
    argv.insert(argv.end(), {"--metrics-listen", agent_metrics_url(index).substr(7)});
  if (netns_) {
    // Its tunnels on its own link; the process in its namespace.
    argv.insert(argv.end(), {"--tunnel-listen", host_address(index)});
    argv = netns_->InNamespace(index, argv);
  }
  auto& agent = agents_[static_cast<size_t>(index)];
  VMG_ASSIGN_OR_RETURN(agent, ChildProcess::Spawn(argv, log_dir() + "/" + name + ".log"));
  // Serving = its API answers (401 without the agent token) on its address.
  ApiClient probe(scheme_ + address, "");
  // A connection accepted before the agent serves (it recovers its VMs
  // first) must not hold the probe for the client's default 300 s.
  probe.set_read_timeout_s(2);
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (!agent->Running())
      return MakeError(ErrorCode::kInternal,
                       "agent " + name + " exited; see " + log_dir() + "/" + name + ".log");
    auto r = probe.Get("/agent/v1/status");
    if (!r.ok() && r.error().code == ErrorCode::kUnauthenticated) return Status::Ok();
    std::this_thread::sleep_for(milliseconds(50));
  }
  return MakeError(ErrorCode::kTimeout, "agent " + name + " did not come up; see " + log_dir());
}

void LocalGrid::StopAgent(int index, bool hard) {
  auto& a = agents_[static_cast<size_t>(index)];
  if (!a) return;
  if (hard) a->KillHard();
  a.reset();
}

pid_t LocalGrid::agent_pid(int index) const {
  const auto& a = agents_[static_cast<size_t>(index)];
  return a ? a->pid() : 0;
}

Status LocalGrid::WaitHostsUp(int n, milliseconds timeout) {
  ApiClient admin = Admin();
  auto r = PollUntil(
      admin, "/v1/hosts",
      [n](const nlohmann::json& j) {
        int up = 0;
        for (const auto& h : j.value("hosts", nlohmann::json::array()))
          if (h.value("state", "") == "up") ++up;
        return up >= n;
      },
      timeout);
  if (!r.ok())
    return r.error().Wrap("waiting for " + std::to_string(n) + " host(s); see " + log_dir());
  return Status::Ok();
}

int LocalGrid::KillVmProcesses() {
  int killed = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    std::string pid = e.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    auto cmdline = ReadFile(e.path().string() + "/cmdline", 1 << 20);
    if (!cmdline.ok() || cmdline->find("qemu-system") == std::string::npos) continue;
    if (cmdline->find(options_.state_dir + "/") == std::string::npos) continue;
    if (kill(std::stoi(pid), SIGKILL) == 0) ++killed;
  }
  return killed;
}

Status LocalGrid::Start(milliseconds timeout) {
  VMG_RETURN_IF_ERROR(MakeDirs(options_.state_dir));
  VMG_RETURN_IF_ERROR(StartImageServer());
  VMG_RETURN_IF_ERROR(StartController());
  for (int i = 0; i < options_.hosts; ++i) VMG_RETURN_IF_ERROR(StartAgent(i));
  return WaitHostsUp(options_.hosts, timeout);
}

}  // namespace vmgrid
