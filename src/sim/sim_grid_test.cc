// A real controller (the built `vmgrid` binary) with 10 simulated hosts of
// one vCPU each: 50 concurrent creates of a 1-vCPU VM place exactly 10, the
// other 40 are refused with 409 resource_exhausted, and no host ends up
// oversubscribed — placement as the controller does it, end to end.
#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli/cli.h"
#include "client/api_client.h"
#include "common/util.h"
#include "dev/local_grid.h"
#include "sim/controller_process.h"
#include "sim/sim_hosts.h"

namespace vmgrid {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr int kHosts = 10;
constexpr int kCreates = 50;

// A 1 MiB raw disk with an MBR boot signature: enough for the controller's
// image checks; simulated hosts never boot it.
std::string WriteBootableDisk(const std::string& path) {
  std::string data(1 << 20, '\0');
  data[510] = static_cast<char>(0x55);
  data[511] = static_cast<char>(0xAA);
  std::ofstream(path, std::ios::binary) << data;
  return path;
}

class SimGridTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/vmgrid-sim-grid-test-" + std::to_string(getpid());
    (void)RemoveTree(dir_);
    ASSERT_TRUE(MakeDirs(dir_).ok());
    ControllerProcessOptions co;
    co.vmgrid_binary = getenv("VMGRID_BINARY") ? getenv("VMGRID_BINARY") : VMGRID_BINARY;
    co.state_dir = dir_ + "/controller";
    auto c = ControllerProcess::Start(co);
    ASSERT_TRUE(c.ok()) << c.error().message;
    controller_ = std::move(*c);

    SimHostsOptions so;
    so.controller_url = controller_->url();
    so.token_file = controller_->state_dir() + "/agent.token";
    so.count = kHosts;
    so.vcpus = 1;
    so.memory_mb = 4096;
    so.heartbeat_interval_s = 2;
    Configure(so);
    sim_ = std::make_unique<SimHosts>(so);
    ASSERT_TRUE(sim_->Start().ok());
  }
  void TearDown() override {
    sim_.reset();
    controller_.reset();
    if (!HasFailure()) (void)RemoveTree(dir_);
  }
  ApiClient Admin() const { return ApiClient(controller_->url(), controller_->admin_token()); }
  virtual void Configure(SimHostsOptions&) {}
  // Waits until `n` hosts are up; returns the hosts listing.
  json WaitHostsUp(int n) {
    auto up = PollUntil(
        Admin(), "/v1/hosts",
        [n](const json& j) {
          int up = 0;
          for (const auto& h : j["hosts"]) up += h["state"] == "up";
          return up == n;
        },
        seconds(30));
    EXPECT_TRUE(up.ok()) << up.error().message;
    return up.ok() ? *up : json();
  }
  // The 1 MiB raw disk as a ready image named `name`.
  void ImportDisk(const std::string& name) {
    ApiClient admin = Admin();
    auto image = admin.Post("/v1/images", {{"name", name}, {"format", "raw"}});
    ASSERT_TRUE(image.ok()) << image.error().message;
    std::string image_id = (*image)["id"];
    auto put = admin.PutFile("/v1/images/" + image_id + "/files/disk",
                             WriteBootableDisk(dir_ + "/" + name + ".raw"));
    ASSERT_TRUE(put.ok()) << put.error().message;
    auto ready = AwaitOperation(admin, admin.Post("/v1/images/" + image_id + "/finalize"));
    ASSERT_TRUE(ready.ok()) << ready.error().message;
    ASSERT_EQ((*ready)["state"], "ready");
  }

  std::string dir_;
  std::unique_ptr<ControllerProcess> controller_;
  std::unique_ptr<SimHosts> sim_;
};

TEST_F(SimGridTest, ConcurrentCreatesNeverOversubscribeSimulatedHosts) {
  ApiClient admin = Admin();
  auto up = PollUntil(
      admin, "/v1/hosts",
      [](const json& j) {
        int n = 0;
        for (const auto& h : j["hosts"]) n += h["state"] == "up";
        return n == kHosts;
      },
      seconds(30));
  ASSERT_TRUE(up.ok()) << up.error().message;
  for (const auto& h : (*up)["hosts"]) {
    EXPECT_EQ(h["vcpus"], 1);
    EXPECT_EQ(h["url"].get<std::string>().find(sim_->url() + "/sim/"), 0u) << h["url"];
  }

  auto image = admin.Post("/v1/images", {{"name", "disk-only"}, {"format", "raw"}});
  ASSERT_TRUE(image.ok()) << image.error().message;
  std::string image_id = (*image)["id"];
  auto put = admin.PutFile("/v1/images/" + image_id + "/files/disk",
                           WriteBootableDisk(dir_ + "/disk.raw"));
  ASSERT_TRUE(put.ok()) << put.error().message;
  auto ready = AwaitOperation(admin, admin.Post("/v1/images/" + image_id + "/finalize"));
  ASSERT_TRUE(ready.ok()) << ready.error().message;
  ASSERT_EQ((*ready)["state"], "ready");

  // 50 creates at once; raw HTTP to see the status codes.
  std::atomic<int> accepted{0}, exhausted{0}, other{0};
  std::vector<std::string> others(kCreates);
  std::vector<std::thread> threads;
  std::atomic<bool> go{false};
  std::string url = controller_->url(), token = controller_->admin_token();
  for (int i = 0; i < kCreates; ++i) {
    threads.emplace_back([&, i] {
      while (!go) std::this_thread::yield();
      httplib::Client cli(url);
      cli.set_read_timeout(60, 0);
      cli.set_bearer_token_auth(token);
      json body = {{"image", "disk-only"}, {"name", "vm-" + std::to_string(i)}, {"vcpus", 1}};
      auto res = cli.Post("/v1/vms", body.dump(), "application/json");
      if (!res) {
        ++other;
        others[static_cast<size_t>(i)] = "transport error: " + httplib::to_string(res.error());
        return;
      }
      json j = json::parse(res->body, nullptr, false);
      if (res->status == 202) {
        ++accepted;
      } else if (res->status == 409 && j.is_object() &&
                 j["error"]["code"] == "resource_exhausted") {
        ++exhausted;
      } else {
        ++other;
        others[static_cast<size_t>(i)] = std::to_string(res->status) + " " + res->body;
      }
    });
  }
  go = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(accepted, kHosts);
  EXPECT_EQ(exhausted, kCreates - kHosts);
  EXPECT_EQ(other, 0);
  for (const auto& o : others)
    if (!o.empty()) ADD_FAILURE() << o;

  // The simulated agents answer at once: every accepted VM runs.
  auto vms = PollUntil(
      admin, "/v1/vms",
      [](const json& j) {
        for (const auto& v : j["vms"])
          if (v["state"] != "running") return false;
        return true;
      },
      seconds(30));
  ASSERT_TRUE(vms.ok()) << vms.error().message;
  EXPECT_EQ((*vms)["vms"].size(), static_cast<size_t>(kHosts));

  auto hosts = admin.Get("/v1/hosts");
  ASSERT_TRUE(hosts.ok());
  int placed = 0;
  for (const auto& h : (*hosts)["hosts"]) {
    EXPECT_GE(h["free_vcpus"].get<int>(), 0) << h["name"];
    EXPECT_LE(h["vm_count"].get<int>(), 1) << h["name"];
    placed += h["vm_count"].get<int>();
  }
  EXPECT_EQ(placed, kHosts);
  // And the hosts' own view agrees: one VM each.
  for (int i = 0; i < kHosts; ++i) EXPECT_EQ(sim_->host(i).size(), 1u) << sim_->HostName(i);

  // The free-vCPU view of the information service agrees too (it does not clamp at 0).
  auto q = admin.Post("/v1/query",
                      {{"sql", "SELECT MIN(free_vcpus) AS m, SUM(free_vcpus) AS s FROM hosts"}});
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ((*q)["rows"][0][0], 0);
  EXPECT_EQ((*q)["rows"][0][1], 0);
}

// Issue 9 §3: the host's disk is a placement resource. Two simulated hosts
// with 1 GiB of free disk each (and vCPUs and memory to spare): each VM
// holds what its disk can grow to (the 1 MiB image, fully allocated, with
// qcow2 metadata) plus a 256 MB memory checkpoint, so three fit per host;
// the seventh VM is refused with the reason, and a deleted VM's room is
// placeable again.
class SimGridDiskTest : public SimGridTest {
 protected:
  void Configure(SimHostsOptions& so) override {
    so.count = 2;
    so.vcpus = 8;
    so.memory_mb = 8192;
    so.disk_mb = 1024;
  }
};

TEST_F(SimGridDiskTest, HostsWithoutDiskRoomAreRefused) {
  ApiClient admin = Admin();
  json hosts = WaitHostsUp(2);
  for (const auto& h : hosts["hosts"]) {
    EXPECT_EQ(h["disk_total_bytes"], int64_t{1} << 30) << h.dump();
    EXPECT_EQ(h["disk_free_bytes"], int64_t{1} << 30) << h.dump();
  }
  ImportDisk("disk-only");
  auto image = admin.Get("/v1/images/disk-only");
  ASSERT_TRUE(image.ok()) << image.error().message;
  const int64_t bound = (*image)["max_clone_bytes"];
  EXPECT_GE(bound, int64_t{1} << 20) << image->dump();
  EXPECT_LT(bound, int64_t{2} << 20) << image->dump();

  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    auto vm = admin.Post("/v1/vms", {{"image", "disk-only"}, {"name", "vm-" + std::to_string(i)}});
    ASSERT_TRUE(vm.ok()) << i << ": " << vm.error().message;
    EXPECT_EQ((*vm)["disk_bytes"], bound + (int64_t{256} << 20)) << vm->dump();
    ids.push_back((*vm)["id"]);
  }
  auto full = admin.Post("/v1/vms", {{"image", "disk-only"}, {"name", "vm-6"}});
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.error().code, ErrorCode::kResourceExhausted);
  EXPECT_NE(full.error().message.find("2 lack 258 MiB of free disk"), std::string::npos)
      << full.error().message;
  auto listed = admin.Get("/v1/hosts");
  ASSERT_TRUE(listed.ok());
  for (const auto& h : (*listed)["hosts"])
    EXPECT_EQ(h["reserved_disk_bytes"], 3 * (bound + (int64_t{256} << 20))) << h.dump();

  // Deleting a VM releases its disk. A VM still creating cannot be deleted
  // (docs/vm-lifecycle.md): under load the simulated agent may not have
  // answered yet, so wait for it to run.
  auto running = PollUntil(
      admin, "/v1/vms/" + ids[0], [](const json& j) { return j["state"] == "running"; },
      seconds(30));
  ASSERT_TRUE(running.ok()) << running.error().message;
  auto deleted = admin.Delete("/v1/vms/" + ids[0]);
  ASSERT_TRUE(deleted.ok()) << deleted.error().message;
  auto gone = PollUntil(
      admin, "/v1/vms", [](const json& j) { return j["vms"].size() == 5u; }, seconds(30));
  ASSERT_TRUE(gone.ok()) << gone.error().message;
  auto again = admin.Post("/v1/vms", {{"image", "disk-only"}, {"name", "vm-7"}});
  EXPECT_TRUE(again.ok()) << again.error().message;
}

// Virtual networks through the REST API (docs/vnet.md): a user's networks
// are theirs; a VM created with `nets` gets a card with an address of the
// network (the Store's IPAM), shown on the VM and on the network; a network
// in use cannot be deleted; another user can neither see nor use it unless
// the admin shares it.
TEST_F(SimGridTest, VirtualNetworksBelongToTheirOwnersAndGiveVmsCards) {
  WaitHostsUp(kHosts);
  ImportDisk("disk-only");
  ApiClient admin = Admin();
  auto user = [&](const std::string& name) {
    auto r = admin.Post("/v1/users", {{"name", name}});
    EXPECT_TRUE(r.ok()) << r.error().message;
    return ApiClient(controller_->url(), r.ok() ? (*r)["token"].get<std::string>() : "");
  };
  ApiClient alice = user("alice"), bob = user("bob");

  auto lab = alice.Post("/v1/networks", {{"name", "lab"}, {"subnet", "10.30.0.0/24"}});
  ASSERT_TRUE(lab.ok()) << lab.error().message;
  const std::string lab_id = (*lab)["id"];
  EXPECT_EQ((*lab)["subnet"], "10.30.0.0/24");
  EXPECT_EQ((*lab)["owner"], "alice");
  EXPECT_FALSE(lab->contains("tunnel_key")) << lab->dump();
  // Bad requests say what was wrong; nothing is created.
  for (const json& bad :
       {json{{"name", "Lab"}}, json{{"name", "-x"}},
        json{{"name", "pub"}, {"subnet", "8.8.8.0/24"}},
        json{{"name", "wide"}, {"subnet", "10.0.0.0/8"}}, json{{"name", "x"}, {"vni", 5}}}) {
    auto r = alice.Post("/v1/networks", bad);
    ASSERT_FALSE(r.ok()) << bad.dump();
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad.dump();
  }
  EXPECT_EQ(alice.Post("/v1/networks", {{"name", "lab"}}).error().code, ErrorCode::kAlreadyExists);
  EXPECT_EQ((*alice.Get("/v1/networks"))["networks"].size(), 1u);

  // Bob sees nothing of it and cannot use it.
  EXPECT_EQ((*bob.Get("/v1/networks"))["networks"].size(), 0u);
  EXPECT_EQ(bob.Get("/v1/networks/" + lab_id).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(bob.Delete("/v1/networks/" + lab_id).error().code, ErrorCode::kNotFound);
  auto bobs_vm = bob.Post("/v1/vms", {{"image", "disk-only"}, {"nets", {lab_id}}});
  ASSERT_FALSE(bobs_vm.ok());
  EXPECT_EQ(bobs_vm.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(bob.Post("/v1/networks/" + lab_id + "/share", {{"user", "bob"}}).error().code,
            ErrorCode::kPermissionDenied);

  // Alice's VM gets a card on it.
  auto vm = alice.Post("/v1/vms", {{"image", "disk-only"}, {"name", "web"}, {"nets", {"lab"}}});
  ASSERT_TRUE(vm.ok()) << vm.error().message;
  EXPECT_EQ(alice.Post("/v1/vms", {{"image", "disk-only"}, {"nets", {"lab", "lab"}}}).error().code,
            ErrorCode::kInvalidArgument);
  auto shown = alice.Get("/v1/vms/web");
  ASSERT_TRUE(shown.ok()) << shown.error().message;
  ASSERT_EQ((*shown)["nics"].size(), 1u) << shown->dump();
  EXPECT_EQ((*shown)["nics"][0]["network"], "lab");
  EXPECT_EQ((*shown)["nics"][0]["ip"], "10.30.0.10");
  EXPECT_EQ((*shown)["nics"][0]["prefix"], 24);
  auto net = alice.Get("/v1/networks/lab");
  ASSERT_TRUE(net.ok()) << net.error().message;
  ASSERT_EQ((*net)["nics"].size(), 1u);
  EXPECT_EQ((*net)["nics"][0]["vm"], "web");
  EXPECT_EQ((*net)["nics"][0]["mac"], (*shown)["nics"][0]["mac"]);
  // In use: not deleted.
  EXPECT_EQ(alice.Delete("/v1/networks/lab").error().code, ErrorCode::kFailedPrecondition);

  // Shared by the admin, bob may put a VM on it; he sees alice's card's
  // address, not her VM.
  auto shared = admin.Post("/v1/networks/" + lab_id + "/share", {{"user", "bob"}});
  ASSERT_TRUE(shared.ok()) << shared.error().message;
  auto bob_vm =
      bob.Post("/v1/vms", {{"image", "disk-only"}, {"name", "client"}, {"nets", {lab_id}}});
  ASSERT_TRUE(bob_vm.ok()) << bob_vm.error().message;
  auto seen = bob.Get("/v1/networks/" + lab_id);
  ASSERT_TRUE(seen.ok()) << seen.error().message;
  ASSERT_EQ((*seen)["nics"].size(), 2u);
  for (const auto& card : (*seen)["nics"]) {
    if (card["ip"] == "10.30.0.10") {
      EXPECT_FALSE(card.contains("vm")) << card.dump();
    } else {
      EXPECT_EQ(card["vm"], "client");
    }
  }
  EXPECT_EQ((*seen)["owner"], "");
  EXPECT_EQ(bob.Delete("/v1/networks/" + lab_id).error().code, ErrorCode::kPermissionDenied);

  // Once its VMs are gone, its owner deletes it.
  for (auto* c : {&alice, &bob}) {
    auto vms = c->Get("/v1/vms");
    ASSERT_TRUE(vms.ok());
    for (const auto& v : (*vms)["vms"]) {
      auto del = c->Delete("/v1/vms/" + v["id"].get<std::string>());
      ASSERT_TRUE(del.ok()) << del.error().message;
    }
  }
  auto gone = PollUntil(
      admin, "/v1/vms", [](const json& j) { return j["vms"].empty(); }, seconds(30));
  ASSERT_TRUE(gone.ok()) << gone.error().message;
  auto del = alice.Delete("/v1/networks/lab");
  EXPECT_TRUE(del.ok()) << del.error().message;
  EXPECT_EQ(alice.Get("/v1/networks/lab").error().code, ErrorCode::kNotFound);
}

// Every list endpoint pages (docs/api.md, "Paging"): a user's pages cover
// their VMs once each, oldest first, and nobody else's; another user's
// cursor lists nothing of the first user's; bad paging parameters are a
// 400 naming what is wrong; the CLI reads every page, or one with --limit.
// Heartbeats name an unchanged VM list by its digest (docs/infosvc.md,
// "Heartbeats"); a restarted controller knows no digest, refuses those, and
// gets every list in full at once: no host goes suspect, no VM is lost.
TEST_F(SimGridTest, HeartbeatsNameUnchangedVmListsAndARestartedControllerGetsThemInFull) {
  ImportDisk("tiny");
  ApiClient admin = Admin();
  WaitHostsUp(kHosts);
  ASSERT_TRUE(admin.Post("/v1/vms", {{"image", "tiny"}, {"name", "keep"}}).ok());
  auto vm = PollUntil(
      admin, "/v1/vms/keep", [](const json& j) { return j["state"] == "running"; }, seconds(30));
  ASSERT_TRUE(vm.ok()) << vm.error().message;
  // Two rounds (2 s apart): every host has had a list acknowledged and
  // names it since.
  const auto deadline = std::chrono::steady_clock::now() + seconds(30);
  while (sim_->stats().heartbeats_same_as < 2 * kHosts &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_GE(sim_->stats().heartbeats_same_as, 2 * kHosts);
  EXPECT_EQ(sim_->stats().heartbeats_same_as_refused, 0);

  ASSERT_TRUE(controller_->Restart().ok());
  const int64_t restarted = NowMs();
  const auto failed_before = sim_->stats().heartbeats_failed;
  while (sim_->HostsHeartbeatedSince(restarted) < kHosts &&
         std::chrono::steady_clock::now() < deadline + seconds(30))
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_EQ(sim_->HostsHeartbeatedSince(restarted), kHosts);
  const auto st = sim_->stats();
  EXPECT_GE(st.heartbeats_same_as_refused, kHosts) << "each host's first named list was refused";
  EXPECT_EQ(st.heartbeats_failed, failed_before) << "and its list then sent in full was answered";
  auto shown = admin.Get("/v1/vms/keep");
  ASSERT_TRUE(shown.ok()) << shown.error().message;
  EXPECT_EQ((*shown)["state"], "running");
  WaitHostsUp(kHosts);
}

TEST_F(SimGridTest, ListsPageWithCursorsThatRevealNothing) {
  WaitHostsUp(kHosts);
  ImportDisk("disk-only");
  ApiClient admin = Admin();
  auto alice = admin.Post("/v1/users", {{"name", "alice"}});
  auto bob = admin.Post("/v1/users", {{"name", "bob"}});
  ASSERT_TRUE(alice.ok() && bob.ok());
  const std::string alice_token = (*alice)["token"], bob_token = (*bob)["token"];
  ApiClient a(controller_->url(), alice_token), b(controller_->url(), bob_token);
  std::vector<std::string> created;
  for (int i = 0; i < 7; ++i) {
    auto vm = a.Post("/v1/vms", {{"image", "disk-only"}, {"name", "a" + std::to_string(i)}});
    ASSERT_TRUE(vm.ok()) << vm.error().message;
    created.push_back((*vm)["id"]);
    // Lists order by (creation millisecond, id): two VMs made in the same
    // millisecond come out in id order, which need not be creation order.
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(
        b.Post("/v1/vms", {{"image", "disk-only"}, {"name", "b" + std::to_string(i)}}).ok());

  std::vector<std::string> seen;
  std::string path = "/v1/vms?limit=2", bobs_view_cursor;
  int pages = 0;
  for (;; ++pages) {
    ASSERT_LT(pages, 10);
    auto page = a.Get(path);
    ASSERT_TRUE(page.ok()) << page.error().message;
    ASSERT_LE((*page)["vms"].size(), 2u);
    for (const auto& v : (*page)["vms"]) seen.push_back(v["id"]);
    if (!page->contains("next")) break;
    std::string next = (*page)["next"];
    if (bobs_view_cursor.empty()) bobs_view_cursor = next;
    path = "/v1/vms?limit=2&cursor=" + next;
  }
  EXPECT_EQ(pages + 1, 4);
  EXPECT_EQ(seen, created);  // each once, oldest first, none of Bob's

  // Alice's cursor in Bob's hands starts a page of Bob's VMs only.
  auto bobs = b.Get("/v1/vms?limit=100&cursor=" + bobs_view_cursor);
  ASSERT_TRUE(bobs.ok()) << bobs.error().message;
  for (const auto& v : (*bobs)["vms"]) EXPECT_EQ(v["owner"], "bob");
  // The admin's first page of 8 has everybody's VMs and a next page.
  auto first = admin.Get("/v1/vms?limit=8");
  ASSERT_TRUE(first.ok());
  EXPECT_EQ((*first)["vms"].size(), 8u);
  EXPECT_TRUE(first->contains("next"));

  for (const char* bad :
       {"/v1/vms?limit=0", "/v1/vms?limit=1001", "/v1/vms?limit=two", "/v1/vms?cursor=not-a-cursor",
        "/v1/vms?cursor=", "/v1/vms?owner=bob", "/v1/hosts?limit=-1", "/v1/images?sort=name",
        "/v1/jobs?cursor=%00", "/v1/networks?limit=1&limit=2"}) {
    auto r = a.Get(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad << ": " << r.error().message;
  }
  // A host cursor given to the VM list (a name where a time belongs).
  auto hosts1 = admin.Get("/v1/hosts?limit=1");
  ASSERT_TRUE(hosts1.ok());
  ASSERT_TRUE(hosts1->contains("next"));
  EXPECT_EQ(a.Get("/v1/vms?cursor=" + (*hosts1)["next"].get<std::string>()).error().code,
            ErrorCode::kInvalidArgument);

  // Hosts page by name.
  std::vector<std::string> names;
  path = "/v1/hosts?limit=3";
  for (int i = 0; i < 10; ++i) {
    auto page = b.Get(path);
    ASSERT_TRUE(page.ok()) << page.error().message;
    for (const auto& h : (*page)["hosts"]) names.push_back(h["name"]);
    if (!page->contains("next")) break;
    path = "/v1/hosts?limit=3&cursor=" + (*page)["next"].get<std::string>();
  }
  ASSERT_EQ(names.size(), static_cast<size_t>(kHosts));
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));

  // The CLI: every page by default, one page with --limit (and the cursor
  // of the next on stderr).
  auto cli = [&](std::vector<std::string> args) {
    std::vector<std::string> all = {"vmgrid",  "--url",     controller_->url(),
                                    "--token", alice_token, "--json"};
    all.insert(all.end(), args.begin(), args.end());
    std::ostringstream out, err;
    int rc = RunCliArgs(all, CliIo{out, err, false});
    EXPECT_EQ(rc, 0) << err.str();
    return json::parse(out.str(), nullptr, false);
  };
  json every = cli({"vm", "list"});
  ASSERT_TRUE(every.contains("vms")) << every.dump();
  EXPECT_EQ(every["vms"].size(), 7u);
  EXPECT_FALSE(every.contains("next"));
  json one = cli({"vm", "list", "--limit", "3"});
  ASSERT_EQ(one["vms"].size(), 3u);
  ASSERT_TRUE(one.contains("next"));
  json rest = cli({"vm", "list", "--limit", "10", "--cursor", one["next"]});
  EXPECT_EQ(rest["vms"].size(), 4u);
  EXPECT_EQ(rest["vms"][0]["id"], created[3]);
}

}  // namespace
}  // namespace vmgrid
