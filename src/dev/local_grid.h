// LocalGrid: a controller and N agents on this machine, each a child process
// of ours running the `vmgrid` binary, with its own state directory and port.
// Used by `vmgrid dev`, by the integration tests (which kill and restart the
// pieces) and by the benchmarks. Not thread-safe.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "client/api_client.h"
#include "common/child_process.h"
#include "common/result.h"
#include "dev/host_namespaces.h"

namespace vmgrid {

struct LocalGridOptions {
  std::string vmgrid_binary;  // "" = this executable
  std::string state_dir;      // controller/, host-1/, ..., logs/
  int port = 0;               // controller port; 0 = pick a free one
  int hosts = 1;
  int host_vcpus = 0;  // 0 = agent default
  int64_t host_memory_mb = 0;
  // Run an image server (state_dir/image-server, token in
  // state_dir/image-server.token) that the controller publishes to and
  // agents fetch from. Off: agents read image files by path.
  bool image_server = true;
  int image_server_port = 0;           // 0 = pick a free one
  std::string agent_image_server_url;  // "" = the grid's own (e.g. a WAN emulator in front of it)
  bool agent_prefetch = true;
  bool agent_compressed_transfer = true;     // false: agents run with --no-compressed-transfer
  std::vector<std::string> controller_args;  // appended to `vmgrid controller` (e.g. limits)
  // The controller serves agents on a listener of their own (--agent-listen),
  // so users' connections never delay heartbeats.
  bool agent_listener = true;
  // Every role serves TLS with certificates of a CA in state_dir/tls
  // (created on first start; controller, image-server, host-N and an
  // "operator" client certificate for this process). Off: --plain-http.
  bool tls = true;
  // Each agent in a network namespace of its own, all joined by a bridge in
  // the root namespace (dev/host_namespaces.h; needs root): agents, their
  // tunnels and their traffic to the controller and image server cross real
  // links. Off: everything on loopback.
  bool host_namespaces = false;
  // Every role serves Prometheus metrics (--metrics-listen, plain HTTP) on
  // a port of its own; see the *_metrics_url accessors.
  bool metrics = false;
  // --log-format of every role started (common/log_format.h): text or json.
  std::string log_format = "text";
  // Controllers (docs/ha.md): more than one needs `database`, a PostgreSQL
  // URI they all use. They share the controller state directory (tokens,
  // the host-credential key, images); agents and Admin() get all their URLs.
  int controllers = 1;
  std::string database;  // the controllers' --database ("": SQLite in the state directory)
};

class LocalGrid {
 public:
  explicit LocalGrid(LocalGridOptions options);
  ~LocalGrid();

  // Starts the controller and all agents and waits until every host is up.
  Status Start(std::chrono::milliseconds timeout = std::chrono::seconds(60));

  // Starts every controller (that is not running).
  Status StartController(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  Status StartImageServer(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  void StopImageServer(bool hard);
  // Stops every controller.
  void StopController(bool hard);
  // One controller of several (index 0 is url()): stop it, or its pid (0:
  // not running).
  void StopControllerAt(int index, bool hard);
  pid_t controller_pid(int index) const;
  int controllers() const { return options_.controllers; }
  Status StartAgent(int index, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  void StopAgent(int index, bool hard);
  // The pid of agent `index`'s process (0: not running), e.g. to freeze it
  // with SIGSTOP as a partition would.
  pid_t agent_pid(int index) const;
  // Waits until the controller lists `n` hosts as up.
  Status WaitHostsUp(int n, std::chrono::milliseconds timeout);

  // SIGKILLs every QEMU whose files live under this grid's state directory
  // (test and demo clean-up; VMs otherwise outlive their agents by design).
  int KillVmProcesses();

  const std::string& url() const { return url_; }
  // Every controller's URL, comma-separated (ApiClient fails over between them).
  std::string urls() const;
  std::string controller_url(int index) const;
  // The controller's listener for agents ("" with agent_listener off).
  const std::string& agent_controller_url() const { return agent_controller_url_; }
  std::string admin_token() const;
  std::string controller_state_dir() const { return options_.state_dir + "/controller"; }
  std::string agent_state_dir(int index) const;
  std::string log_dir() const { return options_.state_dir + "/logs"; }
  ApiClient Admin() const;
  // The grid's CA and certificates (state_dir/tls); "" without TLS.
  std::string tls_dir() const { return options_.tls ? options_.state_dir + "/tls" : ""; }
  std::string ca_file() const { return options_.tls ? tls_dir() + "/ca.pem" : ""; }
  // The command-line flags with which `role` (a PKI name) serves.
  std::vector<std::string> TlsArgs(const std::string& role) const;
  // TlsArgs plus the flags every role started by the grid shares (--log-format).
  std::vector<std::string> RoleArgs(const std::string& role) const;
  int hosts() const { return options_.hosts; }
  // The namespaces (host_namespaces on), else nullptr.
  HostNamespaces* namespaces() const { return netns_.get(); }
  // "" when the grid runs without one.
  std::string image_server_url() const;
  // http://HOST:PORT of each role's metrics listener ("" without `metrics`).
  std::string controller_metrics_url() const { return MetricsUrl("127.0.0.1", 0); }
  std::string image_server_metrics_url() const {
    return options_.image_server ? MetricsUrl(image_server_host_, 1) : "";
  }
  std::string agent_metrics_url(int index) const {
    return MetricsUrl(host_address(index), 2 + static_cast<size_t>(index));
  }
  std::string image_server_dir() const { return options_.state_dir + "/image-server"; }
  std::string image_server_token_file() const { return options_.state_dir + "/image-server.token"; }
  // The key of workspace grants, shared by the image server and the
  // controller only (durable workspaces; docs/vm-lifecycle.md).
  std::string image_server_grant_key_file() const {
    return options_.state_dir + "/image-server.grant-key";
  }
  // Changes where agents started from now on fetch chunks (benchmarks).
  void set_agent_image_server_url(std::string url) {
    options_.agent_image_server_url = std::move(url);
  }
  void set_agent_prefetch(bool on) { options_.agent_prefetch = on; }
  void set_agent_compressed_transfer(bool on) { options_.agent_compressed_transfer = on; }

 private:
  LocalGridOptions options_;
  std::string url_;
  std::vector<std::unique_ptr<ChildProcess>> controllers_;  // one per options_.controllers
  std::vector<int> controller_ports_;                       // [0] = options_.port
  std::vector<int> agent_listener_ports_;                   // with agent_listener
  std::unique_ptr<ChildProcess> image_server_;
  std::vector<std::unique_ptr<ChildProcess>> agents_;
  std::vector<int> agent_ports_;
  // Metrics ports: the controller's, the image server's, then the agents'.
  std::vector<int> metrics_ports_;
  std::string MetricsUrl(const std::string& host, size_t slot) const {
    return options_.metrics ? "http://" + host + ":" + std::to_string(metrics_ports_[slot]) : "";
  }
  std::string agent_controller_url_;   // the controller's agents' listener, or ""
  std::string agent_controller_urls_;  // every controller's, comma-separated ("": none)
  std::string servers_ = "127.0.0.1";  // where agents reach the controllers
  std::string image_server_host_ = "127.0.0.1";
  std::string scheme_;  // "https://" or "http://"
  bool pki_ready_ = false;
  std::unique_ptr<HostNamespaces> netns_;
  Status netns_status_ = Status::Ok();        // why the namespaces could not be made
  std::string host_address(int index) const;  // where agent `index` listens

  Status EnsurePki();
  Status StartOneController(int index, std::chrono::milliseconds timeout);
};

// Waits until GET `path` through `client` succeeds and `done(answer)` holds.
Result<nlohmann::json> PollUntil(const ApiClient& client, const std::string& path,
                                 const std::function<bool(const nlohmann::json&)>& done,
                                 std::chrono::milliseconds timeout);

// Runs an operation that a POST or DELETE answered with (202; docs/api.md,
// operation) to its end, polling GET /v1/operations/ID. Returns the
// operation's result if it succeeded, else its error (the operation's code
// and message). A failed request, or an answer that is not an operation,
// is returned as it is.
Result<nlohmann::json> AwaitOperation(const ApiClient& client, const Result<nlohmann::json>& answer,
                                      std::chrono::milliseconds timeout = std::chrono::minutes(10));

}  // namespace vmgrid
