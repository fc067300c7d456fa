// Slow and malformed clients against a real controller: a client that sends
// its headers byte by byte is cut off, header blocks have a bounded size and
// line count, and request bodies come only with a Content-Length (chunked,
// compressed and length-less bodies are refused before authentication).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <thread>

#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

class HttpLimitsTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    // A short header deadline keeps the slow-client test short.
    grid_ = StartGrid("http-limits", 1, {"--header-timeout-ms", "2000"}, /*tls=*/false).release();
  }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
  }

  // A raw connection, to send what no well-behaved client would.
  static int Connect() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port =
        htons(static_cast<uint16_t>(std::stoi(grid_->url().substr(grid_->url().rfind(':') + 1))));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return fd;
  }
  // Everything the server sends until it closes, or until `wait` passes
  // with nothing new (an answer that never comes is "").
  static std::string ReadAnswer(int fd, std::chrono::seconds wait = std::chrono::seconds(20)) {
    std::string answer;
    char buf[4096];
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(wait.count() * 1000)) <= 0) break;
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      answer.append(buf, static_cast<size_t>(n));
    }
    return answer;
  }
  static std::string Request(const std::string& raw) {
    int fd = Connect();
    EXPECT_EQ(send(fd, raw.data(), raw.size(), MSG_NOSIGNAL), static_cast<ssize_t>(raw.size()));
    std::string answer = ReadAnswer(fd);
    close(fd);
    return answer;
  }

  static LocalGrid* grid_;
};
LocalGrid* HttpLimitsTest::grid_ = nullptr;

TEST_F(HttpLimitsTest, SlowlorisIsDisconnected) {
  // 60 header bytes, one every 200 ms: 12 s to send in full, far past the
  // 2 s header deadline. The server must hang up before the client is done.
  std::string raw = "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
  raw += std::string(60 - raw.size(), 'a');
  int fd = Connect();
  bool cut_off = false;
  for (char c : raw) {
    if (send(fd, &c, 1, MSG_NOSIGNAL) != 1) {
      cut_off = true;
      break;
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 200) > 0) {
      char buf[256];
      if (recv(fd, buf, sizeof buf, 0) <= 0) {  // closed (or reset) by the server
        cut_off = true;
        break;
      }
    }
  }
  close(fd);
  EXPECT_TRUE(cut_off) << "the server kept a connection whose headers took 12 s";
  // The server still answers everyone else.
  EXPECT_TRUE(ApiClient(grid_->url(), "").Get("/v1/health").ok());
}

TEST_F(HttpLimitsTest, HeaderBlocksAreBounded) {
  std::string many = "GET /v1/health HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 500; ++i) many += "X-H" + std::to_string(i) + ": v\r\n";
  many += "\r\n";
  std::string answer = Request(many);
  EXPECT_EQ(answer.rfind("HTTP/1.1 431", 0), 0u) << answer.substr(0, 200);

  std::string big = "GET /v1/health HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 8; ++i)
    big += "X-Big" + std::to_string(i) + ": " + std::string(4000, 'b') + "\r\n";
  big += "\r\n";
  answer = Request(big);
  EXPECT_EQ(answer.rfind("HTTP/1.1 431", 0), 0u) << answer.substr(0, 200);
  // A normal request on a fresh connection is served.
  answer = Request("GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(answer.rfind("HTTP/1.1 200", 0), 0u) << answer;
}

TEST_F(HttpLimitsTest, BodiesNeedAContentLength) {
  struct Case {
    const char* what;
    std::string raw;
    const char* status;
  };
  const std::string token = grid_->admin_token();
  std::vector<Case> cases = {
      {"chunked upload, no token",
       "PUT /v1/images/img-x/files/disk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
       "4\r\nabcd\r\n",
       "HTTP/1.1 411"},
      {"chunked upload, admin token",
       "PUT /v1/images/img-x/files/disk HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
           "\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
       "HTTP/1.1 411"},
      {"chunked JSON",
       "POST /v1/vms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
       "HTTP/1.1 411"},
      // Without a length the body would run until the client closes.
      {"length-less POST",
       "POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n{}",
       "HTTP/1.1 411"},
      {"gzip body",
       "POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: "
       "4\r\n\r\nabcd",
       "HTTP/1.1 415"},
      {"bad length", "POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
       "HTTP/1.1 400"},
  };
  for (const auto& c : cases) {
    // The client keeps its end open: only the server's refusal ends it.
    int fd = Connect();
    ASSERT_EQ(send(fd, c.raw.data(), c.raw.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(c.raw.size()));
    std::string answer = ReadAnswer(fd);
    close(fd);
    EXPECT_EQ(answer.rfind(c.status, 0), 0u) << c.what << ": " << answer.substr(0, 300);
    EXPECT_NE(answer.find("\"error\""), std::string::npos)
        << c.what << ": " << answer.substr(0, 300);
  }
  // Nothing was created; bodies with a length still work.
  EXPECT_EQ(grid_->Admin().Get("/v1/vms")->at("vms").size(), 0u);
  std::string ok =
      Request("POST /v1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
              "\r\nContent-Type: application/json\r\nContent-Length: 14\r\nConnection: "
              "close\r\n\r\n{\"name\":\"len\"}");
  EXPECT_EQ(ok.rfind("HTTP/1.1 201", 0), 0u) << ok;
}

TEST_F(HttpLimitsTest, AgentsListenerServesOnlyHeartbeatsAndHealth) {
  ASSERT_FALSE(grid_->agent_controller_url().empty());
  ApiClient anon(grid_->agent_controller_url(), "");
  EXPECT_TRUE(anon.Get("/v1/health").ok());
  // No user endpoint exists there, even for the admin; heartbeats need the
  // agent credential.
  ApiClient admin(grid_->agent_controller_url(), grid_->admin_token());
  EXPECT_EQ(admin.Get("/v1/vms").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(admin.Post("/v1/agent/heartbeat", {{"name", "evil"}, {"url", "http://x"}}).error().code,
            ErrorCode::kPermissionDenied);
  // The real agent heartbeats through it: its host is up.
  auto hosts = grid_->Admin().Get("/v1/hosts");
  ASSERT_TRUE(hosts.ok());
  EXPECT_EQ((*hosts)["hosts"][0]["state"], "up");
}

}  // namespace
}  // namespace vmgrid
