// End-to-end lifecycle with real VMs: boot and resume, checkpoints, clones
// from checkpoints, persistent workspaces, and the base image staying intact.
#include <gtest/gtest.h>

#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

class VmLifecycleTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    grid_ = StartGrid("lifecycle", 2).release();
    ApiClient api = grid_->Admin();
    image_ = new json(ImportTiny(api, "tiny", true));
  }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
    delete image_;
  }
  ApiClient Api() { return grid_->Admin(); }
  std::string BaseDiskPath() {
    return grid_->controller_state_dir() + "/images/" + (*image_)["id"].get<std::string>() +
           "/disk.raw";
  }

  static LocalGrid* grid_;
  static json* image_;
};
LocalGrid* VmLifecycleTest::grid_ = nullptr;
json* VmLifecycleTest::image_ = nullptr;

TEST_F(VmLifecycleTest, CheckpointResumeAndCloneKeepGuestFiles) {
  ApiClient api = Api();
  auto base_before = ReadFile(BaseDiskPath(), 1ull << 31);
  ASSERT_TRUE(base_before.ok());
  std::string base_digest = Sha256Hex(*base_before);

  json vm = CreateVm(api, {{"image", "tiny"}, {"name", "ck-src"}});
  ASSERT_EQ(vm["state"], "running") << vm.dump();
  std::string id = vm["id"];
  std::string marker = NewId("marker");
  Exec(api, id, "echo " + marker + " > /root/marker && sync");

  json ck = Act(api, id, "checkpoint");
  EXPECT_EQ(ck["state"], "suspended") << ck.dump();
  json resumed = Act(api, id, "resume");
  ASSERT_EQ(resumed["state"], "running") << resumed.dump();
  EXPECT_EQ(Exec(api, id, "cat /root/marker"), marker + "\n");

  // A new non-persistent clone resumed from that checkpoint sees the file too.
  json clone = CreateVm(api, {{"from_checkpoint", id}, {"name", "ck-clone"}});
  ASSERT_EQ(clone["state"], "running") << clone.dump();
  EXPECT_EQ(clone["start"], "resume");
  EXPECT_EQ(Exec(api, clone["id"], "cat /root/marker"), marker + "\n");
  // Writes in the clone do not reach the source VM.
  Exec(api, clone["id"], "echo clone-only > /root/clone && sync");
  EXPECT_EQ(Exec(api, id, "test -e /root/clone && echo yes || echo no"), "no\n");

  DeleteVm(api, clone["id"]);
  DeleteVm(api, id);
  auto base_after = ReadFile(BaseDiskPath(), 1ull << 31);
  ASSERT_TRUE(base_after.ok());
  EXPECT_EQ(Sha256Hex(*base_after), base_digest) << "the read-only base image was modified";
}

TEST_F(VmLifecycleTest, ClonesOfPostBootCheckpointGetFreshEntropy) {
  ApiClient api = Api();
  json a = CreateVm(api, {{"image", "tiny"}, {"start", "resume"}, {"name", "rng-a"}});
  json b = CreateVm(api, {{"image", "tiny"}, {"start", "resume"}, {"name", "rng-b"}});
  ASSERT_EQ(a["state"], "running") << a.dump();
  ASSERT_EQ(b["state"], "running") << b.dump();
  EXPECT_EQ(a["start"], "resume");
  // Both resumed from the same memory image; without a reseed their kernels'
  // RNGs would produce the same stream.
  std::string cmd = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
  std::string ra = Exec(api, a["id"], cmd), rb = Exec(api, b["id"], cmd);
  EXPECT_EQ(ra.size(), 32u);
  EXPECT_NE(ra, rb);
  DeleteVm(api, a["id"]);
  DeleteVm(api, b["id"]);
}

TEST_F(VmLifecycleTest, PersistentWorkspaceSurvivesStopAndDestroy) {
  ApiClient api = Api();
  json vm = CreateVm(
      api, {{"image", "tiny"}, {"name", "ws-vm"}, {"disk", "persistent"}, {"workspace", "ws1"}});
  ASSERT_EQ(vm["state"], "running") << vm.dump();
  EXPECT_EQ(vm["workspace"], "ws1");
  Exec(api, vm["id"], "echo keep-me > /root/data && sync");

  // Stop (power off) and start again: a fresh boot on the same disk.
  EXPECT_EQ(Act(api, vm["id"], "stop")["state"], "stopped");
  json again = Act(api, vm["id"], "resume");
  ASSERT_EQ(again["state"], "running") << again.dump();
  EXPECT_EQ(Exec(api, vm["id"], "cat /root/data"), "keep-me\n");
  Exec(api, vm["id"], "echo second > /root/data2 && sync");

  // Destroy the VM; the workspace stays and a new VM boots on it.
  DeleteVm(api, vm["id"]);
  auto ws = api.Get("/v1/workspaces");
  ASSERT_TRUE(ws.ok());
  ASSERT_EQ((*ws)["workspaces"].size(), 1u);
  EXPECT_EQ((*ws)["workspaces"][0]["vm_id"], "");
  json vm2 = CreateVm(
      api, {{"image", "tiny"}, {"name", "ws-vm2"}, {"disk", "persistent"}, {"workspace", "ws1"}});
  ASSERT_EQ(vm2["state"], "running") << vm2.dump();
  EXPECT_EQ(Exec(api, vm2["id"], "cat /root/data /root/data2"), "keep-me\nsecond\n");

  // A workspace in use cannot be deleted; after purge it is gone.
  auto busy = api.Delete("/v1/workspaces/ws1");
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.error().code, ErrorCode::kFailedPrecondition);
  DeleteVm(api, vm2["id"], /*purge=*/true);
  EXPECT_EQ(api.Get("/v1/workspaces")->at("workspaces").size(), 0u);
}

TEST_F(VmLifecycleTest, CheckpointLeaveRunningAndWrongStates) {
  ApiClient api = Api();
  json vm = CreateVm(api, {{"image", "tiny"}, {"name", "lr"}});
  ASSERT_EQ(vm["state"], "running");
  json ck = Act(api, vm["id"], "checkpoint", {{"leave_running", true}});
  EXPECT_EQ(ck["state"], "running") << ck.dump();
  EXPECT_EQ(Exec(api, vm["id"], "echo alive"), "alive\n");
  // Resuming a running VM is a state error, with a message that says why.
  auto bad = api.Post("/v1/vms/" + vm["id"].get<std::string>() + "/resume");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(bad.error().message.find("running"), std::string::npos);
  // A clone from a checkpoint must match its memory size.
  auto mismatch = api.Post("/v1/vms", {{"from_checkpoint", vm["id"]}, {"memory_mb", 512}});
  ASSERT_FALSE(mismatch.ok());
  EXPECT_EQ(mismatch.error().code, ErrorCode::kInvalidArgument);
  DeleteVm(api, vm["id"]);
}

TEST_F(VmLifecycleTest, FailedCreateLeavesNothingBehind) {
  ApiClient api = Api();
  // An image whose kernel is corrupt on the image server: the host must not
  // use it (it never reaches a guest), so the create fails, and it must leave
  // no process, file or reservation. The kernel gets a unique tail so that
  // its last chunk is not shared with the tiny image (which hosts may cache).
  TinyFiles f = Tiny();
  auto kernel = ReadFile(f.kernel, 256 << 20);
  ASSERT_TRUE(kernel.ok());
  std::string unique_kernel = grid_->log_dir() + "/unique-kernel";
  ASSERT_TRUE(WriteFileAtomic(unique_kernel, *kernel + RandomBytes(4096)).ok());
  f.kernel = unique_kernel;
  json img = ImportFiles(api, "broken", f, false);
  ASSERT_TRUE(img["versions"].contains("kernel")) << img.dump();
  json kv = img["versions"]["kernel"];
  auto manifest =
      ReadFile(grid_->image_server_dir() + "/manifests/" + kv["name"].get<std::string>() + "/" +
               std::to_string(kv["version"].get<int>()) + ".json");
  ASSERT_TRUE(manifest.ok());
  std::string last_chunk = json::parse(*manifest)["chunks"].back();
  FlipByte(ChunkFile(grid_->image_server_dir(), last_chunk));
  // The server keeps a zstd frame of each chunk for transfer and would send
  // the good bytes from it (docs/chunk-store.md): rot the only copy.
  std::string frame =
      grid_->image_server_dir() + "/zstd/" + last_chunk.substr(0, 2) + "/" + last_chunk;
  ASSERT_TRUE(FileExists(frame)) << frame;
  ::unlink(frame.c_str());
  auto hosts_before = api.Get("/v1/hosts");
  json vm = CreateVm(api, {{"image", "broken"}, {"name", "doomed"}});
  EXPECT_EQ(vm["state"], "error");
  EXPECT_NE(vm["error"].get<std::string>().find("corrupt"), std::string::npos) << vm.dump();
  auto hosts_after = api.Get("/v1/hosts");
  int64_t free_before = 0, free_after = 0;
  for (const auto& h : (*hosts_before)["hosts"]) free_before += h["free_memory_mb"].get<int64_t>();
  for (const auto& h : (*hosts_after)["hosts"]) free_after += h["free_memory_mb"].get<int64_t>();
  EXPECT_EQ(free_after, free_before) << "a failed create must release its reservation";
  for (int i = 0; i < grid_->hosts(); ++i)
    EXPECT_FALSE(FileExists(grid_->agent_state_dir(i) + "/vms/" + vm["id"].get<std::string>()));
  DeleteVm(api, vm["id"]);
  EXPECT_TRUE(api.Delete("/v1/images/broken").ok());
}

}  // namespace
}  // namespace vmgrid
