// Every role speaks TLS, and the grid's roles authenticate each other with
// certificates of the grid's CA (mutual TLS). Real controller, agents and
// image server of a LocalGrid (no VMs needed). Each test names the attack.
#include "common/tls.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/child_process.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

class TlsGridTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { grid_ = StartGrid("tls", 1).release(); }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
  }
  void TearDown() override {
    // Back to the operator's identity for the next test.
    ASSERT_TRUE(SetClientTls(Operator()).ok());
  }
  static TlsFiles Operator() {
    const std::string d = grid_->tls_dir();
    return {d + "/operator.pem", d + "/operator.key", d + "/ca.pem"};
  }
  static std::string AgentUrl() {
    auto hosts = grid_->Admin().Get("/v1/hosts");
    EXPECT_TRUE(hosts.ok());
    return hosts.ok() ? (*hosts)["hosts"][0].value("url", "") : "";
  }
  static json HostCredentials() {
    auto text = ReadFile(grid_->agent_state_dir(0) + "/host-credentials.json");
    EXPECT_TRUE(text.ok());
    return text.ok() ? json::parse(*text, nullptr, false) : json();
  }
  // An identity of a CA the grid does not trust.
  static TlsFiles Stranger() {
    auto pki = EnsureLocalPki(grid_->tls_dir() + "/../stranger-ca", {"stranger"});
    EXPECT_TRUE(pki.ok());
    return pki.ok() ? (*pki)[0] : TlsFiles{};
  }

  static LocalGrid* grid_;
};
LocalGrid* TlsGridTest::grid_ = nullptr;

TEST_F(TlsGridTest, EveryRoleServesHttpsOnly) {
  ASSERT_EQ(grid_->url().rfind("https://", 0), 0u) << grid_->url();
  ASSERT_EQ(AgentUrl().rfind("https://", 0), 0u) << AgentUrl();
  ASSERT_EQ(grid_->image_server_url().rfind("https://", 0), 0u);
  // A plain-HTTP request (a token sent in the clear) gets no answer from
  // any of them.
  for (std::string url :
       {grid_->url(), AgentUrl(), grid_->image_server_url(), grid_->agent_controller_url()}) {
    httplib::Client plain("http://" + url.substr(8));
    plain.set_read_timeout(5, 0);
    auto r = plain.Get("/v1/health", {{"Authorization", "Bearer " + grid_->admin_token()}});
    EXPECT_TRUE(!r || r->status == 400) << url << " answered plain HTTP with " << r->status;
  }
  // Over TLS, with the CA, users are served.
  EXPECT_TRUE(grid_->Admin().Get("/v1/hosts").ok());
}

TEST_F(TlsGridTest, ClientsRefuseAServerTheCaDidNotCertify) {
  // A user who trusts another CA (a man in the middle's) gets no answer and
  // sends no token.
  ASSERT_TRUE(SetClientTls({"", "", Stranger().ca}).ok());
  auto r = grid_->Admin().Get("/v1/hosts");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("not trusted"), std::string::npos) << r.error().message;
}

TEST_F(TlsGridTest, AgentApiNeedsACertificateOfTheGridAsWellAsItsToken) {
  const std::string agent = AgentUrl();
  const std::string token = HostCredentials().value("agent_api_token", "");
  ASSERT_FALSE(token.empty());
  // With a client certificate of the grid's CA and the token: served.
  EXPECT_TRUE(ApiClient(agent, token).Get("/agent/v1/status").ok());
  // A stolen agent API token alone is not enough: without a certificate ...
  ASSERT_TRUE(SetClientTls({"", "", grid_->ca_file()}).ok());
  auto r = ApiClient(agent, token).Get("/agent/v1/status");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable) << r.error().message;
  // ... or with a certificate of another CA, the handshake fails.
  TlsFiles s = Stranger();
  ASSERT_TRUE(SetClientTls({s.cert, s.key, grid_->ca_file()}).ok());
  EXPECT_FALSE(ApiClient(agent, token).Get("/agent/v1/status").ok());
}

TEST_F(TlsGridTest, AgentsListenerAndImageServerServeOnlyGridRoles) {
  ASSERT_FALSE(grid_->agent_controller_url().empty());
  ASSERT_TRUE(SetClientTls({"", "", grid_->ca_file()}).ok());
  // Without a client certificate, neither answers (even health).
  EXPECT_FALSE(ApiClient(grid_->agent_controller_url(), "").Get("/v1/health").ok());
  EXPECT_FALSE(ApiClient(grid_->image_server_url(), "").Get("/v1/stats").ok());
  // The users' listener asks users for no certificate.
  EXPECT_TRUE(ApiClient(grid_->url(), "").Get("/v1/health").ok());
  ASSERT_TRUE(SetClientTls(Operator()).ok());
  EXPECT_TRUE(ApiClient(grid_->agent_controller_url(), "").Get("/v1/health").ok());
}

TEST_F(TlsGridTest, HostCredentialCannotPointTheControllerAtAPlainHttpAgent) {
  // A stolen host credential tries to redirect the controller (and the
  // agent API token it sends) to a plain-HTTP address off the machine.
  const std::string host_token = HostCredentials().value("host_token", "");
  ApiClient as_host(grid_->agent_controller_url(), host_token);
  auto r = as_host.Post("/v1/agent/heartbeat", {{"name", "host-1"},
                                                {"url", "http://192.0.2.1:8000"},
                                                {"capacity", {{"vcpus", 8}, {"memory_mb", 4096}}},
                                                {"vms", json::array()}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << r.error().message;
  EXPECT_NE(r.error().message.find("https"), std::string::npos) << r.error().message;
}

TEST(TlsRoles, ServersRefuseToStartWithoutTlsUnlessPlainOnLoopback) {
  const std::string dir = "/tmp/vmgrid-test-tlsroles-" + std::to_string(getpid());
  (void)RemoveTree(dir);
  ASSERT_TRUE(MakeDirs(dir).ok());
  struct Case {
    std::vector<std::string> args;
    std::string expect;  // in the log
  };
  const std::vector<Case> cases = {
      {{"controller", "--listen", "127.0.0.1:0", "--state-dir", dir + "/c1"}, "--tls-cert"},
      {{"controller", "--listen", "0.0.0.0:0", "--plain-http", "--state-dir", dir + "/c2"},
       "loopback"},
      {{"image-server", "--listen", "0.0.0.0:0", "--plain-http", "--dir", dir + "/is"}, "loopback"},
      {{"agent", "--listen", "0.0.0.0:0", "--plain-http", "--state-dir", dir + "/a", "--controller",
        "http://127.0.0.1:1", "--token-file", dir + "/none"},
       "loopback"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> argv = {VMGRID_BINARY};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    const std::string log = dir + "/" + c.args[0] + ".log";
    auto child = ChildProcess::Spawn(argv, log);
    ASSERT_TRUE(child.ok());
    for (int i = 0; i < 200 && (*child)->Running(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_FALSE((*child)->Running()) << c.args[0] << " started without TLS";
    auto text = ReadFile(log);
    ASSERT_TRUE(text.ok());
    EXPECT_NE(text->find(c.expect), std::string::npos) << *text;
  }
  (void)RemoveTree(dir);
}

}  // namespace
}  // namespace vmgrid
