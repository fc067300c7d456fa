// GET /v1/events through a real controller (in-process, SQLite, loopback;
// no agents): what each user sees over HTTP, the query's strict parsing, a
// follower's empty answer, a VM's long poll, and the history read back by a restarted
// controller. The events are written into the controller's database by a
// second Store (as the controller's own writes would), since there are no
// agents to run VMs.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "api/controller.h"
#include "client/api_client.h"
#include "common/util.h"
#include "store/store.h"

namespace vmgrid {
namespace {

using nlohmann::json;

class EventRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / "vmgrid-events-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_.data()), nullptr);
    StartController();
    auto admin = ReadFile(dir_ + "/admin.token");
    ASSERT_TRUE(admin.ok());
    admin_token_ = Trim(*admin);
    for (const char* name : {"alice", "bob"}) {
      auto made = Client(admin_token_).Post("/v1/users", {{"name", name}});
      ASSERT_TRUE(made.ok()) << made.error().message;
      tokens_[name] = (*made)["token"];
      ids_[name] = (*made)["user"]["id"];
    }
  }
  void TearDown() override {
    controller_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  // http_threads / 4 is also the cap on all users' followers at once.
  void StartController(int http_threads = 16) {
    ControllerOptions o;
    o.listen = "127.0.0.1:0";
    o.state_dir = dir_;
    o.tls.plain_http = true;
    o.http_threads = http_threads;
    controller_ = std::make_unique<Controller>(o);
    auto st = controller_->Start();
    ASSERT_TRUE(st.ok()) << st.error().message;
  }
  static std::string Trim(std::string s) {
    s.erase(s.find_last_not_of("\n") + 1);
    return s;
  }
  ApiClient Client(const std::string& token) { return ApiClient(controller_->url(), token); }
  // A VM of `owner`'s with one state change, written to the controller's database.
  std::string AddVmWithHistory(const std::string& owner, const std::string& name, bool run = true) {
    auto s = Store::Open(dir_ + "/vmgrid.db");
    EXPECT_TRUE(s.ok());
    auto h = (*s)->HeartbeatHost("h1", "http://127.0.0.1:1", HostCapacity{8, 8192, 10000, false});
    EXPECT_TRUE(h.ok());
    Image img;
    img.id = "img-" + name;
    img.name = "tiny-" + name;
    img.owner_id = ids_[owner];
    img.state = "ready";
    img.format = "raw";
    img.dir = "/nonexistent";
    EXPECT_TRUE((*s)->InsertImage(img).ok());
    Vm v;
    v.id = NewId("vm");
    v.name = name;
    v.owner_id = ids_[owner];
    v.image_id = img.id;
    v.state = "creating";
    v.vcpus = 1;
    v.memory_mb = 128;
    v.disk = "clone";
    v.start = "boot";
    auto placed = (*s)->PlaceAndInsertVm(v, {h->id});
    EXPECT_TRUE(placed.ok()) << placed.error().message;
    if (run) {
      EXPECT_TRUE((*s)->TransitionVm(v.id, {"creating"}, "running").ok());
    }
    return v.id;
  }
  static std::set<std::string> VmIds(const json& answer) {
    std::set<std::string> ids;
    for (const auto& e : answer["events"]) ids.insert(e["vm_id"].get<std::string>());
    return ids;
  }

  std::string dir_;
  std::unique_ptr<Controller> controller_;
  std::string admin_token_;
  std::map<std::string, std::string> tokens_, ids_;
};

TEST_F(EventRoutesTest, UsersSeeOnlyTheirOwnVmsEvents) {
  const std::string a = AddVmWithHistory("alice", "a");
  const std::string b = AddVmWithHistory("bob", "b");
  auto bobs = Client(tokens_["bob"]).Get("/v1/events");
  ASSERT_TRUE(bobs.ok()) << bobs.error().message;
  EXPECT_EQ(VmIds(*bobs), std::set<std::string>{b});
  for (const std::string& ref : {a, std::string("a")}) {
    auto other = Client(tokens_["bob"]).Get("/v1/events?vm=" + ref);
    ASSERT_FALSE(other.ok()) << ref << ": " << other->dump();
    EXPECT_EQ(other.error().code, ErrorCode::kNotFound) << ref;
  }
  auto alices = Client(tokens_["alice"]).Get("/v1/events?vm=a");
  ASSERT_TRUE(alices.ok()) << alices.error().message;
  ASSERT_EQ((*alices)["events"].size(), 1u);
  EXPECT_EQ((*alices)["events"][0]["kind"], "vm.state");
  EXPECT_EQ((*alices)["events"][0]["data"]["to"], "running");
  EXPECT_EQ((*alices)["next"], (*alices)["events"][0]["id"]);
  // The admin sees both VMs and the host.
  auto all = Client(admin_token_).Get("/v1/events?limit=1000");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(VmIds(*all), (std::set<std::string>{"", a, b}));
  // A follower with nothing new gets an empty page and the same cursor.
  auto waited = Client(tokens_["bob"])
                    .Get("/v1/events?follow=1&wait=1&after=" +
                         std::to_string((*bobs)["next"].get<int64_t>()));
  ASSERT_TRUE(waited.ok()) << waited.error().message;
  EXPECT_TRUE((*waited)["events"].empty());
  EXPECT_EQ((*waited)["next"], (*bobs)["next"]);
  // The query is parsed strictly.
  for (const char* bad :
       {"/v1/events?limit=0", "/v1/events?after=x", "/v1/events?bogus=1", "/v1/events?wait=61",
        "/v1/events?follow=yes", "/v1/events?after=1&last=2"}) {
    auto r = Client(tokens_["alice"]).Get(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad;
  }
}

// GET /v1/vms/ID?while=STATE&wait=S: the VM once it left STATE. Here the
// change is written by another Store (as another controller would), which
// does not ring this controller's event bell: the waiter's own re-reads
// find it. Only the owner may wait; the query is parsed strictly.
TEST_F(EventRoutesTest, VmLongPollAnswersWhenTheStateChanges) {
  const std::string a = AddVmWithHistory("alice", "a", /*run=*/false);
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto s = Store::Open(dir_ + "/vmgrid.db");
    ASSERT_TRUE(s.ok());
    EXPECT_TRUE((*s)->TransitionVm(a, {"creating"}, "running").ok());
  });
  auto got = Client(tokens_["alice"]).Get("/v1/vms/" + a + "?while=creating&wait=60");
  writer.join();
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ((*got)["state"], "running");
  EXPECT_EQ((*got)["id"], a);
  // Not in that state: at once, as it is.
  auto now = Client(tokens_["alice"]).Get("/v1/vms/a?while=stopped&wait=60");
  ASSERT_TRUE(now.ok()) << now.error().message;
  EXPECT_EQ((*now)["state"], "running");
  // Nothing changes: the answer after `wait`, still running.
  auto same = Client(tokens_["alice"]).Get("/v1/vms/a?while=running&wait=1");
  ASSERT_TRUE(same.ok()) << same.error().message;
  EXPECT_EQ((*same)["state"], "running");
  // Another user's VM is not found, waiting or not.
  auto other = Client(tokens_["bob"]).Get("/v1/vms/" + a + "?while=running&wait=1");
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().code, ErrorCode::kNotFound);
  for (const std::string bad : {"?wait=5", "?while=sleeping", "?while=running&wait=61",
                                "?while=running&wait=-1", "?while=running&bogus=1"}) {
    auto r = Client(tokens_["alice"]).Get("/v1/vms/" + a + bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad;
  }
}

// A VM's long poll holds a follower's slot: a user with --max-followers-per-user
// (4) waits open gets 429 for the next, not a controller thread, while another
// user still waits at once; a slot comes back when its wait ends. (With 16
// threads all users' followers are capped at 4 too: 64 threads allow 16.)
TEST_F(EventRoutesTest, VmLongPollsOfOneUserAreBoundedByTheFollowerLimit) {
  controller_.reset();
  StartController(64);
  const std::string a = AddVmWithHistory("alice", "a");
  const std::string b = AddVmWithHistory("bob", "b");
  std::vector<std::thread> waiters;
  for (int i = 0; i < 4; ++i)
    waiters.emplace_back([&] {
      // Until it holds a slot (a probe below may hold one for a second).
      auto r = Client(tokens_["alice"]).Get("/v1/vms/" + a + "?while=running&wait=30");
      for (int t = 0; t < 500 && !r.ok() && r.error().code == ErrorCode::kTooManyRequests; ++t) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        r = Client(tokens_["alice"]).Get("/v1/vms/" + a + "?while=running&wait=30");
      }
      EXPECT_TRUE(r.ok()) << r.error().message;
      if (r.ok()) {
        EXPECT_EQ((*r)["state"], "stopped");  // ended by the change below
      }
    });
  // Once all four wait, a fifth is refused (until then it may get a slot and
  // wait its second out: try again, after the waiters had their turn).
  Result<json> fifth = json::object();
  for (int i = 0; i < 20 && fifth.ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    fifth = Client(tokens_["alice"]).Get("/v1/vms/" + a + "?while=running&wait=1");
  }
  EXPECT_FALSE(fifth.ok());
  if (!fifth.ok()) {
    EXPECT_EQ(fifth.error().code, ErrorCode::kTooManyRequests) << fifth.error().message;
  }
  // Without `while` it is an ordinary read, not a follower.
  EXPECT_TRUE(Client(tokens_["alice"]).Get("/v1/vms/" + a).ok());
  auto bobs = Client(tokens_["bob"]).Get("/v1/vms/" + b + "?while=running&wait=1");
  EXPECT_TRUE(bobs.ok()) << bobs.error().message;
  {
    auto s = Store::Open(dir_ + "/vmgrid.db");  // as another controller: the waiters re-read
    EXPECT_TRUE(s.ok() && (*s)->TransitionVm(a, {"running"}, "stopped").ok());
  }
  for (auto& t : waiters) t.join();
  auto again = Client(tokens_["alice"]).Get("/v1/vms/" + a + "?while=stopped&wait=1");
  EXPECT_TRUE(again.ok()) << again.error().message;
}

// Every VM's history can be read back after a controller restart.
TEST_F(EventRoutesTest, HistorySurvivesAControllerRestart) {
  const std::string a = AddVmWithHistory("alice", "a");
  auto before = Client(tokens_["alice"]).Get("/v1/events?vm=" + a);
  ASSERT_TRUE(before.ok());
  controller_.reset();
  StartController();
  auto after = Client(tokens_["alice"]).Get("/v1/events?vm=" + a);
  ASSERT_TRUE(after.ok()) << after.error().message;
  EXPECT_EQ((*after)["events"], (*before)["events"]);
  EXPECT_FALSE((*after)["events"].empty());
}

}  // namespace
}  // namespace vmgrid
