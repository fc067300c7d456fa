// Hosts authenticate as themselves: each agent exchanges the join token for
// credentials bound to its host name, one for each direction. Real
// controller and agents (no VMs needed).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

json Credentials(const LocalGrid& grid, int index) {
  auto text = ReadFile(grid.agent_state_dir(index) + "/host-credentials.json");
  EXPECT_TRUE(text.ok()) << text.error().message;
  return text.ok() ? json::parse(*text, nullptr, false) : json();
}

json Heartbeat(const std::string& name) {
  return {{"name", name},
          {"url", "http://127.0.0.1:9"},
          {"capacity", {{"vcpus", 64}, {"memory_mb", 65536}}},
          {"vms", json::array()}};
}

TEST(HostCredentials, EachHostSpeaksOnlyForItself) {
  auto grid = StartGrid("hostcred", 2);
  ASSERT_TRUE(grid);
  json a = Credentials(*grid, 0), b = Credentials(*grid, 1);
  ASSERT_TRUE(a.is_object() && b.is_object());
  EXPECT_EQ(a["name"], "host-1");
  EXPECT_NE(a["host_token"], b["host_token"]);
  EXPECT_NE(a["agent_api_token"], b["agent_api_token"]);
  EXPECT_NE(a["host_token"], a["agent_api_token"]);
  struct stat st {};
  ASSERT_EQ(stat((grid->agent_state_dir(0) + "/host-credentials.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto hosts = grid->Admin().Get("/v1/hosts");
  ASSERT_TRUE(hosts.ok());
  std::map<std::string, std::string> url;
  for (const auto& h : (*hosts)["hosts"]) url[h["name"]] = h["url"];
  ASSERT_EQ(url.size(), 2u);

  // Host 1's credential cannot heartbeat as host 2 (which would let it
  // report host 2's VMs away or point the controller at itself) ...
  ApiClient as_a(grid->url(), a["host_token"]);
  auto hijack = as_a.Post("/v1/agent/heartbeat", Heartbeat("host-2"));
  ASSERT_FALSE(hijack.ok());
  EXPECT_EQ(hijack.error().code, ErrorCode::kPermissionDenied) << hijack.error().message;
  // ... nor register a new host, nor act as a user.
  EXPECT_FALSE(as_a.Post("/v1/agent/register", {{"name", "host-9"}}).ok());
  EXPECT_EQ(as_a.Get("/v1/vms").error().code, ErrorCode::kPermissionDenied);
  // Its agent API credential opens its own agent only.
  EXPECT_TRUE(ApiClient(url["host-1"], a["agent_api_token"]).Get("/agent/v1/status").ok());
  EXPECT_EQ(ApiClient(url["host-2"], a["agent_api_token"]).Get("/agent/v1/status").error().code,
            ErrorCode::kUnauthenticated);
  // The agent -> controller credential does not open the agent API.
  EXPECT_EQ(ApiClient(url["host-1"], a["host_token"]).Get("/agent/v1/status").error().code,
            ErrorCode::kUnauthenticated);
  // A forged host token (another name with host 1's MAC) is nobody.
  std::string tok = a["host_token"];
  std::string forged = "vmgh.host-2" + tok.substr(tok.rfind('.'));
  EXPECT_EQ(
      ApiClient(grid->url(), forged).Post("/v1/agent/heartbeat", Heartbeat("host-2")).error().code,
      ErrorCode::kUnauthenticated);

  // The join token registers hosts and does nothing else: no heartbeats,
  // no agent API, and no taking over the credentials of a host that is up.
  auto join = ReadTokenFile(grid->controller_state_dir() + "/agent.token");
  ASSERT_TRUE(join.ok());
  ApiClient joiner(grid->url(), *join);
  EXPECT_EQ(joiner.Post("/v1/agent/heartbeat", Heartbeat("host-1")).error().code,
            ErrorCode::kPermissionDenied);
  EXPECT_EQ(ApiClient(url["host-1"], *join).Get("/agent/v1/status").error().code,
            ErrorCode::kUnauthenticated);
  auto takeover = joiner.Post("/v1/agent/register", {{"name", "host-1"}});
  ASSERT_FALSE(takeover.ok());
  EXPECT_EQ(takeover.error().code, ErrorCode::kAlreadyExists);
  auto fresh = joiner.Post("/v1/agent/register", {{"name", "host-new"}});
  ASSERT_TRUE(fresh.ok()) << fresh.error().message;
  EXPECT_TRUE(ApiClient(grid->url(), (*fresh)["host_token"])
                  .Post("/v1/agent/heartbeat", Heartbeat("host-new"))
                  .ok());
  EXPECT_FALSE(joiner.Post("/v1/agent/register", {{"name", "../x"}}).ok());
  EXPECT_FALSE(joiner.Post("/v1/agent/register", {{"name", "h"}, {"role", "admin"}}).ok());

  // Both agents kept heartbeating with their own credentials all along.
  auto after = grid->Admin().Get("/v1/hosts");
  ASSERT_TRUE(after.ok());
  int up = 0;
  for (const auto& h : (*after)["hosts"])
    if ((h["name"] == "host-1" || h["name"] == "host-2") && h["state"] == "up") ++up;
  EXPECT_EQ(up, 2);
  StopGrid(grid);
}

}  // namespace
}  // namespace vmgrid
