#include "client/api_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/test_ports.h"

namespace vmgrid {
namespace {

using nlohmann::json;

// A tiny fake controller on 127.0.0.1:<any port>.
class FakeServer {
 public:
  FakeServer() {
    port_ = server_.bind_to_any_port("127.0.0.1");
    EXPECT_GT(port_, 0);
  }
  ~FakeServer() { Stop(); }

  httplib::Server& server() { return server_; }
  void Start() {
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  void Stop() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
};

void ReplyError(httplib::Response& res, int status, const std::string& code,
                const std::string& message) {
  res.status = status;
  res.set_content(json{{"error", {{"code", code}, {"message", message}}}}.dump(),
                  "application/json");
}

TEST(ApiClient, SendsBearerTokenAndParsesJson) {
  FakeServer fake;
  fake.server().Get("/v1/whoami", [](const httplib::Request& req, httplib::Response& res) {
    if (req.get_header_value("Authorization") != "Bearer sekrit") {
      ReplyError(res, 401, "unauthenticated", "unknown token");
      return;
    }
    res.set_content(R"({"id":"usr-1","name":"alice","role":"admin"})", "application/json");
  });
  fake.Start();

  ApiClient good(fake.url(), "sekrit");
  auto r = good.Get("/v1/whoami");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["name"], "alice");

  ApiClient bad(fake.url(), "wrong");
  auto e = bad.Get("/v1/whoami");
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().code, ErrorCode::kUnauthenticated);
  EXPECT_EQ(e.error().message, "unknown token");

  ApiClient none(fake.url(), "");
  auto n = none.Get("/v1/whoami");
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().code, ErrorCode::kUnauthenticated);
}

// With keep_alive, a call reuses the idle connection of the one before
// (the server sees the same client port), but not once it has been idle
// longer than keep_alive_idle_ms; without keep_alive every call connects.
TEST(ApiClient, KeepAliveReusesIdleConnectionsOnlyWithinTheirIdleTime) {
  FakeServer fake;
  fake.server().set_keep_alive_timeout(1);  // its Stop waits for the kept connection
  fake.server().Get("/port", [](const httplib::Request& req, httplib::Response& res) {
    res.set_content(json{{"port", req.remote_port}}.dump(), "application/json");
  });
  fake.Start();
  auto port = [](const ApiClient& c) {
    auto r = c.Get("/port");
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? (*r)["port"].get<int>() : -1;
  };
  ApiClient::Options o;
  o.keep_alive = true;
  o.keep_alive_idle_ms = 60'000;
  ApiClient kept(fake.url(), "t1", o);
  const int first = port(kept);
  EXPECT_EQ(port(kept), first);
  o.keep_alive_idle_ms = 1;
  ApiClient brief(fake.url(), "t2", o);
  const int second = port(brief);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_NE(port(brief), second);
  ApiClient plain(fake.url(), "t3");
  const int third = port(plain);
  EXPECT_NE(port(plain), third);
}

// A kept-alive connection whose server went away (an agent that restarted)
// is not used again: the next call opens a new connection and gets its
// answer, instead of being lost on the dead one.
TEST(ApiClient, KeepAliveNeverSendsOnAConnectionThePeerClosed) {
  std::atomic<int> served{0};
  auto handler = [&](const httplib::Request&, httplib::Response& res) {
    ++served;
    res.set_content("{}", "application/json");
  };
  ApiClient::Options o;
  o.keep_alive = true;
  o.keep_alive_idle_ms = 60'000;
  std::string url;
  int port = 0;
  {
    FakeServer first;
    first.server().set_keep_alive_timeout(1);  // its Stop waits for the kept connection
    first.server().Post("/v1/things", handler);
    first.Start();
    url = first.url();
    port = first.port();
    ApiClient c(url, "t-restart", o);
    ASSERT_TRUE(c.Post("/v1/things", json::object()).ok());
  }  // the server stops: the pooled connection is closed from its side
  httplib::Server second;
  second.set_keep_alive_timeout(1);
  second.Post("/v1/things", handler);
  ASSERT_TRUE(second.bind_to_port("127.0.0.1", port));
  std::thread t([&] { second.listen_after_bind(); });
  while (!second.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ApiClient again(url, "t-restart", o);  // same pool key: the same idle connection
  auto r = again.Post("/v1/things", json::object());
  EXPECT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(served.load(), 2);
  second.stop();
  t.join();
}

// A pooled connection on which the peer sent something after its answer (a
// TLS close_notify, a proxy's goodbye, garbage) is not reused: cpp-httplib's
// own liveness peek counts pending bytes as "alive" and would send the next
// request there. A raw server answers, then writes stray bytes and keeps
// the connection open; the next call must go out on a new connection.
TEST(ApiClient, KeepAliveDropsAConnectionWithStrayBytesPending) {
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(lfd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(lfd, 4), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int port = ntohs(addr.sin_port);
  std::atomic<int> connections{0};
  std::vector<int> open_fds;
  std::thread server([&] {
    for (int c = 0; c < 2; ++c) {
      pollfd p{lfd, POLLIN, 0};
      if (::poll(&p, 1, 5000) != 1) return;  // no second connection: the test fails, not hangs
      int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      ++connections;
      open_fds.push_back(fd);
      std::string req;
      char buf[4096];
      while (req.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n <= 0) break;
        req.append(buf, static_cast<size_t>(n));
      }
      const std::string answer =
          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
          "Connection: keep-alive\r\n\r\n{}";
      (void)!::write(fd, answer.data(), answer.size());
      if (c == 0) {  // after the answer was read; the connection stays
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        (void)!::write(fd, "stray", 5);
      }
    }
  });
  ApiClient::Options o;
  o.keep_alive = true;
  o.keep_alive_idle_ms = 60'000;
  o.read_timeout_s = 5;  // without the check the call reads "stray" and waits for the rest
  ApiClient c("http://127.0.0.1:" + std::to_string(port), "t-stray", o);
  ASSERT_TRUE(c.Get("/a").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the stray bytes arrive
  auto r = c.Get("/b");
  EXPECT_TRUE(r.ok()) << r.error().message;
  server.join();
  EXPECT_EQ(connections.load(), 2);
  for (int fd : open_fds) ::close(fd);
  ::close(lfd);
}

TEST(ApiClient, MapsErrorCodes) {
  FakeServer fake;
  fake.server().Get(R"(/v1/err/(\d+)/(\w+))",
                    [](const httplib::Request& req, httplib::Response& res) {
                      ReplyError(res, std::stoi(req.matches[1]), req.matches[2],
                                 "msg " + std::string(req.matches[2]));
                    });
  fake.server().Get("/v1/plain502", [](const httplib::Request&, httplib::Response& res) {
    res.status = 502;
    res.set_content("<html>Bad Gateway</html>", "text/html");
  });
  fake.server().Get("/v1/plain404",
                    [](const httplib::Request&, httplib::Response& res) { res.status = 404; });
  fake.Start();
  ApiClient c(fake.url(), "t");
  struct Case {
    int status;
    const char* code;
    ErrorCode want;
  };
  const Case cases[] = {
      {400, "invalid_argument", ErrorCode::kInvalidArgument},
      {401, "unauthenticated", ErrorCode::kUnauthenticated},
      {403, "permission_denied", ErrorCode::kPermissionDenied},
      {404, "not_found", ErrorCode::kNotFound},
      {409, "already_exists", ErrorCode::kAlreadyExists},
      {409, "failed_precondition", ErrorCode::kFailedPrecondition},
      {409, "resource_exhausted", ErrorCode::kResourceExhausted},
      {413, "payload_too_large", ErrorCode::kInvalidArgument},
      {503, "unavailable", ErrorCode::kUnavailable},
      {504, "timeout", ErrorCode::kTimeout},
      {500, "internal", ErrorCode::kInternal},
      {500, "something_new", ErrorCode::kInternal},
  };
  for (const auto& tc : cases) {
    auto r = c.Get("/v1/err/" + std::to_string(tc.status) + "/" + tc.code);
    ASSERT_FALSE(r.ok()) << tc.code;
    EXPECT_EQ(r.error().code, tc.want) << tc.code;
    EXPECT_EQ(r.error().message, std::string("msg ") + tc.code);
  }
  auto p = c.Get("/v1/plain502");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kUnavailable);
  EXPECT_NE(p.error().message.find("HTTP 502"), std::string::npos) << p.error().message;
  EXPECT_NE(p.error().message.find("Bad Gateway"), std::string::npos);
  auto q = c.Get("/v1/plain404");
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.error().code, ErrorCode::kNotFound);
}

TEST(ApiClient, PostDeleteAndEmptyAnswers) {
  FakeServer fake;
  fake.server().Post("/v1/echo", [](const httplib::Request& req, httplib::Response& res) {
    json in = json::parse(req.body, nullptr, false);
    res.status = 202;
    res.set_content(json{{"got", in}, {"type", req.get_header_value("Content-Type")}}.dump(),
                    "application/json");
  });
  fake.server().Post("/v1/nobody", [](const httplib::Request& req, httplib::Response& res) {
    res.set_content(json{{"len", req.body.size()}}.dump(), "application/json");
  });
  fake.server().Delete("/v1/things/(.*)", [](const httplib::Request& req, httplib::Response& res) {
    EXPECT_EQ(req.get_param_value("purge_workspace"), "true");
    EXPECT_EQ(std::string(req.matches[1]), "a b");
    res.status = 204;
  });
  fake.server().Get("/v1/notjson", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("hello", "text/plain");
  });
  fake.Start();
  ApiClient c(fake.url() + "/", "t");  // trailing slash is fine
  auto r = c.Post("/v1/echo", json{{"name", "x"}, {"n", 3}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["got"]["name"], "x");
  EXPECT_EQ((*r)["type"], "application/json");
  auto nb = c.Post("/v1/nobody");
  ASSERT_TRUE(nb.ok()) << nb.error().message;
  EXPECT_EQ((*nb)["len"], 0);
  auto d = c.Delete("/v1/things/" + PathEscape("a b") + "?purge_workspace=true");
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_TRUE(d->is_null());
  auto nj = c.Get("/v1/notjson");
  ASSERT_FALSE(nj.ok());
  EXPECT_EQ(nj.error().code, ErrorCode::kInternal);
}

TEST(ApiClient, KeepsPathPrefixAndAcceptsMissingScheme) {
  FakeServer fake;
  fake.server().Get("/prefix/v1/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  fake.Start();
  ApiClient c(fake.url() + "/prefix/", "");
  auto r = c.Get("/v1/health");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["status"], "ok");
  ApiClient bare("127.0.0.1:" + std::to_string(fake.port()) + "/prefix", "");
  EXPECT_TRUE(bare.Get("/v1/health").ok());
}

TEST(ApiClient, StreamsPutFileWithProgress) {
  // A 7 MiB + 123 bytes file with a position-dependent pattern.
  const size_t size = 7 * 1024 * 1024 + 123;
  char tmpl[] = "/tmp/vmgrid_put_test_XXXXXX";
  int fd = mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  ::close(fd);
  const std::string path = tmpl;
  uint64_t want_sum = 0;
  {
    std::ofstream out(path, std::ios::binary);
    std::vector<char> buf(size);
    for (size_t i = 0; i < size; ++i) {
      buf[i] = static_cast<char>((i * 131 + i / 4096) & 0xff);
      want_sum = want_sum * 31 + static_cast<unsigned char>(buf[i]);
    }
    out.write(buf.data(), static_cast<std::streamsize>(size));
  }

  FakeServer fake;
  std::atomic<uint64_t> received{0};
  std::atomic<uint64_t> sum{0};
  std::string content_type, auth;
  fake.server().Put(
      "/v1/images/img-1/files/disk", [&](const httplib::Request& req, httplib::Response& res,
                                         const httplib::ContentReader& reader) {
        content_type = req.get_header_value("Content-Type");
        auth = req.get_header_value("Authorization");
        uint64_t n = 0, s = 0;
        reader([&](const char* data, size_t len) {
          for (size_t i = 0; i < len; ++i) {
            s = s * 31 + static_cast<unsigned char>(data[i]);
          }
          n += len;
          return true;
        });
        received = n;
        sum = s;
        res.set_content(json{{"id", "img-1"}, {"size_bytes", n}}.dump(), "application/json");
      });
  fake.Start();
  ApiClient c(fake.url(), "tok");
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  auto r = c.PutFile("/v1/images/img-1/files/disk", path, [&](uint64_t sent, uint64_t total) {
    calls.emplace_back(sent, total);
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["size_bytes"], size);
  EXPECT_EQ(received.load(), size);
  EXPECT_EQ(sum.load(), want_sum);
  EXPECT_EQ(content_type, "application/octet-stream");
  EXPECT_EQ(auth, "Bearer tok");
  ASSERT_GE(calls.size(), 8u);  // 1 MiB chunks, plus the initial (0, total)
  EXPECT_EQ(calls.front().first, 0u);
  EXPECT_EQ(calls.back().first, size);
  for (size_t i = 1; i < calls.size(); ++i) {
    EXPECT_GT(calls[i].first, calls[i - 1].first);
    EXPECT_EQ(calls[i].second, size);
  }

  // Cancel from the progress callback.
  auto canceled = c.PutFile("/v1/images/img-1/files/disk", path,
                            [](uint64_t sent, uint64_t) { return sent < 2 * 1024 * 1024; });
  ASSERT_FALSE(canceled.ok());
  EXPECT_NE(canceled.error().message.find("canceled"), std::string::npos);

  // A missing file fails before connecting.
  auto missing = c.PutFile("/v1/images/img-1/files/disk", path + ".nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kInvalidArgument);
  std::remove(path.c_str());
}

TEST(ApiClient, ConnectionRefusedSaysWhatToDo) {
  const int port = UnusedPort();
  const std::string url = "http://127.0.0.1:" + std::to_string(port);
  ApiClient c(url, "t");
  auto r = c.Get("/v1/whoami");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
  EXPECT_EQ(r.error().message, "cannot reach the controller at " + url +
                                   ": is `vmgrid controller` (or `vmgrid dev`) running?");

  ApiClient::Options opts;
  opts.peer_name = "agent";
  opts.unreachable_hint = "is the agent up?";
  ApiClient agent(url, "t", opts);
  auto a = agent.Post("/v1/x", json::object());
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().message, "cannot reach the agent at " + url + ": is the agent up?");
}

TEST(ApiClient, ReadTimeoutIsTimeout) {
  FakeServer fake;
  fake.server().Get("/v1/slow", [](const httplib::Request&, httplib::Response& res) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    res.set_content("{}", "application/json");
  });
  fake.Start();
  ApiClient::Options opts;
  opts.read_timeout_s = 1;
  ApiClient c(fake.url(), "", opts);
  auto r = c.Get("/v1/slow");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout) << r.error().message;
}

TEST(ApiClient, RejectsBadUrlsAndTokens) {
  for (const char* bad :
       {"ftp://host:1", "http://", "http://:8470", "http://h:port", "http://h:99999"}) {
    ApiClient c(bad, "t");
    auto r = c.Get("/v1/health");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad;
  }
  ApiClient c("http://127.0.0.1:1", "tok\n");
  auto r = c.Get("/v1/health");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
}

// Several controllers (docs/ha.md): a URL list fails over when a controller
// cannot be connected to, sticks with the one that answered, and returns
// HTTP errors as they are (never retried elsewhere).
TEST(ApiClient, FailsOverToTheNextUrlOnlyWhenItCannotConnect) {
  FakeServer a, b;
  std::atomic<int> a_calls{0}, b_calls{0};
  a.server().Get("/v1/who", [&](const httplib::Request&, httplib::Response& res) {
    ++a_calls;
    res.set_content(R"({"who":"a"})", "application/json");
  });
  b.server().Get("/v1/who", [&](const httplib::Request&, httplib::Response& res) {
    ++b_calls;
    res.set_content(R"({"who":"b"})", "application/json");
  });
  b.server().Post("/v1/refuse", [&](const httplib::Request&, httplib::Response& res) {
    ++b_calls;
    ReplyError(res, 409, "failed_precondition", "no");
  });
  a.Start();
  b.Start();
  const std::string down = "http://127.0.0.1:" + std::to_string(UnusedPort());
  ApiClient c(down + ", " + b.url() + "," + a.url(), "t");
  EXPECT_EQ(c.base_url(), down + "," + b.url() + "," + a.url());
  auto r = c.Get("/v1/who");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["who"], "b");
  // Sticks with b, also in copies; a 4xx is b's answer, not a reason to move.
  ApiClient copy = c;
  auto refused = copy.Post("/v1/refuse", json::object());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(b_calls, 2);
  EXPECT_EQ(a_calls, 0);
  // b goes away: a takes over (the dead one is skipped after it).
  b.Stop();
  auto r2 = c.Get("/v1/who");
  ASSERT_TRUE(r2.ok()) << r2.error().message;
  EXPECT_EQ((*r2)["who"], "a");
  auto r3 = c.Get("/v1/who");
  ASSERT_TRUE(r3.ok());
  EXPECT_EQ(a_calls, 2);
  // None answers: the last one's error.
  a.Stop();
  auto none = c.Get("/v1/who");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::kUnavailable);
  // An empty entry is a bad list.
  ApiClient bad(a.url() + ",,", "t");
  auto b_r = bad.Get("/v1/who");
  ASSERT_FALSE(b_r.ok());
  EXPECT_EQ(b_r.error().code, ErrorCode::kInvalidArgument);
}

TEST(PathEscape, EscapesReservedCharacters) {
  EXPECT_EQ(PathEscape("vm-1_a.b~"), "vm-1_a.b~");
  EXPECT_EQ(PathEscape("a b/c?d"), "a%20b%2Fc%3Fd");
  EXPECT_EQ(PathEscape("\xc3\xa9"), "%C3%A9");
}

}  // namespace
}  // namespace vmgrid
