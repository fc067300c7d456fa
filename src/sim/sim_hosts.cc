#include "sim/sim_hosts.h"

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "agent/agent_api.h"
#include "client/api_client.h"
#include "common/http_json.h"
#include "common/http_server.h"
#include "common/signals.h"
#include "common/tls.h"
#include "common/util.h"
#include "proto/vm_status.h"

namespace vmgrid {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using Req = httplib::Request;
using Res = httplib::Response;

namespace {

// Every agent path of every simulated host: /sim/NAME/agent/v1...
const std::string kHostPrefix = R"(/sim/([^/]+))";

}  // namespace

// One simulated host behind the real agent API: its SimVmTable, its report,
// and paths that name nothing real ("/sim/NAME/...").
class SimAgentHost : public AgentHost {
 public:
  SimAgentHost(SimHosts& owner, int index) : owner_(owner), index_(index) {}

  VmDriver& driver() override { return owner_.host(index_); }
  HostReport Report() override { return owner_.Report(index_); }
  Status PrepareSpec(VmSpec& spec) override {
    if (spec.disk_mode == "persistent") {
      VMG_ASSIGN_OR_RETURN(spec.workspace_path, WorkspaceFile(spec.workspace_path));
    }
    return Status::Ok();
  }
  Result<std::string> WorkspaceFile(const std::string& rel) override {
    return "/sim/" + owner_.HostName(index_) + "/workspaces/" + rel;
  }
  Result<ImageCheckpointResult> ImageCheckpoint(const VmSpec& spec,
                                                const ImageCheckpointRequest& req) override {
    if (!req.push_as.empty())
      return MakeError(ErrorCode::kFailedPrecondition, "simulated hosts have no image server");
    VMG_RETURN_IF_ERROR(driver().MakeImageCheckpoint(spec.image, spec.blobs, req.vcpus,
                                                     req.memory_mb, req.target_dir));
    return ImageCheckpointResult{req.target_dir, {}, {}};
  }

 private:
  SimHosts& owner_;
  const int index_;
};

SimHosts::SimHosts(SimHostsOptions options) : options_(std::move(options)) {
  // Fake latency of a VM operation, counted.
  auto operate = [this] {
    ++vm_ops_;
    if (options_.op_latency_ms > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(options_.op_latency_ms));
  };
  for (int i = 0; i < options_.count; ++i) {
    hosts_.push_back(std::make_unique<SimVmTable>(HostName(i), operate));
    agent_hosts_.push_back(std::make_unique<SimAgentHost>(*this, i));
    index_of_[HostName(i)] = i;
  }
  host_ids_.resize(hosts_.size());
  host_tokens_.resize(hosts_.size());
  api_tokens_.resize(hosts_.size());
  last_ok_ms_.resize(hosts_.size(), 0);
  vms_acks_.resize(hosts_.size());
}

SimHosts::~SimHosts() {
  Shutdown();
  Wait();
}

std::string SimHosts::HostName(int index) const {
  return options_.name_prefix + std::to_string(index + 1);
}

std::string SimHosts::HostUrl(int index) const { return url_ + "/sim/" + HostName(index); }

int SimHosts::IndexOf(const std::string& name) const {
  auto it = index_of_.find(name);
  return it == index_of_.end() ? -1 : it->second;
}

std::string SimHosts::HostId(int index) const {
  std::lock_guard<std::mutex> l(ids_mu_);
  return host_ids_[static_cast<size_t>(index)];
}

HostCapacityReport SimHosts::Capacity(int index) const {
  HostCapacityReport c;
  c.vcpus = options_.vcpus;
  c.memory_mb = options_.memory_mb;
  c.disk_mb = options_.disk_mb;
  // An empty simulated disk of disk_mb: placement counts VMs' disks there.
  c.disk_total_bytes = c.disk_free_bytes = options_.disk_mb << 20;
  c.kvm = false;
  c.site = "site-" + std::to_string(index % std::max(1, options_.sites) + 1);
  c.network = "net-" + std::to_string(index % std::max(1, options_.networks) + 1);
  c.arch = "x86_64";
  return c;
}

HostReport SimHosts::Report(int index) const {
  HostReport r;
  r.name = HostName(index);
  r.url = HostUrl(index);
  r.capacity = Capacity(index);
  r.vms = hosts_[static_cast<size_t>(index)]->List();
  return r;
}

SimHosts::Stats SimHosts::stats() const {
  Stats s;
  s.heartbeats_due = HeartbeatsDue();
  s.heartbeats_ok = heartbeats_ok_;
  s.heartbeats_failed = heartbeats_failed_;
  s.heartbeat_us_total = heartbeat_us_;
  s.registered = registered_;
  s.vm_operations = vm_ops_;
  s.heartbeats_same_as = same_as_;
  s.heartbeats_same_as_refused = same_as_refused_;
  return s;
}

int SimHosts::HostsHeartbeatedSince(int64_t wall_ms) const {
  std::lock_guard<std::mutex> l(ids_mu_);
  return static_cast<int>(std::count_if(last_ok_ms_.begin(), last_ok_ms_.end(),
                                        [&](int64_t t) { return t >= wall_ms; }));
}

// As HeartbeatLoop schedules them: thread t's m hosts are all due at the
// start (round 0), then host j of them at start + period * (round + j / m).
int64_t SimHosts::HeartbeatsDue() const {
  if (heartbeat_thread_count_ == 0) return 0;
  const double elapsed = std::chrono::duration<double>(Clock::now() - heartbeat_start_).count();
  const double rounds = elapsed / options_.heartbeat_interval_s;
  int64_t due = 0;
  for (int t = 0; t < heartbeat_thread_count_; ++t) {
    const int64_t m = (options_.count - t + heartbeat_thread_count_ - 1) / heartbeat_thread_count_;
    const auto q = static_cast<int64_t>(std::floor(rounds * static_cast<double>(m)));
    due += m + std::max<int64_t>(0, q - m + 1);
  }
  return due;
}

Status SimHosts::Start() {
  if (options_.count < 1 || options_.count > 1'000'000)
    return MakeError(ErrorCode::kInvalidArgument, "count must be 1..1000000");
  if (options_.vcpus < 0 || options_.vcpus > 4096 || options_.memory_mb < 0 ||
      options_.disk_mb < 0 || options_.disk_mb > (int64_t{1} << 40))
    return MakeError(ErrorCode::kInvalidArgument, "capacity out of range");
  if (options_.heartbeat_interval_s <= 0 || options_.heartbeat_threads < 0 ||
      options_.server_threads < 1 || options_.op_latency_ms < 0)
    return MakeError(ErrorCode::kInvalidArgument,
                     "heartbeat interval, thread counts and latency must be positive");
  VMG_RETURN_IF_ERROR(ValidateName("host", HostName(options_.count - 1)));
  token_ = options_.token;
  if (token_.empty()) {
    auto t = ReadTokenFile(options_.token_file);
    if (!t.ok())
      return MakeError(
          ErrorCode::kUnauthenticated,
          "cannot read the agent token from '" + options_.token_file +
              "' (the controller writes it to STATE/agent.token): " + t.error().message);
    token_ = *t;
  }
  while (!token_.empty() && isspace(static_cast<unsigned char>(token_.back()))) token_.pop_back();

  // A scale-test tool: plain HTTP, so only on loopback (common/tls.h).
  ServerTlsOptions plain;
  plain.plain_http = true;
  VMG_RETURN_IF_ERROR(ServerTls("simulated hosts", options_.listen, plain, false));
  // One connection per request: one server plays every host, and the
  // controller keeps connections to each host alive (api/agent_client.cc);
  // each kept-alive connection would hold one of the few server threads for
  // the idle timeout, and a few dozen hosts' connections would stall the rest.
  HttpServerLimits limits;
  limits.max_requests_per_connection = 1;
  server_ = std::make_unique<GuardedServer>(limits);
  int threads = options_.server_threads;
  server_->new_task_queue = [threads] {
    return new httplib::ThreadPool(static_cast<size_t>(threads));
  };
  InstallRoutes();
  VMG_ASSIGN_OR_RETURN(url_, server_->Bind(options_.listen));
  // The schedule is fixed before anything can read it (stats(), the control API).
  int threads_wanted = options_.heartbeat_threads;
  if (threads_wanted == 0)
    threads_wanted = std::clamp(
        static_cast<int>(options_.count / options_.heartbeat_interval_s / 25) + 1, 2, 256);
  heartbeat_start_ = Clock::now();
  heartbeat_thread_count_ = std::min(threads_wanted, options_.count);
  server_thread_ = std::thread([this] { server_->listen_after_bind(); });
  for (int t = 0; t < heartbeat_thread_count_; ++t)
    heartbeat_threads_.emplace_back([this, t] { HeartbeatLoop(t); });
  return Status::Ok();
}

void SimHosts::Shutdown() {
  {
    std::lock_guard<std::mutex> l(stop_mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (server_) server_->stop();
}

void SimHosts::Wait() {
  for (auto& t : heartbeat_threads_)
    if (t.joinable()) t.join();
  if (server_thread_.joinable()) server_thread_.join();
}

// --- heartbeats -------------------------------------------------------------------

void SimHosts::SendHeartbeat(const ApiClient& controller, int index) {
  std::string host_token;
  {
    std::lock_guard<std::mutex> l(ids_mu_);
    host_token = host_tokens_[static_cast<size_t>(index)];
  }
  if (host_token.empty()) {  // first: exchange the join token for this host's credentials
    auto reg = controller.Post("/v1/agent/register", {{"name", HostName(index)}});
    if (!reg.ok() || !(*reg)["host_token"].is_string() || !(*reg)["agent_api_token"].is_string()) {
      ++heartbeats_failed_;
      if (!failing_.exchange(true))
        spdlog::warn("sim-hosts: registering with {} fails: {}", options_.controller_url,
                     reg.ok() ? "malformed answer" : reg.error().message);
      return;
    }
    host_token = (*reg)["host_token"];
    std::lock_guard<std::mutex> l(ids_mu_);
    host_tokens_[static_cast<size_t>(index)] = host_token;
    api_tokens_[static_cast<size_t>(index)] = (*reg)["agent_api_token"];
  }
  auto t0 = Clock::now();
  // As agents do: the VM list only when it changed since it was acknowledged.
  const ApiClient client(options_.controller_url, host_token, controller.options());
  VmListAck& ack = vms_acks_[static_cast<size_t>(index)];
  auto post = [&](const nlohmann::json& body) { return client.Post("/v1/agent/heartbeat", body); };
  bool named = false, refused = false;
  auto r = options_.full_vm_lists ? post(ToJson(Report(index)))
                                  : ack.Send(Report(index), post, &named, &refused);
  same_as_ += named;
  same_as_refused_ += refused;
  if (!r.ok()) {
    ++heartbeats_failed_;
    if (!failing_.exchange(true))
      spdlog::warn("sim-hosts: heartbeats to {} fail: {}", options_.controller_url,
                   r.error().message);
    return;
  }
  ++heartbeats_ok_;
  heartbeat_us_ += std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
  const int64_t answered_ms = NowMs();
  if (failing_.exchange(false))
    spdlog::info("sim-hosts: heartbeats to {} work again", options_.controller_url);
  auto reply = HeartbeatReplyFromJson(*r);
  std::string id = reply.ok() ? reply->host_id : "";
  std::lock_guard<std::mutex> l(ids_mu_);
  last_ok_ms_[static_cast<size_t>(index)] = answered_ms;
  auto& slot = host_ids_[static_cast<size_t>(index)];
  if (slot.empty() && !id.empty()) ++registered_;
  slot = id;
}

// Thread t owns hosts t, t+K, t+2K...; round 0 registers them back to back,
// later rounds spread them evenly over the interval (catching up without
// sleeping when the controller is slower than the schedule).
void SimHosts::HeartbeatLoop(int t) {
  const int k = heartbeat_thread_count_;
  std::vector<int> mine;
  for (int i = t; i < options_.count; i += k) mine.push_back(i);
  auto period = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.heartbeat_interval_s));
  ApiClient::Options o;
  o.peer_name = "controller";
  o.read_timeout_s = 10;
  ApiClient controller(options_.controller_url, token_, o);
  const auto start = heartbeat_start_;
  for (int64_t round = 0;; ++round) {
    for (size_t j = 0; j < mine.size(); ++j) {
      auto due = round == 0
                     ? start
                     : start + period * round +
                           period * static_cast<int64_t>(j) / static_cast<int64_t>(mine.size());
      {
        std::unique_lock<std::mutex> l(stop_mu_);
        if (stop_cv_.wait_until(l, due, [this] { return stop_; })) return;
      }
      SendHeartbeat(controller, mine[j]);
    }
  }
}

// --- agent API ----------------------------------------------------------------------

void SimHosts::InstallRoutes() {
  auto& s = *server_;
  s.set_payload_max_length(kMaxJsonBody);
  s.set_read_timeout(30, 0);
  s.set_write_timeout(60, 0);
  // Only the controller, with the credential it gave that host, may call
  // a host (/sim/NAME/...); unknown hosts are left to the 404 below.
  s.set_pre_routing_handler([this](const Req& req, Res& res) {
    const std::string prefix = "/sim/";
    std::string expected;
    if (req.path.rfind("/control/", 0) == 0) {
      expected = token_;  // the control API: the join token's holder
    } else if (req.path.rfind(prefix, 0) == 0) {
      const size_t end = req.path.find('/', prefix.size());
      int i = IndexOf(req.path.substr(
          prefix.size(), end == std::string::npos ? std::string::npos : end - prefix.size()));
      if (i < 0) return httplib::Server::HandlerResponse::Unhandled;
      std::lock_guard<std::mutex> l(ids_mu_);
      expected = api_tokens_[static_cast<size_t>(i)];
    }
    if (expected.empty() || !ConstantTimeEquals(BearerToken(req), expected)) {
      SendError(res, MakeError(ErrorCode::kUnauthenticated, "the agent API needs the agent token"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  InstallJsonErrorHandlers(s);
  s.set_error_handler([](const Req& req, Res& res) {
    if (res.status == 404 && res.body.empty())
      SendError(
          res, MakeError(ErrorCode::kNotFound, "no such endpoint: " + req.method + " " + req.path));
  });

  // The real agent API, one AgentHost per simulated host (matches[1]).
  InstallAgentApi(s, kHostPrefix, 1, [this](const Req& req, Res& res) -> AgentHost* {
    int i = IndexOf(req.matches[1]);
    if (i < 0) {
      SendError(res, MakeError(ErrorCode::kNotFound,
                               "no simulated host '" + std::string(req.matches[1]) + "'"));
      return nullptr;
    }
    return agent_hosts_[static_cast<size_t>(i)].get();
  });
  InstallControlRoutes();
}

void SimHosts::InstallControlRoutes() {
  auto& s = *server_;
  s.Get("/control/v1/stats", [this](const Req& req, Res& res) {
    if (auto st = CheckQueryParams(req, {"since_ms"}); !st.ok()) return SendError(res, st.error());
    auto since = IntQueryParam(req, "since_ms", -1, -1, int64_t{1} << 62);
    if (!since.ok()) return SendError(res, since.error());
    const Stats st = stats();
    json body = {{"count", options_.count},
                 {"heartbeats_due", st.heartbeats_due},
                 {"heartbeats_ok", st.heartbeats_ok},
                 {"heartbeats_failed", st.heartbeats_failed},
                 {"heartbeat_us_total", st.heartbeat_us_total},
                 {"registered", st.registered},
                 {"vm_operations", st.vm_operations},
                 {"heartbeats_same_as", st.heartbeats_same_as},
                 {"heartbeats_same_as_refused", st.heartbeats_same_as_refused}};
    if (*since >= 0) body["hosts_heartbeated_since"] = HostsHeartbeatedSince(*since);
    SendJson(res, 200, body);
  });
  s.Post("/control/v1/adopt", [this](const Req& req, Res& res) {
    auto body = ParseJsonObject(req.body, false);
    if (!body.ok()) return SendError(res, body.error());
    if (!(*body)["vms"].is_array())
      return SendError(res, MakeError(ErrorCode::kInvalidArgument, "vms must be an array"));
    int64_t adopted = 0;
    for (const auto& item : (*body)["vms"]) {
      const std::string where = "vms[" + std::to_string(adopted) + "]: ";
      const json name = item.is_object() ? item.value("host", json()) : json();
      const int i = name.is_string() ? IndexOf(name.get<std::string>()) : -1;
      if (i < 0)
        return SendError(res, MakeError(ErrorCode::kNotFound, where + "no such simulated host"));
      auto status = VmStatusFromJson(item.value("status", json()));
      if (!status.ok())
        return SendError(res, MakeError(status.error().code, where + status.error().message));
      if (auto st = host(i).Adopt(*status); !st.ok())
        return SendError(res, MakeError(st.error().code, where + st.error().message));
      ++adopted;
    }
    SendJson(res, 200, {{"adopted", adopted}});
  });
}

int RunSimHosts(const SimHostsOptions& options) {
  InstallTerminationHandlers();
  SimHosts sim(options);
  Status st = sim.Start();
  if (!st.ok()) {
    spdlog::error("sim-hosts: {}", st.error().message);
    return 1;
  }
  spdlog::info(
      "sim-hosts: {} simulated hosts at {}/sim/{}1..{} registering with {} (heartbeat every {} s)",
      options.count, sim.url(), options.name_prefix, options.count, options.controller_url,
      options.heartbeat_interval_s);
  // A line of progress every 30 s until told to stop.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread reporter([&] {
    std::unique_lock<std::mutex> l(mu);
    while (!cv.wait_for(l, std::chrono::seconds(30), [&] { return done; })) {
      auto s = sim.stats();
      spdlog::info(
          "sim-hosts: {}/{} registered, {} heartbeats ok ({:.1f} ms mean), {} failed, {} VM "
          "operations",
          s.registered, options.count, s.heartbeats_ok,
          s.heartbeats_ok ? static_cast<double>(s.heartbeat_us_total) / 1000.0 /
                                static_cast<double>(s.heartbeats_ok)
                          : 0.0,
          s.heartbeats_failed, s.vm_operations);
    }
  });
  WaitForTermination();
  {
    std::lock_guard<std::mutex> l(mu);
    done = true;
  }
  cv.notify_all();
  reporter.join();
  sim.Shutdown();
  sim.Wait();
  spdlog::info("sim-hosts stopped");
  return 0;
}

}  // namespace vmgrid
