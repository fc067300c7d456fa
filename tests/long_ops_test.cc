// One user cannot starve the controller with long operations (issue 9, §2):
// image finalize and workspace deletion (and checkpoint publishing, see
// image_transfer_test) answer 202 with an operation at once instead of
// holding a request thread while qemu-img, the image server or an agent
// work. A user may run a few at once (--max-long-ops-per-user; 429 with
// Retry-After beyond), health and other users are served meanwhile, and an
// operation is visible only to its owner and the admin. Real controller,
// image server, agent and QEMU.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <thread>

#include "common/subprocess.h"
#include "common/tls.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

constexpr int kLongOpsPerUser = 3;

class LongOpsTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    grid_ = StartGrid("long-ops", 1, {"--max-long-ops-per-user", std::to_string(kLongOpsPerUser)})
                .release();
    dir_ = grid_->controller_state_dir() + "/../long-ops-files";
    ASSERT_TRUE(MakeDirs(dir_, 0755).ok());
    // A sparse qcow2 with a large virtual disk: publishing it converts and
    // chunks gigabytes, so its finalize takes seconds, not milliseconds.
    big_disk_ = dir_ + "/big.qcow2";
    auto made = RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", big_disk_, "3G"});
    ASSERT_TRUE(made.ok()) << made.error().message;
    small_disk_ = dir_ + "/small.qcow2";
    made = RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", small_disk_, "16M"});
    ASSERT_TRUE(made.ok()) << made.error().message;
  }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
  }

  static std::string NewUser(const std::string& name) { return NewUserToken(*grid_, name); }

  // An image with its disk (qcow2) and the tiny kernel uploaded, not yet
  // finalized; returns its id.
  static std::string UploadedImage(const ApiClient& api, const std::string& name,
                                   const std::string& disk) {
    auto created =
        api.Post("/v1/images", {{"name", name}, {"format", "qcow2"}, {"has_kernel", true}});
    EXPECT_TRUE(created.ok()) << created.error().message;
    if (!created.ok()) return "";
    const std::string id = (*created)["id"];
    auto d = api.PutFile("/v1/images/" + id + "/files/disk", disk);
    EXPECT_TRUE(d.ok()) << d.error().message;
    auto k = api.PutFile("/v1/images/" + id + "/files/kernel", Tiny().kernel);
    EXPECT_TRUE(k.ok()) << k.error().message;
    return id;
  }

  static LocalGrid* grid_;
  static std::string dir_, big_disk_, small_disk_;
};

LocalGrid* LongOpsTest::grid_ = nullptr;
std::string LongOpsTest::dir_, LongOpsTest::big_disk_, LongOpsTest::small_disk_;

// Fails on the code before this change: finalize answered 200 with the
// image only after publishing it, holding a request thread for as long.
TEST_F(LongOpsTest, SlowFinalizesOfOneUserHoldNoRequestAndOthersAreServed) {
  const std::string token = NewUser("hoarder");
  ApiClient hoarder(grid_->url(), token);
  ApiClient bystander(grid_->url(), NewUser("bystander"));
  ApiClient admin = grid_->Admin();
  constexpr int kImages = 8;
  std::vector<std::string> ids;
  for (int i = 0; i < kImages; ++i)
    ids.push_back(UploadedImage(hoarder, "big-" + std::to_string(i), big_disk_));

  // All finalizes at once, raw HTTP to see the status codes.
  std::atomic<int> accepted{0}, limited{0}, other{0}, limited_without_retry_after{0};
  std::vector<std::string> op_ids(kImages);
  std::vector<std::thread> flood;
  for (int i = 0; i < kImages; ++i)
    flood.emplace_back([&, i] {
      auto cli_owner = NewHttpClient(grid_->url());
      auto& cli = *cli_owner;
      cli.set_read_timeout(60, 0);
      auto r = cli.Post(("/v1/images/" + ids[static_cast<size_t>(i)] + "/finalize").c_str(),
                        {{"Authorization", "Bearer " + token}}, "", "application/json");
      json j = r ? json::parse(r->body, nullptr, false) : json();
      if (r && r->status == 202 && j.value("kind", "") == "image_finalize" &&
          j.value("state", "") == "running") {
        ++accepted;
        op_ids[static_cast<size_t>(i)] = j.value("id", "");
      } else if (r && r->status == 429) {
        ++limited;
        if (!r->has_header("Retry-After") || j["error"]["code"] != "too_many_requests")
          ++limited_without_retry_after;
      } else {
        ++other;
        ADD_FAILURE() << "finalize answered "
                      << (r ? std::to_string(r->status) + " " + r->body : "nothing");
      }
    });
  for (auto& t : flood) t.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(accepted.load() + limited.load(), kImages);
  EXPECT_GE(accepted.load(), 1);
  EXPECT_LE(accepted.load(), kLongOpsPerUser)
      << "more finalizes at once than --max-long-ops-per-user";
  EXPECT_EQ(limited_without_retry_after.load(), 0);

  // While they run health answers, and the hoarder's images say that they
  // are being finalized and take no upload and no VM.
  auto probe_owner = NewHttpClient(grid_->url());
  auto& probe = *probe_owner;
  probe.set_read_timeout(5, 0);
  int health_ok = 0;
  for (int i = 0; i < 5; ++i) {
    auto h = probe.Get("/v1/health");
    if (h && h->status == 200) ++health_ok;
  }
  EXPECT_EQ(health_ok, 5);
  int seen_running = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (op_ids[i].empty()) continue;
    auto image = hoarder.Get("/v1/images/" + ids[i]);
    auto upload = hoarder.PutFile("/v1/images/" + ids[i] + "/files/disk", small_disk_);
    auto op = hoarder.Get("/v1/operations/" + op_ids[i]);
    ASSERT_TRUE(image.ok() && op.ok());
    // Refused with 409 before its body is read; the server reads and drops
    // the rest of the body so that the client gets the 409, not a reset.
    ASSERT_FALSE(upload.ok()) << "an upload replaced a disk being finalized";
    EXPECT_EQ(upload.error().code, ErrorCode::kFailedPrecondition) << upload.error().message;
    if ((*op)["state"] != "running") continue;
    ++seen_running;
    // Still running after the image was read: it was finalizing then (or
    // had just become ready, the operation's last step).
    EXPECT_TRUE((*image)["state"] == "finalizing" || (*image)["state"] == "ready") << image->dump();
    if ((*image)["state"] == "finalizing") {
      auto vm = hoarder.Post("/v1/vms", {{"image", ids[i]}});
      ASSERT_FALSE(vm.ok()) << "a VM of an image being finalized";
      EXPECT_EQ(vm.error().code, ErrorCode::kFailedPrecondition);
    }
    // Only the owner and the admin see it.
    EXPECT_EQ(bystander.Get("/v1/operations/" + op_ids[i]).error().code, ErrorCode::kNotFound);
    EXPECT_TRUE(admin.Get("/v1/operations/" + op_ids[i]).ok());
  }

  // Other users are served meanwhile (their own long operations have their
  // own limit).
  EXPECT_TRUE(bystander.Get("/v1/images").ok());
  const std::string small = UploadedImage(bystander, "small", small_disk_);
  auto small_ready = AwaitOperation(bystander, bystander.Post("/v1/images/" + small + "/finalize"));
  ASSERT_TRUE(small_ready.ok()) << small_ready.error().message;
  EXPECT_EQ((*small_ready)["state"], "ready");
  // How many were still running when looked at (the checks above need
  // some; a 3 GiB disk takes seconds to publish).
  std::printf("finalizes accepted %d, refused %d, seen running %d\n", accepted.load(),
              limited.load(), seen_running);
  EXPECT_GE(seen_running, 1) << "the finalizes ended too fast to test what holds while they run";

  // Each accepted operation ends with the image ready; the refused ones can
  // be retried once a slot is free.
  for (size_t i = 0; i < ids.size(); ++i) {
    Result<json> done = MakeError(ErrorCode::kInternal, "not run");
    if (!op_ids[i].empty()) {
      done = AwaitOperation(hoarder, hoarder.Get("/v1/operations/" + op_ids[i]));
    } else {
      for (int tries = 0; tries < 600; ++tries) {
        auto r = hoarder.Post("/v1/images/" + ids[i] + "/finalize");
        if (!r.ok() && r.error().code == ErrorCode::kTooManyRequests) {
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
          continue;
        }
        done = AwaitOperation(hoarder, r);
        break;
      }
    }
    ASSERT_TRUE(done.ok()) << ids[i] << ": " << done.error().message;
    EXPECT_EQ((*done)["state"], "ready") << done->dump();
    EXPECT_EQ((*done)["id"], ids[i]);
    EXPECT_TRUE((*done)["finalize"].is_null()) << done->dump();
    EXPECT_TRUE((*done)["versions"].contains("disk")) << done->dump();
  }
  for (const auto& id : ids) EXPECT_TRUE(hoarder.Delete("/v1/images/" + id).ok());
  EXPECT_TRUE(bystander.Delete("/v1/images/" + small).ok());
}

// The operation contract: 202 with {id, kind, image_id|workspace_id,
// state, progress, result, error}, polled with GET /v1/operations/ID; a
// finalize of a ready image is an operation that has already succeeded;
// another user's operation is 404; a workspace deletion runs as one too.
TEST_F(LongOpsTest, OperationsAnswer202AndOnlyTheirOwnerSeesThem) {
  const std::string token = NewUser("owner");
  ApiClient owner(grid_->url(), token);
  ApiClient other(grid_->url(), NewUser("other"));
  ApiClient admin = grid_->Admin();
  const std::string id = UploadedImage(owner, "mine", small_disk_);

  auto cli_owner = NewHttpClient(grid_->url());
  auto& cli = *cli_owner;
  auto r = cli.Post(("/v1/images/" + id + "/finalize").c_str(),
                    {{"Authorization", "Bearer " + token}}, "", "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 202) << r->body;
  json op = json::parse(r->body);
  for (const char* key : {"id", "kind", "vm_id", "image_id", "workspace_id", "state", "progress",
                          "result", "error", "created_at", "finished_at"})
    EXPECT_TRUE(op.contains(key)) << key << " missing: " << op.dump();
  EXPECT_EQ(op["kind"], "image_finalize");
  EXPECT_EQ(op["image_id"], id);
  const std::string op_id = op["id"];
  EXPECT_EQ(other.Get("/v1/operations/" + op_id).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(other.Post("/v1/images/" + id + "/finalize").error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(admin.Get("/v1/operations/" + op_id).ok());
  auto done = PollUntil(
      owner, "/v1/operations/" + op_id,
      [](const json& j) { return j.value("state", "") != "running"; }, seconds(120));
  ASSERT_TRUE(done.ok()) << done.error().message;
  EXPECT_EQ((*done)["state"], "succeeded") << done->dump();
  EXPECT_EQ((*done)["result"]["state"], "ready") << done->dump();
  EXPECT_TRUE((*done)["error"].is_null());
  EXPECT_FALSE((*done)["finished_at"].is_null());
  EXPECT_EQ(other.Get("/v1/operations/" + op_id).error().code, ErrorCode::kNotFound);
  // Again: nothing to do, an operation that has already succeeded.
  auto again = owner.Post("/v1/images/" + id + "/finalize");
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ((*again)["state"], "succeeded") << again->dump();
  EXPECT_EQ((*again)["result"]["id"], id);
  // A missing file is still refused at once, without an operation.
  auto bare = owner.Post("/v1/images", {{"name", "bare"}, {"format", "raw"}});
  ASSERT_TRUE(bare.ok());
  auto missing = owner.Post("/v1/images/" + (*bare)["id"].get<std::string>() + "/finalize");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(missing.error().message.find("missing: disk"), std::string::npos);

  // A failed finalize (over the image quota when the image would become
  // ready): the operation says why, the image is uploading again and says
  // so too, and it can be deleted at once (its claim ended with the
  // operation).
  const std::string doomed = UploadedImage(owner, "doomed", small_disk_);
  ASSERT_TRUE(admin.Put("/v1/users/owner/quota", {{"image_bytes", 1}}).ok());
  auto failed = owner.Post("/v1/images/" + doomed + "/finalize");
  ASSERT_TRUE(failed.ok()) << failed.error().message;
  auto outcome = AwaitOperation(owner, *failed);
  ASSERT_TRUE(admin.Put("/v1/users/owner/quota", json::object()).ok());
  ASSERT_FALSE(outcome.ok());
  EXPECT_EQ(outcome.error().code, ErrorCode::kPermissionDenied) << outcome.error().message;
  auto after = owner.Get("/v1/images/" + doomed);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ((*after)["state"], "uploading") << after->dump();
  EXPECT_EQ((*after)["finalize"]["state"], "failed") << after->dump();
  EXPECT_EQ((*after)["finalize"]["operation"], (*failed)["id"]) << after->dump();
  EXPECT_NE((*after)["finalize"]["error"].get<std::string>().find("quota"), std::string::npos);
  EXPECT_TRUE(owner.Delete("/v1/images/" + doomed).ok());

  // A workspace: created with a persistent VM, kept when the VM goes.
  ImportTiny(admin, "tiny", false);
  json vm = CreateVm(owner, {{"image", "tiny"}, {"name", "keeper"}, {"disk", "persistent"}});
  ASSERT_EQ(vm["state"], "running") << vm.dump();
  auto busy = owner.Delete("/v1/workspaces/keeper");
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.error().code, ErrorCode::kFailedPrecondition);  // still at once
  DeleteVm(owner, vm["id"]);
  EXPECT_EQ(other.Delete("/v1/workspaces/keeper").error().code, ErrorCode::kNotFound);
  auto del = owner.Delete("/v1/workspaces/keeper");
  ASSERT_TRUE(del.ok()) << del.error().message;
  EXPECT_EQ((*del)["kind"], "workspace_delete") << del->dump();
  EXPECT_TRUE((*del)["workspace_id"].is_string()) << del->dump();
  EXPECT_EQ(other.Get("/v1/operations/" + (*del)["id"].get<std::string>()).error().code,
            ErrorCode::kNotFound);
  auto deleted = AwaitOperation(owner, *del);
  ASSERT_TRUE(deleted.ok()) << deleted.error().message;
  EXPECT_EQ(owner.Get("/v1/workspaces")->at("workspaces").size(), 0u);
  EXPECT_TRUE(owner.Delete("/v1/images/" + id).ok());
}

}  // namespace
}  // namespace vmgrid
