#include "common/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <string>
#include <string_view>

#include "common/host_port.h"
#include "common/tls.h"

namespace vmgrid {

namespace {

using Clock = std::chrono::steady_clock;

void Address(const sockaddr_storage& ss, std::string& ip, int& port) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    port = ntohs(a->sin6_port);
  }
  ip = buf;
}

// One connection's byte stream with the deadlines of HttpServerLimits. The
// header phase delivers bytes only up to the blank line ending the headers,
// so it knows exactly where the body starts.
class GuardedStream : public httplib::Stream {
 public:
  // With `ssl`, the stream speaks TLS over `sock` (which is then
  // non-blocking); Handshake must succeed before anything else.
  GuardedStream(socket_t sock, const HttpServerLimits& limits, SSL* ssl = nullptr)
      : sock_(sock), limits_(limits), ssl_(ssl) {}

  // The TLS handshake, within the first request's header deadline. Records
  // the verified client certificate's common name.
  bool Handshake(Clock::time_point deadline) {
    for (;;) {
      ERR_clear_error();
      int r = SSL_accept(ssl_);
      if (r == 1) break;
      if (!WaitFor(SSL_get_error(ssl_, r), deadline)) return false;
    }
    if (X509* peer = SSL_get1_peer_certificate(ssl_)) {
      if (SSL_get_verify_result(ssl_) == X509_V_OK) {
        char buf[256] = "";
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, buf, sizeof buf);
        peer_name = buf;
      }
      X509_free(peer);
    }
    return true;
  }

  std::string peer_name;  // CN of the verified client certificate, or ""

  // Starts a request: its header deadline runs from `start`.
  void BeginRequest(Clock::time_point start) {
    in_headers_ = true;
    header_bytes_ = header_lines_ = 0;
    line_len_ = 0;
    line_.clear();
    content_length_ = body_bytes_ = 0;
    deadline_ = start + std::chrono::milliseconds(limits_.header_timeout_ms);
  }

  // Waits up to `wait` for the first byte of another request.
  bool WaitForRequest(std::chrono::milliseconds wait) {
    if (start_ < end_) return true;
    return Fill(Clock::now() + wait);
  }

  bool failed() const { return failed_; }
  // Bytes received and not yet read (buffered here or in the socket).
  bool HasUnread() const {
    int pending = 0;
    return start_ < end_ || (ioctl(sock_, FIONREAD, &pending) == 0 && pending > 0);
  }
  bool close_after_response = false;

  // Body bytes the client announced (Content-Length) that no one has read
  // yet: a handler refused the request before reading its body.
  int64_t UnreadBody() const {
    return in_headers_ ? 0 : std::max<int64_t>(0, content_length_ - body_bytes_);
  }

  // Reads and drops the rest of the current request's body, at most `max`
  // bytes and until `until`; true when none is left. Through TLS when the
  // connection is TLS, so the count is exact.
  bool DiscardBody(Clock::time_point until, int64_t max) {
    while (UnreadBody() > 0 && max > 0 && !failed_) {
      if (start_ == end_ && !Fill(until)) return false;
      const int64_t n = std::min({static_cast<int64_t>(end_ - start_), UnreadBody(), max});
      start_ += static_cast<size_t>(n);
      body_bytes_ += n;
      max -= n;
    }
    return UnreadBody() == 0;
  }

  bool is_readable() const override {
    return start_ < end_ || (ssl_ && SSL_pending(ssl_) > 0) || Poll(POLLIN, deadline_);
  }
  bool is_writable() const override {
    return !failed_ &&
           Poll(POLLOUT, Clock::now() + std::chrono::milliseconds(limits_.write_timeout_ms));
  }

  ssize_t read(char* ptr, size_t size) override {
    if (failed_ || size == 0) return -1;
    // A deadline passed or the peer closed: the connection is done (httplib
    // would otherwise answer 400 to a half-read request and wait for the next).
    if (start_ == end_ && !Fill(deadline_)) return Fail();
    size_t n = std::min(size, end_ - start_);
    if (in_headers_) n = HeaderBytes(n);
    if (failed_) return -1;
    std::copy(buf_ + start_, buf_ + start_ + n, ptr);
    start_ += n;
    if (!in_headers_) {
      body_bytes_ += n;
      deadline_ = body_start_ + std::chrono::milliseconds(limits_.body_timeout_ms) +
                  std::chrono::milliseconds(body_bytes_ * 1000 /
                                            std::max<int64_t>(1, limits_.body_min_bytes_per_s));
    }
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (failed_) return -1;
    size_t done = 0;
    // Never blocks in send() (the socket's SO_SNDTIMEO is httplib's long
    // one): a client that stops reading is cut off after write_timeout_ms.
    const auto deadline = [this] {
      return Clock::now() + std::chrono::milliseconds(limits_.write_timeout_ms);
    };
    while (done < size) {
      if (ssl_) {
        ERR_clear_error();
        int n =
            SSL_write(ssl_, ptr + done, static_cast<int>(std::min<size_t>(size - done, 1 << 30)));
        if (n > 0) {
          done += static_cast<size_t>(n);
          continue;
        }
        if (!WaitFor(SSL_get_error(ssl_, n), deadline())) return Fail();
        continue;
      }
      if (!Poll(POLLOUT, deadline())) return Fail();
      ssize_t n = ::send(sock_, ptr + done, size - done, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) return Fail();
      done += static_cast<size_t>(n);
    }
    return static_cast<ssize_t>(size);
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getpeername(sock_, reinterpret_cast<sockaddr*>(&ss), &len) == 0) Address(ss, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(sock_, reinterpret_cast<sockaddr*>(&ss), &len) == 0) Address(ss, ip, port);
  }
  socket_t socket() const override { return sock_; }

 private:
  ssize_t Fail() {
    failed_ = true;
    return -1;
  }

  bool Poll(short events, Clock::time_point deadline) const {
    for (;;) {
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd p{sock_, events, 0};
      int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) return false;
    }
  }

  // Reads what the socket has into the empty buffer, waiting until `deadline`.
  bool Fill(Clock::time_point deadline) {
    for (;;) {
      if (ssl_) {
        ERR_clear_error();
        int n = SSL_read(ssl_, buf_, sizeof buf_);
        if (n > 0) {
          start_ = 0;
          end_ = static_cast<size_t>(n);
          return true;
        }
        if (!WaitFor(SSL_get_error(ssl_, n), deadline)) return false;
        continue;
      }
      if (!Poll(POLLIN, deadline)) return false;
      ssize_t n = ::recv(sock_, buf_, sizeof buf_, MSG_DONTWAIT);
      if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
      if (n <= 0) return false;
      start_ = 0;
      end_ = static_cast<size_t>(n);
      return true;
    }
  }

  // How many of the next `n` buffered bytes belong to the header block;
  // leaves the header phase at its blank line, fails on a cap.
  size_t HeaderBytes(size_t n) {
    for (size_t i = 0; i < n; ++i) {
      char c = buf_[start_ + i];
      if (++header_bytes_ > limits_.max_header_bytes)
        return Refuse("request header block too large");
      if (c != '\n') {
        if (c != '\r') {
          ++line_len_;
          if (line_.size() < kLineKept) line_.push_back(c);
        }
        continue;
      }
      NoteHeaderLine();
      if (line_len_ == 0 && header_lines_ > 0) {  // the blank line
        in_headers_ = false;
        body_start_ = Clock::now();
        body_bytes_ = 0;
        deadline_ = body_start_ + std::chrono::milliseconds(limits_.body_timeout_ms);
        return i + 1;
      }
      if (line_len_ > 0 && ++header_lines_ > limits_.max_header_lines)
        return Refuse("too many request header lines");
      line_len_ = 0;
    }
    return n;
  }

  // Remembers the Content-Length of the request (httplib parses it too; the
  // stream needs it to know whether a refused request's body is still
  // coming). A malformed value is left to RefuseUnframedBody and httplib.
  void NoteHeaderLine() {
    static constexpr std::string_view kName = "content-length:";
    if (line_.size() > kName.size() &&
        std::equal(kName.begin(), kName.end(), line_.begin(), [](char a, char b) {
          return a == std::tolower(static_cast<unsigned char>(b));
        })) {
      const size_t at = line_.find_first_not_of(" \t", kName.size());
      const size_t end = line_.find_last_not_of(" \t");
      int64_t v = 0;
      if (at != std::string::npos && end - at < 18) {
        auto [p, ec] = std::from_chars(line_.data() + at, line_.data() + end + 1, v);
        if (ec == std::errc() && p == line_.data() + end + 1 && v >= 0) content_length_ = v;
      }
    }
    line_.clear();
  }

  size_t Refuse(const std::string& why) {
    std::string body = "{\"error\":{\"code\":\"invalid_argument\",\"message\":\"" + why +
                       " (at most " + std::to_string(limits_.max_header_lines) + " lines and " +
                       std::to_string(limits_.max_header_bytes) + " bytes)\"}}\n";
    std::string msg =
        "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nContent-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    (void)write(msg.data(), msg.size());
    failed_ = true;
    return 0;
  }

  // After an SSL call failed with `ssl_error`: waits until the socket can
  // do what TLS needs; false when it cannot (closed, error, deadline).
  bool WaitFor(int ssl_error, Clock::time_point deadline) const {
    if (ssl_error == SSL_ERROR_WANT_READ) return Poll(POLLIN, deadline);
    if (ssl_error == SSL_ERROR_WANT_WRITE) return Poll(POLLOUT, deadline);
    return false;
  }

  const socket_t sock_;
  const HttpServerLimits& limits_;
  SSL* const ssl_;
  char buf_[4096];
  size_t start_ = 0, end_ = 0;
  bool failed_ = false;
  bool in_headers_ = true;
  size_t header_bytes_ = 0, header_lines_ = 0, line_len_ = 0;
  static constexpr size_t kLineKept = 40;  // enough for "Content-Length: <19 digits>"
  std::string line_;                       // the current header line's start
  int64_t content_length_ = 0;
  Clock::time_point deadline_;
  Clock::time_point body_start_;
  int64_t body_bytes_ = 0;
};

thread_local GuardedStream* current_stream = nullptr;

// SO_REUSEADDR only (a restarted role binds its port again while old
// connections are in TIME_WAIT). cpp-httplib's default adds SO_REUSEPORT,
// which lets any other process of the same user bind the same port and take
// a share of the connections (requests, tokens, a host's registration): a
// second server on a taken port must fail loudly instead.
void ListenSocketOptions(socket_t s) {
  int yes = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
}

}  // namespace

GuardedServer::GuardedServer(HttpServerLimits limits, std::shared_ptr<TlsContext> tls)
    : limits_(limits), tls_(std::move(tls)) {
  // A response to a request whose body was not read says that the
  // connection closes: the client must not reuse it (its unread body would
  // be taken for the next request).
  set_post_routing_handler([](const httplib::Request&, httplib::Response& res) {
    if (!current_stream || current_stream->UnreadBody() == 0) return;
    current_stream->close_after_response = true;
    if (res.get_header_value("Connection") != "close") res.set_header("Connection", "close");
  });
}

void GuardedServer::CloseAfterResponse() {
  if (current_stream) current_stream->close_after_response = true;
}

std::string GuardedServer::PeerCertificateName() {
  return current_stream ? current_stream->peer_name : std::string();
}

Result<std::string> GuardedServer::Bind(const std::string& listen) {
  VMG_ASSIGN_OR_RETURN(HostPort where, ParseHostPort(listen, "listen address"));
  std::string host = std::move(where.host);
  int port = where.port;
  // cpp-httplib listens with a backlog of 5 (fixed in Debian's compiled
  // library): bursts of clients would be reset. Widen it once bound.
  int listen_fd = -1;
  set_socket_options([&listen_fd](socket_t s) {
    ListenSocketOptions(s);
    listen_fd = s;
  });
  if (port == 0)
    port = bind_to_any_port(host.c_str());
  else if (!bind_to_port(host.c_str(), port))
    port = -1;
  set_socket_options(ListenSocketOptions);  // drop the capture
  if (port <= 0)
    return MakeError(ErrorCode::kUnavailable,
                     "cannot listen on " + listen + " (in use by another process?)");
  if (listen_fd >= 0) ::listen(listen_fd, SOMAXCONN);
  if (host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::" || host == "[::]") host = "[::1]";
  return std::string(tls_ ? "https://" : "http://") + host + ":" + std::to_string(port);
}

bool GuardedServer::process_and_close_socket(socket_t sock) {
  auto start = Clock::now();  // the first request's deadline runs from accept
  // Requests and answers are small and the handshake is several small
  // writes: without this, Nagle's algorithm meets the peer's delayed ACK and
  // adds 40 ms to a TLS handshake.
  int one = 1;
  setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(nullptr, SSL_free);
  if (tls_) {
    ssl.reset(SSL_new(tls_->get()));
    int flags = fcntl(sock, F_GETFL);
    if (!ssl || flags < 0 || fcntl(sock, F_SETFL, flags | O_NONBLOCK) != 0 ||
        SSL_set_fd(ssl.get(), sock) != 1) {
      ::close(sock);
      return false;
    }
  }
  GuardedStream strm(sock, limits_, ssl.get());
  if (ssl && !strm.Handshake(start + std::chrono::milliseconds(limits_.header_timeout_ms))) {
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return false;
  }
  current_stream = &strm;
  bool ok = true;
  for (size_t n = 0; n < limits_.max_requests_per_connection && is_running(); ++n) {
    if (n > 0) {
      if (!strm.WaitForRequest(std::chrono::milliseconds(limits_.keep_alive_idle_ms))) break;
      start = Clock::now();
    }
    strm.BeginRequest(start);
    bool closed = false;
    const bool last = n + 1 == limits_.max_requests_per_connection;
    ok = process_request(strm, last, closed, nullptr);
    // A body left unread (refused before it was read) ends the connection:
    // its bytes are not the next request.
    if (!ok || closed || strm.failed() || strm.close_after_response || strm.UnreadBody() > 0) break;
  }
  current_stream = nullptr;
  // No close_notify: cpp-httplib's client decides whether a pooled
  // keep-alive connection is still open by peeking one byte, and a pending
  // close_notify record would look like data (it would then write into a
  // closed connection). HTTP framing (Content-Length) already tells a
  // complete answer from a truncated one.
  //
  // Lingering close: when the client is still sending (a body refused before
  // it was read, e.g. an upload answered 409 or 413), closing now would
  // reset the connection and could destroy the answer on its way. Stop
  // sending instead, and read and drop what still comes, for at most 2 s or
  // 8 MiB, before closing.
  //
  // First the rest of a refused body, through TLS when it is TLS (exact);
  // then whatever still arrives, raw.
  const auto linger_until = Clock::now() + std::chrono::seconds(2);
  if (strm.UnreadBody() > 0 && !strm.failed()) strm.DiscardBody(linger_until, 8 << 20);
  if (strm.HasUnread() || strm.UnreadBody() > 0) {
    ::shutdown(sock, SHUT_WR);
    char drain[16384];
    size_t dropped = 0;
    while (dropped < (8u << 20) && Clock::now() < linger_until) {
      pollfd p{sock, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      ssize_t n = ::recv(sock, drain, sizeof drain, MSG_DONTWAIT);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) break;  // the client closed: done
      dropped += static_cast<size_t>(n);
    }
  }
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ok;
}

bool RefuseUnframedBody(const httplib::Request& req, httplib::Response& res, uint64_t max_body) {
  auto refuse = [&](int status, const char* code, const std::string& message) {
    res.status = status;
    res.set_header("Connection", "close");
    res.set_content(
        "{\"error\":{\"code\":\"" + std::string(code) + "\",\"message\":\"" + message + "\"}}\n",
        "application/json");
    GuardedServer::CloseAfterResponse();
    return true;
  };
  if (req.has_header("Transfer-Encoding"))
    return refuse(
        411, "invalid_argument",
        "request bodies must be sent with Content-Length (Transfer-Encoding is not accepted)");
  std::string enc = req.get_header_value("Content-Encoding");
  if (!enc.empty() && enc != "identity")
    return refuse(415, "invalid_argument",
                  "compressed request bodies (Content-Encoding) are not accepted");
  const bool may_have_body = req.method == "POST" || req.method == "PUT" || req.method == "PATCH";
  if (!req.has_header("Content-Length")) {
    if (may_have_body)
      return refuse(411, "invalid_argument",
                    req.method + " needs a Content-Length header (0 for no body)");
    return false;
  }
  const std::string len = req.get_header_value("Content-Length");
  if (len.empty() || len.size() > 19 || len.find_first_not_of("0123456789") != std::string::npos)
    return refuse(400, "invalid_argument", "malformed Content-Length");
  if (std::stoull(len) > max_body)
    return refuse(413, "payload_too_large",
                  "request body over " + std::to_string(max_body) + " bytes");
  return false;
}

}  // namespace vmgrid
