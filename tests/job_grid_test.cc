// Grid jobs with real VMs (docs/jobs.md): a job of 5 tasks resumed from the
// tiny image's post-boot checkpoint, with exit codes and stdout checked; a
// job queued while no host takes VMs starts when one does; fair share between
// two users; a task whose agent is killed (SIGKILL) mid-run is retried on
// the other host.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/cli_run.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

// Host failure detection in seconds, as host_failure_grid_test.
const std::vector<std::string> kFailureArgs = {
    "--host-suspect-after-ms", "3000", "--host-failed-after-ms", "9000",
    "--host-lease-ms",         "5000", "--host-lease-grace-ms",  "3000"};

class JobGridTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    grid_ = StartGrid("jobs", 2, kFailureArgs).release();
    ApiClient api = grid_->Admin();
    image_ = new json(ImportTiny(api, "tiny", true));
  }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
    delete image_;
  }
  ApiClient Api() { return grid_->Admin(); }
  std::string Submit(json body) {
    body["image"] = "tiny";
    body["resume"] = true;
    auto r = Api().Post("/v1/jobs", body);
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? (*r)["id"].get<std::string>() : "";
  }
  json WaitJob(const std::string& id, seconds timeout = seconds(400)) {
    auto r = PollUntil(
        Api(), "/v1/jobs/" + id,
        [](const json& j) {
          const std::string s = j.value("state", "");
          return s == "succeeded" || s == "failed" || s == "cancelled";
        },
        timeout);
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? *r : json();
  }
  std::string Log(const std::string& id, int task, const std::string& stream = "stdout") {
    auto r =
        Api().Get("/v1/jobs/" + id + "/tasks/" + std::to_string(task) + "/logs?stream=" + stream);
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? (*r)["data"].get<std::string>() : "";
  }

  static LocalGrid* grid_;
  static json* image_;
};
LocalGrid* JobGridTest::grid_ = nullptr;
json* JobGridTest::image_ = nullptr;

TEST_F(JobGridTest, FiveTasksKeepTheirExitCodesAndOutputAndLeaveNoVm) {
  const std::string id =
      Submit({{"count", 5},
              {"argv", {"/bin/sh", "-c", "echo task {i}; echo oops >&2; exit $(({i} % 2))"}}});
  json job = WaitJob(id);
  EXPECT_EQ(job["state"], "failed") << job.dump();
  EXPECT_EQ(job["exit_code"], 1);
  ASSERT_EQ(job["tasks"].size(), 5u);
  for (const auto& t : job["tasks"]) {
    const int i = t["index"];
    EXPECT_EQ(t["exit_code"], i % 2) << t.dump();
    EXPECT_EQ(t["state"], i % 2 ? "failed" : "succeeded");
    EXPECT_EQ(t["attempts"], 1);
    EXPECT_EQ(Log(id, i), "task " + std::to_string(i) + "\n");
    EXPECT_EQ(Log(id, i, "stderr"), "oops\n");
  }
  // Every task VM is gone (deleted after its task).
  auto vms = PollUntil(
      Api(), "/v1/vms", [](const json& j) { return j["vms"].empty(); }, seconds(120));
  EXPECT_TRUE(vms.ok()) << (vms.ok() ? "" : vms.error().message);
}

TEST_F(JobGridTest, TasksReadTheirInputAndLeaveTheirOutputAsDatasets) {
  namespace fs = std::filesystem;
  const std::string dir = "/tmp/vmgrid-job-data-" + std::to_string(getpid());
  fs::remove_all(dir);
  fs::create_directories(dir + "/in");
  std::ofstream(dir + "/in/n.txt") << "21\n";
  const std::string admin = grid_->admin_token();
  CliRun push = RunCli(*grid_, admin, {"data", "push", "job-in", dir + "/in"});
  ASSERT_EQ(push.rc, 0) << push.out << push.err;
  const std::string id = Submit(
      {{"count", 2},
       {"argv", {"/bin/sh", "-c", "echo $(( $(cat /in/n.txt) * 2 + {i} )) > /out/answer.txt"}},
       {"data", {{{"name", "in"}, {"dataset", "job-in"}, {"mount", "/in"}}}},
       {"output", {{"dataset", "answer-{i}"}, {"mount", "/out"}, {"size_mb", 32}}}});
  json job = WaitJob(id);
  ASSERT_EQ(job["state"], "succeeded") << job.dump();
  for (int i = 0; i < 2; ++i) {
    const std::string out = dir + "/answer-" + std::to_string(i);
    CliRun pull = RunCli(*grid_, admin, {"data", "pull", "answer-" + std::to_string(i), out});
    ASSERT_EQ(pull.rc, 0) << pull.out << pull.err;
    std::ifstream f(out + "/answer.txt");
    std::stringstream ss;
    ss << f.rdbuf();
    EXPECT_EQ(ss.str(), std::to_string(42 + i) + "\n");
  }
  fs::remove_all(dir);
}

TEST_F(JobGridTest, AJobQueuedWhileNoHostTakesVmsStartsWhenOneDoes) {
  ApiClient api = Api();
  auto hosts = api.Get("/v1/hosts");
  ASSERT_TRUE(hosts.ok());
  std::vector<std::string> ids;
  for (const auto& h : (*hosts)["hosts"]) ids.push_back(h["id"]);
  // Draining hosts take no placements: the grid is full for the job.
  for (const auto& h : ids) {
    auto d = api.Post("/v1/hosts/" + h + "/drain", json::object());
    ASSERT_TRUE(d.ok()) << d.error().message;
    ASSERT_TRUE(AwaitOperation(api, d).ok());
  }
  const std::string id = Submit({{"argv", {"/bin/echo", "late"}}});
  // Several scheduler passes (500 ms each) find no room: still queued.
  for (int i = 0; i < 6; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    auto j = api.Get("/v1/jobs/" + id);
    ASSERT_TRUE(j.ok());
    ASSERT_EQ((*j)["tasks"][0]["state"], "queued") << j->dump();
  }
  for (const auto& h : ids) ASSERT_TRUE(api.Post("/v1/hosts/" + h + "/undrain").ok());
  json job = WaitJob(id);
  EXPECT_EQ(job["state"], "succeeded") << job.dump();
  EXPECT_EQ(Log(id, 0), "late\n");
}

// Fair share with real VMs: one host takes two 4-vCPU tasks at a time; user
// b's two tasks, submitted after user a's four, start before a's last two.
TEST_F(JobGridTest, AUserWithABacklogDoesNotMakeAnotherWait) {
  ApiClient admin = Api();
  auto hosts = admin.Get("/v1/hosts");
  ASSERT_TRUE(hosts.ok());
  const std::string kept = (*hosts)["hosts"][0]["id"];
  std::vector<std::string> drained;
  for (const auto& h : (*hosts)["hosts"])
    if (h["id"] != kept) drained.push_back(h["id"]);
  for (const auto& h : drained) {
    auto d = admin.Post("/v1/hosts/" + h + "/drain", json::object());
    ASSERT_TRUE(d.ok()) << d.error().message;
    ASSERT_TRUE(AwaitOperation(admin, d).ok());
  }
  ApiClient a(grid_->url(), NewUserToken(*grid_, "share-a"));
  ApiClient b(grid_->url(), NewUserToken(*grid_, "share-b"));
  auto submit = [](ApiClient& as, int count) {
    auto r = as.Post("/v1/jobs", {{"image", "tiny"},
                                  {"count", count},
                                  {"vcpus", 4},
                                  {"argv", {"/bin/sh", "-c", "sleep 2; echo {i}"}}});
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? (*r)["id"].get<std::string>() : "";
  };
  const std::string ja = submit(a, 4);
  const std::string jb = submit(b, 2);
  json job_a = WaitJob(ja), job_b = WaitJob(jb);
  for (const auto& h : drained) ASSERT_TRUE(admin.Post("/v1/hosts/" + h + "/undrain").ok());
  ASSERT_EQ(job_a["state"], "succeeded") << job_a.dump();
  ASSERT_EQ(job_b["state"], "succeeded") << job_b.dump();
  std::vector<std::string> a_starts;
  for (const auto& t : job_a["tasks"]) a_starts.push_back(t["started_at"]);
  std::sort(a_starts.begin(), a_starts.end());  // RFC 3339 UTC times sort as text
  for (const auto& t : job_b["tasks"])
    EXPECT_LT(t["started_at"].get<std::string>(), a_starts[2])
        << "b waited for a's backlog: " << job_a.dump() << job_b.dump();
}

// Retries back off (2 s, 4 s, ...) and prefer another host than the one the
// last attempt was lost on: before that, all 6 attempts once went to the
// killed host (not yet suspect) and failed within 4 s.
TEST_F(JobGridTest, ATaskWhoseAgentIsKilledIsRetriedOnTheOtherHost) {
  const std::string id =
      Submit({{"retries", 5}, {"argv", {"/bin/sh", "-c", "sleep 20; echo done"}}});
  auto running = PollUntil(
      Api(), "/v1/jobs/" + id, [](const json& j) { return j["tasks"][0]["state"] == "running"; },
      seconds(240));
  ASSERT_TRUE(running.ok()) << running.error().message;
  const std::string first_host = (*running)["tasks"][0]["host_id"];
  auto host = Api().Get("/v1/hosts/" + first_host);
  ASSERT_TRUE(host.ok());
  int dead = -1;
  for (int i = 0; i < grid_->hosts(); ++i)
    if ((*host)["name"] == "host-" + std::to_string(i + 1)) dead = i;  // LocalGrid's names
  ASSERT_GE(dead, 0) << host->dump();
  grid_->StopAgent(dead, /*hard=*/true);  // SIGKILL, mid-task
  json job = WaitJob(id);
  EXPECT_EQ(job["state"], "succeeded") << job.dump();
  EXPECT_GE(job["tasks"][0]["attempts"].get<int>(), 2);
  EXPECT_NE(job["tasks"][0]["host_id"], first_host);
  EXPECT_EQ(job["tasks"][0]["last_host_id"], first_host) << job.dump();
  EXPECT_EQ(Log(id, 0), "done\n");
  // The last test of the suite: the killed agent stays down (StopGrid sweeps
  // its fenced QEMUs). Restarting it here once did not answer LocalGrid's
  // probe within 30 s on 2026-12-06 although its log says it served at
  // once; under investigation (see the stop's note).
}

}  // namespace
}  // namespace vmgrid
