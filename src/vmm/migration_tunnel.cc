#include "vmm/migration_tunnel.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/util.h"
#include "vmm/migration.h"

namespace vmgrid {

using vmm::UniqueFd;

namespace {

constexpr size_t kPiece = 256 * 1024;  // read from QEMU at once
constexpr unsigned char kAes128GcmSha256[] = {0x13, 0x01};

Error SysError(ErrorCode code, const std::string& what, int err) {
  return MakeError(code, what + ": " + std::strerror(err));
}

// The first queued OpenSSL error, or `fallback`.
std::string SslError(const std::string& fallback) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return fallback;
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

void SetTimeouts(int fd, std::chrono::milliseconds t) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(t.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

void TuneTcp(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// OpenSSL writes to its socket with write(): a peer that went away would
// raise SIGPIPE, which kills a process that does not ignore it. While one of
// these lives, SIGPIPE is blocked in this thread; one raised meanwhile is
// taken off before the mask is put back (the write itself fails with EPIPE).
class BlockSigpipe {
 public:
  BlockSigpipe() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~BlockSigpipe() {
    timespec zero{};
    while (sigtimedwait(&pipe_, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  BlockSigpipe(const BlockSigpipe&) = delete;
  BlockSigpipe& operator=(const BlockSigpipe&) = delete;

 private:
  sigset_t pipe_, old_;
};

Status WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return SysError(ErrorCode::kUnavailable, "write to QEMU", errno);
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

}  // namespace

Result<UniqueFd> ListenTcp(const std::string& host, int* port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), "0", &hints, &res);
  if (rc != 0)
    return MakeError(ErrorCode::kInvalidArgument,
                     "listen address " + host + ": " + gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(res, freeaddrinfo);
  UniqueFd fd(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return SysError(ErrorCode::kInternal, "socket", errno);
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), res->ai_addr, res->ai_addrlen) != 0)
    return SysError(ErrorCode::kInternal, "bind " + host, errno);
  if (::listen(fd.get(), 16) != 0) return SysError(ErrorCode::kInternal, "listen", errno);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return SysError(ErrorCode::kInternal, "getsockname", errno);
  *port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                   : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return fd;
}

// The OpenSSL side: one context (TLS 1.3, one suite, PSK only) and, once a
// handshake succeeded, the connection. Used by the tunnel's thread only
// after it started.
struct MigrationTunnel::Impl {
  std::string identity;
  std::string psk;  // 32 raw bytes
  SSL_CTX* ctx = nullptr;
  SSL* ssl = nullptr;

  ~Impl() {
    if (ssl) SSL_free(ssl);
    if (ctx) SSL_CTX_free(ctx);
  }

  static Impl* Of(SSL* ssl) { return static_cast<Impl*>(SSL_get_app_data(ssl)); }

  // A session carrying the external PSK, for the one suite we allow.
  SSL_SESSION* PskSession(SSL* s) const {
    const SSL_CIPHER* cipher = SSL_CIPHER_find(s, kAes128GcmSha256);
    if (!cipher) return nullptr;
    SSL_SESSION* sess = SSL_SESSION_new();
    if (!sess) return nullptr;
    if (SSL_SESSION_set1_master_key(sess, reinterpret_cast<const unsigned char*>(psk.data()),
                                    psk.size()) != 1 ||
        SSL_SESSION_set_cipher(sess, cipher) != 1 ||
        SSL_SESSION_set_protocol_version(sess, TLS1_3_VERSION) != 1) {
      SSL_SESSION_free(sess);
      return nullptr;
    }
    return sess;
  }

  static int UseSession(SSL* s, const EVP_MD* md, const unsigned char** id, size_t* idlen,
                        SSL_SESSION** sess) {
    Impl* self = Of(s);
    *sess = nullptr;
    *id = nullptr;
    *idlen = 0;
    const SSL_CIPHER* cipher = SSL_CIPHER_find(s, kAes128GcmSha256);
    if (!self || !cipher || (md != nullptr && md != SSL_CIPHER_get_handshake_digest(cipher)))
      return 1;  // no PSK: the handshake fails (we accept no certificate)
    *sess = self->PskSession(s);
    if (!*sess) return 0;
    *id = reinterpret_cast<const unsigned char*>(self->identity.data());
    *idlen = self->identity.size();
    return 1;
  }

  static int FindSession(SSL* s, const unsigned char* id, size_t idlen, SSL_SESSION** sess) {
    Impl* self = Of(s);
    *sess = nullptr;
    if (!self || idlen != self->identity.size() ||
        std::memcmp(id, self->identity.data(), idlen) != 0)
      return 1;  // unknown identity: no PSK, and without a certificate no handshake
    *sess = self->PskSession(s);
    return *sess ? 1 : 0;
  }

  Status MakeContext(bool server) {
    ctx = SSL_CTX_new(TLS_method());
    if (!ctx) return MakeError(ErrorCode::kInternal, SslError("SSL_CTX_new failed"));
    bool ok = SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1 &&
              SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1 &&
              SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256") == 1 &&
              SSL_CTX_set_num_tickets(ctx, 0) == 1;
    if (!ok) return MakeError(ErrorCode::kInternal, SslError("TLS context setup failed"));
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    if (server) {
      SSL_CTX_set_psk_find_session_callback(ctx, &Impl::FindSession);
    } else {
      SSL_CTX_set_psk_use_session_callback(ctx, &Impl::UseSession);
      // A peer without the key could still offer a certificate handshake:
      // trust no certificate at all, so only the PSK can authenticate it.
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    }
    return Status::Ok();
  }

  // A connection on `fd`, handshaken; false with `why` otherwise.
  bool Handshake(int fd, bool server, std::string* why) {
    SSL* s = SSL_new(ctx);
    if (!s) {
      *why = SslError("SSL_new failed");
      return false;
    }
    SSL_set_app_data(s, this);
    SSL_set_fd(s, fd);
    int rc = server ? SSL_accept(s) : SSL_connect(s);
    // Only the pre-shared key may have authenticated the peer.
    if (rc == 1 && SSL_session_reused(s) != 1) {
      *why = "the peer did not use the migration key";
      SSL_free(s);
      return false;
    }
    if (rc != 1) {
      int err = SSL_get_error(s, rc);
      *why = err == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK)
                 ? "TLS handshake timed out"
                 : SslError("TLS handshake failed (connection closed)");
      SSL_free(s);
      return false;
    }
    ssl = s;
    return true;
  }
};

MigrationTunnel::MigrationTunnel() : impl_(std::make_unique<Impl>()) {}

namespace {

constexpr int kSocketpairBuffer = 4 << 20;

// The PSK from a validated key, and a socketpair: ours and QEMU's end.
Status Prepare(const MigrationKey& key, std::string* psk, UniqueFd* ours, UniqueFd* qemu) {
  VMG_RETURN_IF_ERROR(ValidateMigrationKey(key));
  VMG_ASSIGN_OR_RETURN(*psk, HexDecode(key.key_hex));
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return SysError(ErrorCode::kInternal, "socketpair", errno);
  ours->Reset(sv[0]);
  qemu->Reset(sv[1]);
  // A unix stream socket buffers only net.core.wmem_max (~208 KiB) by
  // default. Our end writes on the target (the tunnel into QEMU): a bigger
  // buffer lets the tunnel decrypt ahead while QEMU loads (best effort:
  // SO_SNDBUFFORCE needs CAP_NET_ADMIN, SO_SNDBUF is capped at wmem_max).
  // QEMU's end, which writes on the source, keeps the default: QEMU counts
  // what it wrote as sent, so every byte buffered between it and the link
  // makes it stop the guest with more still to travel (4 MiB there cut the
  // loopback total by a fifth but added ~0.5 s to the outage over 100 Mbit/s).
  const int bytes = kSocketpairBuffer;
  if (::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) != 0)
    (void)::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<MigrationTunnel>> MigrationTunnel::Listen(const std::string& listen_host,
                                                                 const MigrationKey& key,
                                                                 UniqueFd* qemu_fd) {
  std::unique_ptr<MigrationTunnel> t(new MigrationTunnel());
  t->impl_->identity = key.identity;
  VMG_RETURN_IF_ERROR(Prepare(key, &t->impl_->psk, &t->clear_fd_, qemu_fd));
  VMG_RETURN_IF_ERROR(t->impl_->MakeContext(/*server=*/true));
  VMG_ASSIGN_OR_RETURN(t->listen_fd_, ListenTcp(listen_host, &t->port_));
  t->thread_ = std::thread([p = t.get()] { p->RunListener(); });
  return t;
}

Result<std::unique_ptr<MigrationTunnel>> MigrationTunnel::Connect(const std::string& host, int port,
                                                                  const MigrationKey& key,
                                                                  std::chrono::milliseconds timeout,
                                                                  UniqueFd* qemu_fd) {
  std::unique_ptr<MigrationTunnel> t(new MigrationTunnel());
  t->impl_->identity = key.identity;
  if (port <= 0 || port > 65535)
    return MakeError(ErrorCode::kInvalidArgument, "migration tunnel: bad port");
  VMG_RETURN_IF_ERROR(Prepare(key, &t->impl_->psk, &t->clear_fd_, qemu_fd));
  VMG_RETURN_IF_ERROR(t->impl_->MakeContext(/*server=*/false));
  const std::string where = "migration tunnel to " + host + ":" + std::to_string(port);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) return MakeError(ErrorCode::kInvalidArgument, where + ": " + gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(res, freeaddrinfo);
  t->tcp_fd_.Reset(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!t->tcp_fd_.valid()) return SysError(ErrorCode::kInternal, where, errno);
  SetTimeouts(t->tcp_fd_.get(), std::min<std::chrono::milliseconds>(timeout, kHandshakeTimeout));
  if (::connect(t->tcp_fd_.get(), res->ai_addr, res->ai_addrlen) != 0) {
    const int err = errno;
    return SysError(
        err == EINPROGRESS || err == EAGAIN ? ErrorCode::kTimeout : ErrorCode::kUnavailable, where,
        err);
  }
  TuneTcp(t->tcp_fd_.get());
  std::string why;
  BlockSigpipe no_sigpipe;
  if (!t->impl_->Handshake(t->tcp_fd_.get(), /*server=*/false, &why))
    return MakeError(
        why == "TLS handshake timed out" ? ErrorCode::kTimeout : ErrorCode::kUnauthenticated,
        where + ": " + why);
  SetTimeouts(t->tcp_fd_.get(), std::chrono::milliseconds(0));  // the stream has no deadline
  t->thread_ = std::thread([p = t.get()] { p->RunSender(); });
  return t;
}

MigrationTunnel::~MigrationTunnel() {
  stopping_ = true;
  {
    // Wakes the thread wherever it blocks (accept, read, SSL_read/write).
    std::lock_guard<std::mutex> l(mu_);
    for (const UniqueFd* fd : {&listen_fd_, &tcp_fd_, &clear_fd_})
      if (fd->valid()) ::shutdown(fd->get(), SHUT_RDWR);
  }
  if (thread_.joinable()) thread_.join();
}

void MigrationTunnel::Finish(const std::string& error) {
  std::lock_guard<std::mutex> l(mu_);
  if (done_) return;
  done_ = true;
  error_ = error;
  done_cv_.notify_all();
}

bool MigrationTunnel::WaitDone(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> l(mu_);
  done_cv_.wait_for(l, timeout, [&] { return done_; });
  return done_ && error_.empty();
}

std::string MigrationTunnel::error() const {
  std::lock_guard<std::mutex> l(mu_);
  return error_;
}

void MigrationTunnel::RunListener() {
  BlockSigpipe no_sigpipe;
  for (;;) {
    if (stopping_) return Finish("the migration tunnel was closed before the source connected");
    pollfd p{listen_fd_.get(), POLLIN, 0};
    int n = ::poll(&p, 1, 200);
    if (n <= 0) continue;
    if (p.revents & (POLLERR | POLLHUP | POLLNVAL))
      return Finish("the migration tunnel's listener was closed");
    UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) continue;
    SetTimeouts(conn.get(), kHandshakeTimeout);
    TuneTcp(conn.get());
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stopping_) return;
      tcp_fd_ = std::move(conn);
    }
    std::string why;
    if (impl_->Handshake(tcp_fd_.get(), /*server=*/true, &why)) break;
    rejected_++;
    spdlog::warn("migration tunnel: refused a connection on port {}: {}", port_, why);
    std::lock_guard<std::mutex> l(mu_);
    tcp_fd_.Reset();
  }
  {
    // One stream per migration: no more connections.
    std::lock_guard<std::mutex> l(mu_);
    listen_fd_.Reset();
  }
  SetTimeouts(tcp_fd_.get(), std::chrono::milliseconds(0));
  RunReceiver();
}

void MigrationTunnel::RunReceiver() {
  std::vector<char> buf(64 * 1024);
  for (;;) {
    size_t got = 0;
    if (SSL_read_ex(impl_->ssl, buf.data(), buf.size(), &got) != 1) {
      const int err = SSL_get_error(impl_->ssl, 0);
      ::shutdown(clear_fd_.get(), SHUT_WR);  // QEMU sees the stream end
      if (err == SSL_ERROR_ZERO_RETURN) return Finish("");
      return Finish(stopping_ ? "the migration tunnel was closed"
                              : SslError("the source's stream broke off"));
    }
    if (Status st = WriteAll(clear_fd_.get(), buf.data(), got); !st.ok()) {
      // QEMU is gone: the source's writes must fail too. A shutdown would
      // only send a FIN, and the source would block for good on a full
      // window (the unread stream stays queued here); closing a socket with
      // unread data sends a reset. Nothing uses the TLS session after this.
      {
        std::lock_guard<std::mutex> l(mu_);
        tcp_fd_.Reset();
      }
      return Finish(st.error().message);
    }
    bytes_ += got;
  }
}

void MigrationTunnel::RunSender() {
  BlockSigpipe no_sigpipe;
  std::vector<char> buf(kPiece);
  for (;;) {
    ssize_t n = ::read(clear_fd_.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 && stopping_) return Finish("the migration tunnel was closed");
    if (n == 0) {
      // QEMU closed its end: the stream is complete. close_notify tells the
      // target it ended here, not by a cut connection.
      (void)SSL_shutdown(impl_->ssl);
      return Finish("");
    }
    if (n < 0)
      return Finish(stopping_ ? "the migration tunnel was closed"
                              : std::string("read from QEMU: ") + std::strerror(errno));
    size_t written = 0;
    if (SSL_write_ex(impl_->ssl, buf.data(), static_cast<size_t>(n), &written) != 1) {
      // QEMU's writes fail at once instead of filling the socketpair.
      ::shutdown(clear_fd_.get(), SHUT_RDWR);
      return Finish(stopping_ ? "the migration tunnel was closed"
                              : SslError("the stream to the target broke off"));
    }
    bytes_ += written;
  }
}

}  // namespace vmgrid
