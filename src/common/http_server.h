// GuardedServer: a cpp-httplib Server that bounds what a slow or hostile
// client can hold. cpp-httplib 0.11 serves one connection per pool thread and
// its own timeouts are per read() call, so a client sending one header byte
// every few seconds keeps a thread forever (slowloris), and it has no cap on
// the number of header lines. GuardedServer replaces the connection loop
// (Server::process_and_close_socket) with one that reads through its own
// Stream, which enforces:
//   - a total deadline for a request's line and headers (from its first byte,
//     or from accept for the first request of a connection),
//   - caps on the header block's bytes and lines (answered 431, then closed),
//   - a body deadline that grows with the bytes received (a minimum rate),
//   - an idle deadline between keep-alive requests and a write timeout.
// With a TLS context it terminates TLS itself, with the same deadlines.
// Request framing (bodies only with Content-Length) is RefuseUnframedBody's
// job, called from the pre-routing handler before authentication.
// Thread-safe as httplib::Server is; limits are fixed before listening.
#pragma once

#include <httplib.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/result.h"

namespace vmgrid {

struct HttpServerLimits {
  int header_timeout_ms = 10'000;         // request line + headers, in total
  int keep_alive_idle_ms = 5'000;         // wait for the next request on a connection
  int body_timeout_ms = 20'000;           // body: base deadline ...
  int64_t body_min_bytes_per_s = 65'536;  // ... extended by 1 s per this many bytes received
  int write_timeout_ms = 30'000;          // each send() of the response
  size_t max_header_bytes = 16 * 1024;    // request line + headers
  size_t max_header_lines = 100;          // request line + header lines
  size_t max_requests_per_connection = 100;
};

class TlsContext;

class GuardedServer : public httplib::Server {
 public:
  // With `tls`, every connection is TLS (handshake within the header
  // deadline); see common/tls.h.
  // Installs a post-routing handler (keep it: roles must not replace it).
  explicit GuardedServer(HttpServerLimits limits, std::shared_ptr<TlsContext> tls = nullptr);

  // Binds "HOST:PORT" (port 0: any free one) with a deep listen queue;
  // returns the server's URL ("https://" with TLS). Then listen_after_bind().
  Result<std::string> Bind(const std::string& listen);

  // The common name of the current connection's verified client
  // certificate ("" for none, or outside a handler).
  static std::string PeerCertificateName();

  // Makes the connection close once the current response is written (for a
  // request refused before its body was read). Call from a handler; no-op
  // outside one.
  static void CloseAfterResponse();

 private:
  bool process_and_close_socket(socket_t sock) override;

  const HttpServerLimits limits_;
  const std::shared_ptr<TlsContext> tls_;
};

// For a pre-routing handler: refuses, before authentication and before any
// body byte is read, a request whose body is not framed by Content-Length:
// Transfer-Encoding (chunked or any other) is 411, a compressed body
// (Content-Encoding other than identity) is 415, and a Content-Length over
// `max_body` is 413. Returns true (and fills `res`, closing the connection
// afterwards) when refused.
bool RefuseUnframedBody(const httplib::Request& req, httplib::Response& res, uint64_t max_body);

}  // namespace vmgrid
