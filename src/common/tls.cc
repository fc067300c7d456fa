#include "common/tls.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <mutex>

#include "common/host_port.h"
#include "common/util.h"

namespace vmgrid {

namespace {

// RAII for OpenSSL objects.
struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Bio = std::unique_ptr<BIO, BioFree>;

// The most recent OpenSSL error as text (and clears the queue).
std::string OpensslError() {
  unsigned long e = ERR_get_error();
  std::string out;
  while (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
    e = ERR_get_error();
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

Error TlsError(const std::string& what) {
  return MakeError(ErrorCode::kInvalidArgument, what + ": " + OpensslError());
}

std::string BioText(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(n));
}

Result<std::string> PemOfCert(X509* cert) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return TlsError("writing a certificate");
  return BioText(bio.get());
}

Result<std::string> PemOfKey(EVP_PKEY* key) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return TlsError("writing a private key");
  return BioText(bio.get());
}

Result<Cert> LoadCert(const std::string& file) {
  VMG_ASSIGN_OR_RETURN(std::string pem, ReadFile(file, 1 << 20));
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return TlsError("no PEM certificate in " + file);
  return cert;
}

Result<Pkey> LoadKey(const std::string& file) {
  VMG_ASSIGN_OR_RETURN(std::string pem, ReadFile(file, 1 << 20));
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Pkey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) return TlsError("no PEM private key in " + file);
  return key;
}

Result<Pkey> NewKey() {
  Pkey key(EVP_EC_gen("P-256"));
  if (!key) return TlsError("generating an EC key");
  return key;
}

Status AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (!ext) return TlsError("certificate extension '" + value + "'");
  int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  if (ok != 1) return TlsError("adding certificate extension '" + value + "'");
  return Status::Ok();
}

// A certificate for `key` with `subject_cn`, signed by issuer/issuer_key
// (self-signed when issuer is null).
Result<Cert> MakeCert(EVP_PKEY* key, const std::string& subject_cn, int days, X509* issuer,
                      EVP_PKEY* issuer_key, const std::vector<std::pair<int, std::string>>& exts) {
  Cert cert(X509_new());
  if (!cert) return TlsError("allocating a certificate");
  X509_set_version(cert.get(), 2);
  // A random 127-bit serial, as RFC 5280 asks (unique per issuer).
  std::unique_ptr<BIGNUM, decltype(&BN_free)> serial(BN_new(), BN_free);
  if (!serial || BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      !BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())))
    return TlsError("certificate serial");
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);  // tolerate small clock skew
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(days) * 86400);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("vmgrid"), -1, -1, 0);
  if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(subject_cn.c_str()), -1, -1,
                                 0) != 1)
    return TlsError("certificate name '" + subject_cn + "'");
  X509* signer = issuer ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  for (const auto& [nid, value] : exts)
    VMG_RETURN_IF_ERROR(AddExtension(cert.get(), signer, nid, value));
  if (X509_sign(cert.get(), issuer_key ? issuer_key : key, EVP_sha256()) <= 0)
    return TlsError("signing a certificate");
  return cert;
}

std::mutex client_mu;
TlsFiles& ClientFiles() {  // guarded by client_mu
  static auto* f = new TlsFiles;
  return *f;
}

}  // namespace

// --- server side --------------------------------------------------------------------

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

Result<std::shared_ptr<TlsContext>> TlsContext::ForServer(const TlsFiles& files,
                                                          bool require_client_cert) {
  if (files.cert.empty() || files.key.empty() || files.ca.empty())
    return MakeError(ErrorCode::kInvalidArgument,
                     "TLS needs a certificate, its key and the CA (--tls-cert, --tls-key, --ca)");
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) return TlsError("creating a TLS context");
  std::shared_ptr<TlsContext> out(new TlsContext(ctx, require_client_cert));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // No TLS 1.3 session tickets: our clients do not resume sessions, and the
  // tickets are extra small writes after the handshake.
  SSL_CTX_set_num_tickets(ctx, 0);
  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1)
    return TlsError("loading the certificate " + files.cert);
  if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1)
    return TlsError("loading the private key " + files.key + " (is it the key of " + files.cert +
                    "?)");
  if (SSL_CTX_check_private_key(ctx) != 1)
    return TlsError("the key " + files.key + " does not belong to " + files.cert);
  if (SSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != 1)
    return TlsError("loading the CA " + files.ca);
  // Clients may present certificates only of this CA; which CAs we accept
  // is told to them.
  STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(files.ca.c_str());
  if (names) SSL_CTX_set_client_CA_list(ctx, names);
  SSL_CTX_set_verify(
      ctx,
      require_client_cert ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER,
      nullptr);
  return out;
}

bool IsLoopbackHost(const std::string& host) {
  std::string h = host;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (h == "localhost") return true;
  in_addr a4{};
  if (inet_pton(AF_INET, h.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  in6_addr a6{};
  if (inet_pton(AF_INET6, h.c_str(), &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
  return false;
}

Result<std::shared_ptr<TlsContext>> ServerTls(const std::string& role, const std::string& listen,
                                              const ServerTlsOptions& options,
                                              bool require_client_cert) {
  if (options.plain_http) {
    if (!options.files.empty())
      return MakeError(ErrorCode::kInvalidArgument,
                       role + ": --plain-http and --tls-cert/--tls-key/--ca exclude each other");
    VMG_ASSIGN_OR_RETURN(HostPort where, ParseHostPort(listen, role + ": listen address"));
    if (!IsLoopbackHost(where.host))
      return MakeError(ErrorCode::kInvalidArgument,
                       role + ": plain HTTP is allowed only on a loopback address, not " + listen +
                           "; give --tls-cert, --tls-key and --ca (`vmgrid tls init` and "
                           "`vmgrid tls issue` make them)");
    return std::shared_ptr<TlsContext>();
  }
  if (options.files.cert.empty() || options.files.key.empty() || options.files.ca.empty())
    return MakeError(ErrorCode::kInvalidArgument,
                     role +
                         " serves TLS only: give --tls-cert, --tls-key and --ca (`vmgrid tls "
                         "init` and `vmgrid tls issue` make them), or --plain-http on a "
                         "loopback address");
  auto ctx = TlsContext::ForServer(options.files, require_client_cert);
  if (!ctx.ok()) return ctx.error().Wrap(role);
  return *ctx;
}

// --- client side ----------------------------------------------------------------------

Status SetClientTls(const TlsFiles& files) {
  for (const std::string* f : {&files.cert, &files.key, &files.ca})
    if (!f->empty() && !FileExists(*f))
      return MakeError(ErrorCode::kInvalidArgument, "TLS file " + *f + " does not exist");
  if (files.cert.empty() != files.key.empty())
    return MakeError(ErrorCode::kInvalidArgument,
                     "a client certificate needs its key (--tls-cert and --tls-key)");
  std::lock_guard<std::mutex> l(client_mu);
  ClientFiles() = files;
  return Status::Ok();
}

TlsFiles ClientTls() {
  std::lock_guard<std::mutex> l(client_mu);
  return ClientFiles();
}

std::unique_ptr<httplib::Client> NewHttpClient(const std::string& scheme_host_port) {
  std::unique_ptr<httplib::Client> c;
  if (scheme_host_port.rfind("https://", 0) != 0) {
    c = std::make_unique<httplib::Client>(scheme_host_port);
    c->set_tcp_nodelay(true);
    return c;
  }
  TlsFiles f = ClientTls();
  c = f.cert.empty() ? std::make_unique<httplib::Client>(scheme_host_port)
                     : std::make_unique<httplib::Client>(scheme_host_port, f.cert, f.key);
  // A request is written in pieces (TLS records for the headers and the
  // body): with Nagle's algorithm each later piece waits for the server's
  // delayed ACK, 40 ms per request.
  c->set_tcp_nodelay(true);
  if (!f.ca.empty()) c->set_ca_cert_path(f.ca);
  c->enable_server_certificate_verification(true);
  return c;
}

// --- certificate authority ---------------------------------------------------------------

Status CreateCa(const std::string& dir, const std::string& name, int days) {
  const std::string cert_file = dir + "/ca.pem", key_file = dir + "/ca.key";
  const bool have_cert = FileExists(cert_file), have_key = FileExists(key_file);
  if (have_cert && have_key) return Status::Ok();
  if (have_cert || have_key)
    return MakeError(ErrorCode::kFailedPrecondition,
                     dir + " holds only one of ca.pem and ca.key; refusing to replace it");
  VMG_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  VMG_ASSIGN_OR_RETURN(Pkey key, NewKey());
  VMG_ASSIGN_OR_RETURN(Cert cert, MakeCert(key.get(), name, days, nullptr, nullptr,
                                           {{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
                                            {NID_key_usage, "critical,keyCertSign,cRLSign"},
                                            {NID_subject_key_identifier, "hash"}}));
  VMG_ASSIGN_OR_RETURN(std::string key_pem, PemOfKey(key.get()));
  VMG_ASSIGN_OR_RETURN(std::string cert_pem, PemOfCert(cert.get()));
  VMG_RETURN_IF_ERROR(WriteFileAtomic(key_file, key_pem, 0600));
  return WriteFileAtomic(cert_file, cert_pem, 0644);
}

Status IssueCertificate(const std::string& ca_dir, const CertificateRequest& request,
                        const std::string& cert_file, const std::string& key_file) {
  if (request.common_name.empty() || request.common_name.size() > 64)
    return MakeError(ErrorCode::kInvalidArgument,
                     "a certificate name must have 1 to 64 characters");
  if (request.days < 1 || request.days > 3650)
    return MakeError(ErrorCode::kInvalidArgument, "certificate validity must be 1 to 3650 days");
  std::string san;
  for (const auto& d : request.dns_names) {
    if (d.empty() || d.find_first_of(", \t\n") != std::string::npos)
      return MakeError(ErrorCode::kInvalidArgument, "bad DNS name '" + d + "'");
    san += (san.empty() ? "" : ",") + std::string("DNS:") + d;
  }
  for (const auto& ip : request.ip_addresses) {
    in_addr a4{};
    in6_addr a6{};
    if (inet_pton(AF_INET, ip.c_str(), &a4) != 1 && inet_pton(AF_INET6, ip.c_str(), &a6) != 1)
      return MakeError(ErrorCode::kInvalidArgument, "bad IP address '" + ip + "'");
    san += (san.empty() ? "" : ",") + std::string("IP:") + ip;
  }
  if (san.empty())
    return MakeError(ErrorCode::kInvalidArgument,
                     "a certificate needs at least one DNS name or IP address (--dns, --ip)");
  VMG_ASSIGN_OR_RETURN(Cert ca, LoadCert(ca_dir + "/ca.pem"));
  VMG_ASSIGN_OR_RETURN(Pkey ca_key, LoadKey(ca_dir + "/ca.key"));
  VMG_ASSIGN_OR_RETURN(Pkey key, NewKey());
  VMG_ASSIGN_OR_RETURN(
      Cert cert, MakeCert(key.get(), request.common_name, request.days, ca.get(), ca_key.get(),
                          {{NID_basic_constraints, "critical,CA:FALSE"},
                           {NID_key_usage, "critical,digitalSignature,keyEncipherment"},
                           {NID_ext_key_usage, "serverAuth,clientAuth"},
                           {NID_subject_alt_name, san},
                           {NID_subject_key_identifier, "hash"},
                           {NID_authority_key_identifier, "keyid"}}));
  VMG_ASSIGN_OR_RETURN(std::string key_pem, PemOfKey(key.get()));
  VMG_ASSIGN_OR_RETURN(std::string cert_pem, PemOfCert(cert.get()));
  VMG_RETURN_IF_ERROR(WriteFileAtomic(key_file, key_pem, 0600));
  return WriteFileAtomic(cert_file, cert_pem, 0644);
}

Result<std::vector<TlsFiles>> EnsureLocalPki(const std::string& dir,
                                             const std::vector<std::string>& names,
                                             const std::vector<std::string>& extra_ips) {
  VMG_RETURN_IF_ERROR(CreateCa(dir, "vmgrid local CA"));
  std::vector<TlsFiles> out;
  for (const auto& name : names) {
    TlsFiles f{dir + "/" + name + ".pem", dir + "/" + name + ".key", dir + "/ca.pem"};
    if (!FileExists(f.cert) || !FileExists(f.key)) {
      CertificateRequest req;
      req.common_name = name;
      req.dns_names = {"localhost"};
      req.ip_addresses = {"127.0.0.1", "::1"};
      req.ip_addresses.insert(req.ip_addresses.end(), extra_ips.begin(), extra_ips.end());
      VMG_RETURN_IF_ERROR(IssueCertificate(dir, req, f.cert, f.key));
    }
    out.push_back(f);
  }
  return out;
}

Result<std::string> CertificateCommonName(const std::string& cert_file) {
  VMG_ASSIGN_OR_RETURN(Cert cert, LoadCert(cert_file));
  char buf[256] = "";
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, buf, sizeof buf);
  return std::string(buf);
}

}  // namespace vmgrid
