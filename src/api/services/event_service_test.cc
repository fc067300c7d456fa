// EventService on a fresh store (both databases): who sees which events,
// the cursor, a VM's history after its deletion and after a restart, and
// the bound on followers.
#include "api/services/event_service.h"

#include <set>
#include <string>
#include <vector>

#include "api/admission.h"
#include "api/services/service_test_fixture.h"

namespace vmgrid {
namespace {

class EventServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto b = store_->CreateUser("bob", "user");
    ASSERT_TRUE(b.ok());
    bob_ = b->first;
    auto a = store_->CreateUser("root", "admin");
    ASSERT_TRUE(a.ok());
    admin_ = a->first;
    events_ = std::make_unique<EventService>(*store_, followers_);
  }
  Vm AddVmOf(const User& owner, const std::string& name, const std::string& state) {
    Vm v = AddVm(name, "creating");
    // AddVm makes alice's; hand it to `owner` before its state changes.
    auto db = OpenSqlBackend(db_->target());
    EXPECT_TRUE(db.ok());
    EXPECT_TRUE((*db)->Exec("UPDATE vms SET owner_id=? WHERE id=?", {owner.id, v.id}).ok());
    EXPECT_TRUE(store_->ModifyVm(v.id, [&](Vm& vm) { vm.state = state; }).ok());
    return *store_->GetVm(v.id, "");
  }
  Result<EventPage> List(const User& who, EventListRequest r = {}) {
    return events_->List(Caller{who}, r);
  }
  static std::set<std::string> VmIds(const EventPage& p) {
    std::set<std::string> ids;
    for (const auto& e : p.events) ids.insert(e.vm_id);
    return ids;
  }

  Admission followers_{"event followers", 1, 0, 5};
  std::unique_ptr<EventService> events_;
  User bob_, admin_;
};

// Written first: user B never sees A's events, by list or by naming A's VM
// (404, as every VM route answers for a VM the caller cannot see).
TEST_P(EventServiceTest, UsersNeverSeeOtherUsersEvents) {
  Vm a = AddVmOf(alice_, "a", "running");
  Vm b = AddVmOf(bob_, "b", "running");
  auto bobs = List(bob_);
  ASSERT_TRUE(bobs.ok()) << bobs.error().message;
  EXPECT_EQ(VmIds(*bobs), std::set<std::string>{b.id});
  for (const auto& e : bobs->events) EXPECT_EQ(e.owner_id, bob_.id);
  for (const std::string& ref : {a.id, a.name}) {
    EventListRequest r;
    r.vm = ref;
    auto got = List(bob_, r);
    ASSERT_FALSE(got.ok()) << ref;
    EXPECT_EQ(got.error().code, ErrorCode::kNotFound) << ref;
  }
  // After A's VM is deleted its history stays A's: still 404 for B by id.
  ASSERT_TRUE(store_->DeleteVm(a.id).ok());
  EventListRequest by_id;
  by_id.vm = a.id;
  EXPECT_EQ(List(bob_, by_id).error().code, ErrorCode::kNotFound);
  auto alices = List(alice_, by_id);
  ASSERT_TRUE(alices.ok()) << alices.error().message;
  ASSERT_FALSE(alices->events.empty());
  EXPECT_EQ(alices->events.back().kind, "vm.deleted");
  // A follower sees only its own too (an event of A's arriving meanwhile is not B's).
  EventListRequest follow;
  follow.after = bobs->next;
  follow.follow = true;
  follow.wait_ms = 1;
  Vm a2 = AddVmOf(alice_, "a2", "stopped");
  auto waited = List(bob_, follow);
  ASSERT_TRUE(waited.ok());
  EXPECT_TRUE(waited->events.empty());
  EXPECT_EQ(waited->next, bobs->next);
  // Host events (no owner) are the admin's only; the admin sees everything.
  auto all = List(admin_);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(VmIds(*all), (std::set<std::string>{"", a.id, b.id, a2.id}));
  bool host_event = false;
  for (const auto& e : all->events) host_event = host_event || e.kind == "host.up";
  EXPECT_TRUE(host_event);
  auto alice_all = List(alice_);
  ASSERT_TRUE(alice_all.ok());
  for (const auto& e : alice_all->events) EXPECT_EQ(e.owner_id, alice_.id);
}

TEST_P(EventServiceTest, CursorLastAndLimits) {
  Vm a = AddVmOf(alice_, "a", "running");
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(store_->ModifyVm(a.id, [](Vm& v) { v.state = "stopped"; }).ok());
    ASSERT_TRUE(store_->ModifyVm(a.id, [](Vm& v) { v.state = "running"; }).ok());
  }
  EventListRequest r;
  r.limit = 2;
  std::vector<int64_t> ids;
  for (int page = 0; page < 10; ++page) {
    auto got = List(alice_, r);
    ASSERT_TRUE(got.ok());
    if (got->events.empty()) break;
    for (const auto& e : got->events) ids.push_back(e.id);
    r.after = got->next;
  }
  EXPECT_EQ(ids.size(), 7u);  // creating->running, then 3 x 2
  EventListRequest last;
  last.last = 2;
  auto tail = List(alice_, last);
  ASSERT_TRUE(tail.ok());
  ASSERT_EQ(tail->events.size(), 2u);
  EXPECT_EQ(tail->events.back().id, ids.back());
  EXPECT_EQ(tail->next, ids.back());
  EventListRequest bad;
  bad.limit = 0;
  EXPECT_EQ(List(alice_, bad).error().code, ErrorCode::kInvalidArgument);
  bad.limit = EventService::kMaxLimit + 1;
  EXPECT_EQ(List(alice_, bad).error().code, ErrorCode::kInvalidArgument);
}

// A follower returns what arrived; over the per-user bound it is refused.
TEST_P(EventServiceTest, FollowersAreBounded) {
  Vm a = AddVmOf(alice_, "a", "running");
  auto now = List(alice_);
  ASSERT_TRUE(now.ok());
  EventListRequest follow;
  follow.after = now->next;
  follow.follow = true;
  follow.wait_ms = 0;
  auto empty = List(alice_, follow);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->events.empty());
  // Events already there: answered at once, no slot taken.
  ASSERT_TRUE(store_->ModifyVm(a.id, [](Vm& v) { v.state = "stopped"; }).ok());
  auto got = List(alice_, follow);
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->events.size(), 1u);
  // With the one slot held, a second waiting follower of alice's is refused.
  auto held = followers_.Acquire(alice_.id);
  ASSERT_TRUE(held.ok());
  follow.after = got->next;
  follow.wait_ms = 10;
  auto refused = List(alice_, follow);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kTooManyRequests);
  EXPECT_TRUE(List(bob_, follow).ok());  // bob has his own
}

// A VM's history is in the database: a restarted controller (a new Store
// on the same database) reads it back, placement included.
TEST_P(EventServiceTest, HistorySurvivesARestart) {
  Vm a = AddVmOf(alice_, "a", "running");
  ASSERT_TRUE(store_
                  ->AppendEvent(Event{0, 0, "vm.placed", a.id, host_.id, alice_.id,
                                      "VM a placed on host h1", R"({"reason":"test"})"})
                  .ok());
  events_.reset();
  ASSERT_TRUE(store_->SetObserver(nullptr).ok());
  store_.reset();
  auto s = Store::Open(db_->target());
  ASSERT_TRUE(s.ok()) << s.error().message;
  store_ = std::move(s).value();
  events_ = std::make_unique<EventService>(*store_, followers_);
  EventListRequest r;
  r.vm = "a";
  auto got = List(alice_, r);
  ASSERT_TRUE(got.ok()) << got.error().message;
  std::vector<std::string> kinds;
  for (const auto& e : got->events) kinds.push_back(e.kind);
  EXPECT_EQ(kinds, (std::vector<std::string>{"vm.state", "vm.placed"}));
  EXPECT_EQ(EventService::EventJson(got->events.back())["data"]["reason"], "test");
}

INSTANTIATE_TEST_SUITE_P(Backends, EventServiceTest, testing_db::Backends(),
                         testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
