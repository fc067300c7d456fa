// fuzz_http_request: GuardedServer's connection loop (common/http_server.h),
// which reads every byte an unauthenticated client sends to the controller,
// the agents and the image server before any handler runs: the request
// line, the header block under its caps, body framing (RefuseUnframedBody)
// and keep-alive. Each input is sent on a fresh loopback connection, whose
// write side is then closed.
// Oracles: no crash or sanitizer report; the server answers with nothing or
// with HTTP/1.1 responses only; a header block over the caps is answered 431
// (or the connection is closed) and never reaches a handler; the server
// keeps serving (a well-formed request after each input is answered 200).
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>

#include "common/http_server.h"
#include "fuzz_common.h"

namespace {

struct Harness {
  std::unique_ptr<vmgrid::GuardedServer> server;
  std::thread thread;
  int port = 0;
  std::atomic<int> handled{0};
};

Harness& Server() {
  static Harness* h = [] {
    vmgrid::fuzz::QuietLogging();
    auto* h = new Harness;
    vmgrid::HttpServerLimits limits;
    limits.header_timeout_ms = 1000;
    limits.keep_alive_idle_ms = 200;
    limits.body_timeout_ms = 1000;
    limits.max_header_bytes = 2048;
    limits.max_header_lines = 20;
    h->server = std::make_unique<vmgrid::GuardedServer>(limits);
    h->server->set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
      return vmgrid::RefuseUnframedBody(req, res, 4096)
                 ? httplib::Server::HandlerResponse::Handled
                 : httplib::Server::HandlerResponse::Unhandled;
    });
    auto ok = [h](const httplib::Request& req, httplib::Response& res) {
      ++h->handled;
      res.set_content(std::to_string(req.body.size()), "text/plain");
    };
    h->server->Get("/ok", ok);
    h->server->Post("/ok", ok);
    auto url = h->server->Bind("127.0.0.1:0");
    FUZZ_CHECK(url.ok(), url.ok() ? "" : url.error().message);
    h->port = std::stoi(url->substr(url->rfind(':') + 1));
    h->thread = std::thread([h] { h->server->listen_after_bind(); });
    while (!h->server->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return h;
  }();
  return *h;
}

// Sends `data`, closes our write side and returns everything answered.
std::string Exchange(int port, const std::string& data) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  FUZZ_CHECK(fd >= 0, "socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  FUZZ_CHECK(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "connect");
  size_t off = 0;
  std::string answer;
  char buf[4096];
  while (off < data.size()) {
    ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server hung up (a refused header block)
    off += static_cast<size_t>(n);
  }
  shutdown(fd, SHUT_WR);
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 5000) <= 0) break;  // the deadlines are 1 s: 5 s means a hang
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return answer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 16384) return 0;
  Harness& h = Server();
  const std::string input(reinterpret_cast<const char*>(data), size);
  const int before = h.handled;
  std::string answer = Exchange(h.port, input);
  vmgrid::fuzz::Trace("answer", !answer.empty(), answer.substr(0, 200));
  FUZZ_CHECK(answer.empty() || answer.rfind("HTTP/1.1 ", 0) == 0, answer.substr(0, 200));
  // A first line longer than the header cap never reaches a handler.
  if (input.size() > 2049 && input.find('\n') > 2048)
    FUZZ_CHECK(h.handled == before, "a request over the header cap was handled");
  // Still serving.
  std::string probe = Exchange(h.port, "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  FUZZ_CHECK(probe.rfind("HTTP/1.1 200", 0) == 0, probe.substr(0, 200));
  return 0;
}
