#include "store/store.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "common/util.h"

namespace vmgrid {
namespace {

class StoreTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir() + "/store_test_" + std::to_string(getpid()) + "_" +
           testing::UnitTest::GetInstance()->current_test_info()->name();
    ASSERT_TRUE(RemoveTree(dir_).ok());
    ASSERT_TRUE(MakeDirs(dir_).ok());
    auto s = Store::Open(dir_ + "/vmgrid.db");
    ASSERT_TRUE(s.ok()) << s.error().message;
    store_ = std::move(s).value();
    auto u = store_->CreateUser("alice", "user");
    ASSERT_TRUE(u.ok());
    alice_ = u->first;
    Image img;
    img.id = "img-1";
    img.name = "tiny";
    img.owner_id = alice_.id;
    img.state = "ready";
    img.format = "raw";
    img.dir = "/x";
    ASSERT_TRUE(store_->InsertImage(img).ok());
  }
  void TearDown() override { (void)RemoveTree(dir_); }

  Vm NewVm(const std::string& name) {
    Vm v;
    v.id = NewId("vm");
    v.name = name;
    v.owner_id = alice_.id;
    v.image_id = "img-1";
    v.state = "creating";
    v.vcpus = 1;
    v.memory_mb = 256;
    v.disk = "clone";
    v.start = "boot";
    v.created_ms = v.updated_ms = NowMs();
    return v;
  }

  std::string dir_;
  std::unique_ptr<Store> store_;
  User alice_;
};

TEST_F(StoreTest, TokensAuthenticateAndAreStoredHashed) {
  auto u = store_->CreateUser("bob", "user");
  ASSERT_TRUE(u.ok());
  auto who = store_->AuthenticateToken(u->second);
  ASSERT_TRUE(who.ok());
  EXPECT_EQ(who->name, "bob");
  EXPECT_EQ(store_->AuthenticateToken("vmg_bogus").error().code, ErrorCode::kUnauthenticated);
  EXPECT_EQ(store_->CreateUser("bob", "user").error().code, ErrorCode::kAlreadyExists);
  // The plaintext token never reaches the database file.
  auto db = ReadFile(dir_ + "/vmgrid.db");
  ASSERT_TRUE(db.ok());
  EXPECT_EQ(db->find(u->second), std::string::npos);
}

TEST_F(StoreTest, MigrationsAreIdempotentAcrossReopen) {
  int v = store_->schema_version();
  store_.reset();
  auto s = Store::Open(dir_ + "/vmgrid.db");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->schema_version(), v);
  EXPECT_TRUE((*s)->GetImage("tiny", alice_.id).ok());
}

TEST_F(StoreTest, ConcurrentPlacementNeverOversubscribes) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{10, 10 * 256, 1000, false});
  ASSERT_TRUE(h.ok());
  std::atomic<int> ok{0}, exhausted{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&, i] {
      auto r = store_->PlaceAndInsertVm(NewVm("vm" + std::to_string(i)), {h->id});
      if (r.ok()) ++ok;
      else if (r.error().code == ErrorCode::kResourceExhausted) ++exhausted;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 10);
  EXPECT_EQ(exhausted.load(), 40);
  auto host = store_->GetHost("h1");
  EXPECT_EQ(host->reserved_vcpus, 10);
}

TEST_F(StoreTest, OwnerFilterHidesOtherUsersObjects) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{4, 4096, 1000, false});
  auto vm = store_->PlaceAndInsertVm(NewVm("mine"), {h->id});
  ASSERT_TRUE(vm.ok());
  auto bob = store_->CreateUser("bob", "user");
  EXPECT_EQ(store_->GetVm(vm->id, bob->first.id).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->GetVm("mine", bob->first.id).error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(store_->GetVm("mine", alice_.id).ok());
  EXPECT_TRUE(store_->GetVm(vm->id, "").ok());
  EXPECT_EQ(store_->ListVms(bob->first.id)->size(), 0u);
}

TEST_F(StoreTest, TransitionIsCompareAndSet) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{4, 4096, 1000, false});
  auto vm = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  ASSERT_TRUE(vm.ok());
  EXPECT_EQ(store_->TransitionVm(vm->id, {"running"}, "stopping").error().code,
            ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(store_->TransitionVm(vm->id, {"creating"}, "running").ok());
  EXPECT_EQ(store_->DeleteImage("img-1").error().code, ErrorCode::kFailedPrecondition);
}

TEST_F(StoreTest, GangIsAllOrNothing) {
  auto a = store_->HeartbeatHost("a", "http://a", HostCapacity{4, 1024, 1000, false});
  auto b = store_->HeartbeatHost("b", "http://b", HostCapacity{4, 4096, 1000, false});
  std::vector<Vm> gang;
  for (int i = 0; i < 4; ++i) {
    gang.push_back(NewVm("g" + std::to_string(i)));
    gang.back().memory_mb = 512;
  }
  // Group {a} cannot take 4 x 512 MB; group {b} can: all land on b.
  auto r = store_->PlaceAndInsertGang(gang, {{a->id}, {b->id}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  for (const auto& vm : *r) EXPECT_EQ(vm.host_id, b->id);
  // Nothing fits now for another 4 x 1 GB: none is recorded.
  for (auto& vm : gang) {
    vm.id = NewId("vm");
    vm.name += "x";
    vm.memory_mb = 1024;
  }
  auto none = store_->PlaceAndInsertGang(gang, {{a->id}, {b->id}});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(store_->ListVms("")->size(), 4u);
}

TEST_F(StoreTest, StaleHostsGoDown) {
  ASSERT_TRUE(store_->HeartbeatHost("h1", "http://x", HostCapacity{4, 4096, 1000, false}).ok());
  auto ids = store_->MarkStaleHostsDown(NowMs() + 1000);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->size(), 1u);
  EXPECT_EQ(store_->GetHost("h1")->state, "down");
}

}  // namespace
}  // namespace vmgrid
