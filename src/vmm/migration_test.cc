// Live migration between two real QEMUs (vmm/migration.h): a guest-less pair
// (always runs), and the tiny guest (skipped without it): its disk and a
// running loop move, the target's guest agent answers, the source is gone;
// a target killed mid-way and a wrong key leave the source running.
#include "vmm/migration.h"

#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "vmm/guest_agent_client.h"
#include "vmm/machine_ops.h"
#include "vmm/qemu_process.h"
#include "vmm/test_util.h"

namespace vmgrid {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;
using vmm::testing::FindTinyImage;
using vmm::testing::ProcessesMentioning;
using vmm::testing::ProcessLive;
using vmm::testing::RandomUuid;
using vmm::testing::Sh;
using vmm::testing::TempDir;
using vmm::testing::TestRunAs;
using vmm::testing::TinyImage;

void PrintStats(const std::string& what, const MigrationStats& s) {
  std::cout << "[migration] " << what << ": total " << s.total_ms << " ms (mirror ready after "
            << s.mirror_ms << " ms, QEMU total-time " << s.qemu_total_ms << " ms), downtime "
            << s.downtime_ms << " ms, RAM " << s.ram_bytes << " bytes, disk " << s.disk_bytes
            << " bytes\n";
}

class MigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::chmod(dir_.path().c_str(), 0755);
    runas_ = TestRunAs();
    if (!runas_.empty()) {
      struct passwd* pw = ::getpwnam(runas_.c_str());
      ASSERT_NE(pw, nullptr);
      uid_ = static_cast<int>(pw->pw_uid);
      gid_ = static_cast<int>(pw->pw_gid);
    }
  }
  void TearDown() override {
    for (pid_t pid : ProcessesMentioning(dir_.path())) ::kill(pid, SIGKILL);
  }
  std::string P(const std::string& name) const { return dir_.path() + "/" + name; }
  void Give(const std::string& path) {
    if (uid_ >= 0) {
      ASSERT_EQ(::chown(path.c_str(), uid_, gid_), 0) << path;
    }
  }
  // A fresh overlay of `base` for the QEMU user.
  void Overlay(const std::string& base, const std::string& format, const std::string& name) {
    ASSERT_EQ(Sh("qemu-img create -q -f qcow2 -b " + base + " -F " + format + " " + P(name)), 0);
    ::chmod(P(name).c_str(), 0600);
    Give(P(name));
  }
  Result<std::unique_ptr<QemuProcess>> Start(QemuConfig c, const std::string& name,
                                             const std::string& disk, bool incoming,
                                             bool paused = false) {
    c.vm_id = name;
    c.run_dir = P(name);
    c.disk_path = disk.empty() ? "" : P(disk);
    c.runas = runas_;
    c.accel = "tcg";
    c.incoming = incoming;
    c.start_paused = incoming || paused;
    c.vmgenid = RandomUuid();
    return QemuProcess::Launch(c, seconds(30));
  }
  IncomingParams Incoming(const MigrationKey& key, const std::string& run, bool disk) {
    IncomingParams p;
    if (!disk) p.devices.clear();
    p.listen_host = "127.0.0.1";
    p.key = key;
    p.key_dir = P(run) + "/mig-key";
    p.qemu_uid = uid_;
    p.qemu_gid = gid_;
    return p;
  }
  OutgoingParams Outgoing(const MigrationKey& key, const std::string& run,
                          const IncomingEndpoint& target, bool disk) {
    OutgoingParams p;
    p.target = target;
    if (!disk) p.devices.clear();
    p.key = key;
    p.key_dir = P(run) + "/mig-key";
    p.qemu_uid = uid_;
    p.qemu_gid = gid_;
    return p;
  }

  TempDir dir_;
  std::string runas_;
  int uid_ = -1, gid_ = -1;
};

TEST(MigrationKeyTest, FreshKeysAreValidAndDiffer) {
  auto a = NewMigrationKey("vmgrid-mig-1");
  auto b = NewMigrationKey("vmgrid-mig-1");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->key_hex, b->key_hex);
  EXPECT_TRUE(ValidateMigrationKey(*a).ok());
  EXPECT_FALSE(ValidateMigrationKey({"bad:identity", a->key_hex}).ok());
  EXPECT_FALSE(ValidateMigrationKey({"ok", "ABCD"}).ok());
  EXPECT_FALSE(NewMigrationKey("").ok());
}

TEST_F(MigrationTest, GuestlessWithDiskOverPskTls) {
  ASSERT_EQ(Sh("qemu-img create -q -f raw " + P("base.raw") + " 64M"), 0);
  ::chmod(P("base.raw").c_str(), 0644);
  Overlay(P("base.raw"), "raw", "src.qcow2");
  Overlay(P("base.raw"), "raw", "dst.qcow2");
  // Something in the source's top layer that only the mirror can carry.
  QemuConfig c;
  c.memory_mb = 128;
  auto src = Start(c, "src", "src.qcow2", false);
  ASSERT_TRUE(src.ok()) << src.error().message;
  ASSERT_TRUE((*src)
                  ->qmp()
                  .Execute("human-monitor-command",
                           {{"command-line", "qemu-io disk0 \"write -P 0x5a 1M 2M\""}})
                  .ok());
  auto dst = Start(c, "dst", "dst.qcow2", true);
  ASSERT_TRUE(dst.ok()) << dst.error().message;

  auto key = NewMigrationKey("vmgrid-test");
  ASSERT_TRUE(key.ok());
  std::unique_ptr<MigrationTunnel> tunnel;
  auto ep = StartIncoming((*dst)->qmp(), Incoming(*key, "dst", true), seconds(30), &tunnel);
  ASSERT_TRUE(ep.ok()) << ep.error().message << "\n" << (*dst)->LogTail();
  EXPECT_GT(ep->nbd_port, 0);
  EXPECT_GT(ep->migration_port, 0);
  struct stat kst;
  ASSERT_EQ(::stat(P("dst/mig-key/keys.psk").c_str(), &kst), 0);
  EXPECT_EQ(kst.st_mode & 0777, 0600u);

  std::vector<std::string> phases;
  OutgoingParams out = Outgoing(*key, "src", *ep, true);
  out.on_phase = [&](MigrationPhase ph) { phases.push_back(ToString(ph)); };
  auto stats = MigrateOut((*src)->qmp(), out, seconds(120));
  ASSERT_TRUE(stats.ok()) << stats.error().message << "\n" << (*src)->LogTail();
  PrintStats("guestless, 64 MiB disk with 2 MiB in its top layer", *stats);
  EXPECT_EQ(phases, (std::vector<std::string>{"mirror-started", "mirror-ready", "migrating",
                                              "switchover"}));
  EXPECT_GE(stats->disk_bytes, 2 << 20);
  EXPECT_GT(stats->ram_bytes, 0);
  EXPECT_FALSE(fs::exists(P("src/mig-key")));
  EXPECT_EQ(*QueryStatus((*src)->qmp()), "postmigrate");
  // An agent restarting now finds a completed migration: it stays paused.
  auto recovered = RecoverOutgoing((*src)->qmp());
  ASSERT_TRUE(recovered.ok()) << recovered.error().message;
  EXPECT_TRUE(*recovered);
  EXPECT_EQ(*QueryStatus((*src)->qmp()), "postmigrate");
  // The target waits (-S) until it is told to run.
  EXPECT_NE(*QueryStatus((*dst)->qmp()), "running");
  Status st = FinishIncoming((*dst)->qmp(), P("dst/mig-key"), seconds(30));
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(*QueryStatus((*dst)->qmp()), "running");
  EXPECT_FALSE(fs::exists(P("dst/mig-key")));
  ASSERT_TRUE((*src)->Quit(seconds(10)).ok());
  ASSERT_TRUE((*dst)->Quit(seconds(10)).ok());
  // The target's own top layer now holds the data (its base has zeros there).
  EXPECT_EQ(Sh("qemu-io -f qcow2 -r -c 'read -P 0x5a 1M 2M' " + P("dst.qcow2") +
               " | grep -q 'read 2097152/2097152'"),
            0);
}

// A VM with data disks (docs/datasets.md): the boot disk and a writable raw
// data disk are both mirrored, each into its own export; a read-only one is
// not (both sides open the same content).
TEST_F(MigrationTest, EveryWritableDiskIsMirroredIntoItsOwnExport) {
  ASSERT_EQ(Sh("qemu-img create -q -f raw " + P("base.raw") + " 64M"), 0);
  ::chmod(P("base.raw").c_str(), 0644);
  Overlay(P("base.raw"), "raw", "src.qcow2");
  Overlay(P("base.raw"), "raw", "dst.qcow2");
  for (const char* f : {"src-data.raw", "dst-data.raw"}) {
    ASSERT_EQ(Sh("truncate -s 32M " + P(f)), 0);
    ::chmod(P(f).c_str(), 0600);
    Give(P(f));
  }
  ASSERT_EQ(Sh("qemu-img create -q -f raw " + P("ro.raw") + " 8M"), 0);
  ::chmod(P("ro.raw").c_str(), 0644);
  auto config = [&](const std::string& data) {
    QemuConfig c;
    c.memory_mb = 128;
    c.data_disks = {DataDiskConfig{P(data), "raw", false, "", "vmgdata-0"},
                    DataDiskConfig{P("ro.raw"), "raw", true, "", "vmgdata-1"}};
    return c;
  };
  auto src = Start(config("src-data.raw"), "src", "src.qcow2", false);
  ASSERT_TRUE(src.ok()) << src.error().message;
  for (const char* cmd :
       {"qemu-io disk0 \"write -P 0x5a 1M 2M\"", "qemu-io data0 \"write -P 0x6b 4M 3M\""})
    ASSERT_TRUE((*src)->qmp().Execute("human-monitor-command", {{"command-line", cmd}}).ok())
        << cmd;
  auto dst = Start(config("dst-data.raw"), "dst", "dst.qcow2", true);
  ASSERT_TRUE(dst.ok()) << dst.error().message;

  auto key = NewMigrationKey("vmgrid-test");
  ASSERT_TRUE(key.ok());
  std::unique_ptr<MigrationTunnel> tunnel;
  IncomingParams in = Incoming(*key, "dst", true);
  in.devices = {"disk0", "data0"};
  auto ep = StartIncoming((*dst)->qmp(), in, seconds(30), &tunnel);
  ASSERT_TRUE(ep.ok()) << ep.error().message << "\n" << (*dst)->LogTail();
  EXPECT_EQ(ep->nbd_exports, (std::vector<std::string>{"disk0", "data0"}));
  // A source asking for a disk the target does not export fails and runs on.
  OutgoingParams wrong = Outgoing(*key, "src", *ep, true);
  wrong.devices = {"disk0", "data1"};
  auto refused = MigrateOut((*src)->qmp(), wrong, seconds(30));
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("does not export disk data1"), std::string::npos)
      << refused.error().message;
  EXPECT_EQ(*QueryStatus((*src)->qmp()), "running");

  OutgoingParams out = Outgoing(*key, "src", *ep, true);
  out.devices = {"disk0", "data0"};
  auto stats = MigrateOut((*src)->qmp(), out, seconds(120));
  ASSERT_TRUE(stats.ok()) << stats.error().message << "\n" << (*src)->LogTail();
  PrintStats("guestless, boot disk and a data disk mirrored", *stats);
  EXPECT_GE(stats->disk_bytes, 5 << 20);
  Status st = FinishIncoming((*dst)->qmp(), P("dst/mig-key"), seconds(30));
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(*QueryStatus((*dst)->qmp()), "running");
  ASSERT_TRUE((*src)->Quit(seconds(10)).ok());
  ASSERT_TRUE((*dst)->Quit(seconds(10)).ok());
  EXPECT_EQ(Sh("qemu-io -f qcow2 -r -c 'read -P 0x5a 1M 2M' " + P("dst.qcow2") +
               " | grep -q 'read 2097152/2097152'"),
            0);
  EXPECT_EQ(Sh("qemu-io -f raw -r -c 'read -P 0x6b 4M 3M' " + P("dst-data.raw") +
               " | grep -q 'read 3145728/3145728'"),
            0);
  // Zeros around it, as on the source.
  EXPECT_EQ(Sh("qemu-io -f raw -r -c 'read -P 0 0 4M' " + P("dst-data.raw") +
               " | grep -q 'read 4194304/4194304'"),
            0);
}

// A cold migration (a stopped VM): both QEMUs paused (-S) from the start,
// no RAM stream; the disks' top layers arrive whole and neither guest ever
// ran.
TEST_F(MigrationTest, ColdMigrationMovesTheDisksOfAGuestThatNeverRuns) {
  ASSERT_EQ(Sh("qemu-img create -q -f raw " + P("base.raw") + " 64M"), 0);
  ::chmod(P("base.raw").c_str(), 0644);
  Overlay(P("base.raw"), "raw", "src.qcow2");
  Overlay(P("base.raw"), "raw", "dst.qcow2");
  // What the stopped VM's disk holds, written before its QEMU starts.
  ASSERT_EQ(Sh("qemu-io -f qcow2 -c 'write -P 0x3c 5M 3M' " + P("src.qcow2") + " >/dev/null"), 0);
  QemuConfig c;
  c.memory_mb = 128;
  auto src = Start(c, "src", "src.qcow2", false, /*paused=*/true);
  ASSERT_TRUE(src.ok()) << src.error().message;
  auto dst = Start(c, "dst", "dst.qcow2", true);
  ASSERT_TRUE(dst.ok()) << dst.error().message;
  auto key = NewMigrationKey("vmgrid-test");
  ASSERT_TRUE(key.ok());
  std::unique_ptr<MigrationTunnel> tunnel;
  IncomingParams in = Incoming(*key, "dst", true);
  in.stream = false;
  auto ep = StartIncoming((*dst)->qmp(), in, seconds(30), &tunnel);
  ASSERT_TRUE(ep.ok()) << ep.error().message << "\n" << (*dst)->LogTail();
  EXPECT_EQ(ep->migration_port, 0);
  EXPECT_EQ(tunnel, nullptr);
  // A running source is refused: its guest would write while the disk moves.
  auto running = Start(c, "run", "", false);
  ASSERT_TRUE(running.ok()) << running.error().message;
  EXPECT_FALSE(
      MirrorDisksOut((*running)->qmp(), Outgoing(*key, "run", *ep, true), seconds(30)).ok());
  auto stats = MirrorDisksOut((*src)->qmp(), Outgoing(*key, "src", *ep, true), seconds(60));
  ASSERT_TRUE(stats.ok()) << stats.error().message << "\n" << (*src)->LogTail();
  PrintStats("cold, 64 MiB disk with 3 MiB in its top layer", *stats);
  EXPECT_GE(stats->disk_bytes, 3 << 20);
  EXPECT_EQ(stats->ram_bytes, 0);
  EXPECT_FALSE(fs::exists(P("src/mig-key")));
  ASSERT_TRUE(FinishDiskExport((*dst)->qmp(), P("dst/mig-key"), seconds(10)).ok());
  EXPECT_FALSE(fs::exists(P("dst/mig-key")));
  EXPECT_EQ(*QueryStatus((*src)->qmp()), "prelaunch");
  EXPECT_EQ(*QueryStatus((*dst)->qmp()), "inmigrate");
  ASSERT_TRUE((*src)->Quit(seconds(10)).ok());
  ASSERT_TRUE((*dst)->Quit(seconds(10)).ok());
  EXPECT_EQ(Sh("qemu-io -f qcow2 -r -c 'read -P 0x3c 5M 3M' " + P("dst.qcow2") +
               " | grep -q 'read 3145728/3145728'"),
            0);
}

TEST_F(MigrationTest, WrongKeyOnTheMigrationStreamFailsAndSourceRuns) {
  QemuConfig c;
  c.memory_mb = 128;
  auto src = Start(c, "src", "", false);
  ASSERT_TRUE(src.ok()) << src.error().message;
  auto dst = Start(c, "dst", "", true);
  ASSERT_TRUE(dst.ok()) << dst.error().message;
  auto right = NewMigrationKey("vmgrid-test");
  auto wrong = NewMigrationKey("vmgrid-test");
  ASSERT_TRUE(right.ok() && wrong.ok());
  std::unique_ptr<MigrationTunnel> tunnel;
  auto ep = StartIncoming((*dst)->qmp(), Incoming(*right, "dst", false), seconds(30), &tunnel);
  ASSERT_TRUE(ep.ok()) << ep.error().message;
  auto stats = MigrateOut((*src)->qmp(), Outgoing(*wrong, "src", *ep, false), seconds(60));
  ASSERT_FALSE(stats.ok());
  std::cout << "[info] wrong key: " << stats.error().message << "\n";
  EXPECT_EQ(*QueryStatus((*src)->qmp()), "running");
  // The source is left as it was: a checkpoint to a file (no TLS) still works.
  Status st = SaveStateToFile((*src)->qmp(), P("state"), seconds(60));
  EXPECT_TRUE(st.ok()) << st.error().message;
  ASSERT_TRUE((*src)->Quit(seconds(10)).ok());
  (void)(*dst)->Kill();
}

// What an agent that died during MigrateOut leaves in the source QEMU (TLS
// object, NBD client node, a running mirror, a throttled migration with
// pause-before-switchover): RecoverOutgoing cancels it all and the VM runs.
TEST_F(MigrationTest, RecoverOutgoingCancelsAnInterruptedMigration) {
  ASSERT_EQ(Sh("qemu-img create -q -f raw " + P("base.raw") + " 64M"), 0);
  ::chmod(P("base.raw").c_str(), 0644);
  Overlay(P("base.raw"), "raw", "src.qcow2");
  Overlay(P("base.raw"), "raw", "dst.qcow2");
  QemuConfig c;
  c.memory_mb = 128;
  auto src = Start(c, "src", "src.qcow2", false);
  ASSERT_TRUE(src.ok()) << src.error().message;
  auto dst = Start(c, "dst", "dst.qcow2", true);
  ASSERT_TRUE(dst.ok()) << dst.error().message;
  auto key = NewMigrationKey("vmgrid-test");
  ASSERT_TRUE(key.ok());
  std::unique_ptr<MigrationTunnel> tunnel;
  auto ep = StartIncoming((*dst)->qmp(), Incoming(*key, "dst", true), seconds(30), &tunnel);
  ASSERT_TRUE(ep.ok()) << ep.error().message;
  // MigrateOut's own steps, stopped halfway: the "agent" dies once RAM moves
  // (1 MB/s: it is still moving when we look).
  OutgoingParams out = Outgoing(*key, "src", *ep, true);
  out.max_bandwidth = 1 << 20;
  bool interrupted = false;
  out.on_phase = [&](MigrationPhase ph) {
    if (ph != MigrationPhase::kMigrating || interrupted) return;
    interrupted = true;
    auto info = (*src)->qmp().Execute("query-migrate");
    ASSERT_TRUE(info.ok());
    std::string status = info->value("status", "");
    EXPECT_TRUE(status == "setup" || status == "active") << info->dump();
    auto recovered = RecoverOutgoing((*src)->qmp());
    ASSERT_TRUE(recovered.ok()) << recovered.error().message;
    EXPECT_FALSE(*recovered);
  };
  auto stats = MigrateOut((*src)->qmp(), out, seconds(60));
  EXPECT_FALSE(stats.ok());  // what it waited for was cancelled under it
  ASSERT_TRUE(interrupted);
  EXPECT_EQ(*QueryStatus((*src)->qmp()), "running");
  auto jobs = (*src)->qmp().Execute("query-block-jobs");
  ASSERT_TRUE(jobs.ok());
  EXPECT_TRUE(jobs->empty()) << jobs->dump();
  auto params = (*src)->qmp().Execute("query-migrate-parameters");
  ASSERT_TRUE(params.ok());
  EXPECT_EQ(params->value("tls-creds", "?"), "") << params->dump();
  // Saving state to a file works again (no TLS, no pause-before-switchover).
  Status st = SaveStateToFile((*src)->qmp(), P("state"), seconds(60));
  EXPECT_TRUE(st.ok()) << st.error().message;
  (void)(*dst)->Kill();
  ASSERT_TRUE((*src)->Quit(seconds(10)).ok());
}

// --- the tiny guest ----------------------------------------------------------

class TinyMigrationTest : public MigrationTest {
 protected:
  void SetUp() override {
    MigrationTest::SetUp();
    std::string why;
    img_ = FindTinyImage(VMGRID_DEFAULT_TINY_IMAGE, &why);
    if (!img_) GTEST_SKIP() << why;
    if (!runas_.empty() && Sh("su -s /bin/sh " + runas_ + " -c 'test -r " + img_->rootfs +
                              " && test -r " + img_->kernel + "' 2>/dev/null") != 0) {
      std::cout << "[info] image not readable by " << runas_ << "; running without -runas\n";
      runas_.clear();
      uid_ = gid_ = -1;
    }
    config_.vcpus = 2;
    config_.memory_mb = 256;
    config_.kernel = img_->kernel;
    config_.initrd = img_->initrd;
    config_.append = img_->append;
  }

  // Boots the source and waits for its guest agent.
  std::unique_ptr<QemuProcess> BootSource() {
    Overlay(img_->rootfs, "raw", "src.qcow2");
    auto src = Start(config_, "src", "src.qcow2", false);
    EXPECT_TRUE(src.ok()) << src.error().message;
    if (!src.ok()) return nullptr;
    auto ga = GuestAgentClient::ConnectWhenReady((*src)->qga_socket(), Clock::now() + seconds(240));
    EXPECT_TRUE(ga.ok()) << ga.error().message;
    return std::move(src).value();
  }
  std::unique_ptr<QemuProcess> StartTarget(const std::string& name) {
    Overlay(img_->rootfs, "raw", name + ".qcow2");
    auto dst = Start(config_, name, name + ".qcow2", true);
    EXPECT_TRUE(dst.ok()) << dst.error().message;
    return dst.ok() ? std::move(dst).value() : nullptr;
  }
  static Result<ExecResult> Run(QemuProcess& q, const std::string& script) {
    auto ga = GuestAgentClient::Connect(q.qga_socket(), seconds(10));
    if (!ga.ok()) return ga.error();
    return (*ga)->Exec({"sh", "-c", script}, "", seconds(60));
  }
  // A guest loop writing 1, 2, 3, ... into /root/counter.
  static void StartCounter(QemuProcess& q) {
    auto r = Run(q,
                 "(i=0; while true; do i=$((i+1)); echo $i > /root/counter; sleep 0.1; done) "
                 ">/dev/null 2>&1 </dev/null & echo started");
    ASSERT_TRUE(r.ok()) << r.error().message;
  }
  // The source keeps working: its guest agent runs commands and its loop counts.
  void ExpectSourceUsable(QemuProcess& src) {
    EXPECT_TRUE(src.Alive());
    EXPECT_EQ(*QueryStatus(src.qmp()), "running");
    auto r = Run(src, "echo alive > /root/after && sync && cat /root/after");
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->out, "alive\n");
    ExpectCounting(src);
  }
  // The guest's loop advances (polls; no timing assumption beyond the test timeout).
  static void ExpectCounting(QemuProcess& q) {
    auto first = Run(q, "cat /root/counter");
    ASSERT_TRUE(first.ok()) << first.error().message;
    for (int i = 0; i < 600; ++i) {
      auto now = Run(q, "cat /root/counter");
      ASSERT_TRUE(now.ok()) << now.error().message;
      if (now->out != first->out && !now->out.empty()) return;
      std::this_thread::sleep_for(milliseconds(100));
    }
    ADD_FAILURE() << "the guest's counter stopped at " << first->out;
  }
  static void ExpectGone(std::unique_ptr<QemuProcess>& q) {
    pid_t pid = q->pid();
    std::string run = q->run_dir();
    (void)q->Kill();
    q.reset();
    fs::remove_all(run);
    EXPECT_FALSE(ProcessLive(pid));
    EXPECT_FALSE(fs::exists(run));
  }

  std::optional<TinyImage> img_;
  QemuConfig config_;
};

// Under TCG this test caught QEMU 7.2 losing guest stores during live RAM
// migration (the target's kernel oopsed or qemu-ga segfaulted right after the
// switch; docs/migration.md, "A migrated guest that stopped answering"):
// MigrateOut now pauses a TCG guest while RAM moves, and the target's kernel
// log is checked for the symptoms.
TEST_F(TinyMigrationTest, GuestWithDiskAndLoopMovesAndKeepsRunning) {
  auto src = BootSource();
  ASSERT_NE(src, nullptr);
  const std::string marker = "marker " + RandomUuid();
  auto r = Run(*src, "echo '" + marker + "' > /root/marker && sync && " +
                         "(i=0; while true; do i=$((i+1)); echo $i > /root/counter; sleep 0.1; "
                         "done) >/dev/null 2>&1 </dev/null & echo started");
  ASSERT_TRUE(r.ok()) << r.error().message;
  ExpectCounting(*src);
  auto dst = StartTarget("dst");
  ASSERT_NE(dst, nullptr);
  auto key = NewMigrationKey("vmgrid-test");
  ASSERT_TRUE(key.ok());
  std::unique_ptr<MigrationTunnel> tunnel;
  auto ep = StartIncoming(dst->qmp(), Incoming(*key, "dst", true), seconds(30), &tunnel);
  ASSERT_TRUE(ep.ok()) << ep.error().message;
  auto stats = MigrateOut(src->qmp(), Outgoing(*key, "src", *ep, true), seconds(300));
  ASSERT_TRUE(stats.ok()) << stats.error().message << "\n" << src->LogTail();
  PrintStats("tiny guest (256 MiB, writing)", *stats);
  Status st = FinishIncoming(dst->qmp(), P("dst/mig-key"), seconds(30));
  ASSERT_TRUE(st.ok()) << st.error().message << "\n" << dst->LogTail();
  pid_t src_pid = src->pid();
  ASSERT_TRUE(src->Quit(seconds(10)).ok());
  EXPECT_FALSE(ProcessLive(src_pid));
  EXPECT_TRUE(ProcessesMentioning(P("src")).empty());

  // On the target: the file is there, also on its disk (page cache dropped),
  // the loop counts on, and the guest agent runs commands.
  r = Run(*dst, "sync && echo 3 > /proc/sys/vm/drop_caches && cat /root/marker");
  ASSERT_TRUE(r.ok()) << r.error().message << "\nconsole: " << dst->ConsoleTail(8192);
  EXPECT_EQ(r->out, marker + "\n");
  ExpectCounting(*dst);
  // Memory the migration got wrong shows as oopses and crashed processes.
  r = Run(*dst, "dmesg | grep -E 'BUG:|Oops|segfault|general protection|Kernel panic' || true");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->out, "") << "the migrated guest's kernel log";
  ASSERT_TRUE(dst->Quit(seconds(10)).ok());
  // What the guest wrote before the migration is in the target's own overlay.
  EXPECT_EQ(Sh("qemu-img check -q " + P("dst.qcow2")), 0);
}

TEST_F(TinyMigrationTest, TargetKilledMidMigrationLeavesSourceRunning) {
  auto src = BootSource();
  ASSERT_NE(src, nullptr);
  StartCounter(*src);
  // Kill -9 the target once while the disk is being mirrored, once while RAM moves.
  for (MigrationPhase when : {MigrationPhase::kMirrorStarted, MigrationPhase::kMigrating}) {
    SCOPED_TRACE(ToString(when));
    const std::string name = std::string("dst-") + ToString(when);
    auto dst = StartTarget(name);
    ASSERT_NE(dst, nullptr);
    auto key = NewMigrationKey("vmgrid-test");
    ASSERT_TRUE(key.ok());
    std::unique_ptr<MigrationTunnel> tunnel;
    auto ep = StartIncoming(dst->qmp(), Incoming(*key, name, true), seconds(30), &tunnel);
    ASSERT_TRUE(ep.ok()) << ep.error().message;
    OutgoingParams out = Outgoing(*key, "src", *ep, true);
    pid_t dst_pid = dst->pid();
    std::thread killer;
    if (when == MigrationPhase::kMigrating) {
      // Throttled so RAM is still moving when the target dies: kill it once
      // 8 MiB went over (QmpClient is thread-safe; MigrateOut polls too).
      out.max_bandwidth = 32 << 20;
      out.on_phase = [&](MigrationPhase ph) {
        if (ph != when) return;
        killer = std::thread([&src, dst_pid] {
          for (int i = 0; i < 3000; ++i) {
            auto info = src->qmp().Execute("query-migrate");
            if (!info.ok() || info->value("status", "") != "active") break;
            if (info->contains("ram") && (*info)["ram"].value("transferred", 0) > (8 << 20)) break;
            std::this_thread::sleep_for(milliseconds(10));
          }
          ::kill(dst_pid, SIGKILL);
        });
      };
    } else {
      out.on_phase = [&](MigrationPhase ph) {
        if (ph == when) ::kill(dst_pid, SIGKILL);
      };
    }
    auto stats = MigrateOut(src->qmp(), out, seconds(300));
    if (killer.joinable()) killer.join();
    ASSERT_FALSE(stats.ok());
    std::cout << "[info] target killed at " << ToString(when) << ": " << stats.error().message
              << "\n";
    ExpectGone(dst);
    ::unlink(P(name + ".qcow2").c_str());
    ExpectSourceUsable(*src);
    // No mirror job or NBD node of the migration is left on the source.
    auto jobs = src->qmp().Execute("query-block-jobs");
    ASSERT_TRUE(jobs.ok());
    EXPECT_TRUE(jobs->empty()) << jobs->dump();
    auto nodes = src->qmp().Execute("query-named-block-nodes");
    ASSERT_TRUE(nodes.ok());
    EXPECT_EQ(nodes->dump().find("vmg-mig-nbd"), std::string::npos);
  }
  ASSERT_TRUE(src->Quit(seconds(10)).ok());
}

TEST_F(TinyMigrationTest, WrongKeyOnTargetFailsAndSourceRuns) {
  auto src = BootSource();
  ASSERT_NE(src, nullptr);
  StartCounter(*src);
  auto dst = StartTarget("dst");
  ASSERT_NE(dst, nullptr);
  auto right = NewMigrationKey("vmgrid-test");
  auto wrong = NewMigrationKey("vmgrid-test");
  ASSERT_TRUE(right.ok() && wrong.ok());
  std::unique_ptr<MigrationTunnel> tunnel;
  auto ep = StartIncoming(dst->qmp(), Incoming(*wrong, "dst", true), seconds(30), &tunnel);
  ASSERT_TRUE(ep.ok()) << ep.error().message;
  auto stats = MigrateOut(src->qmp(), Outgoing(*right, "src", *ep, true), seconds(120));
  ASSERT_FALSE(stats.ok());
  std::cout << "[info] wrong key on the target: " << stats.error().message << "\n";
  ExpectGone(dst);
  ExpectSourceUsable(*src);
  ASSERT_TRUE(src->Quit(seconds(10)).ok());
}

}  // namespace
}  // namespace vmgrid
