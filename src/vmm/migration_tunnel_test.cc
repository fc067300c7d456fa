#include "vmm/migration_tunnel.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "common/tls.h"
#include "vmm/migration.h"
#include "vmm/test_util.h"

namespace vmgrid {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using vmm::UniqueFd;

MigrationKey Key(const std::string& identity = "vmgrid-test") {
  auto k = NewMigrationKey(identity);
  EXPECT_TRUE(k.ok());
  return *k;
}

// Bytes waiting on `fd` within `ms` (a peek, nothing consumed).
bool Readable(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, ms) > 0 && (p.revents & POLLIN);
}

// Everything `fd` delivers until its end.
std::string ReadToEnd(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

std::string Pattern(size_t n) {
  std::string s(n, '\0');
  uint32_t x = 2463534242u;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s[i] = static_cast<char>(x);
  }
  return s;
}

// A stream written into the source QEMU's end arrives whole at the target
// QEMU's end, and ends there when the source closes its end.
TEST(MigrationTunnelTest, CarriesAStreamWholeAndEndsIt) {
  const MigrationKey key = Key();
  UniqueFd target_qemu, source_qemu;
  auto in = MigrationTunnel::Listen("127.0.0.1", key, &target_qemu);
  ASSERT_TRUE(in.ok()) << in.error().message;
  ASSERT_GT((*in)->port(), 0);
  auto out = MigrationTunnel::Connect("127.0.0.1", (*in)->port(), key, seconds(10), &source_qemu);
  ASSERT_TRUE(out.ok()) << out.error().message;
  const std::string data = Pattern(24 << 20);
  std::thread writer([&] {
    size_t off = 0;
    while (off < data.size()) {
      ssize_t w = ::write(source_qemu.get(), data.data() + off, data.size() - off);
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
    source_qemu.Reset();  // QEMU closes its end when the migration completed
  });
  const std::string got = ReadToEnd(target_qemu.get());
  writer.join();
  ASSERT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
  EXPECT_TRUE((*out)->WaitDone(seconds(10))) << (*out)->error();
  EXPECT_TRUE((*in)->WaitDone(seconds(10))) << (*in)->error();
  EXPECT_EQ((*out)->bytes(), data.size());
  EXPECT_EQ((*in)->bytes(), data.size());
  EXPECT_EQ((*in)->rejected_handshakes(), 0);
}

// A peer with another key, or another identity, completes no handshake and
// gets nothing to or from QEMU; the listener still takes the right peer.
TEST(MigrationTunnelTest, RefusesAnotherKeyOrIdentityAndStillTakesTheRightOne) {
  const MigrationKey key = Key("mig-1");
  UniqueFd target_qemu;
  auto in = MigrationTunnel::Listen("127.0.0.1", key, &target_qemu);
  ASSERT_TRUE(in.ok()) << in.error().message;
  const int port = (*in)->port();
  {
    UniqueFd q;
    MigrationKey other = Key("mig-1");  // same identity, another key
    auto bad = MigrationTunnel::Connect("127.0.0.1", port, other, seconds(10), &q);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error().code, ErrorCode::kUnauthenticated) << bad.error().message;
  }
  {
    UniqueFd q;
    MigrationKey other = key;
    other.identity = "mig-2";  // the right key under another name
    auto bad = MigrationTunnel::Connect("127.0.0.1", port, other, seconds(10), &q);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error().code, ErrorCode::kUnauthenticated) << bad.error().message;
  }
  EXPECT_FALSE(Readable(target_qemu.get(), 100)) << "nothing reaches QEMU from a refused peer";
  UniqueFd source_qemu;
  auto good = MigrationTunnel::Connect("127.0.0.1", port, key, seconds(10), &source_qemu);
  ASSERT_TRUE(good.ok()) << good.error().message;
  ASSERT_EQ(::write(source_qemu.get(), "QEVM", 4), 4);
  source_qemu.Reset();
  EXPECT_EQ(ReadToEnd(target_qemu.get()), "QEVM");
  EXPECT_EQ((*in)->rejected_handshakes(), 2);
  // One stream per migration: the listener is gone.
  UniqueFd q;
  auto late = MigrationTunnel::Connect("127.0.0.1", port, key, seconds(5), &q);
  EXPECT_FALSE(late.ok());
}

// Bytes that are not TLS (a port scanner, an old client speaking QEMU's
// stream in clear) are refused without reaching QEMU.
TEST(MigrationTunnelTest, RefusesCleartext) {
  const MigrationKey key = Key();
  UniqueFd target_qemu;
  auto in = MigrationTunnel::Listen("127.0.0.1", key, &target_qemu);
  ASSERT_TRUE(in.ok()) << in.error().message;
  UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>((*in)->port()));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  const std::string clear = "QEVM\0\0\0\3" + Pattern(4096);
  ASSERT_EQ(::write(c.get(), clear.data(), clear.size()), static_cast<ssize_t>(clear.size()));
  // The tunnel answers with an alert or closes: either way the read ends.
  char buf[256];
  (void)::read(c.get(), buf, sizeof buf);
  for (int i = 0; i < 100 && (*in)->rejected_handshakes() == 0; ++i)
    std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ((*in)->rejected_handshakes(), 1);
  EXPECT_FALSE(Readable(target_qemu.get(), 100));
}

// The source's side talks only to a peer that proves the migration key.
// An ordinary TLS 1.3 server with a certificate (here one of the grid's
// own CA, valid for 127.0.0.1: what another grid process on the target's
// port, or a man in the middle holding a grid certificate, would present)
// is refused by Connect and gets none of QEMU's stream: the client trusts
// no certificate, and takes no handshake that did not use the key.
TEST(MigrationTunnelTest, RefusesAServerThatPresentsACertificate) {
  vmm::testing::TempDir dir;
  auto pki = EnsureLocalPki(dir.path(), {"impostor"});
  ASSERT_TRUE(pki.ok()) << pki.error().message;
  auto tls = TlsContext::ForServer((*pki)[0], /*require_client_cert=*/false);
  ASSERT_TRUE(tls.ok()) << tls.error().message;
  SSL_CTX* ctx = (*tls)->get();
  ASSERT_EQ(SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION), 1);
  int port = 0;
  auto listener = ListenTcp("127.0.0.1", &port);
  ASSERT_TRUE(listener.ok()) << listener.error().message;

  int accepted = 0;      // SSL_accept's result
  std::string received;  // what the server read after a handshake
  std::thread server([&] {
    sigset_t pipe;  // the client may close first: fail the write, not the test
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    UniqueFd conn(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) return;
    timeval tv{5, 0};
    ::setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(conn.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, conn.get());
    accepted = SSL_accept(ssl);
    char buf[4096];
    size_t got = 0;
    while (accepted == 1 && SSL_read_ex(ssl, buf, sizeof buf, &got) == 1) received.append(buf, got);
    SSL_free(ssl);
  });

  UniqueFd source_qemu;
  auto out = MigrationTunnel::Connect("127.0.0.1", port, Key(), seconds(5), &source_qemu);
  if (out.ok()) {
    // What a source QEMU would write next, so that the checks below see
    // whether it reached the impostor.
    (void)::write(source_qemu.get(), "QEVM", 4);
    source_qemu.Reset();
    (void)(*out)->WaitDone(seconds(5));
  }
  server.join();
  EXPECT_EQ(received, "") << "stream bytes reached a server without the migration key";
  ASSERT_FALSE(out.ok()) << "the tunnel connected to a server without the migration key";
  EXPECT_EQ(out.error().code, ErrorCode::kUnauthenticated) << out.error().message;
}

// Destroying a tunnel wakes its thread wherever it waits: no hang, and the
// QEMU ends see the stream end (so QEMU's migration fails instead of waiting).
TEST(MigrationTunnelTest, DestroyingEndsTheStreamWithoutHanging) {
  const MigrationKey key = Key();
  UniqueFd target_qemu, source_qemu;
  auto in = MigrationTunnel::Listen("127.0.0.1", key, &target_qemu);
  ASSERT_TRUE(in.ok());
  auto idle = MigrationTunnel::Listen("127.0.0.1", key, &source_qemu);
  ASSERT_TRUE(idle.ok());
  const auto t0 = std::chrono::steady_clock::now();
  idle->reset();  // nobody ever connected
  UniqueFd src_end;
  auto out = MigrationTunnel::Connect("127.0.0.1", (*in)->port(), key, seconds(10), &src_end);
  ASSERT_TRUE(out.ok()) << out.error().message;
  ASSERT_EQ(::write(src_end.get(), "abc", 3), 3);
  char buf[3];
  ASSERT_EQ(::read(target_qemu.get(), buf, 3), 3);
  out->reset();  // the source's agent goes away mid-stream
  EXPECT_EQ(ReadToEnd(target_qemu.get()), "");
  EXPECT_FALSE((*in)->WaitDone(seconds(10)));
  EXPECT_FALSE((*in)->error().empty());
  in->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, seconds(5));
  EXPECT_EQ(::send(src_end.get(), "x", 1, MSG_NOSIGNAL), -1)
      << "QEMU's writes fail once the tunnel is gone";
}

// The target's QEMU dies mid-stream (its end closed with data unread) while
// the target's tunnel object lives on (the agent has not torn the migration
// down yet): the source's tunnel fails and the source QEMU's writes fail
// within seconds, instead of blocking for good on a full TCP window (seen
// in migration_grid_test before the target closed its connection).
TEST(MigrationTunnelTest, ATargetQemuThatDiesFailsTheSourcesWrites) {
  const MigrationKey key = Key();
  UniqueFd target_qemu, source_qemu;
  auto in = MigrationTunnel::Listen("127.0.0.1", key, &target_qemu);
  ASSERT_TRUE(in.ok()) << in.error().message;
  auto out = MigrationTunnel::Connect("127.0.0.1", (*in)->port(), key, seconds(10), &source_qemu);
  ASSERT_TRUE(out.ok()) << out.error().message;
  const std::string chunk = Pattern(1 << 20);
  // Writes what the source can until `until`; false once a write fails.
  auto pump = [&](std::chrono::steady_clock::time_point until, bool stop_when_full) {
    auto last_progress = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() < until) {
      pollfd p{source_qemu.get(), POLLOUT, 0};
      if (::poll(&p, 1, 50) > 0 && (p.revents & (POLLERR | POLLHUP))) return false;
      ssize_t n =
          ::send(source_qemu.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno != EAGAIN) return false;
      if (n > 0) last_progress = std::chrono::steady_clock::now();
      // Every buffer on the way is full: the target QEMU is not reading.
      if (stop_when_full && std::chrono::steady_clock::now() - last_progress > milliseconds(1500))
        return true;
    }
    return true;
  };
  // The target QEMU reads a little, then stalls (loading a device, say) while
  // the source fills every buffer on the way: the socketpair, the TCP windows.
  ASSERT_EQ(::write(source_qemu.get(), chunk.data(), 4096), 4096);
  char first[16];
  ASSERT_TRUE(Readable(target_qemu.get(), 10000));
  ASSERT_GT(::read(target_qemu.get(), first, sizeof first), 0);
  ASSERT_TRUE(pump(std::chrono::steady_clock::now() + seconds(30), /*stop_when_full=*/true));
  target_qemu.Reset();  // kill -9 of the target QEMU
  // The source QEMU keeps writing, as a migration does, until a write fails.
  const auto t0 = std::chrono::steady_clock::now();
  const bool failed = !pump(t0 + seconds(20), /*stop_when_full=*/false);
  EXPECT_TRUE(failed) << "the source QEMU's writes still block 20 s after the target QEMU died";
  EXPECT_LT(std::chrono::steady_clock::now() - t0, seconds(10));
  EXPECT_FALSE((*out)->WaitDone(seconds(10)));
  EXPECT_FALSE((*out)->error().empty());
  EXPECT_FALSE((*in)->WaitDone(seconds(1)));
  EXPECT_FALSE((*in)->error().empty());
}

TEST(MigrationTunnelTest, ConnectToNothingIsUnavailable) {
  const MigrationKey key = Key();
  int port = 0;
  {
    auto l = ListenTcp("127.0.0.1", &port);  // a free port, closed again
    ASSERT_TRUE(l.ok());
  }
  UniqueFd q;
  auto out = MigrationTunnel::Connect("127.0.0.1", port, key, seconds(5), &q);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.error().code, ErrorCode::kUnavailable) << out.error().message;
  MigrationKey bad = key;
  bad.key_hex = "zz";
  auto invalid = MigrationTunnel::Listen("127.0.0.1", bad, &q);
  ASSERT_FALSE(invalid.ok());
  EXPECT_EQ(invalid.error().code, ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace vmgrid
