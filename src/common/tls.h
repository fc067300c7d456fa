// TLS for every vmgrid role: a small certificate authority, the server side
// (a context GuardedServer terminates TLS with) and the client side (the
// trust and the client certificate every HTTPS client of a process uses).
//
// Who presents what (docs/security.md#tls):
//   - Every server (controller, agent, image server) presents a certificate
//     issued by the grid's CA; clients verify it, host name included.
//   - Mutual TLS where both ends are grid roles: the agent API, the
//     controller's agents' listener and the image server accept only clients
//     with a certificate of the same CA. The users' REST API asks for no
//     client certificate (users authenticate with bearer tokens).
//   - Plain HTTP only when asked for (--plain-http) and only on loopback.
//
// Certificates are EC P-256, SHA-256, with subjectAltName (DNS names and IP
// addresses) and serverAuth+clientAuth. Keys are written 0600.
// Thread-safe: TlsContext is immutable once made; the process's client
// configuration is set once at start-up (SetClientTls) before any client
// connects.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/result.h"

typedef struct ssl_ctx_st SSL_CTX;
namespace httplib {
class Client;
}

namespace vmgrid {

// Where a role's TLS material is. All three or none.
struct TlsFiles {
  std::string cert;  // PEM certificate (chain) this process presents
  std::string key;   // its PEM private key
  std::string ca;    // PEM CA certificate(s) peers must chain to
  bool empty() const { return cert.empty() && key.empty() && ca.empty(); }
};

// How a server role listens: TLS, or plain HTTP when explicitly allowed.
struct ServerTlsOptions {
  TlsFiles files;
  bool plain_http = false;  // --plain-http: no TLS (loopback addresses only)
};

// An OpenSSL server context: our certificate and key, the CA to verify
// client certificates with, and whether clients must present one.
class TlsContext {
 public:
  static Result<std::shared_ptr<TlsContext>> ForServer(const TlsFiles& files,
                                                       bool require_client_cert);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  SSL_CTX* get() const { return ctx_; }
  bool require_client_cert() const { return require_client_cert_; }

 private:
  TlsContext(SSL_CTX* ctx, bool require) : ctx_(ctx), require_client_cert_(require) {}
  SSL_CTX* ctx_;
  bool require_client_cert_;
};

// Validates a server role's TLS choice for `listen` ("HOST:PORT") and makes
// its context: TLS files complete and loadable, or --plain-http on a
// loopback address. Returns null for plain HTTP.
Result<std::shared_ptr<TlsContext>> ServerTls(const std::string& role, const std::string& listen,
                                              const ServerTlsOptions& options,
                                              bool require_client_cert);

// True for 127.0.0.0/8, ::1 and "localhost".
bool IsLoopbackHost(const std::string& host);

// --- client side ------------------------------------------------------------------

// The trust (and, for mutual TLS, the certificate) of this process's HTTPS
// clients. Checks that the files exist. Call once at start-up.
Status SetClientTls(const TlsFiles& files);
TlsFiles ClientTls();

// An HTTP(S) client for "scheme://host:port" with this process's TLS
// configuration: the server's certificate is verified against the CA
// (host name included), and our certificate is presented when we have one.
std::unique_ptr<httplib::Client> NewHttpClient(const std::string& scheme_host_port);

// --- certificate authority ----------------------------------------------------------

struct CertificateRequest {
  std::string common_name;
  std::vector<std::string> dns_names;     // subjectAltName DNS entries
  std::vector<std::string> ip_addresses;  // subjectAltName IP entries
  int days = 825;
};

// Creates DIR/ca.pem and DIR/ca.key (0600) unless both exist. Refuses to
// overwrite one without the other.
Status CreateCa(const std::string& dir, const std::string& name = "vmgrid CA", int days = 3650);

// Issues a certificate signed by DIR's CA, written to cert_file and key_file
// (0600).
Status IssueCertificate(const std::string& ca_dir, const CertificateRequest& request,
                        const std::string& cert_file, const std::string& key_file);

// For local grids: DIR's CA (created if missing) and DIR/NAME.pem +
// DIR/NAME.key for each name, valid for localhost, 127.0.0.1 and
// `extra_ips`, issued if missing. Returns the files for each name in order.
Result<std::vector<TlsFiles>> EnsureLocalPki(const std::string& dir,
                                             const std::vector<std::string>& names,
                                             const std::vector<std::string>& extra_ips = {});

// The subject common name of a PEM certificate file (for messages and tests).
Result<std::string> CertificateCommonName(const std::string& cert_file);

}  // namespace vmgrid
