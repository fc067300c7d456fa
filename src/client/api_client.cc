#include "client/api_client.h"

#include <fcntl.h>
#include <httplib.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "common/tls.h"

namespace vmgrid {
namespace {

using nlohmann::json;

constexpr size_t kUploadChunk = 1 << 20;  // 1 MiB per read/write

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::string Snippet(const std::string& body) {
  std::string s = Trim(body);
  if (s.size() > 200) s = s.substr(0, 200) + "...";
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  return s;
}

std::string DumpJson(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Turns a completed HTTP exchange into the API result.
Result<json> ParseResponse(const httplib::Response& res, const std::string& url) {
  const int status = res.status;
  if (status >= 200 && status < 300) {
    if (Trim(res.body).empty()) return json(nullptr);
    json j = json::parse(res.body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      return MakeError(ErrorCode::kInternal,
                       "invalid JSON in the answer from " + url + ": " + Snippet(res.body));
    }
    return j;
  }
  json j = json::parse(res.body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_object()) {
    const json& e = j["error"];
    ErrorCode code = ErrorCodeFromHttpStatus(status);
    if (e.contains("code") && e["code"].is_string()) {
      code = ErrorCodeFromApiString(e["code"].get<std::string>());
    }
    std::string message;
    if (e.contains("message") && e["message"].is_string()) {
      message = e["message"].get<std::string>();
    }
    if (message.empty()) message = "HTTP " + std::to_string(status) + " from " + url;
    return MakeError(code, message);
  }
  std::string message = "HTTP " + std::to_string(status) + " from " + url;
  std::string snippet = Snippet(res.body);
  if (!snippet.empty()) message += ": " + snippet;
  return MakeError(ErrorCodeFromHttpStatus(status), message);
}

// Idle keep-alive connections, per "scheme://host:port\ntoken\nuser agent".
constexpr size_t kIdlePerPeer = 4;
struct IdleClient {
  std::unique_ptr<httplib::Client> cli;
  std::chrono::steady_clock::time_point since;
};
std::mutex idle_mu;
std::map<std::string, std::vector<IdleClient>>& IdleClients() {  // guarded by idle_mu
  static auto* m = new std::map<std::string, std::vector<IdleClient>>;
  return *m;
}

}  // namespace

// Access to ApiClient's private state for the request helpers below.
struct ApiClientInternals {
  using Endpoint = ApiClient::Endpoint;

  static std::unique_ptr<httplib::Client> MakeClient(const ApiClient& c, const Endpoint& ep) {
    auto cli = NewHttpClient(ep.scheme_host_port);  // https: verified against our CA
    cli->set_connection_timeout(c.options_.connect_timeout_s, 0);
    cli->set_read_timeout(c.options_.read_timeout_s, 0);
    cli->set_write_timeout(c.options_.write_timeout_s, 0);
    cli->set_keep_alive(false);
    cli->set_follow_location(false);
    if (!c.token_.empty()) cli->set_bearer_token_auth(c.token_);
    cli->set_default_headers(
        {{"Accept", "application/json"}, {"User-Agent", c.options_.user_agent}});
    return cli;
  }

  // Whether an idle connection may carry a request: after a complete
  // exchange the peer has nothing more to say, so anything readable (its FIN
  // or RST when it closed or died, a TLS close_notify) means the peer is gone
  // and a request sent there would be lost unread. A peer that restarted
  // closed all its connections when its old process died.
  static bool StillOpen(const httplib::Client& cli) {
    if (!cli.is_socket_open()) return false;
    pollfd p{cli.socket(), POLLIN | POLLRDHUP, 0};
    int n = ::poll(&p, 1, 0);
    return n == 0;
  }

  static std::string PoolKey(const ApiClient& c, const Endpoint& ep) {
    return ep.scheme_host_port + "\n" + c.token_ + "\n" + c.options_.user_agent;
  }

  // A connection for one GET/POST/DELETE: an idle pooled one when
  // keep_alive, else a new one.
  static std::unique_ptr<httplib::Client> TakeClient(const ApiClient& c, const Endpoint& ep) {
    if (!c.options_.keep_alive) return MakeClient(c, ep);
    std::unique_ptr<httplib::Client> cli;
    {
      std::lock_guard<std::mutex> l(idle_mu);
      auto it = IdleClients().find(PoolKey(c, ep));
      if (it != IdleClients().end()) {
        const auto now = std::chrono::steady_clock::now();
        auto& v = it->second;
        while (!v.empty()) {
          IdleClient ic = std::move(v.back());
          v.pop_back();
          if (now - ic.since < std::chrono::milliseconds(c.options_.keep_alive_idle_ms) &&
              StillOpen(*ic.cli)) {
            cli = std::move(ic.cli);
            break;
          }
        }
        if (v.empty()) IdleClients().erase(it);
      }
    }
    if (!cli) {
      cli = MakeClient(c, ep);
      cli->set_keep_alive(true);
      cli->set_tcp_nodelay(true);  // else Nagle + delayed ACK: 40 ms per call
    }
    cli->set_connection_timeout(c.options_.connect_timeout_s, 0);
    cli->set_read_timeout(c.options_.read_timeout_s, 0);
    cli->set_write_timeout(c.options_.write_timeout_s, 0);
    return cli;
  }

  // Returns a connection after a successful exchange (keep_alive only).
  static void ReturnClient(const ApiClient& c, const Endpoint& ep,
                           std::unique_ptr<httplib::Client> cli) {
    if (!c.options_.keep_alive || !cli->is_socket_open()) return;
    std::lock_guard<std::mutex> l(idle_mu);
    auto& v = IdleClients()[PoolKey(c, ep)];
    if (v.size() < kIdlePerPeer) v.push_back({std::move(cli), std::chrono::steady_clock::now()});
  }

  // The request was certainly not sent: another endpoint may take it.
  static bool NotSent(httplib::Error err) {
    return err == httplib::Error::Connection || err == httplib::Error::ConnectionTimeout ||
           err == httplib::Error::SSLConnection;
  }

  // Tries the endpoints from the current one on; `once(ep, &not_sent)` makes
  // one attempt and says whether it failed before sending anything.
  static Result<json> Failover(const ApiClient& c,
                               const std::function<Result<json>(const Endpoint&, bool*)>& once) {
    const size_t n = c.endpoints_.size();
    const size_t first = c.current_->load() % n;
    Result<json> r = MakeError(ErrorCode::kInternal, "no endpoint");
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (first + k) % n;
      bool not_sent = false;
      r = once(c.endpoints_[i], &not_sent);
      if (!not_sent) {
        if (i != first) c.current_->store(i);
        return r;
      }
    }
    return r;
  }

  static Error TransportError(const ApiClient& c, const Endpoint& ep, httplib::Error err,
                              double elapsed_s) {
    const std::string& url = ep.base_url;
    const std::string unreachable = "cannot reach the " + c.options_.peer_name + " at " + url;
    switch (err) {
      case httplib::Error::Connection:
        return MakeError(ErrorCode::kUnavailable, unreachable + ": " + c.options_.unreachable_hint);
      case httplib::Error::ConnectionTimeout:
        return MakeError(ErrorCode::kUnavailable, unreachable + " (no connection within " +
                                                      std::to_string(c.options_.connect_timeout_s) +
                                                      "s): " + c.options_.unreachable_hint);
      case httplib::Error::Read:
        if (elapsed_s + 0.5 >= c.options_.read_timeout_s) {
          return MakeError(ErrorCode::kTimeout, "the " + c.options_.peer_name + " at " + url +
                                                    " did not answer within " +
                                                    std::to_string(c.options_.read_timeout_s) +
                                                    "s");
        }
        return MakeError(ErrorCode::kUnavailable, "the connection to the " + c.options_.peer_name +
                                                      " at " + url +
                                                      " was lost before it answered");
      case httplib::Error::Write:
        return MakeError(ErrorCode::kUnavailable, "the connection to the " + c.options_.peer_name +
                                                      " at " + url +
                                                      " was lost while sending the request");
      case httplib::Error::Canceled:
        return MakeError(ErrorCode::kInternal, "request canceled");
      case httplib::Error::SSLServerVerification:
        return MakeError(ErrorCode::kUnavailable,
                         "the " + c.options_.peer_name + " at " + url +
                             " presented a certificate that is not trusted or not for this host "
                             "name; trust the grid's CA (--ca or VMGRID_CA; `vmgrid dev` writes "
                             "STATE/tls/ca.pem)");
      case httplib::Error::SSLConnection:
      case httplib::Error::SSLLoadingCerts:
        return MakeError(ErrorCode::kUnavailable, "TLS failure talking to the " +
                                                      c.options_.peer_name + " at " + url + ": " +
                                                      httplib::to_string(err) +
                                                      " (plain http:// to a TLS server, or a "
                                                      "client certificate it refused?)");
      default:
        return MakeError(ErrorCode::kInternal, "request to the " + c.options_.peer_name + " at " +
                                                   url + " failed: " + httplib::to_string(err));
    }
  }

  // method: GET, POST or DELETE.
  static Result<json> Send(const ApiClient& c, const std::string& method, const std::string& path,
                           const json& body) {
    if (!c.url_error_.empty()) return MakeError(ErrorCode::kInvalidArgument, c.url_error_);
    const bool has_body = !body.is_null();
    const std::string payload = has_body ? DumpJson(body) : std::string();
    return Failover(c, [&](const Endpoint& ep, bool* not_sent) -> Result<json> {
      return SendTo(c, ep, method, path, has_body, payload, not_sent);
    });
  }

  static Result<json> SendTo(const ApiClient& c, const Endpoint& ep, const std::string& method,
                             const std::string& path, bool has_body, const std::string& payload,
                             bool* not_sent) {
    try {
      auto cli = TakeClient(c, ep);
      const std::string full = ep.path_prefix + path;
      const auto start = std::chrono::steady_clock::now();
      httplib::Result res{nullptr, httplib::Error::Unknown};
      if (method == "GET") {
        res = cli->Get(full);
      } else if (method == "POST") {
        res = has_body ? cli->Post(full, payload, "application/json") : cli->Post(full);
      } else if (method == "DELETE") {
        res = has_body ? cli->Delete(full, payload, "application/json") : cli->Delete(full);
      } else if (method == "PUT") {
        res = cli->Put(full, payload, "application/json");
      } else {
        return MakeError(ErrorCode::kInternal, "unsupported method " + method);
      }
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (!res) {
        *not_sent = NotSent(res.error());
        return TransportError(c, ep, res.error(), elapsed);
      }
      auto answer = ParseResponse(res.value(), ep.base_url);
      ReturnClient(c, ep, std::move(cli));
      return answer;
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kInternal, std::string("HTTP client failure: ") + e.what());
    }
  }

  static Result<json> PutFile(const ApiClient& c, const std::string& path,
                              const std::string& file_path, const ApiClient::ProgressFn& progress) {
    if (!c.url_error_.empty()) return MakeError(ErrorCode::kInvalidArgument, c.url_error_);
    return Failover(c, [&](const Endpoint& ep, bool* not_sent) {
      return PutFileTo(c, ep, path, file_path, progress, not_sent);
    });
  }

  static Result<json> PutFileTo(const ApiClient& c, const Endpoint& ep, const std::string& path,
                                const std::string& file_path, const ApiClient::ProgressFn& progress,
                                bool* not_sent) {
    int fd = ::open(file_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "cannot open " + file_path + ": " + std::strerror(errno));
    }
    struct FdCloser {
      int fd;
      ~FdCloser() { ::close(fd); }
    } closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "cannot stat " + file_path + ": " + std::strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
      return MakeError(ErrorCode::kInvalidArgument, file_path + " is not a regular file");
    }
    const uint64_t total = static_cast<uint64_t>(st.st_size);
    try {
      std::vector<char> buf(kUploadChunk);
      std::string read_error;
      bool canceled = false;
      if (progress && !progress(0, total)) {
        return MakeError(ErrorCode::kInternal, "upload canceled");
      }
      httplib::ContentProvider provider = [&](size_t offset, size_t length,
                                              httplib::DataSink& sink) -> bool {
        size_t want = std::min(length, buf.size());
        ssize_t n;
        do {
          n = ::pread(fd, buf.data(), want, static_cast<off_t>(offset));
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
          read_error = "cannot read " + file_path + ": " + std::strerror(errno);
          return false;
        }
        if (n == 0) {
          read_error = file_path + " shrank while it was being uploaded";
          return false;
        }
        if (!sink.write(buf.data(), static_cast<size_t>(n))) {
          return false;
        }
        if (progress && !progress(offset + static_cast<uint64_t>(n), total)) {
          canceled = true;
          return false;
        }
        return true;
      };
      auto cli = MakeClient(c, ep);
      const auto start = std::chrono::steady_clock::now();
      auto res = cli->Put(ep.path_prefix + path, static_cast<size_t>(total), provider,
                          "application/octet-stream");
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (!read_error.empty()) return MakeError(ErrorCode::kInternal, read_error);
      if (canceled) return MakeError(ErrorCode::kInternal, "upload canceled");
      if (!res) {
        *not_sent = NotSent(res.error());
        return TransportError(c, ep, res.error(), elapsed);
      }
      return ParseResponse(res.value(), ep.base_url);
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kInternal, std::string("HTTP client failure: ") + e.what());
    }
  }
};

ApiClient::ApiClient(std::string base_url, std::string token)
    : ApiClient(std::move(base_url), std::move(token), Options{}) {}

ApiClient::ApiClient(std::string base_url, std::string token, Options options)
    : token_(std::move(token)), options_(std::move(options)) {
  // One URL, or several separated by commas (failover).
  std::vector<std::string> urls;
  for (size_t at = 0;;) {
    const size_t comma = base_url.find(',', at);
    urls.push_back(Trim(base_url.substr(at, comma == std::string::npos ? comma : comma - at)));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  for (const std::string& one : urls) {
    std::string url = one;
    if (url.empty() && urls.size() > 1) {
      url_error_ = "bad URL list '" + base_url + "': an empty entry";
      continue;
    }
    if (url.find("://") == std::string::npos) url = "http://" + url;
    const size_t scheme_end = url.find("://");
    const std::string scheme = url.substr(0, scheme_end);
    const std::string rest = url.substr(scheme_end + 3);
    const size_t slash = rest.find('/');
    const std::string host_port = rest.substr(0, slash);
    std::string prefix = slash == std::string::npos ? "" : rest.substr(slash);
    while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
    if (scheme != "http" && scheme != "https") {
      url_error_ = "bad URL '" + one + "': the scheme must be http or https";
    } else if (host_port.empty() || host_port.front() == ':') {
      url_error_ = "bad URL '" + one + "': no host (expected http://HOST:PORT)";
    } else if (host_port.find_first_of("?#@ ") != std::string::npos) {
      url_error_ = "bad URL '" + one + "': expected http://HOST:PORT";
    } else {
      // A port, if present, must be numeric (skip IPv6 brackets).
      size_t colon = host_port.rfind(':');
      size_t bracket = host_port.rfind(']');
      if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket)) {
        std::string port = host_port.substr(colon + 1);
        if (port.empty() || port.size() > 5 ||
            port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) > 65535) {
          url_error_ = "bad URL '" + one + "': bad port '" + port + "'";
        }
      }
    }
    Endpoint ep{scheme + "://" + host_port, prefix, scheme + "://" + host_port + prefix};
    base_url_ += (base_url_.empty() ? "" : ",") + ep.base_url;
    endpoints_.push_back(std::move(ep));
  }
  for (char ch : token_) {
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
      url_error_ = "the token contains control characters (a stray newline?)";
      break;
    }
  }
}

Result<nlohmann::json> ApiClient::Get(const std::string& path) const {
  return ApiClientInternals::Send(*this, "GET", path, nullptr);
}

Result<nlohmann::json> ApiClient::Post(const std::string& path, const nlohmann::json& body) const {
  return ApiClientInternals::Send(*this, "POST", path, body);
}

Result<nlohmann::json> ApiClient::Delete(const std::string& path,
                                         const nlohmann::json& body) const {
  return ApiClientInternals::Send(*this, "DELETE", path, body);
}

Result<nlohmann::json> ApiClient::Put(const std::string& path, const nlohmann::json& body) const {
  return ApiClientInternals::Send(*this, "PUT", path, body);
}

Result<nlohmann::json> ApiClient::PutFile(const std::string& path, const std::string& file_path,
                                          const ProgressFn& progress) const {
  return ApiClientInternals::PutFile(*this, path, file_path, progress);
}

std::string PathEscape(const std::string& segment) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(segment.size());
  for (unsigned char ch : segment) {
    if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
        ch == '-' || ch == '.' || ch == '_' || ch == '~') {
      out.push_back(static_cast<char>(ch));
    } else {
      out.push_back('%');
      out.push_back(kHex[ch >> 4]);
      out.push_back(kHex[ch & 15]);
    }
  }
  return out;
}

ErrorCode ErrorCodeFromApiString(const std::string& code) {
  if (code == "invalid_argument") return ErrorCode::kInvalidArgument;
  if (code == "payload_too_large") return ErrorCode::kInvalidArgument;
  if (code == "not_found") return ErrorCode::kNotFound;
  if (code == "already_exists") return ErrorCode::kAlreadyExists;
  if (code == "failed_precondition") return ErrorCode::kFailedPrecondition;
  if (code == "resource_exhausted") return ErrorCode::kResourceExhausted;
  if (code == "unauthenticated") return ErrorCode::kUnauthenticated;
  if (code == "permission_denied") return ErrorCode::kPermissionDenied;
  if (code == "unavailable") return ErrorCode::kUnavailable;
  if (code == "timeout") return ErrorCode::kTimeout;
  if (code == "too_many_requests") return ErrorCode::kTooManyRequests;
  return ErrorCode::kInternal;
}

ErrorCode ErrorCodeFromHttpStatus(int status) {
  switch (status) {
    case 400:
    case 413:
    case 422:
      return ErrorCode::kInvalidArgument;
    case 401:
      return ErrorCode::kUnauthenticated;
    case 403:
      return ErrorCode::kPermissionDenied;
    case 404:
      return ErrorCode::kNotFound;
    case 409:
      return ErrorCode::kFailedPrecondition;
    case 429:
      return ErrorCode::kTooManyRequests;
    case 502:
    case 503:
      return ErrorCode::kUnavailable;
    case 504:
      return ErrorCode::kTimeout;
    default:
      return ErrorCode::kInternal;
  }
}

}  // namespace vmgrid
