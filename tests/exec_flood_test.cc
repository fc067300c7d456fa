// One user cannot starve the controller: a flood of long execs by one user
// (issue 9: 40 concurrent `sleep` execs made GET /v1/health time out and
// queued heartbeats behind them) is answered at once, 202 up to the user's
// exec limit and 429 with Retry-After beyond it, while health, the agent's
// heartbeats and other users are served. Real controller, agent and QEMU.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <thread>

#include "common/tls.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

TEST(ExecFloodTest, OneUserCannotStarveHealthOrHeartbeats) {
  auto grid = StartGrid("exec-flood", 1, {"--max-execs-per-user", "4"});
  ASSERT_TRUE(grid);
  ApiClient admin = grid->Admin();
  ImportTiny(admin, "tiny", false);
  auto user = admin.Post("/v1/users", {{"name", "flooder"}});
  ASSERT_TRUE(user.ok()) << user.error().message;
  const std::string token = (*user)["token"];
  ApiClient flooder(grid->url(), token);
  json vm = CreateVm(flooder, {{"image", "tiny"}, {"name", "busy"}});
  ASSERT_EQ(vm["state"], "running") << vm.dump();
  const std::string id = vm["id"];
  auto host_before = admin.Get("/v1/hosts");
  ASSERT_TRUE(host_before.ok());
  const std::string beat_before = (*host_before)["hosts"][0]["last_heartbeat"];

  // 40 concurrent execs of a long command by one user.
  constexpr int kFlood = 40;
  std::atomic<int> accepted{0}, limited{0}, other{0};
  std::atomic<int> limited_without_retry_after{0};
  std::vector<std::string> op_ids(kFlood);
  std::vector<std::thread> flood;
  const std::string body = json{{"argv", {"/bin/sleep", "20"}}, {"timeout_s", 120}}.dump();
  for (int i = 0; i < kFlood; ++i)
    flood.emplace_back([&, i] {
      auto cli_owner = NewHttpClient(grid->url());
      auto& cli = *cli_owner;
      cli.set_read_timeout(90, 0);
      auto r = cli.Post(("/v1/vms/" + id + "/exec").c_str(), {{"Authorization", "Bearer " + token}},
                        body, "application/json");
      if (r && r->status == 202) {
        ++accepted;
        op_ids[static_cast<size_t>(i)] = json::parse(r->body).value("id", "");
      } else if (r && r->status == 429) {
        ++limited;
        auto j = json::parse(r->body, nullptr, false);
        if (!r->has_header("Retry-After") || !j.is_object() ||
            j["error"]["code"] != "too_many_requests")
          ++limited_without_retry_after;
      } else {
        ++other;
      }
    });

  // Meanwhile health answers, the admin is served and the agent's
  // heartbeats keep arriving (the host stays up, its heartbeat time moves).
  auto probe_owner = NewHttpClient(grid->url());
  auto& probe = *probe_owner;
  probe.set_read_timeout(5, 0);  // generous; today it never answers at all
  int health_ok = 0;
  for (int i = 0; i < 10; ++i) {
    auto h = probe.Get("/v1/health");
    if (h && h->status == 200) ++health_ok;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(health_ok, 10) << "GET /v1/health failed while one user flooded exec";
  auto beat = PollUntil(
      admin, "/v1/hosts",
      [&](const json& j) {
        return j["hosts"][0]["last_heartbeat"] != beat_before && j["hosts"][0]["state"] == "up";
      },
      seconds(20));
  EXPECT_TRUE(beat.ok()) << "no heartbeat got through during the flood: " << beat.error().message;

  for (auto& t : flood) t.join();
  EXPECT_EQ(other.load(), 0) << "requests neither accepted nor refused with 429";
  EXPECT_GE(accepted.load(), 1);
  EXPECT_LE(accepted.load(), 4) << "more execs ran at once than --max-execs-per-user";
  EXPECT_EQ(accepted.load() + limited.load(), kFlood);
  EXPECT_EQ(limited_without_retry_after.load(), 0) << "a 429 without Retry-After or its JSON error";

  // The CLI-facing contract still holds: an accepted exec ends with the
  // command's exit code, and another user's operations are not visible.
  std::string op;
  for (const auto& o : op_ids)
    if (!o.empty()) op = o;
  ASSERT_FALSE(op.empty());
  auto other_user = admin.Post("/v1/users", {{"name", "bystander"}});
  ASSERT_TRUE(other_user.ok());
  ApiClient bystander(grid->url(), (*other_user)["token"].get<std::string>());
  EXPECT_EQ(bystander.Get("/v1/operations/" + op).error().code, ErrorCode::kNotFound);
  auto done = PollUntil(
      flooder, "/v1/operations/" + op,
      [](const json& j) { return j.value("state", "") != "running"; }, seconds(180));
  ASSERT_TRUE(done.ok()) << done.error().message;
  EXPECT_EQ((*done)["state"], "succeeded") << done->dump();
  EXPECT_EQ((*done)["result"]["exit_code"], 0) << done->dump();
  // Once the flood's execs have ended, the user may exec again.
  for (const auto& o : op_ids)
    if (!o.empty())
      (void)PollUntil(
          flooder, "/v1/operations/" + o,
          [](const json& j) { return j.value("state", "") != "running"; }, seconds(180));
  EXPECT_EQ(Exec(flooder, id, "echo after"), "after\n");
  DeleteVm(flooder, id);
  StopGrid(grid);
}

}  // namespace
}  // namespace vmgrid
