#include "store/leader_lease.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "store/store.h"
#include "store/test_database.h"

namespace vmgrid {
namespace {

using testing_db::TestDatabase;

// PostgreSQL: one holder at a time; the row changes hands when released or
// expired, each time with a new term; a holder stops acting act_ms after
// its last renewal started, on its own clock, even without hearing anything.
TEST(LeaderLeaseTest, OneHolderAtATimeOnPostgres) {
  TestDatabase db(testing_db::kPostgres);
  if (!db.skip.empty()) GTEST_SKIP() << db.skip;
  ASSERT_TRUE(db.error.empty()) << db.error;
  auto store = Store::Open(db.target());  // the schema (migration 15)
  ASSERT_TRUE(store.ok()) << store.error().message;
  FakeClock clock_a(1000), clock_b(5000);
  LeaderLeaseOptions o;
  o.lease_ms = 2000;
  o.act_ms = 1000;
  auto a = LeaderLease::Open(db.target(), "ctl-a", "http://a", clock_a, o);
  auto b = LeaderLease::Open(db.target(), "ctl-b", "http://b", clock_b, o);
  ASSERT_TRUE(a.ok()) << a.error().message;
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_FALSE((*a)->Held());
  ASSERT_TRUE(*(*a)->Renew());
  EXPECT_TRUE((*a)->Held());
  EXPECT_EQ((*a)->term(), 1);
  EXPECT_FALSE(*(*b)->Renew());
  EXPECT_FALSE((*b)->Held());
  auto cur = (*b)->Current();
  ASSERT_TRUE(cur.ok());
  EXPECT_EQ(cur->id, "ctl-a");
  EXPECT_EQ(cur->url, "http://a");
  EXPECT_FALSE(cur->expired);
  // Renewing keeps the term; a's own clock ends its acting.
  ASSERT_TRUE(*(*a)->Renew());
  EXPECT_EQ((*a)->term(), 1);
  clock_a.Advance(999);
  EXPECT_TRUE((*a)->Held());
  clock_a.Advance(1);
  EXPECT_FALSE((*a)->Held());
  // Released: b takes it at once, with the next term; a cannot renew it back.
  (*a)->Release();
  ASSERT_TRUE(*(*b)->Renew());
  EXPECT_TRUE((*b)->Held());
  EXPECT_EQ((*b)->term(), 2);
  EXPECT_FALSE(*(*a)->Renew());
  EXPECT_FALSE((*a)->Held());
}

// The database's time decides the expiry: a holder that stops renewing
// loses the row once lease_ms has passed there.
TEST(LeaderLeaseTest, AnExpiredLeaseIsTakenOver) {
  TestDatabase db(testing_db::kPostgres);
  if (!db.skip.empty()) GTEST_SKIP() << db.skip;
  ASSERT_TRUE(db.error.empty()) << db.error;
  auto store = Store::Open(db.target());
  ASSERT_TRUE(store.ok()) << store.error().message;
  LeaderLeaseOptions o;
  o.lease_ms = 300;
  o.act_ms = 100;
  auto a = LeaderLease::Open(db.target(), "ctl-a", "http://a", SteadyClock::Get(), o);
  auto b = LeaderLease::Open(db.target(), "ctl-b", "http://b", SteadyClock::Get(), o);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(*(*a)->Renew());
  // Waits (with a bound) for the expiry rather than assuming its timing.
  bool taken = false;
  for (int i = 0; i < 100 && !taken; ++i) {
    auto r = (*b)->Renew();
    ASSERT_TRUE(r.ok()) << r.error().message;
    taken = *r;
    if (!taken) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(taken);
  EXPECT_EQ((*b)->term(), 2);
  EXPECT_FALSE(*(*a)->Renew());
}

// SQLite: one controller per database file, always the leader; a second is
// refused while the first has it open.
TEST(LeaderLeaseTest, SqliteHasOneControllerAndRefusesASecond) {
  TestDatabase db(testing_db::kSqlite);
  ASSERT_TRUE(db.error.empty()) << db.error;
  auto a = LeaderLease::Open(db.target(), "ctl-a", "http://a", SteadyClock::Get());
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_TRUE((*a)->Held());
  EXPECT_TRUE(*(*a)->Renew());
  auto b = LeaderLease::Open(db.target(), "ctl-b", "http://b", SteadyClock::Get());
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(b.error().message.find("another controller"), std::string::npos) << b.error().message;
  a->reset();
  auto c = LeaderLease::Open(db.target(), "ctl-c", "http://c", SteadyClock::Get());
  EXPECT_TRUE(c.ok()) << c.error().message;
}

}  // namespace
}  // namespace vmgrid
