#include "common/tls.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "common/http_server.h"
#include "common/util.h"

namespace vmgrid {
namespace {

namespace fs = std::filesystem;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("vmgrid-tls-test-" + NewToken().substr(0, 8));
    auto pki = EnsureLocalPki(dir_ + "/pki", {"server", "client"});
    ASSERT_TRUE(pki.ok()) << pki.error().message;
    server_ = (*pki)[0];
    client_ = (*pki)[1];
    auto other = EnsureLocalPki(dir_ + "/other", {"stranger"});
    ASSERT_TRUE(other.ok()) << other.error().message;
    stranger_ = (*other)[0];
  }
  void TearDown() override {
    StopServer();
    ASSERT_TRUE(SetClientTls({}).ok());
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Serves GET /who (the client certificate's name) over TLS.
  void StartServer(bool require_client_cert, int header_timeout_ms = 10'000,
                   int keep_alive_idle_ms = 5'000) {
    auto ctx = TlsContext::ForServer(server_, require_client_cert);
    ASSERT_TRUE(ctx.ok()) << ctx.error().message;
    HttpServerLimits limits;
    limits.header_timeout_ms = header_timeout_ms;
    limits.keep_alive_idle_ms = keep_alive_idle_ms;
    srv_ = std::make_unique<GuardedServer>(limits, *ctx);
    auto who = [](const httplib::Request&, httplib::Response& res) {
      res.set_content("peer=" + GuardedServer::PeerCertificateName(), "text/plain");
    };
    srv_->Get("/who", who);
    srv_->Post("/who", who);
    auto url = srv_->Bind("127.0.0.1:0");
    ASSERT_TRUE(url.ok()) << url.error().message;
    url_ = *url;
    thread_ = std::thread([this] { srv_->listen_after_bind(); });
    while (!srv_->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  void StopServer() {
    if (srv_) srv_->stop();
    if (thread_.joinable()) thread_.join();
    srv_.reset();
  }
  int port() const { return std::stoi(url_.substr(url_.rfind(':') + 1)); }

  // GET /who with the process's client configuration `files`.
  httplib::Result Get(const TlsFiles& files, const std::string& url) {
    EXPECT_TRUE(SetClientTls(files).ok());
    auto cli = NewHttpClient(url);
    cli->set_connection_timeout(5, 0);
    cli->set_read_timeout(5, 0);
    return cli->Get("/who");
  }

  std::string dir_;
  TlsFiles server_, client_, stranger_;
  std::unique_ptr<GuardedServer> srv_;
  std::thread thread_;
  std::string url_;
};

TEST_F(TlsTest, LocalPkiWritesKeysOnlyTheOwnerCanRead) {
  struct stat st {};
  ASSERT_EQ(stat((dir_ + "/pki/ca.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat(client_.key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto cn = CertificateCommonName(client_.cert);
  ASSERT_TRUE(cn.ok());
  EXPECT_EQ(*cn, "client");
  // Issuing again keeps what exists (a local grid restarts with its PKI).
  auto before = ReadFile(client_.cert);
  ASSERT_TRUE(EnsureLocalPki(dir_ + "/pki", {"client"}).ok());
  EXPECT_EQ(*ReadFile(client_.cert), *before);
}

TEST_F(TlsTest, ClientTrustingTheCaIsServed) {
  StartServer(false);
  ASSERT_EQ(url_.rfind("https://127.0.0.1:", 0), 0u) << url_;
  auto r = Get({"", "", server_.ca}, url_);
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "peer=");  // no client certificate presented
  // A client certificate, when offered, is verified and named.
  r = Get(client_, url_);
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->body, "peer=client");
}

TEST_F(TlsTest, ServerOfAnotherCaIsRefused) {
  StartServer(false);
  auto r = Get({"", "", stranger_.ca}, url_);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), httplib::Error::SSLServerVerification);
}

TEST_F(TlsTest, HostNameIsVerified) {
  // A certificate of our CA, but for another name: a stolen host certificate
  // cannot impersonate the controller at 127.0.0.1.
  CertificateRequest req;
  req.common_name = "elsewhere";
  req.dns_names = {"elsewhere.example"};
  ASSERT_TRUE(
      IssueCertificate(dir_ + "/pki", req, dir_ + "/pki/elsewhere.pem", dir_ + "/pki/elsewhere.key")
          .ok());
  server_ = {dir_ + "/pki/elsewhere.pem", dir_ + "/pki/elsewhere.key", server_.ca};
  StartServer(false);
  auto r = Get({"", "", server_.ca}, url_);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), httplib::Error::SSLServerVerification);
}

TEST_F(TlsTest, MutualTlsRefusesClientsWithoutACertificateOfTheCa) {
  StartServer(true);
  auto r = Get(client_, url_);
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->body, "peer=client");
  // No certificate: the handshake fails.
  EXPECT_FALSE(Get({"", "", server_.ca}, url_));
  // A certificate of another CA (trusting ours for the server): refused.
  EXPECT_FALSE(Get({stranger_.cert, stranger_.key, server_.ca}, url_));
}

TEST_F(TlsTest, PlainHttpToATlsServerGetsNothing) {
  StartServer(false);
  ASSERT_TRUE(SetClientTls({}).ok());
  httplib::Client plain("http://127.0.0.1:" + std::to_string(port()));
  plain.set_read_timeout(5, 0);
  auto r = plain.Get("/who");
  EXPECT_TRUE(!r || r->status >= 400);
}

TEST_F(TlsTest, PooledConnectionClosedWhileIdleIsReplacedNotWrittenInto) {
  // The server drops idle keep-alive connections; a client that pooled one
  // must see it closed and reconnect (a close_notify left unread made
  // cpp-httplib's liveness peek think it open: "Write" errors).
  StartServer(false, 10'000, /*keep_alive_idle_ms=*/200);
  ASSERT_TRUE(SetClientTls({"", "", server_.ca}).ok());
  auto cli = NewHttpClient(url_);
  cli->set_keep_alive(true);
  for (int i = 0; i < 3; ++i) {
    auto r = cli->Post("/who", "{}", "application/json");
    ASSERT_TRUE(r) << i << ": " << httplib::to_string(r.error());
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
  }
}

TEST_F(TlsTest, UploadRefusedBeforeItsBodyIsReadGetsTheRefusal) {
  // A handler that refuses a PUT without reading its body (an upload to an
  // image being finalized: 409) must reach the client as the 409, however
  // much of the body is still on its way; not as a reset connection.
  StartServer(false);
  srv_->Put("/upload",
            [](const httplib::Request&, httplib::Response& res, const httplib::ContentReader&) {
              res.status = 409;
              res.set_content("{\"error\":{\"code\":\"failed_precondition\",\"message\":\"busy\"}}",
                              "application/json");
            });
  ASSERT_TRUE(SetClientTls({"", "", server_.ca}).ok());
  for (size_t size : {size_t{1}, size_t{200} << 10, size_t{4} << 20}) {
    const std::string body(size, 'x');
    for (int i = 0; i < 20; ++i) {
      auto cli = NewHttpClient(url_);
      cli->set_read_timeout(10, 0);
      httplib::ContentProvider provider = [&](size_t offset, size_t length,
                                              httplib::DataSink& sink) {
        return sink.write(body.data() + offset, std::min<size_t>(length, 65536));
      };
      auto r = cli->Put("/upload", body.size(), provider, "application/octet-stream");
      ASSERT_TRUE(r) << size << " bytes, try " << i << ": " << httplib::to_string(r.error());
      EXPECT_EQ(r->status, 409);
      // The pooled-connection case: the same client again.
      auto again = cli->Get("/who");
      ASSERT_TRUE(again) << httplib::to_string(again.error());
      EXPECT_EQ(again->status, 200);
    }
  }
}

TEST_F(TlsTest, SilentClientIsCutOffAtTheHandshakeDeadline) {
  StartServer(false, /*header_timeout_ms=*/300);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port()));
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char c;
  // The server closes the connection (0) rather than our 10 s timeout (-1).
  EXPECT_EQ(recv(fd, &c, 1, 0), 0);
  close(fd);
}

TEST(ServerTlsTest, PlainHttpOnlyOnLoopbackAndOnlyWhenAskedFor) {
  ServerTlsOptions plain;
  plain.plain_http = true;
  auto r = ServerTls("controller", "127.0.0.1:8470", plain, false);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, nullptr);
  EXPECT_TRUE(ServerTls("agent", "[::1]:0", plain, true).ok());
  r = ServerTls("controller", "0.0.0.0:8470", plain, false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("loopback"), std::string::npos) << r.error().message;
  r = ServerTls("agent", "10.1.2.3:1", plain, true);
  EXPECT_FALSE(r.ok());
  // Neither TLS files nor --plain-http: refused with what to do.
  r = ServerTls("controller", "127.0.0.1:8470", {}, false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("--tls-cert"), std::string::npos) << r.error().message;
  EXPECT_TRUE(IsLoopbackHost("localhost"));
  EXPECT_TRUE(IsLoopbackHost("127.8.9.1"));
  EXPECT_FALSE(IsLoopbackHost("128.0.0.1"));
  EXPECT_FALSE(IsLoopbackHost("localhost.evil.example"));
}

// No SO_REUSEPORT: a second server (of this user or any other process) on a
// port already served fails to bind instead of taking a share of its
// connections; a plain socket with SO_REUSEPORT cannot join it either.
TEST(GuardedServerTest, APortAlreadyServedCannotBeBoundAgain) {
  GuardedServer first(HttpServerLimits{});
  auto url = first.Bind("127.0.0.1:0");
  ASSERT_TRUE(url.ok()) << url.error().message;
  const std::string port = url->substr(url->rfind(':') + 1);
  GuardedServer second(HttpServerLimits{});
  auto again = second.Bind("127.0.0.1:" + port);
  ASSERT_FALSE(again.ok()) << "bound " << *again << " twice";
  EXPECT_NE(again.error().message.find("in use"), std::string::npos) << again.error().message;

  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  int yes = 1;
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &yes, sizeof yes), 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_NE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  close(fd);
}

TEST(ServerTlsTest, KeyOfAnotherCertificateIsRefused) {
  std::string dir = fs::temp_directory_path() / ("vmgrid-tls-key-" + NewToken().substr(0, 8));
  auto pki = EnsureLocalPki(dir, {"a", "b"});
  ASSERT_TRUE(pki.ok());
  auto ctx = TlsContext::ForServer({(*pki)[0].cert, (*pki)[1].key, (*pki)[0].ca}, false);
  ASSERT_FALSE(ctx.ok());
  EXPECT_NE(ctx.error().message.find("is it the key of"), std::string::npos) << ctx.error().message;
  CertificateRequest bad;
  bad.common_name = "x";
  bad.ip_addresses = {"not-an-ip"};
  EXPECT_FALSE(IssueCertificate(dir, bad, dir + "/x.pem", dir + "/x.key").ok());
  bad.ip_addresses.clear();
  EXPECT_FALSE(IssueCertificate(dir, bad, dir + "/x.pem", dir + "/x.key").ok());  // no SAN
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace vmgrid
