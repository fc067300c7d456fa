#include "common/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <string>

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
  GuardedStream(socket_t sock, const HttpServerLimits& limits) : sock_(sock), limits_(limits) {}

  // Starts a request: its header deadline runs from `start`.
  void BeginRequest(Clock::time_point start) {
    in_headers_ = true;
    header_bytes_ = header_lines_ = 0;
    line_len_ = 0;
    deadline_ = start + std::chrono::milliseconds(limits_.header_timeout_ms);
  }

  // Waits up to `wait` for the first byte of another request.
  bool WaitForRequest(std::chrono::milliseconds wait) {
    if (start_ < end_) return true;
    return Fill(Clock::now() + wait);
  }

  bool failed() const { return failed_; }
  bool close_after_response = false;

  bool is_readable() const override { return start_ < end_ || Poll(POLLIN, deadline_); }
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
    while (done < size) {
      if (!Poll(POLLOUT, Clock::now() + std::chrono::milliseconds(limits_.write_timeout_ms)))
        return Fail();
      // Never blocks in send() (the socket's SO_SNDTIMEO is httplib's long
      // one): a client that stops reading is cut off after write_timeout_ms.
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
        if (c != '\r') ++line_len_;
        continue;
      }
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

  const socket_t sock_;
  const HttpServerLimits& limits_;
  char buf_[4096];
  size_t start_ = 0, end_ = 0;
  bool failed_ = false;
  bool in_headers_ = true;
  size_t header_bytes_ = 0, header_lines_ = 0, line_len_ = 0;
  Clock::time_point deadline_;
  Clock::time_point body_start_;
  int64_t body_bytes_ = 0;
};

thread_local GuardedStream* current_stream = nullptr;

}  // namespace

void GuardedServer::CloseAfterResponse() {
  if (current_stream) current_stream->close_after_response = true;
}

bool GuardedServer::process_and_close_socket(socket_t sock) {
  GuardedStream strm(sock, limits_);
  current_stream = &strm;
  bool ok = true;
  auto start = Clock::now();  // the first request's deadline runs from accept
  for (size_t n = 0; n < limits_.max_requests_per_connection && is_running(); ++n) {
    if (n > 0) {
      if (!strm.WaitForRequest(std::chrono::milliseconds(limits_.keep_alive_idle_ms))) break;
      start = Clock::now();
    }
    strm.BeginRequest(start);
    bool closed = false;
    const bool last = n + 1 == limits_.max_requests_per_connection;
    ok = process_request(strm, last, closed, nullptr);
    if (!ok || closed || strm.failed() || strm.close_after_response) break;
  }
  current_stream = nullptr;
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
