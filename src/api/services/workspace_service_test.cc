// WorkspaceService on a fresh store with a fake agent: a deletion is an
// operation that removes the file first and the record after; while it runs
// no VM may take the workspace and no second deletion starts.
#include "api/services/workspace_service.h"

#include <future>

#include "api/admission.h"
#include "api/services/service_test_fixture.h"

namespace vmgrid {
namespace {

class WorkspaceServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    workspaces_ = std::make_unique<WorkspaceService>(*store_, agent_, ops_, long_ops_);
  }
  void Settle() { ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10))); }
  Workspace AddWorkspace(const std::string& name, const std::string& vm_id = "") {
    Workspace w;
    w.id = NewId("ws");
    w.name = name;
    w.owner_id = alice_.id;
    w.image_id = "img-1";
    w.host_id = host_.id;
    w.path = "/var/lib/vmgrid/workspaces/" + w.id + ".qcow2";
    w.size_bytes = 1 << 20;
    w.vm_id = vm_id;
    w.created_ms = clock_.NowMs();
    EXPECT_TRUE(store_->InsertWorkspace(w).ok());
    return w;
  }

  OpQueue ops_;
  Admission long_ops_{"long operations", 2, 0, 5};
  std::unique_ptr<WorkspaceService> workspaces_;
};

TEST_P(WorkspaceServiceTest, DeleteRemovesTheFileThenTheRecord) {
  Workspace w = AddWorkspace("data");
  auto op = workspaces_->Delete(Caller{alice_}, "data");
  ASSERT_TRUE(op.ok()) << op.error().message;
  EXPECT_EQ((*op)["kind"], "workspace_delete");
  Settle();
  EXPECT_EQ(agent_.calls, (std::vector<std::string>{"delete-workspace " + w.path}));
  EXPECT_EQ(store_->GetWorkspace(w.id, "").error().code, ErrorCode::kNotFound);
  EXPECT_FALSE(workspaces_->BeingDeleted(w.id));
}

TEST_P(WorkspaceServiceTest, AnotherUserNeitherSeesNorDeletesIt) {
  Workspace w = AddWorkspace("data");
  User bob = store_->CreateUser("bob", "user")->first;
  auto list = workspaces_->List(Caller{bob}, {});
  ASSERT_TRUE(list.ok()) << list.error().message;
  EXPECT_TRUE(list->items.empty());
  EXPECT_EQ(workspaces_->Delete(Caller{bob}, w.id).error().code, ErrorCode::kNotFound);
  Settle();
  EXPECT_TRUE(agent_.calls.empty());
  EXPECT_TRUE(store_->GetWorkspace(w.id, "").ok());
}

TEST_P(WorkspaceServiceTest, AWorkspaceInUseOrBeingDeletedIsRefused) {
  Vm vm = AddVm("a", "running");
  AddWorkspace("used", vm.id);
  auto used = workspaces_->Delete(Caller{alice_}, "used");
  ASSERT_FALSE(used.ok());
  EXPECT_EQ(used.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(used.error().message.find(vm.id), std::string::npos) << used.error().message;

  Workspace w = AddWorkspace("data");
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  agent_.on_delete_workspace = [released] { released.wait(); };
  agent_.delete_workspace_answer = MakeError(ErrorCode::kUnavailable, "host unreachable");
  ASSERT_TRUE(workspaces_->Delete(Caller{alice_}, "data").ok());
  EXPECT_TRUE(workspaces_->BeingDeleted(w.id)) << "no VM may take it meanwhile";
  EXPECT_EQ(workspaces_->Delete(Caller{alice_}, "data").error().code,
            ErrorCode::kFailedPrecondition);
  release.set_value();
  Settle();
  EXPECT_FALSE(workspaces_->BeingDeleted(w.id));
  EXPECT_TRUE(store_->GetWorkspace(w.id, "").ok()) << "kept when the file could not be removed";
}

INSTANTIATE_TEST_SUITE_P(Backends, WorkspaceServiceTest, testing_db::Backends(),
                         testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
