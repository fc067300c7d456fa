#include "sim/sim_vm_table.h"

#include <gtest/gtest.h>

namespace vmgrid {
namespace {

VmSpec Spec(const std::string& id, int vcpus = 1, int64_t memory_mb = 256) {
  VmSpec s;
  s.id = id;
  s.name = id;
  s.owner_id = "usr-1";
  s.vcpus = vcpus;
  s.memory_mb = memory_mb;
  s.image.disk = "/images/x/disk.raw";
  return s;
}

TEST(SimVmTable, CreateRunsAtOnceAndRefusesDuplicates) {
  SimVmTable t("sim-1");
  auto r = t.Create(Spec("vm-a", 2, 512));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->state, "running");
  EXPECT_EQ(r->vcpus, 2);
  EXPECT_EQ(r->memory_mb, 512);
  auto again = t.Create(Spec("vm-a"));
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kAlreadyExists);
  EXPECT_EQ(t.size(), 1u);
}

TEST(SimVmTable, GuestFilesAreKeptPerVmWhileItRuns) {
  SimVmTable t("h1");
  ASSERT_TRUE(t.Create(Spec("vm-a")).ok());
  ASSERT_TRUE(t.WriteGuestFile("vm-a", GuestFileWrite{"/tmp/f", 0, "abc"}).ok());
  auto w = t.WriteGuestFile("vm-a", GuestFileWrite{"/tmp/f", 3, "de"});
  ASSERT_TRUE(w.ok()) << w.error().message;
  EXPECT_EQ(w->size, 5);
  auto r = t.ReadGuestFile("vm-a", GuestFileRead{"/tmp/f", 1, 3});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->data, "bcd");
  EXPECT_FALSE(r->eof);
  EXPECT_EQ(t.ReadGuestFile("vm-a", GuestFileRead{"/nope", 0, 3}).error().code,
            ErrorCode::kNotFound);
  EXPECT_EQ(t.WriteGuestFile("vm-a", GuestFileWrite{"/tmp/f", 9, "x"}).error().code,
            ErrorCode::kFailedPrecondition);
  EXPECT_EQ(t.ReadGuestFile("vm-a", GuestFileRead{"rel", 0, 3}).error().code,
            ErrorCode::kInvalidArgument);
  ASSERT_TRUE(t.Stop("vm-a").ok());
  EXPECT_EQ(t.ReadGuestFile("vm-a", GuestFileRead{"/tmp/f", 0, 3}).error().code,
            ErrorCode::kFailedPrecondition);
}

TEST(SimVmTable, LifecycleFollowsTheAgentStateMachine) {
  SimVmTable t("sim-1");
  ASSERT_TRUE(t.Create(Spec("vm-a")).ok());
  // Resume needs stopped or suspended.
  EXPECT_EQ(t.Resume("vm-a").error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(t.CheckpointDir("vm-a").error().code, ErrorCode::kFailedPrecondition);

  auto c = t.Checkpoint("vm-a", /*leave_running=*/true);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->state, "running");
  EXPECT_TRUE(c->has_checkpoint);
  auto dir = t.CheckpointDir("vm-a");
  ASSERT_TRUE(dir.ok());
  EXPECT_EQ(*dir, "/sim/sim-1/vms/vm-a/checkpoint");

  EXPECT_EQ(t.Checkpoint("vm-a", false)->state, "suspended");
  EXPECT_EQ(t.Stop("vm-a").error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(t.Exec("vm-a", {"true"}).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(t.Resume("vm-a")->state, "running");
  EXPECT_EQ(t.Stop("vm-a")->state, "stopped");
  EXPECT_EQ(t.Resume("vm-a")->state, "running");

  auto e = t.Exec("vm-a", {"echo", "hi"});
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->exit_code, 0);
  EXPECT_NE(e->out.find("echo hi"), std::string::npos);

  ASSERT_TRUE(t.Destroy("vm-a", false).ok());
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.Destroy("vm-a", false).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(t.Stop("vm-a").error().code, ErrorCode::kNotFound);
}

TEST(SimVmTable, UsageCountsEveryVmButFailedOnes) {
  SimVmTable t("sim-1");
  ASSERT_TRUE(t.Create(Spec("vm-a", 1, 256)).ok());
  ASSERT_TRUE(t.Create(Spec("vm-b", 2, 1024)).ok());
  VmStatus failed;
  failed.id = "vm-c";
  failed.state = "error";
  failed.vcpus = 4;
  failed.memory_mb = 4096;
  ASSERT_TRUE(t.Adopt(failed).ok());
  EXPECT_EQ(t.Adopt(failed).error().code, ErrorCode::kAlreadyExists);
  VmStatus odd = failed;
  odd.id = "vm-d";
  odd.state = "paused";  // not a VM state (common/vm_state.h)
  EXPECT_EQ(t.Adopt(odd).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(t.size(), 3u);
  EXPECT_EQ(t.used_vcpus(), 3);
  EXPECT_EQ(t.used_memory_mb(), 1280);
  auto list = t.List();
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].id, "vm-a");  // sorted by id
}

TEST(SimVmTable, WorkspaceInUseCannotBeDeleted) {
  SimVmTable t("sim-1");
  VmSpec s = Spec("vm-a");
  s.disk_mode = "persistent";
  s.workspace_path = "/sim/sim-1/workspaces/u/ws.qcow2";
  ASSERT_TRUE(t.Create(s).ok());
  EXPECT_EQ(t.DeleteWorkspace(s.workspace_path).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(t.DeleteWorkspace("/sim/sim-1/workspaces/u/other.qcow2").ok());
  ASSERT_TRUE(t.Destroy("vm-a", false).ok());
  EXPECT_TRUE(t.DeleteWorkspace(s.workspace_path).ok());
}

TEST(SimVmTable, MigrationMovesAVmBetweenTwoTables) {
  SimVmTable source("sim-1"), target("sim-2");
  ASSERT_TRUE(source.Create(Spec("vm-a", 2, 512)).ok());
  MigrationCredential cred{"vmgrid-mig-1", std::string(64, 'a')};
  auto info = target.PrepareIncoming(IncomingRequest{Spec("vm-a", 2, 512), cred, "10.0.0.2"});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->host, "10.0.0.2");
  EXPECT_EQ(target.List().at(0).state, "creating");
  EXPECT_EQ(target.Exec("vm-a", {"true"}).error().code, ErrorCode::kFailedPrecondition);
  ASSERT_TRUE(source.MigrateOut("vm-a", MigrateOutRequest{*info, cred, 0}).ok());
  // Migrated out: nothing but confirm (or delete) until the controller decides.
  EXPECT_EQ(source.Stop("vm-a").error().code, ErrorCode::kFailedPrecondition);
  EXPECT_FALSE(source.MigrateOut("vm-a", MigrateOutRequest{*info, cred, 0}).ok());
  auto finished = target.FinishIncoming("vm-a");
  ASSERT_TRUE(finished.ok());
  EXPECT_EQ(finished->state, "running");
  ASSERT_TRUE(source.ConfirmMigrateOut("vm-a", true).ok());
  EXPECT_EQ(source.size(), 0u);
  EXPECT_TRUE(target.Exec("vm-a", {"true"}).ok());

  // Aborted: the target forgets it, the source runs on.
  auto back = source.PrepareIncoming(IncomingRequest{Spec("vm-a", 2, 512), cred, "10.0.0.1"});
  ASSERT_TRUE(back.ok());
  ASSERT_TRUE(target.MigrateOut("vm-a", MigrateOutRequest{*back, cred, 0}).ok());
  ASSERT_TRUE(source.AbortIncoming("vm-a").ok());
  ASSERT_TRUE(target.ConfirmMigrateOut("vm-a", false).ok());
  EXPECT_EQ(source.size(), 0u);
  EXPECT_TRUE(target.Exec("vm-a", {"true"}).ok());
  EXPECT_EQ(target.AbortIncoming("vm-a").error().code, ErrorCode::kFailedPrecondition);
}

}  // namespace
}  // namespace vmgrid
