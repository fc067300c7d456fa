// ApiClient: a small JSON-over-HTTP client for the vmgrid REST API (see
// docs/api.md), used by the CLI, and by the agent (to the controller) and the
// controller (to agents). Generic: it never prints.
//
// Every call opens its own connection, so one ApiClient may be used from
// several threads at once. With Options::keep_alive, GET/POST/DELETE calls
// instead reuse idle connections to the same scheme://host:port (shared by
// all ApiClients in the process; a few per peer, each idle at most
// Options::keep_alive_idle_ms, within the server's keep-alive timeout).
//
// Error mapping:
//   - non-2xx with body {"error":{"code","message"}}: the code string maps to
//     ErrorCode (payload_too_large -> kInvalidArgument, unknown -> kInternal),
//     the message is the server's message.
//   - non-2xx without such a body: mapped from the HTTP status.
//   - connection refused / unreachable: kUnavailable, with a hint naming the
//     peer (Options::peer_name, Options::unreachable_hint).
//   - no answer within the read timeout: kTimeout.
//
// Several controllers (docs/ha.md): base_url may be a comma-separated list
// of URLs. Calls go to the one that last answered; when it cannot be
// connected to (refused, unreachable, connect timeout: the request was not
// sent, so any method may be retried) the next one is tried and, if it
// answers, used from then on. An answer of any status, or a connection lost
// after the request was sent, is returned as it is (a POST may have been
// acted on; retrying it could do it twice).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"

namespace vmgrid {

class ApiClient {
 public:
  struct Options {
    int connect_timeout_s = 5;
    int read_timeout_s = 300;
    int write_timeout_s = 300;
    // Used in "cannot reach the <peer_name> at URL: <unreachable_hint>".
    std::string peer_name = "controller";
    std::string unreachable_hint = "is `vmgrid controller` (or `vmgrid dev`) running?";
    std::string user_agent = "vmgrid";
    // Reuse connections (see above). The peer keeps one server thread per
    // open connection; use it only for peers with threads to spare.
    bool keep_alive = false;
    // An idle connection older than this is not reused (closed instead). It
    // must stay below the peer's own idle timeout (common/http_server.h
    // HttpServerLimits::keep_alive_idle_ms, 5 s by default), or a request
    // could go out on a connection the peer is closing.
    int keep_alive_idle_ms = 2'000;
  };

  // Called while uploading; return false to cancel (the call then fails
  // with kInternal "upload canceled").
  using ProgressFn = std::function<bool(uint64_t bytes_sent, uint64_t total)>;

  // base_url: "http://host:port" (a path prefix such as "http://h:1/x" is
  // kept; a missing scheme means http), or several such URLs separated by
  // commas (failover, above). token: bearer token; empty sends no
  // Authorization header. A malformed URL makes every call fail with
  // kInvalidArgument.
  ApiClient(std::string base_url, std::string token);
  ApiClient(std::string base_url, std::string token, Options options);

  // The URL (or the comma-separated URLs), normalized.
  const std::string& base_url() const { return base_url_; }
  const Options& options() const { return options_; }
  void set_read_timeout_s(int seconds) { options_.read_timeout_s = seconds; }

  // path: absolute API path, e.g. "/v1/vms" (may contain a query string).
  // Returns the parsed JSON answer; an empty body (e.g. 204) gives null.
  Result<nlohmann::json> Get(const std::string& path) const;
  // A null body sends no body.
  Result<nlohmann::json> Post(const std::string& path, const nlohmann::json& body = nullptr) const;
  Result<nlohmann::json> Delete(const std::string& path,
                                const nlohmann::json& body = nullptr) const;
  // A JSON body (PUT of a whole resource, e.g. a user's quota).
  Result<nlohmann::json> Put(const std::string& path, const nlohmann::json& body) const;
  // Streams the file as application/octet-stream with PUT, reading it in
  // chunks (never whole into memory). progress may be empty.
  Result<nlohmann::json> PutFile(const std::string& path, const std::string& file_path,
                                 const ProgressFn& progress = nullptr) const;

 private:
  struct Endpoint {
    std::string scheme_host_port;  // "http://host:port"
    std::string path_prefix;       // "" or "/prefix"
    std::string base_url;          // normalized, for messages
  };
  std::vector<Endpoint> endpoints_;  // at least one
  // The endpoint that last answered; shared by copies of this client.
  std::shared_ptr<std::atomic<size_t>> current_ = std::make_shared<std::atomic<size_t>>(0);
  std::string base_url_;   // normalized, for messages
  std::string url_error_;  // non-empty when base_url was malformed
  std::string token_;
  Options options_;

  friend struct ApiClientInternals;
};

// Percent-encodes one path segment (an id or a name) for use in a URL.
std::string PathEscape(const std::string& segment);

// Maps an API error code string ("not_found", ...) to ErrorCode.
ErrorCode ErrorCodeFromApiString(const std::string& code);
// Maps an HTTP status (>= 300) to ErrorCode when the body has no error code.
ErrorCode ErrorCodeFromHttpStatus(int status);

}  // namespace vmgrid
