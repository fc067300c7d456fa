// `vmgrid vm cp` end to end (issue 13): files copied into and out of a real
// QEMU guest through its guest agent, run through the CLI itself (its exit
// codes are the interface), bytes checked with checksums on both sides;
// another user's VM is not found both ways and nothing touches host paths.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <thread>

#include "cli/cli.h"
#include "tests/cli_run.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

class VmCpTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    grid_ = StartGrid("vm-cp", 1).release();
    ImportTiny(grid_->Admin(), "tiny", false);
    alice_ = new std::string(NewUserToken(*grid_, "alice"));
    bob_ = new std::string(NewUserToken(*grid_, "bob"));
    ApiClient alice(grid_->url(), *alice_);
    json vm = CreateVm(alice, {{"image", "tiny"}, {"name", "box"}});
    vm_ = new std::string(vm.value("id", ""));
    EXPECT_EQ(vm["state"], "running") << vm.dump();
    dir_ = new std::string("/tmp/vmgrid-cp-test-" + std::to_string(getpid()));
    (void)RemoveTree(*dir_);
    EXPECT_EQ(mkdir(dir_->c_str(), 0700), 0);
  }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
    (void)RemoveTree(*dir_);
    delete alice_;
    delete bob_;
    delete vm_;
    delete dir_;
  }
  void SetUp() override {
    if (!grid_ || vm_->empty()) GTEST_SKIP() << "no running VM";
  }

  static CliRun Cli(const std::string& token, const std::vector<std::string>& args) {
    return RunCli(*grid_, token, args);
  }
  static ApiClient Alice() { return ApiClient(grid_->url(), *alice_); }

  static LocalGrid* grid_;
  static std::string *alice_, *bob_, *vm_, *dir_;
};
LocalGrid* VmCpTest::grid_ = nullptr;
std::string* VmCpTest::alice_ = nullptr;
std::string* VmCpTest::bob_ = nullptr;
std::string* VmCpTest::vm_ = nullptr;
std::string* VmCpTest::dir_ = nullptr;

TEST_F(VmCpTest, AnotherUsersVmIsNotFoundBothWaysAndBadPathsAreUsageErrors) {
  ASSERT_TRUE(WriteFileAtomic(*dir_ + "/mine.txt", "alice's\n").ok());
  // Bob knows the VM's id and name; to him it does not exist, as for exec.
  for (const std::string& ref : {*vm_, std::string("box")}) {
    CliRun in = Cli(*bob_, {"vm", "cp", *dir_ + "/mine.txt", ref + ":/tmp/from-bob"});
    EXPECT_EQ(in.rc, 3) << in.err;
    CliRun out = Cli(*bob_, {"vm", "cp", ref + ":/etc/hostname", *dir_ + "/stolen"});
    EXPECT_EQ(out.rc, 3) << out.err;
  }
  EXPECT_NE(access((*dir_ + "/stolen").c_str(), F_OK), 0);
  ApiClient bob(grid_->url(), *bob_);
  auto raw = bob.Post("/v1/vms/" + *vm_ + "/files/read", {{"path", "/etc/hostname"}});
  ASSERT_FALSE(raw.ok());
  EXPECT_EQ(raw.error().code, ErrorCode::kNotFound);
  auto exec = bob.Post("/v1/vms/" + *vm_ + "/exec", {{"argv", {"true"}}});
  ASSERT_FALSE(exec.ok());
  EXPECT_EQ(raw.error().message, exec.error().message) << "the same answer as exec's";
  EXPECT_EQ(Sh(Alice(), *vm_, "test -e /tmp/from-bob && echo yes || echo no").second, "no\n");

  // Relative and NUL paths: 400 from the API, exit 2 from the CLI, with the reason.
  CliRun rel = Cli(*alice_, {"vm", "cp", *dir_ + "/mine.txt", "box:tmp/x"});
  EXPECT_EQ(rel.rc, 2);
  EXPECT_NE(rel.err.find("not absolute"), std::string::npos) << rel.err;
  auto nul = Alice().Post("/v1/vms/" + *vm_ + "/files/write",
                          {{"path", std::string("/tmp/a\0b", 8)}, {"data", ""}});
  ASSERT_FALSE(nul.ok());
  EXPECT_EQ(nul.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(nul.error().message.find("NUL"), std::string::npos) << nul.error().message;
  CliRun both = Cli(*alice_, {"vm", "cp", "a", "b"});
  EXPECT_EQ(both.rc, 2) << both.err;
}

TEST_F(VmCpTest, FilesGoInAndOutByteForByte) {
  // A text file in, read back with exec; into a directory it keeps its name.
  ASSERT_TRUE(WriteFileAtomic(*dir_ + "/hello.txt", "hello from the host\n").ok());
  CliRun in = Cli(*alice_, {"vm", "cp", *dir_ + "/hello.txt", "box:/tmp/x.txt"});
  ASSERT_EQ(in.rc, 0) << in.err;
  EXPECT_EQ(Exec(Alice(), *vm_, "cat /tmp/x.txt"), "hello from the host\n");
  in = Cli(*alice_, {"vm", "cp", *dir_ + "/hello.txt", "box:/root/"});
  ASSERT_EQ(in.rc, 0) << in.err;
  EXPECT_EQ(Exec(Alice(), *vm_, "cat /root/hello.txt"), "hello from the host\n");
  // Everything happened in the guest: no such file appeared on the host.
  EXPECT_NE(access("/tmp/x.txt", F_OK), 0);

  // A binary file of a few MiB, checksummed on both sides, and back out.
  std::string bytes(3 * 1024 * 1024 + 12345, '\0');
  std::mt19937_64 rng(42);
  for (auto& b : bytes) b = static_cast<char>(rng());
  ASSERT_TRUE(WriteFileAtomic(*dir_ + "/blob.bin", bytes).ok());
  auto t0 = std::chrono::steady_clock::now();
  in = Cli(*alice_, {"vm", "cp", *dir_ + "/blob.bin", *vm_ + ":/tmp/blob.bin"});
  auto t1 = std::chrono::steady_clock::now();
  ASSERT_EQ(in.rc, 0) << in.err;
  EXPECT_EQ(Exec(Alice(), *vm_, "sha256sum /tmp/blob.bin | cut -d' ' -f1"),
            Sha256Hex(bytes) + "\n");
  CliRun out = Cli(*alice_, {"vm", "cp", "box:/tmp/blob.bin", *dir_ + "/back.bin"});
  auto t2 = std::chrono::steady_clock::now();
  ASSERT_EQ(out.rc, 0) << out.err;
  auto back = ReadFile(*dir_ + "/back.bin", 64 << 20);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(Sha256Hex(*back), Sha256Hex(bytes));
  EXPECT_EQ(back->size(), bytes.size());
  auto mibps = [&](auto d) {
    return static_cast<double>(bytes.size()) / (1 << 20) / std::chrono::duration<double>(d).count();
  };
  // An observation for the log, not an assertion.
  std::printf("vm cp of %zu bytes: in %.1f MiB/s, out %.1f MiB/s\n", bytes.size(), mibps(t1 - t0),
              mibps(t2 - t1));

  // Out into a directory keeps the guest's name; '-' is stdout.
  out = Cli(*alice_, {"vm", "cp", "box:/tmp/x.txt", *dir_});
  ASSERT_EQ(out.rc, 0) << out.err;
  EXPECT_EQ(*ReadFile(*dir_ + "/x.txt", 1024), "hello from the host\n");
  out = Cli(*alice_, {"vm", "cp", "box:/etc/hostname", "-"});
  ASSERT_EQ(out.rc, 0) << out.err;
  EXPECT_EQ(out.out, Exec(Alice(), *vm_, "cat /etc/hostname"));
  // An empty file is a file too.
  ASSERT_TRUE(WriteFileAtomic(*dir_ + "/empty", "").ok());
  ASSERT_EQ(Cli(*alice_, {"vm", "cp", *dir_ + "/empty", "box:/tmp/empty"}).rc, 0);
  EXPECT_EQ(Exec(Alice(), *vm_, "wc -c < /tmp/empty | tr -d ' '"), "0\n");
}

// The serial console (docs/api.md "Serial console"), on the same real guest:
// the owner reads the boot's banner and follows what the guest writes to
// ttyS0; bob gets exec's 404; a console.log that a compromised QEMU swapped
// for a link to a host file is refused, never read.
TEST_F(VmCpTest, SerialConsoleIsTheOwnersFollowsTheGuestAndNeverReadsHostFiles) {
  ApiClient bob(grid_->url(), *bob_);
  for (const std::string& ref : {*vm_, std::string("box")}) {
    auto theirs = bob.Get("/v1/vms/" + ref + "/console");
    ASSERT_FALSE(theirs.ok());
    EXPECT_EQ(theirs.error().code, ErrorCode::kNotFound);
    EXPECT_EQ(Cli(*bob_, {"vm", "console", ref}).rc, 3);
  }
  auto exec = bob.Post("/v1/vms/" + *vm_ + "/exec", {{"argv", {"true"}}});
  EXPECT_EQ(bob.Get("/v1/vms/" + *vm_ + "/console").error().message, exec.error().message);

  CliRun tail = Cli(*alice_, {"vm", "console", "box"});
  ASSERT_EQ(tail.rc, 0) << tail.err;
  EXPECT_NE(tail.out.find("BusyBox"), std::string::npos) << tail.out;
  EXPECT_EQ(tail.out.find('\x1b'), std::string::npos) << "escape sequences are dropped";
  EXPECT_EQ(tail.out.find('\r'), std::string::npos);
  auto first = Alice().Get("/v1/vms/" + *vm_ + "/console?max_bytes=100");
  ASSERT_TRUE(first.ok()) << first.error().message;
  const int64_t next = first->value("next_offset", int64_t{-1});
  EXPECT_EQ(next, first->value("size", int64_t{-2}));
  EXPECT_LE((*first)["text"].get<std::string>().size(), 100u);
  // Written by the guest now: it appears from the offset the last read ended.
  EXPECT_EQ(Sh(Alice(), *vm_, "echo console-mark-$((6*7)) > /dev/ttyS0").first, 0);
  std::string seen;
  for (int i = 0; i < 50 && seen.find("console-mark-42") == std::string::npos; ++i) {
    auto more = Alice().Get("/v1/vms/" + *vm_ + "/console?offset=" + std::to_string(next));
    ASSERT_TRUE(more.ok()) << more.error().message;
    EXPECT_EQ(more->value("offset", int64_t{-1}), next);
    seen = (*more)["text"].get<std::string>();
    if (seen.find("console-mark-42") == std::string::npos)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(seen.find("console-mark-42"), std::string::npos) << seen;
  // Bad parameters are 400 with the reason.
  for (const char* q :
       {"?max_bytes=0", "?max_bytes=999999999", "?offset=-5", "?offset=x", "?lines=10"}) {
    auto bad = Alice().Get("/v1/vms/" + *vm_ + "/console" + q);
    ASSERT_FALSE(bad.ok()) << q;
    EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument) << q;
  }

  // A compromised QEMU owns its run directory: a link in place of the log
  // must not make the root agent read the file it points at.
  const std::string secret = *dir_ + "/host-secret";
  ASSERT_TRUE(WriteFileAtomic(secret, "host-secret-contents\n", 0600).ok());
  const std::string log = grid_->agent_state_dir(0) + "/vms/" + *vm_ + "/run/console.log";
  ASSERT_EQ(access(log.c_str(), F_OK), 0) << log;
  ASSERT_EQ(rename(log.c_str(), (log + ".real").c_str()), 0);
  ASSERT_EQ(symlink(secret.c_str(), log.c_str()), 0);
  auto swapped = Alice().Get("/v1/vms/" + *vm_ + "/console");
  unlink(log.c_str());
  rename((log + ".real").c_str(), log.c_str());
  ASSERT_FALSE(swapped.ok());
  EXPECT_EQ(swapped.error().message.find("host-secret-contents"), std::string::npos)
      << swapped.error().message;
  EXPECT_NE(swapped.error().message.find("not a regular file"), std::string::npos)
      << swapped.error().message;
  EXPECT_TRUE(Alice().Get("/v1/vms/" + *vm_ + "/console").ok()) << "back once the file is";
}

TEST_F(VmCpTest, GuestErrorsHaveClearMessagesAndExitCodes) {
  CliRun missing = Cli(*alice_, {"vm", "cp", "box:/no/such/file", *dir_ + "/nothing"});
  EXPECT_EQ(missing.rc, 3) << missing.err;
  EXPECT_NE(missing.err.find("No such file"), std::string::npos) << missing.err;
  EXPECT_NE(access((*dir_ + "/nothing").c_str(), F_OK), 0) << "nothing half-written";
  EXPECT_NE(access((*dir_ + "/nothing.vmgrid-cp-partial").c_str(), F_OK), 0);
  ASSERT_TRUE(WriteFileAtomic(*dir_ + "/f", "x").ok());
  CliRun no_dir = Cli(*alice_, {"vm", "cp", *dir_ + "/f", "box:/no/such/dir/f"});
  EXPECT_EQ(no_dir.rc, 3) << no_dir.err;
  CliRun is_dir = Cli(*alice_, {"vm", "cp", "box:/etc", "-"});
  EXPECT_EQ(is_dir.rc, 5) << is_dir.err;
  EXPECT_NE(is_dir.err.find("directory"), std::string::npos) << is_dir.err;
}

TEST_F(VmCpTest, DirectoriesTravelAsTarFilesBothWays) {
  const std::string tree = *dir_ + "/tree";
  ASSERT_EQ(mkdir(tree.c_str(), 0755), 0);
  ASSERT_EQ(mkdir((tree + "/sub").c_str(), 0755), 0);
  ASSERT_TRUE(WriteFileAtomic(tree + "/a.txt", "aaa\n").ok());
  ASSERT_TRUE(WriteFileAtomic(tree + "/sub/b.bin", std::string("b\0b", 3)).ok());
  CliRun in = Cli(*alice_, {"vm", "cp", tree, "box:/root/tree"});
  ASSERT_EQ(in.rc, 0) << in.err;
  EXPECT_EQ(Exec(Alice(), *vm_, "cat /root/tree/a.txt; wc -c < /root/tree/sub/b.bin | tr -d ' '"),
            "aaa\n3\n");
  EXPECT_EQ(Exec(Alice(), *vm_, "ls /tmp | grep -c vmgrid-cp || true"), "0\n")
      << "the guest's tar file is removed";
  CliRun out = Cli(*alice_, {"vm", "cp", "box:/root/tree", *dir_ + "/tree-back"});
  ASSERT_EQ(out.rc, 0) << out.err;
  EXPECT_EQ(*ReadFile(*dir_ + "/tree-back/a.txt", 64), "aaa\n");
  EXPECT_EQ(*ReadFile(*dir_ + "/tree-back/sub/b.bin", 64), std::string("b\0b", 3));
  // The target exists now: refused, nothing changed.
  out = Cli(*alice_, {"vm", "cp", "box:/root/tree", *dir_ + "/tree-back"});
  EXPECT_EQ(out.rc, 0) << "an existing directory takes the copy under its name: " << out.err;
  EXPECT_EQ(*ReadFile(*dir_ + "/tree-back/tree/a.txt", 64), "aaa\n");
  out = Cli(*alice_, {"vm", "cp", "box:/root/tree", *dir_ + "/tree-back"});
  EXPECT_EQ(out.rc, 5) << out.err;
  EXPECT_NE(out.err.find("exists"), std::string::npos) << out.err;
}

// Last: it stops the suite's VM.
TEST_F(VmCpTest, ZzAStoppedVmIsAConflict) {
  json stopped = Act(Alice(), *vm_, "stop");
  ASSERT_EQ(stopped["state"], "stopped") << stopped.dump();
  ASSERT_TRUE(WriteFileAtomic(*dir_ + "/f", "x").ok());
  CliRun in = Cli(*alice_, {"vm", "cp", *dir_ + "/f", "box:/tmp/f"});
  EXPECT_EQ(in.rc, 5) << in.err;
  EXPECT_NE(in.err.find("running"), std::string::npos) << in.err;
}

}  // namespace
}  // namespace vmgrid
