// Datasets attached to real VMs (issue 13 §1, docs/datasets.md "Attaching"):
// a grid of two hosts with an image server, real QEMU guests, the CLI run
// in-process. A directory dataset is attached read-only to two VMs on
// different hosts and read there (fetched on demand: a host that read one
// small file holds few of the dataset's chunks); a read-write attachment and
// a new dataset are committed as versions whose changed chunks are all that
// travelled, then pulled and compared; a clone resumed from the image's
// post-boot checkpoint finds its dataset too; bad requests are clear errors
// that leave nothing behind. `vm stop/rm --commit` commit every read-write
// attachment first; another user's shared dataset attaches read-only.
#include <gtest/gtest.h>
#include <openssl/sha.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "cli/cli.h"
#include "tests/cli_run.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;
namespace fs = std::filesystem;

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string Sha256Hex(const std::string& data) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), d);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : d) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class DataAttachTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    grid_ = StartGrid("data-attach", 2).release();
    alice_ = new std::string(NewUserToken(*grid_, "alice"));
    bob_ = new std::string(NewUserToken(*grid_, "bob"));
    dir_ = new std::string("/tmp/vmgrid-data-attach-test-" + std::to_string(getpid()));
    fs::remove_all(*dir_);
    fs::create_directories(*dir_ + "/in/sub");
    small_ = new std::string(RandomBytes(300 * 1024, 1));
    big_ = new std::string(RandomBytes(12 << 20, 2));
    std::ofstream(*dir_ + "/in/small.bin", std::ios::binary) << *small_;
    std::ofstream(*dir_ + "/in/sub/big.bin", std::ios::binary) << *big_;
    // The tiny image with its post-boot checkpoint, for alice's VMs.
    ImportTiny(grid_->Admin(), "tiny", true);
  }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
    fs::remove_all(*dir_);
    delete alice_;
    delete bob_;
    delete dir_;
    delete small_;
    delete big_;
  }

  static CliRun Cli(const std::string& token, const std::vector<std::string>& args) {
    return RunCli(*grid_, token, args);
  }
  static ApiClient Alice() { return ApiClient(grid_->url(), *alice_); }

  // Pushes the input tree as alice's dataset `name` once.
  static void PushInputs(const std::string& name) {
    CliRun r = Cli(*alice_, {"data", "push", name, *dir_ + "/in"});
    ASSERT_EQ(r.rc, 0) << r.out << r.err;
  }

  // Pushes the input tree as alice's dataset `inputs`, creates her VM `name`
  // with `data` (NAME:MOUNT:rw) and `new_data` (NAME:MOUNT:SIZE_MB) attached
  // (by the CLI) and runs `script` in its guest, which must end well.
  static void StartWriter(const std::string& inputs, const std::string& name,
                          const std::string& data, const std::string& new_data,
                          const std::string& script) {
    ASSERT_NO_FATAL_FAILURE(PushInputs(inputs));
    CliRun created = Cli(*alice_, {"vm", "create", "--image", "tiny", "--name", name, "--data",
                                   data, "--new-data", new_data});
    ASSERT_EQ(created.rc, 0) << created.out << created.err;
    auto [rc, out] = Sh(Alice(), name, script);
    ASSERT_EQ(rc, 0) << out;
  }

  // The non-zero chunks of alice's dataset version and how many of them
  // host `index`'s chunk cache holds.
  static std::pair<int, int> CachedChunks(const std::string& dataset, int version, int index) {
    auto m = Alice().Get("/v1/datasets/" + dataset + "/versions/" + std::to_string(version) +
                         "/manifest");
    EXPECT_TRUE(m.ok()) << m.error().message;
    if (!m.ok()) return {0, 0};
    int total = 0, cached = 0;
    for (const auto& d : (*m)["chunks"]) {
      std::string digest = d.get<std::string>();
      if (digest == "zero") continue;
      ++total;
      std::error_code ec;
      if (fs::exists(ChunkFile(grid_->agent_state_dir(index) + "/chunks", digest), ec)) ++cached;
    }
    return {total, cached};
  }

  // The grid host whose QEMU runs `vm`.
  static int HostIndex(const json& vm) {
    for (int i = 0; i < grid_->hosts(); ++i)
      if (LiveQemuOn(*grid_, i, vm.value("id", "")) > 0) return i;
    return -1;
  }

  static LocalGrid* grid_;
  static std::string *alice_, *bob_, *dir_, *small_, *big_;
};
LocalGrid* DataAttachTest::grid_ = nullptr;
std::string* DataAttachTest::alice_ = nullptr;
std::string* DataAttachTest::bob_ = nullptr;
std::string* DataAttachTest::dir_ = nullptr;
std::string* DataAttachTest::small_ = nullptr;
std::string* DataAttachTest::big_ = nullptr;

TEST_F(DataAttachTest, ReadOnlyOnTwoHostsIsFetchedOnDemandAndReadsBack) {
  PushInputs("inputs");
  ApiClient api = Alice();
  // Reader a takes almost all of its host's memory (4 GiB, touched only as
  // the guest uses it), so placement must put reader b on the other host.
  json a = CreateVm(api, {{"image", "tiny"},
                          {"name", "reader-a"},
                          {"memory_mb", 3900},
                          {"data", {{{"dataset", "inputs"}, {"mount", "/in"}}}}});
  ASSERT_EQ(a["state"], "running") << a.dump();
  json b = CreateVm(api, {{"image", "tiny"},
                          {"name", "reader-b"},
                          {"data", {{{"dataset", "inputs"}, {"mount", "/in"}}}}});
  ASSERT_EQ(b["state"], "running") << b.dump();
  const int ha = HostIndex(a), hb = HostIndex(b);
  ASSERT_GE(ha, 0);
  ASSERT_GE(hb, 0);
  ASSERT_NE(ha, hb) << "the first VM's host has no room for the second";
  auto shown = api.Get("/v1/vms/reader-a");
  ASSERT_TRUE(shown.ok());
  EXPECT_EQ((*shown)["data"][0]["dataset"], "inputs") << shown->dump();
  EXPECT_EQ((*shown)["data"][0]["mode"], "ro");

  // VM a reads the small file only; VM b reads everything.
  EXPECT_EQ(Exec(api, a["id"], "sha256sum /in/small.bin | cut -d' ' -f1"),
            Sha256Hex(*small_) + "\n");
  EXPECT_EQ(
      Exec(api, b["id"], "sha256sum /in/small.bin /in/sub/big.bin | cut -d' ' -f1 | tr '\\n' ' '"),
      Sha256Hex(*small_) + " " + Sha256Hex(*big_) + " ");
  // Read-only: the guest cannot write it.
  auto [rc, out] = Sh(api, a["id"], "echo x > /in/new.txt");
  EXPECT_NE(rc, 0) << out;

  auto [total, on_a] = CachedChunks("inputs", 1, ha);
  auto [total_b, on_b] = CachedChunks("inputs", 1, hb);
  ASSERT_GT(total, 24) << "a 12 MiB file alone is 24 chunks";
  EXPECT_EQ(total, total_b);
  // Host a fetched the file system's metadata and the small file, not the
  // 24 chunks of the big one; host b fetched the big one too.
  std::printf("dataset chunks cached: %d of %d on the host that read 300 KB, %d on the other\n",
              on_a, total, on_b);
  EXPECT_LE(on_a, total - 20) << on_a << " of " << total << " chunks on the host that read 300 KB";
  EXPECT_GE(on_b, 24) << on_b << " of " << total;

  // Attached: the dataset cannot be removed under the VMs.
  CliRun rm = Cli(*alice_, {"data", "rm", "inputs"});
  EXPECT_NE(rm.rc, 0);
  EXPECT_NE(rm.err.find("attached to VM"), std::string::npos) << rm.err;
  DeleteVm(api, a["id"]);
  DeleteVm(api, b["id"]);
}

// Live migration of a clone resumed from the image's post-boot checkpoint
// with three datasets attached (issue 12, docs/migration.md): the target
// lays its disk over the same checkpoint, the read-write overlay and the new
// dataset are mirrored with the boot disk, the read-only one is opened
// there; everything the guest wrote is there after the move, the guest did
// not reboot, and a commit on the new host stores what it wrote.
TEST_F(DataAttachTest, AResumedVmWithDatasetsMigratesWithAllItWrote) {
  ASSERT_NO_FATAL_FAILURE(PushInputs("mig-rw"));
  ASSERT_NO_FATAL_FAILURE(PushInputs("mig-ro"));
  ApiClient api = Alice();
  json vm =
      CreateVm(api, {{"image", "tiny"},
                     {"name", "mover"},
                     {"start", "resume"},
                     {"data",
                      {{{"dataset", "mig-rw"}, {"mount", "/rw"}, {"mode", "rw"}},
                       {{"dataset", "mig-new"}, {"mount", "/new"}, {"new", true}, {"size_mb", 64}},
                       {{"dataset", "mig-ro"}, {"mount", "/ro"}}}}});
  ASSERT_EQ(vm.value("state", ""), "running") << vm.dump();
  const std::string id = vm["id"], from = vm["host_id"];
  auto [wc, before] = Sh(api, id,
                         "cat /proc/sys/kernel/random/boot_id > /root/boot && "
                         "cp /ro/small.bin /new/copy.bin && echo changed > /rw/changed.txt && "
                         "rm /rw/sub/big.bin && head -c 3000000 /dev/urandom > /root/r.bin && "
                         "sync && cat /root/boot && md5sum /root/r.bin | cut -c1-32");
  ASSERT_EQ(wc, 0) << before;

  auto started = api.Post("/v1/vms/" + id + "/migrate", json::object());
  ASSERT_TRUE(started.ok()) << started.error().message;
  auto result = AwaitOperation(api, started);
  ASSERT_TRUE(result.ok()) << result.error().message;
  std::printf("migration of a resumed VM with 3 datasets: %s\n", result->dump().c_str());
  // The boot disk's top layer and the two writable data disks travelled.
  EXPECT_GT(result->value("disk_bytes", 0), 3000000) << result->dump();
  json moved = WaitVm(api, id);
  ASSERT_EQ(moved.value("state", ""), "running") << moved.dump();
  EXPECT_NE(moved.value("host_id", ""), from);
  // The target's top layer lies on the image's checkpoint disk, as the
  // source's did (on the image itself the guest's file system would be torn).
  const std::string top = grid_->agent_state_dir(HostIndex(moved)) + "/vms/" + id + "/disk.qcow2";
  FILE* info = popen(("qemu-img info -U --output=json " + top).c_str(), "r");
  ASSERT_NE(info, nullptr);
  std::string info_out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, info)) info_out.append(buf, n);
  pclose(info);
  json disk_info = json::parse(info_out, nullptr, false);
  EXPECT_NE(disk_info.value("backing-filename", "").find("ckpt-"), std::string::npos) << info_out;

  auto [rc, after] = Sh(api, id,
                        "cat /proc/sys/kernel/random/boot_id && md5sum /root/r.bin | "
                        "cut -c1-32");
  ASSERT_EQ(rc, 0) << after;
  EXPECT_EQ(after, before) << "the guest rebooted or lost its disk";
  EXPECT_EQ(Exec(api, id, "cat /rw/changed.txt; test -e /rw/sub/big.bin || echo gone"),
            "changed\ngone\n");
  EXPECT_EQ(Exec(api, id, "sha256sum /new/copy.bin /ro/sub/big.bin | cut -d' ' -f1 | tr '\\n' ' '"),
            Sha256Hex(*small_) + " " + Sha256Hex(*big_) + " ");
  // Still read-only on the new host.
  auto [roc, rout] = Sh(api, id, "echo x > /ro/x.txt");
  EXPECT_NE(roc, 0) << rout;

  // The new host commits what the guest wrote before the move.
  CliRun commit = Cli(*alice_, {"--json", "data", "commit", "mover", "mig-new"});
  ASSERT_EQ(commit.rc, 0) << commit.out << commit.err;
  const std::string pulled = *dir_ + "/pulled-mig-new";
  ASSERT_EQ(Cli(*alice_, {"data", "pull", "mig-new", pulled}).rc, 0);
  EXPECT_EQ(Slurp(pulled + "/copy.bin"), *small_);
  DeleteVm(api, "mover");
}

TEST_F(DataAttachTest, ReadWriteAndNewDatasetsCommitOnlyWhatChanged) {
  // The guest writes a file of known bytes into both (from its own copy of
  // the small file: base64 would be slow through exec).
  ASSERT_NO_FATAL_FAILURE(
      StartWriter("work", "writer", "work:/work:rw", "results:/out:64",
                  "head -c 716800 /dev/zero > /tmp/z && cp /work/small.bin /out/copy.bin && "
                  "cp /tmp/z /work/zeros.bin && echo hello > /out/hello.txt && "
                  "rm /work/sub/big.bin && sync && echo ok"));
  ApiClient api = Alice();

  CliRun commit = Cli(*alice_, {"--json", "data", "commit", "writer", "work"});
  ASSERT_EQ(commit.rc, 0) << commit.out << commit.err;
  json c = json::parse(commit.out);
  EXPECT_EQ(c["version"], 2) << c.dump();
  // A removed file and a file of zeros change only metadata blocks (ext4
  // frees blocks without writing them; zeros are zero chunks).
  std::printf("commit of the read-write attachment: %s\n", c.dump().c_str());
  EXPECT_LE(c["sent_chunks"].get<int>(), 6) << c.dump();
  CliRun commit_new = Cli(*alice_, {"--json", "data", "commit", "writer", "results"});
  ASSERT_EQ(commit_new.rc, 0) << commit_new.out << commit_new.err;
  json n = json::parse(commit_new.out);
  EXPECT_EQ(n["version"], 1) << n.dump();
  std::printf("commit of the new dataset: %s\n", n.dump().c_str());

  // The guest still writes after a commit (the file system is writable again).
  EXPECT_EQ(Exec(api, "writer", "echo more > /out/more.txt && cat /out/more.txt"), "more\n");

  // Pulled, both versions hold what the guest left.
  const std::string pulled = *dir_ + "/pulled-work";
  CliRun pull = Cli(*alice_, {"data", "pull", "work:2", pulled});
  ASSERT_EQ(pull.rc, 0) << pull.out << pull.err;
  EXPECT_EQ(Slurp(pulled + "/small.bin"), *small_);
  EXPECT_EQ(Slurp(pulled + "/zeros.bin"), std::string(716800, '\0'));
  EXPECT_FALSE(fs::exists(pulled + "/sub/big.bin"));
  const std::string pulled_new = *dir_ + "/pulled-results";
  CliRun pull_new = Cli(*alice_, {"data", "pull", "results", pulled_new});
  ASSERT_EQ(pull_new.rc, 0) << pull_new.out << pull_new.err;
  EXPECT_EQ(Slurp(pulled_new + "/copy.bin"), *small_);
  EXPECT_EQ(Slurp(pulled_new + "/hello.txt"), "hello\n");
  // Version 1 is unchanged.
  const std::string pulled_v1 = *dir_ + "/pulled-work-1";
  ASSERT_EQ(Cli(*alice_, {"data", "pull", "work:1", pulled_v1}).rc, 0);
  EXPECT_EQ(Slurp(pulled_v1 + "/sub/big.bin"), *big_);
  DeleteVm(api, "writer");
}

// `vm stop --commit` and `vm rm --commit` (docs/datasets.md, "Commit"):
// every read-write attachment becomes a version before the VM stops or
// goes; a commit that fails (a file held open for writing in the guest)
// stops nothing, names the dataset, and loses nothing.
TEST_F(DataAttachTest, StopAndRmWithCommitStoreEveryReadWriteAttachmentFirst) {
  // A process keeps a file of sc-out open for writing.
  ASSERT_NO_FATAL_FAILURE(
      StartWriter("sc-work", "sc", "sc-work:/w:rw", "sc-out:/o:64",
                  "echo one > /w/one.txt && echo two > /o/two.txt && "
                  "(exec 3>>/o/held; exec sleep 300) </dev/null >/dev/null 2>&1 & "
                  "echo $! > /tmp/holder.pid && sync && echo ok"));
  ApiClient api = Alice();
  auto versions = [&](const std::string& name) -> size_t {
    auto d = api.Get("/v1/datasets/" + name);
    return d.ok() ? (*d)["versions"].size() : 0;
  };

  // sc-out cannot be remounted read-only while the guest writes to it.
  CliRun refused = Cli(*alice_, {"vm", "stop", "sc", "--commit"});
  EXPECT_NE(refused.rc, 0);
  EXPECT_NE(refused.err.find("sc-out"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("not stopped"), std::string::npos) << refused.err;
  auto vm = api.Get("/v1/vms/sc");
  ASSERT_TRUE(vm.ok());
  EXPECT_EQ((*vm)["state"], "running") << vm->dump();
  EXPECT_EQ(versions("sc-work"), 2u);  // committed before sc-out failed; it stays
  EXPECT_EQ(versions("sc-out"), 0u);
  EXPECT_EQ(Exec(api, "sc", "cat /w/one.txt /o/two.txt"), "one\ntwo\n");  // nothing lost
  // The same for rm: the VM stays (sc-work is committed once more before sc-out fails).
  CliRun rm_refused = Cli(*alice_, {"vm", "rm", "sc", "--commit"});
  EXPECT_NE(rm_refused.rc, 0);
  EXPECT_NE(rm_refused.err.find("sc-out"), std::string::npos) << rm_refused.err;
  EXPECT_NE(rm_refused.err.find("not deleted"), std::string::npos) << rm_refused.err;
  ASSERT_TRUE(api.Get("/v1/vms/sc").ok());
  EXPECT_EQ(versions("sc-work"), 3u);
  EXPECT_EQ(versions("sc-out"), 0u);

  auto [krc, kout] = Sh(api, "sc", "kill $(cat /tmp/holder.pid) && sleep 1 && echo ok");
  ASSERT_EQ(krc, 0) << kout;
  CliRun stopped = Cli(*alice_, {"vm", "stop", "sc", "--commit"});
  ASSERT_EQ(stopped.rc, 0) << stopped.out << stopped.err;
  EXPECT_NE(stopped.out.find("dataset sc-out version 1"), std::string::npos) << stopped.out;
  vm = api.Get("/v1/vms/sc");
  ASSERT_TRUE(vm.ok());
  EXPECT_EQ((*vm)["state"], "stopped") << vm->dump();
  EXPECT_EQ(versions("sc-work"), 4u);
  EXPECT_EQ(versions("sc-out"), 1u);
  const std::string pulled = *dir_ + "/pulled-sc-out";
  ASSERT_EQ(Cli(*alice_, {"data", "pull", "sc-out", pulled}).rc, 0);
  EXPECT_EQ(Slurp(pulled + "/two.txt"), "two\n");

  // rm --commit of the stopped VM: one more version each, then the VM is gone.
  CliRun removed = Cli(*alice_, {"vm", "rm", "sc", "--commit"});
  ASSERT_EQ(removed.rc, 0) << removed.out << removed.err;
  EXPECT_EQ(versions("sc-work"), 5u);
  EXPECT_EQ(versions("sc-out"), 2u);
  EXPECT_FALSE(api.Get("/v1/vms/sc").ok());
  const std::string pulled_work = *dir_ + "/pulled-sc-work";
  ASSERT_EQ(Cli(*alice_, {"data", "pull", "sc-work", pulled_work}).rc, 0);
  EXPECT_EQ(Slurp(pulled_work + "/one.txt"), "one\n");
}

// Sharing (docs/datasets.md, "Sharing"): bob attaches alice's shared
// dataset read-only as alice/NAME; read-write and commit are refused; once
// unshared, bob's running VM keeps reading it and a new one cannot attach it.
TEST_F(DataAttachTest, ASharedDatasetAttachesReadOnlyForItsUser) {
  PushInputs("lib");
  ApiClient bob(grid_->url(), *bob_);
  CliRun none =
      Cli(*bob_, {"vm", "create", "--image", "tiny", "--name", "b1", "--data", "alice/lib"});
  EXPECT_NE(none.rc, 0);
  EXPECT_NE(none.err.find("not found"), std::string::npos) << none.err;
  ASSERT_EQ(Cli(*alice_, {"data", "share", "lib", "bob"}).rc, 0);
  CliRun rw =
      Cli(*bob_, {"vm", "create", "--image", "tiny", "--name", "b1", "--data", "alice/lib:rw"});
  EXPECT_NE(rw.rc, 0);
  EXPECT_NE(rw.err.find("read-only"), std::string::npos) << rw.err;
  CliRun ro =
      Cli(*bob_, {"vm", "create", "--image", "tiny", "--name", "b1", "--data", "alice/lib"});
  ASSERT_EQ(ro.rc, 0) << ro.out << ro.err;
  auto shown = bob.Get("/v1/vms/b1");
  ASSERT_TRUE(shown.ok());
  EXPECT_EQ((*shown)["data"][0]["dataset"], "alice/lib") << shown->dump();
  EXPECT_EQ(Exec(bob, "b1", "sha256sum /data/lib/small.bin | cut -d' ' -f1"),
            Sha256Hex(*small_) + "\n");
  CliRun commit = Cli(*bob_, {"data", "commit", "b1", "alice/lib"});
  EXPECT_NE(commit.rc, 0);
  EXPECT_NE(commit.err.find("read-only"), std::string::npos) << commit.err;
  // Unshared: the attached VM keeps reading (the big file was never read
  // before, so its chunks travel now); a new attachment is not found.
  ASSERT_EQ(Cli(*alice_, {"data", "unshare", "lib", "bob"}).rc, 0);
  EXPECT_EQ(Exec(bob, "b1", "sha256sum /data/lib/sub/big.bin | cut -d' ' -f1"),
            Sha256Hex(*big_) + "\n");
  CliRun again =
      Cli(*bob_, {"vm", "create", "--image", "tiny", "--name", "b2", "--data", "alice/lib"});
  EXPECT_NE(again.rc, 0);
  EXPECT_NE(again.err.find("not found"), std::string::npos) << again.err;
  // Nothing read-write: rm --commit is a plain rm.
  CliRun rm = Cli(*bob_, {"vm", "rm", "b1", "--commit"});
  EXPECT_EQ(rm.rc, 0) << rm.out << rm.err;
  EXPECT_FALSE(bob.Get("/v1/vms/b1").ok());
}

TEST_F(DataAttachTest, ResumedCloneFindsItsDataset) {
  PushInputs("resumed-in");
  ApiClient api = Alice();
  json vm = CreateVm(api, {{"image", "tiny"},
                           {"name", "resumed"},
                           {"start", "resume"},
                           {"data", {{{"dataset", "resumed-in"}, {"mount", "/in"}}}}});
  ASSERT_EQ(vm["state"], "running") << vm.dump();
  EXPECT_EQ(Exec(api, vm["id"], "sha256sum /in/small.bin | cut -d' ' -f1"),
            Sha256Hex(*small_) + "\n");
  DeleteVm(api, vm["id"]);
}

TEST_F(DataAttachTest, BadRequestsAreClearAndLeaveNothing) {
  PushInputs("mine");
  const std::string file = *dir_ + "/single.bin";
  std::ofstream(file, std::ios::binary) << RandomBytes(4096, 9);
  ASSERT_EQ(Cli(*alice_, {"data", "push", "single", file}).rc, 0);
  ApiClient api = Alice();
  auto before = api.Get("/v1/vms");
  ASSERT_TRUE(before.ok());
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--data", "nothere"}, "not found"},
      {{"--data", "mine:7"}, "no version 7"},
      {{"--data", "mine:/etc"}, "system directory"},
      {{"--data", "mine:/a/../b"}, "'..'"},
      {{"--data", "single"}, "not a file system"},
      {{"--new-data", "mine"}, "already exists"},
      {{"--data", "mine:/d", "--data", "mine:/e"}, "attached twice"},
      {{"--data", "mine:/d", "--new-data", "x:/d/y"}, "inside"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"vm", "create", "--image", "tiny", "--name", "bad"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    CliRun r = Cli(*alice_, args);
    EXPECT_NE(r.rc, 0) << c.args[1];
    EXPECT_NE(r.err.find(c.says), std::string::npos) << c.args[1] << ": " << r.err;
  }
  // Another user's dataset is not found, as if it did not exist.
  CliRun bob = Cli(*bob_, {"vm", "create", "--image", "tiny", "--name", "bad", "--data", "mine"});
  EXPECT_NE(bob.rc, 0);
  EXPECT_NE(bob.err.find("not found"), std::string::npos) << bob.err;
  // Nothing was made: no VM, no new dataset.
  auto after = api.Get("/v1/vms");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->dump(), before->dump());
  EXPECT_FALSE(api.Get("/v1/datasets/x").ok());
  // Commit: no such VM for bob, no such attachment, read-only.
  json vm =
      CreateVm(api, {{"image", "tiny"}, {"name", "ro-vm"}, {"data", {{{"dataset", "mine"}}}}});
  ASSERT_EQ(vm["state"], "running") << vm.dump();
  CliRun c1 = Cli(*bob_, {"data", "commit", "ro-vm", "mine"});
  EXPECT_NE(c1.rc, 0);
  EXPECT_NE(c1.err.find("not found"), std::string::npos) << c1.err;
  CliRun c2 = Cli(*alice_, {"data", "commit", "ro-vm", "other"});
  EXPECT_NE(c2.err.find("no dataset named other"), std::string::npos) << c2.err;
  CliRun c3 = Cli(*alice_, {"data", "commit", "ro-vm", "mine"});
  EXPECT_NE(c3.err.find("read-only"), std::string::npos) << c3.err;
  auto show = api.Get("/v1/datasets/mine");
  ASSERT_TRUE(show.ok());
  EXPECT_EQ((*show)["versions"].size(), 1u) << show->dump();
  // It migrates with its read-only attachment (opened from the new host's
  // own export) and still reads it there.
  auto mig = AwaitOperation(api, api.Post("/v1/vms/ro-vm/migrate", json::object()));
  ASSERT_TRUE(mig.ok()) << mig.error().message;
  ASSERT_EQ(WaitVm(api, vm["id"]).value("state", ""), "running");
  auto [rc, out] = Sh(api, vm["id"], "ls /data/mine >/dev/null && echo readable");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "readable\n");
  DeleteVm(api, vm["id"]);
}

// Placement prefers a host that already caches a VM's dataset over the
// emptier one (docs/datasets.md, "Placement"), and the information service
// shows where the dataset is cached (to its owner only).
TEST_F(DataAttachTest, AVmGoesWhereItsDatasetIsAlreadyCached) {
  PushInputs("warm");
  ApiClient api = Alice();
  json first = CreateVm(api, {{"image", "tiny"},
                              {"name", "warm-1"},
                              {"memory_mb", 1024},
                              {"data", {{{"dataset", "warm"}, {"mount", "/in"}}}}});
  ASSERT_EQ(first["state"], "running") << first.dump();
  const int warm = HostIndex(first);
  ASSERT_GE(warm, 0);
  EXPECT_EQ(Exec(api, first["id"], "sha256sum /in/small.bin | cut -d' ' -f1"),
            Sha256Hex(*small_) + "\n");
  // The host reports the export in a heartbeat; the owner's query shows it.
  const json sql = {{"sql",
                     "SELECT c.host_id, c.version FROM dataset_cache c JOIN datasets d ON "
                     "d.id = c.dataset_id WHERE d.name = 'warm'"}};
  json rows = json::array();
  for (int i = 0; i < 300 && rows.empty(); ++i) {
    auto q = api.Post("/v1/query", sql);
    ASSERT_TRUE(q.ok()) << q.error().message;
    rows = (*q)["rows"];
    if (rows.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(rows.size(), 1u) << rows.dump();
  EXPECT_EQ(rows[0][0], first["host_id"]);
  auto bobs = ApiClient(grid_->url(), *bob_).Post("/v1/query", sql);
  ASSERT_TRUE(bobs.ok());
  EXPECT_TRUE((*bobs)["rows"].empty()) << "bob sees where alice's dataset is cached";

  // Spread puts a VM without the dataset on the emptier host; one with it
  // goes to the host that caches it although that host has less room.
  json plain = CreateVm(api, {{"image", "tiny"}, {"name", "warm-plain"}});
  ASSERT_EQ(plain["state"], "running") << plain.dump();
  EXPECT_NE(HostIndex(plain), warm);
  json second = CreateVm(
      api,
      {{"image", "tiny"}, {"name", "warm-2"}, {"data", {{{"dataset", "warm"}, {"mount", "/in"}}}}});
  ASSERT_EQ(second["state"], "running") << second.dump();
  EXPECT_EQ(HostIndex(second), warm);
  auto events = api.Get("/v1/events?vm=" + second["id"].get<std::string>());
  ASSERT_TRUE(events.ok()) << events.error().message;
  bool placed = false;
  for (const auto& e : (*events)["events"])
    if (e["kind"] == "vm.placed") {
      placed = true;
      EXPECT_EQ(e["data"]["datasets_cached"], 1) << e.dump();
    }
  EXPECT_TRUE(placed) << events->dump();
  for (const json* v : {&first, &plain, &second}) DeleteVm(api, (*v)["id"]);
}

}  // namespace
}  // namespace vmgrid
