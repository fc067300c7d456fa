// End-to-end: images reach hosts through the image server (issue 3): lazy
// NBD exports over the host chunk cache, corruption in the cache, a host with
// an empty cache resuming a clone from an image checkpoint, prefetch hints.
// One host; its cache is emptied by restarting the agent with its chunk
// cache, materialized files and manifests removed.
#include <filesystem>

#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;
namespace fs = std::filesystem;

class ImageTransferTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { grid_ = StartGrid("images", 1); }
  static void TearDownTestSuite() { StopGrid(grid_); }
  void SetUp() override { ASSERT_TRUE(grid_ != nullptr); }

  ApiClient Api() { return grid_->Admin(); }

  // The host's image counters as the controller last heard them.
  json HostImages() {
    auto hosts = Api().Get("/v1/hosts");
    EXPECT_TRUE(hosts.ok());
    if (!hosts.ok() || (*hosts)["hosts"].empty()) return json();
    return (*hosts)["hosts"][0].value("images", json());
  }
  // Waits for a heartbeat newer than now (2 s period), so counters are current.
  json FreshHostImages() {
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    return HostImages();
  }

  // Restarts the agent with nothing cached: chunks, materialized files and
  // manifests removed while it is down.
  void EmptyHostCache() {
    grid_->StopAgent(0, false);
    std::string dir = grid_->agent_state_dir(0);
    for (const char* sub : {"/chunks", "/blobs", "/manifests"})
      ASSERT_TRUE(RemoveTree(dir + sub).ok());
    ASSERT_TRUE(grid_->StartAgent(0).ok());
    ASSERT_TRUE(grid_->WaitHostsUp(1, seconds(30)).ok());
  }

  // How many kernel and initrd files the host has materialized.
  int BootFiles() {
    int n = 0;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(grid_->agent_state_dir(0) + "/blobs", ec)) {
      const std::string ext = e.path().extension().string();
      n += ext == ".kernel" || ext == ".initrd";
    }
    return n;
  }

  json VmStateJson(const std::string& id) {
    auto text = ReadFile(grid_->agent_state_dir(0) + "/vms/" + id + "/state.json");
    EXPECT_TRUE(text.ok());
    return text.ok() ? json::parse(*text, nullptr, false) : json::object();
  }

  std::vector<std::string> CachedChunkFiles() {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e :
         fs::recursive_directory_iterator(grid_->agent_state_dir(0) + "/chunks/chunks", ec))
      if (e.is_regular_file()) out.push_back(e.path().string());
    return out;
  }

  static std::unique_ptr<LocalGrid> grid_;
};
std::unique_ptr<LocalGrid> ImageTransferTest::grid_;

TEST_F(ImageTransferTest, ColdBootFetchesLittleThenCorruptCacheIsRefetched) {
  ApiClient api = Api();
  json img = ImportTiny(api, "lazy", false);
  ASSERT_TRUE(img["versions"].contains("disk")) << img.dump();
  const uint64_t disk_size = img["versions"]["disk"]["size"];
  EmptyHostCache();

  json vm = CreateVm(api, {{"image", "lazy"}, {"name", "cold"}});
  ASSERT_EQ(vm["state"], "running") << vm.dump();
  EXPECT_EQ(Exec(api, vm["id"], "echo hello"), "hello\n");
  json st = FreshHostImages();
  ASSERT_TRUE(st.is_object()) << "no image counters in the host's heartbeat";
  EXPECT_GT(st["cache"]["misses"].get<uint64_t>(), 0u) << st.dump();
  // On-demand transfer: booting reads a small part of the disk.
  const uint64_t fetched = st["cache"]["bytes_fetched"];
  EXPECT_LT(fetched, disk_size / 2) << st.dump();
  // Compressed transfer: the kernel's chunks came as zstd frames, so fewer
  // bytes arrived than the chunks hold; every chunk was verified decoded.
  const json& server = st["image_server"];
  EXPECT_GT(server["zstd_chunks"].get<uint64_t>(), 0u) << st.dump();
  EXPECT_LT(server["bytes_fetched"].get<uint64_t>(), server["raw_bytes_fetched"].get<uint64_t>())
      << st.dump();
  EXPECT_EQ(server["raw_bytes_fetched"].get<uint64_t>(), fetched) << st.dump();
  ASSERT_EQ(st["exports"].size(), 1u) << st.dump();
  EXPECT_EQ(st["exports"][0]["vms"], 1);
  // The first cold boot recorded its first-read order with the image version.
  json dv = img["versions"]["disk"];
  std::string hint = grid_->image_server_dir() + "/manifests/" + dv["name"].get<std::string>() +
                     "/" + std::to_string(dv["version"].get<int>()) + ".prefetch-boot.json";
  EXPECT_TRUE(FileExists(hint)) << hint;
  DeleteVm(api, vm["id"]);

  // Every cached chunk gets a flipped byte. A new VM still boots: each chunk
  // fails verification, is counted, refetched and never reaches the guest.
  const uint64_t failures_before = st["cache"]["verification_failures"];
  auto files = CachedChunkFiles();
  ASSERT_FALSE(files.empty());
  for (const auto& f : files) FlipByte(f);
  json vm2 = CreateVm(api, {{"image", "lazy"}, {"name", "healed"}});
  ASSERT_EQ(vm2["state"], "running") << vm2.dump();
  EXPECT_EQ(Exec(api, vm2["id"], "cat /etc/hostname >/dev/null && echo ok"), "ok\n");
  json st2 = FreshHostImages();
  EXPECT_GT(st2["cache"]["verification_failures"].get<uint64_t>(), failures_before) << st2.dump();
  auto log = ReadFile(grid_->log_dir() + "/host-1.log", 64 << 20);
  ASSERT_TRUE(log.ok());
  EXPECT_NE(log->find("corrupt"), std::string::npos) << "the agent must log the corrupt chunk";
  DeleteVm(api, vm2["id"]);

  // With the cache emptied again, a cold boot streams the recorded order.
  EmptyHostCache();
  json vm3 = CreateVm(api, {{"image", "lazy"}, {"name", "prefetched"}});
  ASSERT_EQ(vm3["state"], "running") << vm3.dump();
  json st3 = FreshHostImages();
  EXPECT_GE(st3["prefetch"]["runs"].get<uint64_t>(), 1u) << st3.dump();
  EXPECT_GT(st3["prefetch"]["chunks"].get<uint64_t>(), 0u) << st3.dump();
  DeleteVm(api, vm3["id"]);
  EXPECT_TRUE(api.Delete("/v1/images/lazy").ok());
}

TEST_F(ImageTransferTest, EmptyCacheHostResumesCloneFromImageCheckpoint) {
  ApiClient api = Api();
  json img = ImportTiny(api, "ckpt", true);
  ASSERT_TRUE(img["versions"].contains("ckpt_memory")) << img.dump();
  ASSERT_TRUE(img["versions"].contains("ckpt_disk")) << img.dump();
  // The checkpoint was made on this host; forget everything it cached.
  EmptyHostCache();
  json vm = CreateVm(api, {{"image", "ckpt"}, {"name", "resumed"}, {"start", "resume"}});
  ASSERT_EQ(vm["state"], "running") << vm.dump();
  const std::string id = vm["id"];
  EXPECT_EQ(Exec(api, id, "echo resumed"), "resumed\n");
  json st = FreshHostImages();
  EXPECT_GT(
      st["cache"]["misses"].get<uint64_t>() + st["image_server"]["bytes_fetched"].get<uint64_t>(),
      0u)
      << st.dump();
  // The resume did not fetch the kernel and initrd it does not run: QEMU got
  // the boot stub for them (vmm/boot_stub.h).
  const uint64_t kernel_size = img["versions"]["kernel"]["size"];
  EXPECT_LT(st["image_server"]["raw_bytes_fetched"].get<uint64_t>(),
            img["versions"]["ckpt_memory"]["size"].get<uint64_t>() + kernel_size / 2)
      << st.dump();
  EXPECT_EQ(BootFiles(), 0) << "a resume fetched the kernel or initrd";
  EXPECT_EQ(VmStateJson(id).value("boot_stub", false), true);

  // An agent killed and started again adopts that QEMU as one with the stub.
  grid_->StopAgent(0, /*hard=*/true);
  ASSERT_TRUE(grid_->StartAgent(0).ok());
  ASSERT_TRUE(grid_->WaitHostsUp(1, seconds(30)).ok());
  EXPECT_EQ(VmStateJson(id).value("boot_stub", false), true);

  // A reboot of that guest ends its QEMU; the agent boots the VM again on its
  // disk with the image's kernel, fetched now, and the VM stays running.
  const std::string boot_id = Exec(api, id, "cat /proc/sys/kernel/random/boot_id");
  ASSERT_FALSE(boot_id.empty());
  EXPECT_EQ(Exec(api, id, "echo kept > /root/before-reboot && sync && echo ok"), "ok\n");
  (void)ExecOperation(api, id, {{"argv", {"/sbin/reboot"}}, {"timeout_s", 10}});
  std::string new_boot_id;
  for (auto deadline = std::chrono::steady_clock::now() + seconds(120);
       std::chrono::steady_clock::now() < deadline;
       std::this_thread::sleep_for(std::chrono::milliseconds(500))) {
    auto op = ExecOperation(
        api, id, {{"argv", {"cat", "/proc/sys/kernel/random/boot_id"}}, {"timeout_s", 10}});
    if (!op.ok() || (*op)["state"] != "succeeded" || !(*op)["result"].is_object()) continue;
    std::string out = (*op)["result"].value("stdout", "");
    if (!out.empty() && out != boot_id) {
      new_boot_id = out;
      break;
    }
  }
  ASSERT_FALSE(new_boot_id.empty()) << "the guest did not come back after its reboot";
  EXPECT_EQ(Exec(api, id, "cat /root/before-reboot"), "kept\n") << "the disk survives the reboot";
  EXPECT_EQ(BootFiles(), 2) << "the reboot fetched the kernel and initrd";
  EXPECT_EQ(VmStateJson(id).value("boot_stub", true), false);
  auto got = api.Get("/v1/vms/" + id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)["state"], "running") << got->dump();
  // A second clone on the now-warm host resumes too, from the same files.
  json vm2 = CreateVm(api, {{"image", "ckpt"}, {"name", "resumed2"}, {"start", "resume"}});
  ASSERT_EQ(vm2["state"], "running") << vm2.dump();
  EXPECT_EQ(Exec(api, vm2["id"], "echo again"), "again\n");
  EXPECT_EQ(VmStateJson(vm2["id"]).value("boot_stub", true), false)
      << "with the kernel on the host, a resume hands it to QEMU";
  DeleteVm(api, id);
  DeleteVm(api, vm2["id"]);
  EXPECT_TRUE(api.Delete("/v1/images/ckpt").ok());
}

// A clone of a VM's checkpoint on a host that has never seen the VM: the
// source host publishes the checkpoint (memory and the disk flattened over
// the base image), the other host fetches, verifies and resumes it.
TEST(CrossHostCheckpointTest, CloneOfAVmCheckpointResumesOnAnotherHost) {
  auto grid = StartGrid("xhost", 2);  // 4096 MB per host
  ApiClient api = grid->Admin();
  ImportTiny(api, "tiny", false);
  // Big enough that a second one does not fit beside it: the clone must go
  // to the other host.
  json src = CreateVm(api, {{"image", "tiny"}, {"name", "src"}, {"memory_mb", 2560}});
  ASSERT_EQ(src["state"], "running") << src.dump();
  Exec(api, src["id"], "echo from-the-source > /root/marker && sync");
  ASSERT_EQ(Act(api, src["id"], "checkpoint")["state"], "suspended");
  // The create answers at once; the source host's publishing is an
  // operation of its own, named in the answer, and the clone boots after it.
  auto accepted = api.Post("/v1/vms", {{"from_checkpoint", src["id"]}, {"name", "clone"}});
  ASSERT_TRUE(accepted.ok()) << accepted.error().message;
  EXPECT_EQ((*accepted)["state"], "creating") << accepted->dump();
  const json publish = (*accepted)["operation"];
  ASSERT_TRUE(publish.is_object()) << accepted->dump();
  EXPECT_EQ(publish["kind"], "checkpoint_publish");
  EXPECT_EQ(publish["vm_id"], src["id"]);
  auto published = AwaitOperation(api, publish);
  ASSERT_TRUE(published.ok()) << published.error().message;
  EXPECT_TRUE(published->contains("vm_ckpt_memory")) << published->dump();
  EXPECT_TRUE(published->contains("vm_ckpt_disk")) << published->dump();
  json clone = WaitVm(api, (*accepted)["id"]);
  ASSERT_EQ(clone["state"], "running") << clone.dump();
  EXPECT_NE(clone["host"], src["host"]);
  EXPECT_EQ(Exec(api, clone["id"], "cat /root/marker"), "from-the-source\n");
  DeleteVm(api, clone["id"]);
  DeleteVm(api, src["id"]);
  StopGrid(grid);
}

// A clone of the checkpoint of a VM that was itself resumed from its
// image's post-boot checkpoint: the published disk must hold that image
// checkpoint's layer as well as the VM's own (its clones lay it on the image
// alone), so that the clone's disk is the source's. The tiny guest's boot may
// leave that layer without a block that differs from the image (this test
// then guards the publishing path: the safe rebase over the agents' NBD
// exports); CopyTopTest.TopAndMiddleAreCopiedOverTheBase shows the layer's
// data would be lost without it.
TEST(CrossHostCheckpointTest, CloneOfAResumedVmSeesTheImageCheckpointsLayer) {
  auto grid = StartGrid("xhostresumed", 2);
  ApiClient api = grid->Admin();
  ImportTiny(api, "tiny", true);
  json src = CreateVm(api, {{"image", "tiny"}, {"name", "src"}, {"start", "resume"}});
  ASSERT_EQ(src["state"], "running") << src.dump();
  Exec(api, src["id"], "echo resumed-source > /root/marker && sync");
  ASSERT_EQ(Act(api, src["id"], "checkpoint")["state"], "suspended");
  auto accepted = api.Post("/v1/vms", {{"from_checkpoint", src["id"]}, {"name", "clone"}});
  ASSERT_TRUE(accepted.ok()) << accepted.error().message;
  ASSERT_TRUE(AwaitOperation(api, (*accepted)["operation"]).ok());
  json clone = WaitVm(api, (*accepted)["id"]);
  ASSERT_EQ(clone["state"], "running") << clone.dump();
  EXPECT_EQ(Exec(api, clone["id"], "cat /root/marker"), "resumed-source\n");
  // On the hosts: the source's checkpoint disk (its layer over the image
  // checkpoint's over the image) and the published copy as the clone's host
  // materialized it (over the image alone) hold the same disk.
  std::string source_disk, published_disk;
  for (int i = 0; i < grid->hosts(); ++i) {
    const std::string root = grid->agent_state_dir(i);
    const std::string mine =
        root + "/vms/" + src["id"].get<std::string>() + "/checkpoint/disk.qcow2";
    if (fs::exists(mine)) source_disk = mine;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root + "/blobs", ec))
      if (e.path().filename().string().rfind("vmckpt-", 0) == 0)
        published_disk = e.path().string() + "/disk.qcow2";
  }
  ASSERT_FALSE(source_disk.empty());
  ASSERT_FALSE(published_disk.empty());
  const std::string cmd = "qemu-img compare -U " + source_disk + " " + published_disk + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[1024];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << cmd << "\n" << out;
  DeleteVm(api, clone["id"]);
  DeleteVm(api, src["id"]);
  StopGrid(grid);
}

}  // namespace
}  // namespace vmgrid
