#include "store/store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/util.h"
#include "store/test_database.h"

namespace vmgrid {
namespace {

using testing_db::TestDatabase;

// Runs against each backend: the parameter is "sqlite" or "postgres" (see
// store/test_database.h); every test gets a fresh database.
// Undoes migration 9 (virtual networks), for tests that run migrations
// again from an older version.
// Undoes migrations 9 to 23 (virtual networks, hosts' tunnel columns, live
// migrations' table, drain, events, host failure; migration 11's state check is dropped with
// migration 8's).
constexpr const char* kDropMigration9 =
    "DROP TABLE events; DROP TABLE vm_migrations; DROP TABLE nics; DROP TABLE network_shares; DROP "
    "TABLE networks; "
    "DROP INDEX hosts_tunnel_number; ALTER TABLE hosts DROP COLUMN tunnel_number; "
    "ALTER TABLE hosts DROP COLUMN tunnel_ip; ALTER TABLE hosts DROP COLUMN tunnel_port; "
    "ALTER TABLE hosts DROP COLUMN draining; ALTER TABLE hosts DROP COLUMN failed_ms; "
    "ALTER TABLE vms DROP COLUMN restart; ALTER TABLE vms DROP COLUMN data; "
    "ALTER TABLE vms DROP COLUMN disk_base; "
    "ALTER TABLE workspaces DROP COLUMN durable_version; "
    "ALTER TABLE workspaces DROP COLUMN durable_digest; "
    "ALTER TABLE workspaces DROP COLUMN durable_size_bytes; "
    "ALTER TABLE workspaces DROP COLUMN durable_ms; "
    "ALTER TABLE workspaces DROP COLUMN durable_chunks; "
    "ALTER TABLE workspaces DROP COLUMN durable_sent_chunks; "
    "ALTER TABLE workspaces DROP COLUMN durable_sent_bytes; "
    "ALTER TABLE workspaces DROP COLUMN durable_host_id; "
    "ALTER TABLE workspaces DROP COLUMN generation; DROP TABLE controller_leader; "
    "DROP TABLE dataset_cache; DROP TABLE dataset_shares; DROP TABLE dataset_versions; "
    "DROP TABLE datasets; "
    "DROP TABLE job_tasks; DROP TABLE jobs; DROP INDEX vms_owner_created; DROP INDEX vms_created; "
    "CREATE INDEX vms_owner ON vms(owner_id);";

// The first page of at most `limit` items.
PageRequest FirstPage(int64_t limit) {
  PageRequest p;
  p.limit = limit;
  return p;
}

class StoreTest : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    db_ = std::make_unique<TestDatabase>(GetParam());
    VMGRID_REQUIRE_TEST_DATABASE(*db_);
    auto s = Store::Open(db_->target());
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
  void TearDown() override {
    store_.reset();
    db_.reset();
  }

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

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<Store> store_;
  User alice_;
};

// A transaction in which one statement failed: PostgreSQL aborts it (COMMIT
// then answers ROLLBACK), SQLite keeps the other statements. Either way
// Commit must not claim what was not written.
TEST_P(StoreTest, CommitNeverReportsWritesThatWereNotWritten) {
  auto opened = OpenSqlBackend(db_->target());
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  SqlBackend& db = **opened;
  ASSERT_TRUE(db.ExecScript("CREATE TABLE commit_probe (k INTEGER PRIMARY KEY)").ok());
  ASSERT_TRUE(db.Begin().ok());
  ASSERT_TRUE(db.Exec("INSERT INTO commit_probe (k) VALUES (1)").ok());
  auto dup = db.Exec("INSERT INTO commit_probe (k) VALUES (1)");
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code, ErrorCode::kAlreadyExists);
  (void)db.Exec("INSERT INTO commit_probe (k) VALUES (2)");  // fails on PostgreSQL
  Status committed = db.Commit();
  EXPECT_FALSE(db.InTransaction());
  auto rows = db.Query("SELECT COUNT(*) FROM commit_probe");
  ASSERT_TRUE(rows.ok()) << rows.error().message;
  const int64_t n = (*rows)[0].Int(0);
  if (GetParam() == testing_db::kPostgres) {
    ASSERT_FALSE(committed.ok());
    EXPECT_NE(committed.error().message.find("aborted"), std::string::npos)
        << committed.error().message;
    EXPECT_EQ(n, 0);
  } else {
    ASSERT_TRUE(committed.ok()) << committed.error().message;
    EXPECT_EQ(n, 2);
  }
  // The connection is usable afterwards.
  EXPECT_TRUE(db.Exec("INSERT INTO commit_probe (k) VALUES (3)").ok());
}

// Defer (PostgreSQL: BEGIN, SAVEPOINT and RELEASE go with the next command
// in one round trip): a deferred statement's failure is the next command's,
// a statement first prepared in such a round trip is prepared only if that
// succeeded, and a connection lost mid-transaction comes back afterwards.
TEST_P(StoreTest, DeferredStatementsFailTheCommandTheyPrecede) {
  const bool pg = GetParam() == testing_db::kPostgres;
  auto opened = OpenSqlBackend(db_->target());
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  SqlBackend& db = **opened;
  ASSERT_TRUE(db.ExecScript("CREATE TABLE defer_probe (k INTEGER PRIMARY KEY)").ok());
  auto count = [&] {
    auto rows = db.Query("SELECT COUNT(*) FROM defer_probe");
    return rows.ok() ? (*rows)[0].Int(0) : -1;
  };
  const std::string insert = "INSERT INTO defer_probe (k) VALUES (?)";
  // A transaction in which nothing ran commits.
  ASSERT_TRUE(db.Begin().ok());
  EXPECT_TRUE(db.Commit().ok());
  EXPECT_FALSE(db.InTransaction());
  // Savepoints with the statements; the insert is prepared in that round trip.
  ASSERT_TRUE(db.Begin().ok());
  ASSERT_TRUE(db.Defer("SAVEPOINT a").ok());
  ASSERT_TRUE(db.Exec(insert, {int64_t{1}}).ok());
  ASSERT_TRUE(db.Defer("RELEASE a").ok());
  ASSERT_TRUE(db.Commit().ok());
  EXPECT_EQ(count(), 1);
  // A deferred statement that fails fails the command it went with (on
  // SQLite at once), and nothing of the transaction is written.
  ASSERT_TRUE(db.Begin().ok());
  ASSERT_TRUE(db.Exec(insert, {int64_t{2}}).ok());
  Status deferred = db.Defer("RELEASE no_such_savepoint");
  if (pg) {
    ASSERT_TRUE(deferred.ok());
    // A statement not prepared yet: its preparation is skipped with it.
    auto x = db.Exec("INSERT INTO defer_probe (k) VALUES (? + 100)", {int64_t{3}});
    ASSERT_FALSE(x.ok());
    EXPECT_NE(x.error().message.find("no_such_savepoint"), std::string::npos) << x.error().message;
    EXPECT_FALSE(db.Commit().ok());
  } else {
    EXPECT_FALSE(deferred.ok());
    ASSERT_TRUE(db.Rollback().ok());
  }
  EXPECT_FALSE(db.InTransaction());
  EXPECT_EQ(count(), 1);
  // Both statements work afterwards, in a round trip with a deferred
  // statement and alone (prepared once, whichever came first).
  ASSERT_TRUE(db.Begin().ok());
  ASSERT_TRUE(db.Defer("SAVEPOINT b").ok());
  ASSERT_TRUE(db.Exec("INSERT INTO defer_probe (k) VALUES (? + 100)", {int64_t{3}}).ok());
  ASSERT_TRUE(db.Exec(insert, {int64_t{4}}).ok());
  ASSERT_TRUE(db.Commit().ok());
  ASSERT_TRUE(db.Exec("INSERT INTO defer_probe (k) VALUES (? + 100)", {int64_t{5}}).ok());
  EXPECT_EQ(count(), 4);
  if (!pg) return;
  // The server ends the session in the middle of a transaction: the next
  // round trip fails as a lost connection, nothing is written, and the
  // connection is usable again after the transaction.
  ASSERT_TRUE(db.Begin().ok());
  ASSERT_TRUE(db.Exec(insert, {int64_t{6}}).ok());
  {
    auto killer = OpenSqlBackend(db_->target());
    ASSERT_TRUE(killer.ok());
    ASSERT_TRUE(
        (*killer)
            ->Query("SELECT pg_terminate_backend(CAST(? AS INTEGER))", {int64_t{db.SessionPid()}})
            .ok());
  }
  ASSERT_TRUE(db.Defer("SAVEPOINT c").ok());
  auto lost = db.Exec(insert, {int64_t{7}});
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.error().code, ErrorCode::kUnavailable) << lost.error().message;
  EXPECT_FALSE(db.Commit().ok());
  EXPECT_EQ(count(), 4);
  EXPECT_TRUE(db.Exec(insert, {int64_t{8}}).ok());
  EXPECT_EQ(count(), 5);
}

// Heartbeats written in full share transactions (the write queue): many
// hosts registering and coming back at once each get their own row, tunnel
// number and host.up event, and the ones that change nothing stay in memory.
TEST_P(StoreTest, HeartbeatsWrittenTogetherEachGetTheirOwnRow) {
  constexpr int kThreads = 16, kHosts = 8;
  std::atomic<int> failed{0};
  auto beat_all = [&](int64_t vcpus) {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < kHosts; ++i) {
          auto h =
              store_->HeartbeatHost("h-" + std::to_string(t) + "-" + std::to_string(i), "http://x",
                                    HostCapacity{static_cast<int>(vcpus), 256, 10, false});
          if (!h.ok() || h->vcpus != vcpus || h->state != "up") ++failed;
        }
      });
    for (auto& th : threads) th.join();
  };
  beat_all(4);  // all register
  beat_all(8);  // all written again (a new capacity)
  EXPECT_EQ(failed.load(), 0);
  auto hosts = store_->ListHosts();
  ASSERT_TRUE(hosts.ok()) << hosts.error().message;
  ASSERT_EQ(hosts->size(), size_t{kThreads * kHosts});
  std::set<int64_t> numbers;
  for (const auto& h : *hosts) {
    EXPECT_EQ(h.vcpus, 8) << h.name;
    numbers.insert(h.tunnel_number);
  }
  EXPECT_EQ(numbers.size(), hosts->size()) << "tunnel numbers are unique";
  EventQuery q;
  q.limit = 10000;
  auto events = store_->ListEvents(q);
  ASSERT_TRUE(events.ok()) << events.error().message;
  EXPECT_EQ(std::count_if(events->begin(), events->end(),
                          [](const Event& e) { return e.kind == "host.up"; }),
            kThreads * kHosts)
      << "one host.up each: registered once";
}

TEST_P(StoreTest, TokensAuthenticateAndAreStoredHashed) {
  auto u = store_->CreateUser("bob", "user");
  ASSERT_TRUE(u.ok());
  auto who = store_->AuthenticateToken(u->second);
  ASSERT_TRUE(who.ok());
  EXPECT_EQ(who->name, "bob");
  EXPECT_EQ(store_->AuthenticateToken("vmg_bogus").error().code, ErrorCode::kUnauthenticated);
  EXPECT_EQ(store_->CreateUser("bob", "user").error().code, ErrorCode::kAlreadyExists);
  // The plaintext token never reaches the database.
  if (!db_->is_postgres()) {
    auto db = ReadFile(db_->file());
    ASSERT_TRUE(db.ok());
    EXPECT_EQ(db->find(u->second), std::string::npos);
  } else {
    auto db = OpenSqlBackend(db_->target());
    ASSERT_TRUE(db.ok());
    for (const char* table : {"users", "tokens"}) {
      auto rows = (*db)->Query(std::string("SELECT CAST(t AS TEXT) FROM ") + table + " t");
      ASSERT_TRUE(rows.ok()) << rows.error().message;
      ASSERT_FALSE(rows->empty());
      for (const auto& row : *rows) EXPECT_EQ(row.Text(0).find(u->second), std::string::npos);
    }
  }
}

// Keyset pages (common/paging.h) cover a user's VMs once each, oldest
// first, never another user's; a cursor survives the removal of the item
// it names; hosts page by name and jobs by creation.
TEST_P(StoreTest, ListPagesCoverEachItemOnceInOrderAndOnlyTheOwners) {
  auto bob = store_->CreateUser("bob", "user");
  ASSERT_TRUE(bob.ok());
  for (const char* name : {"h3", "h1", "h2"})
    ASSERT_TRUE(store_->HeartbeatHost(name, "http://x", HostCapacity{1, 256, 10, false}).ok());
  const std::string host_id = store_->GetHost("h1")->id;
  std::vector<std::string> alice_ids;
  for (int i = 0; i < 9; ++i) {
    Vm v = NewVm("a" + std::to_string(i));
    v.created_ms = 1000 + i / 3;  // ties, broken by the id
    v.host_id = host_id;
    auto inserted = store_->InsertVmRecord(v);
    ASSERT_TRUE(inserted.ok()) << inserted.error().message;
    alice_ids.push_back(v.id);
    Vm b = NewVm("b" + std::to_string(i));
    b.owner_id = bob->first.id;
    b.created_ms = 1000 + i;
    b.host_id = host_id;
    ASSERT_TRUE(store_->InsertVmRecord(b).ok());
  }
  auto all = store_->ListVms(alice_.id);
  ASSERT_TRUE(all.ok());
  std::vector<std::pair<int64_t, std::string>> want;
  for (const auto& v : *all) want.push_back({v.created_ms, v.id});
  std::sort(want.begin(), want.end());
  for (int64_t limit : {1, 2, 4, 9, 10}) {
    std::vector<std::pair<int64_t, std::string>> got;
    PageRequest page = FirstPage(limit);
    for (int pages = 0;; ++pages) {
      ASSERT_LT(pages, 20);
      auto p = store_->ListVmsPage(alice_.id, page);
      ASSERT_TRUE(p.ok()) << p.error().message;
      ASSERT_LE(static_cast<int64_t>(p->items.size()), limit);
      for (const auto& v : p->items) {
        EXPECT_EQ(v.owner_id, alice_.id);
        got.push_back({v.created_ms, v.id});
      }
      if (p->next.empty()) break;
      ASSERT_TRUE(DecodeCursor(p->next, page).ok());
    }
    EXPECT_EQ(got, want) << "limit " << limit;
  }
  // Everybody's (the admin): 18, with the same cursor kind.
  auto everyone = store_->ListVmsPage("", FirstPage(100));
  ASSERT_TRUE(everyone.ok());
  EXPECT_EQ(everyone->items.size(), 18u);
  EXPECT_TRUE(everyone->next.empty());

  // The VM a cursor names is removed: the next page starts after it anyway.
  auto first = store_->ListVmsPage(alice_.id, FirstPage(3));
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(store_->DeleteVm(first->items.back().id).ok());
  PageRequest after = FirstPage(100);
  ASSERT_TRUE(DecodeCursor(first->next, after).ok());
  auto rest = store_->ListVmsPage(alice_.id, after);
  ASSERT_TRUE(rest.ok());
  EXPECT_EQ(rest->items.size(), 6u);  // 9 less the 3 of the first page
  // A cursor whose key is not a number (a host cursor given to the VM list).
  PageRequest wrong = FirstPage(1);
  wrong.after_key = "h1";
  wrong.after_id = "x";
  EXPECT_EQ(store_->ListVmsPage(alice_.id, wrong).error().code, ErrorCode::kInvalidArgument);

  std::vector<std::string> names;
  PageRequest hp = FirstPage(2);
  for (;;) {
    auto p = store_->ListHostsPage(hp);
    ASSERT_TRUE(p.ok()) << p.error().message;
    for (const auto& h : p->items) names.push_back(h.name);
    if (p->next.empty()) break;
    ASSERT_TRUE(DecodeCursor(p->next, hp).ok());
  }
  EXPECT_EQ(names, (std::vector<std::string>{"h1", "h2", "h3"}));

  for (int i = 0; i < 3; ++i) {
    Job j;
    j.id = "job-" + std::to_string(i);
    j.owner_id = i == 1 ? bob->first.id : alice_.id;
    j.image_id = "img-1";
    j.spec = "{}";
    j.count = 1;
    j.state = "queued";
    j.created_ms = 5000 - i;
    ASSERT_TRUE(store_->InsertJob(j, 100).ok());
  }
  auto jobs = store_->ListJobsPage(alice_.id, FirstPage(1));
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->items.size(), 1u);
  EXPECT_EQ(jobs->items[0].id, "job-2");  // the oldest
  PageRequest jp = FirstPage(1);
  ASSERT_TRUE(DecodeCursor(jobs->next, jp).ok());
  auto jobs2 = store_->ListJobsPage(alice_.id, jp);
  ASSERT_TRUE(jobs2.ok());
  ASSERT_EQ(jobs2->items.size(), 1u);
  EXPECT_EQ(jobs2->items[0].id, "job-0");
  EXPECT_TRUE(jobs2->next.empty());
}

TEST_P(StoreTest, MigrationsAreIdempotentAcrossReopen) {
  int v = store_->schema_version();
  store_.reset();
  auto s = Store::Open(db_->target());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->schema_version(), v);
  EXPECT_TRUE((*s)->GetImage("tiny", alice_.id).ok());
}

TEST_P(StoreTest, ConcurrentPlacementNeverOversubscribes) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{10, 10 * 256, 1000, false});
  ASSERT_TRUE(h.ok());
  std::atomic<int> ok{0}, exhausted{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&, i] {
      auto r = store_->PlaceAndInsertVm(NewVm("vm" + std::to_string(i)), {h->id});
      if (r.ok())
        ++ok;
      else if (r.error().code == ErrorCode::kResourceExhausted)
        ++exhausted;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 10);
  EXPECT_EQ(exhausted.load(), 40);
  auto host = store_->GetHost("h1");
  EXPECT_EQ(host->reserved_vcpus, 10);
}

// Concurrent writes share transactions on SQLite (group commit): one that
// fails inside a batch (a taken name, after its host's usage was already
// raised) must be undone alone, and every write that returned OK must be
// committed and visible to a fresh connection.
TEST_P(StoreTest, ConcurrentWritesFailAloneAndCommitBeforeReturning) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{1000, 1000 * 256, 1000, false});
  ASSERT_TRUE(h.ok());
  std::atomic<int> ok{0}, taken{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        // Names repeat across thread pairs: one of each pair's attempts fails.
        auto r = store_->PlaceAndInsertVm(
            NewVm("vm" + std::to_string(t / 2) + "-" + std::to_string(i)), {h->id});
        if (r.ok()) {
          ++ok;
          EXPECT_TRUE(store_->ModifyVm(r->id, [](Vm& vm) { vm.state = "running"; }).ok());
        } else if (r.error().code == ErrorCode::kAlreadyExists) {
          ++taken;
        } else {
          ADD_FAILURE() << r.error().message;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 8 * 20);
  EXPECT_EQ(taken.load(), 8 * 20);
  auto other = Store::Open(db_->target());
  ASSERT_TRUE(other.ok()) << other.error().message;
  auto vms = (*other)->ListVms("");
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ(vms->size(), 8u * 20u);
  for (const auto& vm : *vms) EXPECT_EQ(vm.state, "running") << vm.name;
  EXPECT_EQ((*other)->GetHost("h1")->reserved_vcpus, 8 * 20);
  EXPECT_EQ(store_->GetHost("h1")->reserved_vcpus, 8 * 20);
}

// Two Stores on one database whose writers update the same VMs in
// different orders: their write batches (group commit) hold row locks until
// they commit, so they can deadlock where single writes would not
// (PostgreSQL). The write the server fails runs again alone: every update
// returns OK and is there afterwards.
TEST_P(StoreTest, WriteBatchesOfTwoStoresSurviveDeadlocks) {
  auto other = Store::Open(db_->target());
  ASSERT_TRUE(other.ok()) << other.error().message;
  Store* stores[] = {store_.get(), other->get()};
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{64, 64 * 256, 1000, false});
  ASSERT_TRUE(h.ok());
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    auto vm = store_->PlaceAndInsertVm(NewVm("vm" + std::to_string(i)), {h->id});
    ASSERT_TRUE(vm.ok()) << vm.error().message;
    ids.push_back(vm->id);
  }
  constexpr int kThreads = 12, kWrites = 20;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kWrites; ++i) {
        // Each store walks the VMs in its own direction.
        const size_t k =
            t % 2 ? static_cast<size_t>(t + i) % 4 : static_cast<size_t>(3 - (t + i) % 4);
        const std::string mark = std::to_string(t) + "-" + std::to_string(i);
        Status st = stores[t % 2]->ModifyVm(ids[k], [&](Vm& vm) { vm.error = mark; });
        if (st.ok())
          ++ok;
        else
          ADD_FAILURE() << st.error().message;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kThreads * kWrites);
  for (const auto& id : ids) {
    auto vm = store_->GetVm(id, "");
    ASSERT_TRUE(vm.ok());
    EXPECT_FALSE(vm->error.empty());
  }
}

// Two Stores on one database stand for two controllers sharing it: their
// mutexes do not exclude each other, the database's locking must.
TEST_P(StoreTest, ConcurrentPlacementFromTwoStoresNeverOversubscribes) {
  auto other = Store::Open(db_->target());
  ASSERT_TRUE(other.ok()) << other.error().message;
  Store* stores[] = {store_.get(), other->get()};
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{10, 10 * 256, 1000, false});
  ASSERT_TRUE(h.ok());
  std::atomic<int> ok{0}, exhausted{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&, i] {
      auto r = stores[i % 2]->PlaceAndInsertVm(NewVm("vm" + std::to_string(i)), {h->id});
      if (r.ok())
        ++ok;
      else if (r.error().code == ErrorCode::kResourceExhausted)
        ++exhausted;
      else
        ADD_FAILURE() << r.error().message;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 10);
  EXPECT_EQ(exhausted.load(), 40);
  EXPECT_EQ(store_->GetHost("h1")->reserved_vcpus, 10);
}

// What an observer holds per host, kept as placement's CapacityIndex keeps
// it: absolute on snapshots and OnHost, deltas on OnUsage.
class MirrorObserver : public StoreObserver {
 public:
  struct Entry {
    int64_t vcpus = 0, used_vcpus = 0, used_memory_mb = 0;
    bool up = false;
    int vm_changes = 0;
  };
  void OnSnapshot(const std::vector<Host>& hosts,
                  const std::vector<std::pair<std::string, std::string>>& cached) override {
    std::lock_guard<std::mutex> l(mu_);
    hosts_.clear();
    for (const auto& h : hosts) SetLocked(h);
    cached_ = {cached.begin(), cached.end()};
  }
  void OnHost(const Host& h) override {
    std::lock_guard<std::mutex> l(mu_);
    SetLocked(h);
  }
  void OnHostDown(const std::string& id) override {
    std::lock_guard<std::mutex> l(mu_);
    hosts_[id].up = false;
  }
  void OnUsage(const std::string& id, int64_t vcpus, int64_t memory_mb, int64_t) override {
    std::lock_guard<std::mutex> l(mu_);
    hosts_[id].used_vcpus += vcpus;
    hosts_[id].used_memory_mb += memory_mb;
  }
  void OnVmChanged(const std::string& id) override {
    std::lock_guard<std::mutex> l(mu_);
    ++hosts_[id].vm_changes;
  }
  void OnImageCached(const std::string& image, const std::string& host) override {
    std::lock_guard<std::mutex> l(mu_);
    cached_.insert({image, host});
  }
  Entry Get(const std::string& id) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = hosts_.find(id);
    return it == hosts_.end() ? Entry{} : it->second;
  }
  bool Cached(const std::string& image, const std::string& host) {
    std::lock_guard<std::mutex> l(mu_);
    return cached_.count({image, host}) > 0;
  }

 private:
  void SetLocked(const Host& h) {
    Entry& e = hosts_[h.id];
    e.vcpus = h.vcpus;
    e.used_vcpus = h.reserved_vcpus;
    e.used_memory_mb = h.reserved_memory_mb;
    e.up = h.state == "up" && !h.draining && h.failed_ms == 0;
    ++e.vm_changes;  // as CapacityIndex: a host re-read counts as changed
  }
  std::mutex mu_;
  std::map<std::string, Entry> hosts_;
  std::set<std::pair<std::string, std::string>> cached_;
};

// Polls `done` until it holds or a generous deadline passes (no claim on speed).
bool Eventually(const std::function<bool()>& done) {
  for (int i = 0; i < 600; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return done();
}

// Several controllers on one PostgreSQL database (docs/ha.md, "Capacity
// indexes"): what one Store commits reaches the other's observer through
// LISTEN/NOTIFY, without a Resync, and re-reads never count a change twice.
TEST_P(StoreTest, OtherStoresChangesReachTheObserver) {
  if (!db_->is_postgres()) GTEST_SKIP() << "one controller per SQLite database";
  MirrorObserver mirror;  // outlives `other`
  auto opened = Store::Open(db_->target());
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  std::unique_ptr<Store> other = std::move(opened).value();
  ASSERT_TRUE(other->SetObserver(&mirror).ok());

  // A host registered through the first store.
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{40, 40 * 256, 1000, false});
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(Eventually([&] { return mirror.Get(h->id).vcpus == 40 && mirror.Get(h->id).up; }));

  // A placement through it.
  auto placed = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  ASSERT_TRUE(placed.ok()) << placed.error().message;
  EXPECT_TRUE(Eventually([&] { return mirror.Get(h->id).used_vcpus == 1; }));

  // Placements through both at once: the observer ends at the database's
  // usage, its own deltas and the re-reads of the other's changes neither
  // lost nor counted twice.
  Store* stores[] = {store_.get(), other.get()};
  std::vector<std::thread> threads;
  for (int i = 0; i < 30; ++i)
    threads.emplace_back([&, i] {
      auto r = stores[i % 2]->PlaceAndInsertVm(NewVm("p" + std::to_string(i)), {h->id});
      EXPECT_TRUE(r.ok()) << r.error().message;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(other->GetHost("h1")->reserved_vcpus, 31);
  EXPECT_TRUE(Eventually([&] {
    auto e = mirror.Get(h->id);
    return e.used_vcpus == 31 && e.used_memory_mb == 31 * 256;
  })) << mirror.Get(h->id).used_vcpus;

  // A release (a VM failed: its room goes back), a state change without
  // usage, the draining flag and an image-cache row.
  const int changes = mirror.Get(h->id).vm_changes;
  ASSERT_TRUE(store_->TransitionVm(placed->id, {"creating"}, "running").ok());
  EXPECT_TRUE(Eventually([&] { return mirror.Get(h->id).vm_changes > changes; }));
  ASSERT_TRUE(store_->TransitionVm(placed->id, {"running"}, "error").ok());
  EXPECT_TRUE(Eventually([&] { return mirror.Get(h->id).used_vcpus == 30; }));
  ASSERT_TRUE(store_->SetHostDraining("h1", true).ok());
  EXPECT_TRUE(Eventually([&] { return !mirror.Get(h->id).up; }));
  ASSERT_TRUE(store_->NoteImageCached("img-1", h->id).ok());
  EXPECT_TRUE(Eventually([&] { return mirror.Cached("img-1", h->id); }));
  // A dataset-cache row reaches it too, under the dataset's key.
  auto ds = store_->CreateDataset(alice_.id, "genome");
  ASSERT_TRUE(ds.ok());
  ASSERT_TRUE(store_->NoteDatasetCached(ds->id, 1, h->id).ok());
  EXPECT_TRUE(Eventually([&] { return mirror.Cached(DatasetCacheKey(ds->id), h->id); }));
  EXPECT_GT(other->remote_changes_applied(), 0);
}

TEST_P(StoreTest, DatasetCacheRowsAreKeptPerVersionAndGoWithTheDataset) {
  auto h1 = store_->HeartbeatHost("h1", "http://x", HostCapacity{4, 4096, 1000, false});
  auto h2 = store_->HeartbeatHost("h2", "http://y", HostCapacity{4, 4096, 1000, false});
  ASSERT_TRUE(h1.ok() && h2.ok());
  auto ds = store_->CreateDataset(alice_.id, "genome");
  ASSERT_TRUE(ds.ok());
  ASSERT_TRUE(store_->NoteDatasetCached(ds->id, 1, h1->id).ok());
  ASSERT_TRUE(store_->NoteDatasetCached(ds->id, 1, h1->id).ok());  // noted twice: one row
  ASSERT_TRUE(store_->NoteDatasetCached(ds->id, 2, h1->id).ok());
  ASSERT_TRUE(store_->NoteDatasetCached(ds->id, 2, h2->id).ok());
  auto rows = store_->ListDatasetCache(ds->id);
  ASSERT_TRUE(rows.ok()) << rows.error().message;
  ASSERT_EQ(rows->size(), 3u);
  EXPECT_EQ((*rows)[0].version, 1);
  EXPECT_EQ((*rows)[0].host_id, h1->id);
  EXPECT_EQ((*rows)[1].version, 2);
  EXPECT_EQ((*rows)[2].version, 2);
  EXPECT_EQ((std::set<std::string>{(*rows)[1].host_id, (*rows)[2].host_id}),
            (std::set<std::string>{h1->id, h2->id}));
  // A dataset that is not there cannot be noted (the agent's report is not
  // trusted to name one).
  EXPECT_FALSE(store_->NoteDatasetCached("ds-nosuch", 1, h1->id).ok());
  ASSERT_TRUE(store_->DeleteDataset(ds->id).ok());
  EXPECT_TRUE(store_->ListDatasetCache(ds->id)->empty());
}

TEST_P(StoreTest, OwnerFilterHidesOtherUsersObjects) {
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

TEST_P(StoreTest, TransitionIsCompareAndSet) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{4, 4096, 1000, false});
  auto vm = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  ASSERT_TRUE(vm.ok());
  EXPECT_EQ(store_->TransitionVm(vm->id, {"running"}, "stopping").error().code,
            ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(store_->TransitionVm(vm->id, {"creating"}, "running").ok());
  EXPECT_EQ(store_->DeleteImage("img-1").error().code, ErrorCode::kFailedPrecondition);
}

// The event bell (long polls wait on it): it rings once a commit that
// recorded an event is done, so a waiter that took the count before its
// read wakes and reads the change; a failed write does not ring it.
TEST_P(StoreTest, EventBellRingsAfterTheChangeIsCommitted) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{4, 4096, 1000, false});
  auto vm = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  ASSERT_TRUE(vm.ok());
  const uint64_t seen = store_->EventBell();
  ASSERT_EQ(store_->GetVm(vm->id, "")->state, "creating");
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_TRUE(store_->TransitionVm(vm->id, {"creating"}, "running").ok());
  });
  // Far longer than the writer needs: returning with a new count means the
  // bell rang (a timeout would leave it at `seen`).
  store_->WaitEventBell(seen, std::chrono::seconds(60));
  const uint64_t rung = store_->EventBell();
  EXPECT_NE(rung, seen);
  EXPECT_EQ(store_->GetVm(vm->id, "")->state, "running");
  writer.join();
  // A refused transition writes nothing and rings nothing.
  ASSERT_FALSE(store_->TransitionVm(vm->id, {"creating"}, "stopped").ok());
  EXPECT_EQ(store_->EventBell(), rung);
  // A count other than the current one returns at once.
  store_->WaitEventBell(seen, std::chrono::hours(1));
}

TEST_P(StoreTest, TransitionByOpFollowsTheTable) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{4, 4096, 1000, false});
  auto vm = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  ASSERT_TRUE(vm.ok());
  auto refused = store_->TransitionVm(vm->id, VmOp::kResume);  // creating
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(refused.error().message.find("is creating; this needs it to be stopped or suspended"),
            std::string::npos)
      << refused.error().message;
  ASSERT_TRUE(store_->TransitionVm(vm->id, {"creating"}, "stopped").ok());
  auto moved = store_->TransitionVm(vm->id, VmOp::kResume);
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(moved->state, "resuming");
  EXPECT_EQ(store_->TransitionVm(vm->id, VmOp::kExec).error().code, ErrorCode::kInternal);
  EXPECT_EQ(store_->TransitionVm(vm->id, VmOp::kCreate).error().code, ErrorCode::kInternal);
}

// Migration 8: the database holds the states of common/vm_state.h only.
TEST_P(StoreTest, CountsVmsByState) {
  EXPECT_TRUE(store_->CountVmsByState()->empty());
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{8, 8192, 1000, false});
  auto a = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  auto b = store_->PlaceAndInsertVm(NewVm("b"), {h->id});
  auto c = store_->PlaceAndInsertVm(NewVm("c"), {h->id});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  ASSERT_TRUE(store_->TransitionVm(a->id, {"creating"}, "running").ok());
  ASSERT_TRUE(store_->TransitionVm(b->id, {"creating"}, "running").ok());
  auto counts = store_->CountVmsByState();
  ASSERT_TRUE(counts.ok()) << counts.error().message;
  EXPECT_EQ(*counts, (std::map<std::string, int64_t>{{"creating", 1}, {"running", 2}}));
}

TEST_P(StoreTest, UnknownVmStateIsRefused) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{4, 4096, 1000, false});
  auto vm = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  ASSERT_TRUE(vm.ok());
  // Every state of the code is accepted, by an update and by an insert.
  for (VmState state : AllVmStates()) {
    Vm v = *vm;
    v.state = ToString(state);
    EXPECT_TRUE(store_->UpdateVm(v).ok()) << v.state;
    EXPECT_EQ(store_->GetVm(vm->id, "")->state, v.state);
    Vm other = NewVm(std::string("as-") + ToString(state));
    other.host_id = h->id;
    other.state = ToString(state);
    EXPECT_TRUE(store_->InsertVmRecord(other).ok()) << other.state;
  }
  // Anything else is a constraint violation, whichever way it is written.
  int n = 0;
  for (const char* bad : {"", "Running", "paused", "unknown", "running "}) {
    Vm v = *vm;
    v.state = bad;
    auto st = store_->UpdateVm(v);
    EXPECT_FALSE(st.ok()) << "'" << bad << "'";
    EXPECT_FALSE(store_->TransitionVm(vm->id, {"error"}, bad).ok()) << "'" << bad << "'";
    Vm other = NewVm("bad-" + std::to_string(++n));
    other.host_id = h->id;
    other.state = bad;
    auto ins = store_->InsertVmRecord(other);
    ASSERT_FALSE(ins.ok()) << "'" << bad << "'";
    EXPECT_EQ(ins.error().code, ErrorCode::kAlreadyExists) << ins.error().message;  // a constraint
    EXPECT_FALSE(store_->GetVm(other.id, "").ok());
  }
  EXPECT_EQ(store_->GetVm(vm->id, "")->state, "error");  // the last good write stands
  // And raw SQL, past the Store, is refused too.
  auto db = OpenSqlBackend(db_->target());
  ASSERT_TRUE(db.ok());
  EXPECT_FALSE((*db)->Exec("UPDATE vms SET state='paused' WHERE id=?", {vm->id}).ok());
}

// Migration 8 on a database that holds a state outside the code's fails
// (and changes nothing); once the row is fixed it runs.
TEST_P(StoreTest, StateMigrationChecksExistingRows) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{4, 4096, 1000, false});
  auto vm = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  ASSERT_TRUE(vm.ok());
  store_.reset();
  auto db = OpenSqlBackend(db_->target());
  ASSERT_TRUE(db.ok());
  // Back to version 7, without the check, with a bad row.
  ASSERT_TRUE((*db)
                  ->ExecScript(db_->is_postgres()
                                   ? "ALTER TABLE vms DROP CONSTRAINT vms_state_check"
                                   : "DROP TRIGGER vms_state_check_insert; "
                                     "DROP TRIGGER vms_state_check_update")
                  .ok());
  ASSERT_TRUE((*db)->ExecScript(kDropMigration9).ok());
  ASSERT_TRUE((*db)->Exec("UPDATE schema_version SET version = 7").ok());
  ASSERT_TRUE((*db)->Exec("UPDATE vms SET state='paused' WHERE id=?", {vm->id}).ok());
  auto refused = Store::Open(db_->target());
  ASSERT_FALSE(refused.ok());
  auto version = (*db)->Query("SELECT version FROM schema_version");
  ASSERT_TRUE(version.ok());
  EXPECT_EQ((*version)[0].Int(0), 7);
  ASSERT_TRUE((*db)->Exec("UPDATE vms SET state='stopped' WHERE id=?", {vm->id}).ok());
  auto s = Store::Open(db_->target());
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ((*s)->schema_version(), 25);
  EXPECT_EQ((*s)->GetVm(vm->id, "")->state, "stopped");
  // Migration 24: a booted clone's disk lies on its image.
  EXPECT_EQ((*s)->GetVm(vm->id, "")->disk_base, "image");
  // Migration 10 numbered the host that was there.
  EXPECT_EQ((*s)->GetHost("h1")->tunnel_number, 1);
  // Migration 12: the host that was there is not draining.
  EXPECT_FALSE((*s)->GetHost("h1")->draining);
  Vm v = *vm;
  v.state = "paused";
  EXPECT_FALSE((*s)->UpdateVm(v).ok());
}

TEST_P(StoreTest, GangIsAllOrNothing) {
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

// Host usage is maintained, not derived: it must follow every VM change
// (insert, failure, recovery, move, delete) exactly.
TEST_P(StoreTest, HostUsageFollowsEveryVmChange) {
  auto a = store_->HeartbeatHost("a", "http://a", HostCapacity{8, 8192, 1000, false});
  auto b = store_->HeartbeatHost("b", "http://b", HostCapacity{8, 8192, 1000, false});
  ASSERT_TRUE(a.ok() && b.ok());
  auto usage = [&](const std::string& host) {
    auto h = store_->GetHost(host);
    return std::pair<int, int64_t>{h->reserved_vcpus, h->reserved_memory_mb};
  };
  Vm big = NewVm("big");
  big.vcpus = 2;
  big.memory_mb = 1024;
  auto v1 = store_->PlaceAndInsertVm(big, {a->id});
  auto v2 = store_->PlaceAndInsertVm(NewVm("small"), {a->id});
  ASSERT_TRUE(v1.ok() && v2.ok());
  EXPECT_EQ(usage("a"), (std::pair<int, int64_t>{3, 1280}));
  // A failed VM holds nothing; leaving `error` (e.g. to be deleted) holds again.
  ASSERT_TRUE(store_->TransitionVm(v1->id, {"creating"}, "error").ok());
  EXPECT_EQ(usage("a"), (std::pair<int, int64_t>{1, 256}));
  ASSERT_TRUE(store_->TransitionVm(v1->id, {"error"}, "deleting").ok());
  EXPECT_EQ(usage("a"), (std::pair<int, int64_t>{3, 1280}));
  // UpdateVm moves usage with the host and the state.
  Vm moved = *v2;
  moved.host_id = b->id;
  moved.state = "running";
  ASSERT_TRUE(store_->UpdateVm(moved).ok());
  EXPECT_EQ(usage("a"), (std::pair<int, int64_t>{2, 1024}));
  EXPECT_EQ(usage("b"), (std::pair<int, int64_t>{1, 256}));
  moved.state = "error";
  ASSERT_TRUE(store_->UpdateVm(moved).ok());
  EXPECT_EQ(usage("b"), (std::pair<int, int64_t>{0, 0}));
  // Records inserted as-is count unless failed; deletes release.
  Vm adopted = NewVm("adopted");
  adopted.host_id = b->id;
  adopted.state = "running";
  ASSERT_TRUE(store_->InsertVmRecord(adopted).ok());
  EXPECT_EQ(usage("b"), (std::pair<int, int64_t>{1, 256}));
  ASSERT_TRUE(store_->DeleteVm(adopted.id).ok());
  ASSERT_TRUE(store_->DeleteVm(v2->id).ok());  // failed: releases nothing more
  ASSERT_TRUE(store_->DeleteVm(v1->id).ok());
  EXPECT_EQ(usage("a"), (std::pair<int, int64_t>{0, 0}));
  EXPECT_EQ(usage("b"), (std::pair<int, int64_t>{0, 0}));
  // Room freed is room to place again (8 vCPUs on a).
  for (int i = 0; i < 8; ++i)
    EXPECT_TRUE(store_->PlaceAndInsertVm(NewVm("r" + std::to_string(i)), {a->id}).ok());
  EXPECT_EQ(store_->PlaceAndInsertVm(NewVm("r8"), {a->id}).error().code,
            ErrorCode::kResourceExhausted);
}

TEST_P(StoreTest, StaleHostsGoDown) {
  ASSERT_TRUE(store_->HeartbeatHost("h1", "http://x", HostCapacity{4, 4096, 1000, false}).ok());
  auto ids = store_->MarkStaleHostsDown(NowMs() + 1000);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->size(), 1u);
  EXPECT_EQ(store_->GetHost("h1")->state, "down");
}

// Host failure (docs/host-failure.md): a failed host takes no placement until
// cleared; a VM in error on it is relocated with the same conditional
// reservation as any placement, keeping its id, name and restart policy.
TEST_P(StoreTest, FailedHostTakesNoRoomAndRelocateMovesTheVm) {
  auto a = store_->HeartbeatHost("a", "http://a", HostCapacity{4, 4096, 1000, false});
  auto b = store_->HeartbeatHost("b", "http://b", HostCapacity{4, 4096, 1000, false});
  ASSERT_TRUE(a.ok() && b.ok());
  Vm v = NewVm("v");
  v.restart = "on-host-failure";
  auto placed = store_->PlaceAndInsertVm(v, {a->id});
  ASSERT_TRUE(placed.ok()) << placed.error().message;
  EXPECT_EQ(store_->GetVm(placed->id, "")->restart, "on-host-failure");
  EXPECT_FALSE(*store_->MarkHostFailed(a->id)) << "only a down host can be declared failed";
  ASSERT_TRUE(*store_->MarkHostDown(a->id));
  ASSERT_TRUE(*store_->MarkHostFailed(a->id));
  EXPECT_GT(store_->GetHost("a")->failed_ms, 0);
  // Back up (a heartbeat), still failed: no placement there.
  ASSERT_TRUE(store_->HeartbeatHost("a", "http://a", HostCapacity{4, 4096, 1000, false}).ok());
  EXPECT_EQ(store_->GetHost("a")->state, "up");
  EXPECT_EQ(store_->PlaceAndInsertVm(NewVm("w"), {a->id}).error().code,
            ErrorCode::kResourceExhausted);
  // Relocation needs the VM in error on the failed host.
  EXPECT_EQ(store_->RelocateVm(placed->id, a->id, {b->id}, "n").error().code,
            ErrorCode::kFailedPrecondition);
  ASSERT_TRUE(store_->ModifyVm(placed->id, [](Vm& x) { x.state = "error"; }).ok());
  EXPECT_EQ(store_->GetHost("a")->reserved_vcpus, 0);
  auto moved = store_->RelocateVm(placed->id, a->id, {a->id, b->id}, "host a failed");
  ASSERT_TRUE(moved.ok()) << moved.error().message;
  Vm m = *store_->GetVm(placed->id, "");
  EXPECT_EQ(m.host_id, b->id);
  EXPECT_EQ(m.state, "creating");
  EXPECT_EQ(m.name, "v");
  EXPECT_EQ(m.error, "host a failed");
  EXPECT_EQ(store_->GetHost("b")->reserved_vcpus, m.vcpus);
  ASSERT_TRUE(store_->ClearHostFailed(a->id).ok());
  EXPECT_EQ(store_->GetHost("a")->failed_ms, 0);
  EXPECT_TRUE(store_->PlaceAndInsertVm(NewVm("w"), {a->id}).ok());
}

// Quotas are checked in the transaction that places: many concurrent
// placements, half of them through a second Store (a second controller on
// the same database), never exceed the quota, and exactly the quota succeed.
TEST_P(StoreTest, ConcurrentPlacementNeverExceedsQuota) {
  auto other = Store::Open(db_->target());
  ASSERT_TRUE(other.ok()) << other.error().message;
  Store* stores[] = {store_.get(), other->get()};
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{100, 100 * 256, 1000, false});
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(store_->SetUserQuota("alice", UserQuota{3, 0, 0, 0, 0}).ok());
  std::atomic<int> ok{0}, over{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 40; ++i) {
    threads.emplace_back([&, i] {
      auto r = stores[i % 2]->PlaceAndInsertVm(NewVm("vm" + std::to_string(i)), {h->id});
      if (r.ok())
        ++ok;
      else if (r.error().code == ErrorCode::kPermissionDenied)
        ++over;
      else
        ADD_FAILURE() << r.error().message;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 3);
  EXPECT_EQ(over.load(), 37);
  EXPECT_EQ(store_->ListVms(alice_.id)->size(), 3u);
  EXPECT_EQ(store_->GetHost("h1")->reserved_vcpus, 3);
  EXPECT_EQ(store_->GetUserUsage(alice_.id)->vms, 3);
}

// The same for vCPUs and memory, with single placements and gangs racing.
TEST_P(StoreTest, ConcurrentPlacementAndGangsNeverExceedVcpuAndMemoryQuota) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{100, 100 * 256, 1000, false});
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(store_->SetUserQuota("alice", UserQuota{0, 7, 6 * 256, 0, 0}).ok());
  std::vector<std::thread> threads;
  for (int i = 0; i < 30; ++i) {
    threads.emplace_back([&, i] {
      if (i % 3 == 0) {
        std::vector<Vm> gang{NewVm("g" + std::to_string(i) + "a"),
                             NewVm("g" + std::to_string(i) + "b")};
        auto r = store_->PlaceAndInsertGang(gang, {{h->id}});
        if (!r.ok()) {
          EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied) << r.error().message;
        }
      } else {
        auto r = store_->PlaceAndInsertVm(NewVm("vm" + std::to_string(i)), {h->id});
        if (!r.ok()) {
          EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied) << r.error().message;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  // Memory (6 x 256 MB) is the tighter quota; every VM is 1 vCPU, 256 MB, so
  // exactly 6 fit whatever the order (a gang needs 2, the last single 1).
  auto use = store_->GetUserUsage(alice_.id);
  ASSERT_TRUE(use.ok());
  EXPECT_EQ(use->memory_mb, 6 * 256);
  EXPECT_EQ(use->vcpus, 6);
  EXPECT_EQ(store_->GetHost("h1")->reserved_memory_mb, 6 * 256);
}

TEST_P(StoreTest, QuotaErrorsNameTheQuotaAndTheNumbers) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{100, 100 * 256, 1000, false});
  ASSERT_TRUE(h.ok());
  // Unlimited by default.
  EXPECT_EQ(store_->GetUserById(alice_.id)->quota, UserQuota{});
  auto set = store_->SetUserQuota("alice", UserQuota{2, 0, 0, 0, 0});
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ(set->quota.vms, 2);
  EXPECT_EQ(store_->SetUserQuota("nobody", UserQuota{}).error().code, ErrorCode::kNotFound);
  auto a = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  auto b = store_->PlaceAndInsertVm(NewVm("b"), {h->id});
  ASSERT_TRUE(a.ok() && b.ok());
  auto c = store_->PlaceAndInsertVm(NewVm("c"), {h->id});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(c.error().message.find("quota: alice may run 2 VMs (2 running)"), std::string::npos)
      << c.error().message;
  // A failed VM holds nothing, so it does not count.
  ASSERT_TRUE(store_->ModifyVm(a->id, [](Vm& vm) { vm.state = "error"; }).ok());
  EXPECT_TRUE(store_->PlaceAndInsertVm(NewVm("c"), {h->id}).ok());
  // vCPUs: the numbers say what is used and what was asked.
  ASSERT_TRUE(store_->SetUserQuota("alice", UserQuota{0, 3, 0, 0, 0}).ok());
  Vm big = NewVm("big");
  big.vcpus = 2;
  auto d = store_->PlaceAndInsertVm(big, {h->id});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message.find("quota: alice may use 3 vCPU(s) (2 in use, 2 more asked)"),
            std::string::npos)
      << d.error().message;
  // A gang over the memory quota: none of it is placed.
  ASSERT_TRUE(store_->SetUserQuota("alice", UserQuota{0, 0, 1024, 0, 0}).ok());
  auto g = store_->PlaceAndInsertGang({NewVm("g1"), NewVm("g2"), NewVm("g3")}, {{h->id}});
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(g.error().message.find("may use 1024 MB of memory (512 MB in use, 768 MB more asked)"),
            std::string::npos)
      << g.error().message;
  EXPECT_EQ(store_->ListVms(alice_.id)->size(), 3u);
  // Raised (or back to unlimited), it places again.
  ASSERT_TRUE(store_->SetUserQuota("alice", UserQuota{}).ok());
  EXPECT_TRUE(store_->PlaceAndInsertGang({NewVm("g1"), NewVm("g2")}, {{h->id}}).ok());
  // Other users are not affected by alice's quota.
  ASSERT_TRUE(store_->SetUserQuota("alice", UserQuota{1, 0, 0, 0, 0}).ok());
  auto bob = store_->CreateUser("bob", "user");
  ASSERT_TRUE(bob.ok());
  Vm bobs = NewVm("bobs");
  bobs.owner_id = bob->first.id;
  EXPECT_TRUE(store_->PlaceAndInsertVm(bobs, {h->id}).ok());
}

TEST_P(StoreTest, ImageAndWorkspaceBytesAreLimited) {
  ASSERT_TRUE(store_->SetUserQuota("alice", UserQuota{0, 0, 0, 1000, 500}).ok());
  auto image = [&](const std::string& name, int64_t bytes) {
    Image i;
    i.id = NewId("img");
    i.name = name;
    i.owner_id = alice_.id;
    i.state = "uploading";
    i.format = "raw";
    i.dir = "/x";
    i.size_bytes = bytes;
    EXPECT_TRUE(store_->InsertImage(i).ok());
    i.state = "ready";
    return i;
  };
  // img-1 (SetUp) is ready with 0 bytes.
  Image a = image("a", 600), b = image("b", 401), c = image("c", 400);
  EXPECT_TRUE(store_->FinalizeImage(a).ok());
  auto over = store_->FinalizeImage(b);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(over.error().message.find(
                "alice may keep 1000 bytes of images (600 in ready images, this one has 401)"),
            std::string::npos)
      << over.error().message;
  EXPECT_EQ(store_->GetImage(b.id, "")->state, "uploading");
  EXPECT_TRUE(store_->FinalizeImage(c).ok());
  // Updating a ready image (its checkpoint) is not a new image.
  c.ckpt_state = "ready";
  EXPECT_TRUE(store_->FinalizeImage(c).ok());
  EXPECT_EQ(store_->GetUserUsage(alice_.id)->image_bytes, 1000);

  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{4, 4096, 1000, false});
  ASSERT_TRUE(h.ok());
  Workspace w1{NewId("ws"), "w1", alice_.id, "img-1", h->id, "p1", 300, "", NowMs()};
  Workspace w2{NewId("ws"), "w2", alice_.id, "img-1", h->id, "p2", 300, "", NowMs()};
  EXPECT_TRUE(store_->InsertWorkspace(w1).ok());
  auto ws_over = store_->InsertWorkspace(w2);
  ASSERT_FALSE(ws_over.ok());
  EXPECT_EQ(ws_over.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(ws_over.error().message.find(
                "may keep 500 bytes of workspaces (300 in use, this one is 300)"),
            std::string::npos)
      << ws_over.error().message;
  EXPECT_FALSE(store_->FindWorkspaceByName(alice_.id, "w2")->has_value());
}

// Issue 9 §3: the host's disk is a placement resource. Each VM holds what
// its disk can grow to plus a memory checkpoint (Vm::disk_bytes) while it
// holds room, reserved with the placement (also concurrently) and released
// when it fails or is deleted. Hosts that report no disk are not limited.
TEST_P(StoreTest, HostDiskIsAPlacementResource) {
  constexpr int64_t kGiB = int64_t{1} << 30;
  HostCapacity cap{64, 64 * 1024, 1000, false};
  cap.disk_total_bytes = 100 * kGiB;
  cap.disk_free_bytes = 10 * kGiB;
  auto h = store_->HeartbeatHost("h1", "http://x", cap);
  ASSERT_TRUE(h.ok()) << h.error().message;
  EXPECT_EQ(h->disk_total_bytes, 100 * kGiB);
  EXPECT_EQ(h->disk_free_bytes, 10 * kGiB);
  auto vm = [&](const std::string& name) {
    Vm v = NewVm(name);
    v.disk_bytes = 3 * kGiB;
    return v;
  };
  std::atomic<int> ok{0}, exhausted{0};
  std::vector<std::thread> threads;
  std::vector<std::string> placed(20);
  for (int i = 0; i < 20; ++i) {
    threads.emplace_back([&, i] {
      auto r = store_->PlaceAndInsertVm(vm("vm" + std::to_string(i)), {h->id});
      if (r.ok()) {
        ++ok;
        placed[static_cast<size_t>(i)] = r->id;
      } else if (r.error().code == ErrorCode::kResourceExhausted) {
        ++exhausted;
        EXPECT_NE(r.error().message.find("3072 MiB of disk"), std::string::npos)
            << r.error().message;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 3) << "10 GiB free holds three VMs of 3 GiB";
  EXPECT_EQ(exhausted.load(), 17);
  EXPECT_EQ(store_->GetHost("h1")->reserved_disk_bytes, 9 * kGiB);
  EXPECT_EQ(
      store_
          ->GetVm(*std::find_if(placed.begin(), placed.end(), [](auto& id) { return !id.empty(); }),
                  "")
          ->disk_bytes,
      3 * kGiB);
  // A gang is held to the same room.
  auto gang = store_->PlaceAndInsertGang({vm("g1")}, {{h->id}});
  ASSERT_FALSE(gang.ok());
  EXPECT_EQ(gang.error().code, ErrorCode::kResourceExhausted);
  // A failed VM releases its disk, a deleted one too.
  std::vector<std::string> ids;
  for (const auto& id : placed)
    if (!id.empty()) ids.push_back(id);
  ASSERT_TRUE(store_->TransitionVm(ids[0], {"creating"}, "error").ok());
  EXPECT_EQ(store_->GetHost("h1")->reserved_disk_bytes, 6 * kGiB);
  ASSERT_TRUE(store_->DeleteVm(ids[1]).ok());
  EXPECT_EQ(store_->GetHost("h1")->reserved_disk_bytes, 3 * kGiB);
  EXPECT_TRUE(store_->PlaceAndInsertGang({vm("g2"), vm("g3")}, {{h->id}}).ok());
  EXPECT_EQ(store_->GetHost("h1")->reserved_disk_bytes, 9 * kGiB);
  // Less free space reported (the VMs wrote, or something else did): less room.
  cap.disk_free_bytes = 8 * kGiB;
  ASSERT_TRUE(store_->HeartbeatHost("h1", "http://x", cap).ok());
  EXPECT_EQ(store_->GetHost("h1")->disk_free_bytes, 8 * kGiB);
  Vm small = NewVm("small");
  small.disk_bytes = 1;
  EXPECT_EQ(store_->PlaceAndInsertVm(small, {h->id}).error().code, ErrorCode::kResourceExhausted);
  // An agent that reports no disk (before migration 7) is not limited.
  auto legacy = store_->HeartbeatHost("old", "http://o", HostCapacity{64, 64 * 1024, 1000, false});
  ASSERT_TRUE(legacy.ok());
  for (int i = 0; i < 5; ++i)
    EXPECT_TRUE(store_->PlaceAndInsertVm(vm("old" + std::to_string(i)), {legacy->id}).ok());
  EXPECT_EQ(store_->GetHost("old")->reserved_disk_bytes, 15 * kGiB);
}

// Issue 9 §3: an image counts against image_bytes with what it expands to
// (`qemu-img measure`: a compressed qcow2 stores less than its data), not
// only the bytes uploaded.
TEST_P(StoreTest, ImageBytesCountWhatTheImageExpandsTo) {
  ASSERT_TRUE(store_->SetUserQuota("alice", UserQuota{0, 0, 0, 1000, 0}).ok());
  auto image = [&](const std::string& name, int64_t bytes, int64_t expanded) {
    Image i;
    i.id = NewId("img");
    i.name = name;
    i.owner_id = alice_.id;
    i.state = "uploading";
    i.format = "qcow2";
    i.dir = "/x";
    i.size_bytes = bytes;
    i.expanded_size_bytes = expanded;
    i.virtual_size_bytes = 4096;
    i.max_clone_bytes = 8192;
    EXPECT_TRUE(store_->InsertImage(i).ok());
    i.state = "ready";
    return i;
  };
  Image a = image("a", 100, 900), b = image("b", 50, 200);
  ASSERT_TRUE(store_->FinalizeImage(a).ok());
  EXPECT_EQ(store_->GetUserUsage(alice_.id)->image_bytes, 900);
  auto over = store_->FinalizeImage(b);
  ASSERT_FALSE(over.ok());
  EXPECT_NE(over.error().message.find("(900 in ready images, this one has 200)"), std::string::npos)
      << over.error().message;
  // The measured sizes are stored.
  auto got = store_->GetImage(a.id, "");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->expanded_size_bytes, 900);
  EXPECT_EQ(got->max_clone_bytes, 8192);
  EXPECT_EQ(got->CloneBoundBytes(), 8192);
}

// Migration 7 on a database that already holds VMs: each VM gets its image's
// virtual size plus its memory as disk_bytes, each host their sum, each image
// its virtual size as clone bound (what is known without measuring again).
TEST_P(StoreTest, Migration7ReservesDiskForExistingVms) {
  constexpr int64_t kGiB = int64_t{1} << 30;
  Image img;
  img.id = "img-big";
  img.name = "big";
  img.owner_id = alice_.id;
  img.state = "ready";
  img.format = "raw";
  img.dir = "/x";
  img.virtual_size_bytes = kGiB;
  ASSERT_TRUE(store_->InsertImage(img).ok());
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{8, 8192, 1000, false});
  ASSERT_TRUE(h.ok());
  Vm a = NewVm("a"), b = NewVm("b"), failed = NewVm("failed");
  a.image_id = b.image_id = failed.image_id = "img-big";
  for (Vm* v : {&a, &b, &failed}) ASSERT_TRUE(store_->PlaceAndInsertVm(*v, {h->id}).ok());
  ASSERT_TRUE(store_->TransitionVm(failed.id, {"creating"}, "error").ok());
  store_.reset();
  {  // Back to schema version 6.
    auto db = OpenSqlBackend(db_->target());
    ASSERT_TRUE(db.ok()) << db.error().message;
    for (const char* drop :
         {"hosts DROP COLUMN disk_total_bytes", "hosts DROP COLUMN disk_free_bytes",
          "hosts DROP COLUMN used_disk_bytes", "images DROP COLUMN expanded_size_bytes",
          "images DROP COLUMN max_clone_bytes", "vms DROP COLUMN disk_bytes"})
      ASSERT_TRUE((*db)->ExecScript(std::string("ALTER TABLE ") + drop).ok()) << drop;
    // Migration 8's state check goes too (it runs again after 7).
    const char* drop8 = GetParam() == "postgres" ? "ALTER TABLE vms DROP CONSTRAINT vms_state_check"
                                                 : "DROP TRIGGER vms_state_check_insert; "
                                                   "DROP TRIGGER vms_state_check_update";
    ASSERT_TRUE((*db)->ExecScript(drop8).ok()) << drop8;
    ASSERT_TRUE((*db)->ExecScript(kDropMigration9).ok());
    ASSERT_TRUE((*db)->ExecScript("UPDATE schema_version SET version = 6").ok());
  }
  auto s = Store::Open(db_->target());
  ASSERT_TRUE(s.ok()) << s.error().message;
  store_ = std::move(s).value();
  EXPECT_EQ(store_->schema_version(), 25);
  EXPECT_EQ(store_->GetVm(a.id, "")->disk_bytes, kGiB + (int64_t{256} << 20));
  EXPECT_EQ(store_->GetHost("h1")->reserved_disk_bytes, 2 * (kGiB + (int64_t{256} << 20)));
  EXPECT_EQ(store_->GetImage("img-big", "")->max_clone_bytes, kGiB);
  EXPECT_EQ(store_->GetImage("img-big", "")->expanded_size_bytes, 0);
}

TEST_P(StoreTest, NetworksBelongToTheirOwnerUnlessShared) {
  auto bob = store_->CreateUser("bob", "user");
  ASSERT_TRUE(bob.ok());
  auto net = store_->CreateNetwork(alice_.id, "lab", "10.20.0.0/24", false);
  ASSERT_TRUE(net.ok()) << net.error().message;
  EXPECT_EQ(net->subnet, "10.20.0.0/24");
  EXPECT_GT(net->vni, 0);
  // Names are unique per owner; another owner may use the same name.
  EXPECT_EQ(store_->CreateNetwork(alice_.id, "lab", "10.21.0.0/24", false).error().code,
            ErrorCode::kAlreadyExists);
  auto bobs = store_->CreateNetwork(bob->first.id, "lab", "10.20.0.0/24", true);
  ASSERT_TRUE(bobs.ok()) << bobs.error().message;
  EXPECT_NE(bobs->vni, net->vni);
  // Bad subnets are refused with the reason.
  for (const char* bad : {"10.20.0.0", "10.20.0.1/24", "8.8.8.0/24", "10.0.0.0/8", "10.0.0.0/30",
                          "10.20.0.0/x", "ten/24"}) {
    auto r = store_->CreateNetwork(alice_.id, std::string("n-") + bad, bad, false);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad;
  }
  // Each sees its own; bob does not see alice's, by id or by name.
  EXPECT_EQ(store_->GetNetwork("lab", alice_.id, false)->id, net->id);
  EXPECT_EQ(store_->GetNetwork("lab", bob->first.id, false)->id, bobs->id);
  EXPECT_EQ(store_->GetNetwork(net->id, bob->first.id, false).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->ListNetworks(bob->first.id, false)->size(), 1u);
  EXPECT_EQ(store_->ListNetworks("", true)->size(), 2u);
  // The admin's name lookup must be unambiguous.
  EXPECT_EQ(store_->GetNetwork("lab", "", true).error().code, ErrorCode::kInvalidArgument);
  // Shared: bob may use it by id.
  ASSERT_TRUE(store_->ShareNetwork(net->id, bob->first.id).ok());
  ASSERT_TRUE(store_->ShareNetwork(net->id, bob->first.id).ok());  // idempotent
  auto shared = store_->GetNetwork(net->id, bob->first.id, false);
  ASSERT_TRUE(shared.ok());
  EXPECT_EQ(shared->shared_with, std::vector<std::string>{bob->first.id});
  EXPECT_EQ(store_->ListNetworks(bob->first.id, false)->size(), 2u);
  // Each network has its own tunnel key; rotation changes it and the epoch.
  EXPECT_EQ(net->tunnel_key_hex.size(), 64u);
  EXPECT_NE(net->tunnel_key_hex, bobs->tunnel_key_hex);
  EXPECT_EQ(net->key_epoch, 1);
  auto rotated = store_->RotateNetworkKey(net->id);
  ASSERT_TRUE(rotated.ok()) << rotated.error().message;
  EXPECT_EQ(rotated->key_epoch, 2);
  EXPECT_NE(rotated->tunnel_key_hex, net->tunnel_key_hex);
  EXPECT_EQ(store_->GetNetwork(net->id, alice_.id, false)->tunnel_key_hex, rotated->tunnel_key_hex);
}

TEST_P(StoreTest, NicsGetUniqueAddressesThatAreReleasedWithTheirVm) {
  auto h = store_->HeartbeatHost("h1", "http://x", HostCapacity{64, 64 * 256, 1000, false});
  ASSERT_TRUE(h.ok());
  // A /28 has 16 addresses: .0 network, .1-.9 the switch's, .15 broadcast:
  // room for 5 VMs (.10-.14).
  auto net = store_->CreateNetwork(alice_.id, "small", "10.9.0.16/28", false);
  ASSERT_TRUE(net.ok()) << net.error().message;
  auto other = store_->CreateNetwork(alice_.id, "other", "10.9.1.0/24", false);
  ASSERT_TRUE(other.ok());
  std::vector<std::string> ids;
  std::set<std::string> ips, macs;
  for (int i = 0; i < 5; ++i) {
    Vm v = NewVm("n" + std::to_string(i));
    v.net_ids = {net->id, other->id};
    auto r = store_->PlaceAndInsertVm(v, {h->id});
    ASSERT_TRUE(r.ok()) << r.error().message;
    ids.push_back(r->id);
    auto nics = store_->ListVmNics(r->id);
    ASSERT_TRUE(nics.ok());
    ASSERT_EQ(nics->size(), 2u);
    EXPECT_EQ((*nics)[0].network, "small");
    EXPECT_EQ((*nics)[0].prefix, 28);
    EXPECT_EQ((*nics)[1].network_id, other->id);
    for (const auto& n : *nics) {
      EXPECT_TRUE(ips.insert(n.network_id + "/" + n.ip).second) << n.ip;
      EXPECT_TRUE(macs.insert(n.mac).second) << n.mac;
    }
    EXPECT_EQ((*nics)[0].ip, "10.9.0." + std::to_string(26 + i));
  }
  // Full: the sixth VM is refused and nothing of it is written.
  Vm sixth = NewVm("n5");
  sixth.net_ids = {net->id};
  auto full = store_->PlaceAndInsertVm(sixth, {h->id});
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.error().code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(store_->GetVm(sixth.id, "").error().code, ErrorCode::kNotFound);
  // A network in use cannot be deleted.
  auto busy = store_->DeleteNetwork(net->id);
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.error().code, ErrorCode::kFailedPrecondition);
  // Deleting a VM frees its address, which the next VM gets.
  const std::string freed = (*store_->ListVmNics(ids[2]))[0].ip;
  ASSERT_TRUE(store_->DeleteVm(ids[2]).ok());
  EXPECT_TRUE(store_->ListVmNics(ids[2])->empty());
  EXPECT_EQ(store_->ListNetworkNics(net->id)->size(), 4u);
  auto again = store_->PlaceAndInsertVm(sixth, {h->id});
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ((*store_->ListVmNics(again->id))[0].ip, freed);
  for (const auto& id : ids) {
    if (id != ids[2]) {
      ASSERT_TRUE(store_->DeleteVm(id).ok());
    }
  }
  ASSERT_TRUE(store_->DeleteVm(again->id).ok());
  EXPECT_TRUE(store_->DeleteNetwork(net->id).ok());
  EXPECT_EQ(store_->GetNetwork(net->id, alice_.id, false).error().code, ErrorCode::kNotFound);
}

// Hosts get distinct tunnel numbers; a plan reads a host's networks, their
// NICs with their hosts, and the endpoints; the last VM of a network to
// leave a host rekeys the network.
TEST_P(StoreTest, NetworkPlanInputsAndRekeyWhenAHostLeaves) {
  HostCapacity cap{4, 4096, 1000, false};
  auto h1 = store_->HeartbeatHost("h1", "http://a", cap);
  cap.tunnel_ip = "10.213.0.2";
  cap.tunnel_port = 4789;
  auto h2 = store_->HeartbeatHost("h2", "http://b", cap);
  auto h3 = store_->HeartbeatHost("h3", "http://c", HostCapacity{4, 4096, 1000, false});
  ASSERT_TRUE(h1.ok() && h2.ok() && h3.ok());
  EXPECT_GT(h1->tunnel_number, 0);
  EXPECT_NE(h1->tunnel_number, h2->tunnel_number);
  EXPECT_NE(h2->tunnel_number, h3->tunnel_number);
  EXPECT_EQ(store_->GetHost("h2")->tunnel_port, 4789);
  auto net = store_->CreateNetwork(alice_.id, "lab", "10.20.0.0/24", false);
  auto other = store_->CreateNetwork(alice_.id, "other", "10.30.0.0/24", false);
  ASSERT_TRUE(net.ok() && other.ok());
  const int64_t gen0 = store_->network_generation();
  Vm a = NewVm("a"), b = NewVm("b"), c = NewVm("c");
  a.net_ids = b.net_ids = {net->id};
  c.net_ids = {other->id};
  auto va = store_->PlaceAndInsertVm(a, {h1->id});
  auto vb = store_->PlaceAndInsertVm(b, {h2->id});
  auto vc = store_->PlaceAndInsertVm(c, {h3->id});
  ASSERT_TRUE(va.ok() && vb.ok() && vc.ok());
  EXPECT_GT(store_->network_generation(), gen0);

  auto in = store_->NetworkPlanInputsForHost(h1->id);
  ASSERT_TRUE(in.ok()) << in.error().message;
  ASSERT_EQ(in->networks.size(), 1u);  // not "other": it has no NIC on h1
  EXPECT_EQ(in->networks[0].id, net->id);
  ASSERT_EQ(in->nics.size(), 2u);
  std::set<std::string> hosts;
  for (const auto& p : in->nics) hosts.insert(p.host_id + "/" + p.vm_name);
  EXPECT_EQ(hosts, (std::set<std::string>{h1->id + "/a", h2->id + "/b"}));
  // Only h2 reported an endpoint.
  ASSERT_EQ(in->endpoints.size(), 1u);
  EXPECT_EQ(in->endpoints.at(h2->id).ip, "10.213.0.2");
  EXPECT_EQ(in->endpoints.at(h2->id).port, 4789);
  EXPECT_EQ(in->endpoints.at(h2->id).host_number, static_cast<uint32_t>(h2->tunnel_number));
  EXPECT_TRUE(store_->NetworkPlanInputsForHost(h3->id)->networks.size() == 1u);

  // b leaves h2, the last NIC of lab there: lab gets a new key and epoch.
  const int64_t epoch = in->networks[0].key_epoch;
  const std::string key = in->networks[0].tunnel_key_hex;
  ASSERT_TRUE(store_->DeleteVm(vb->id).ok());
  auto after = store_->GetNetwork(net->id, "", true);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->key_epoch, epoch + 1);
  EXPECT_NE(after->tunnel_key_hex, key);
  // other's key did not move.
  EXPECT_EQ(store_->GetNetwork(other->id, "", true)->key_epoch, other->key_epoch);
}

// --- the event stream ---------------------------------------------------------------

std::vector<std::string> Kinds(const std::vector<Event>& events) {
  std::vector<std::string> kinds;
  for (const auto& e : events) kinds.push_back(e.kind);
  return kinds;
}

// Every write of a VM's state is recorded by the store, in its transaction:
// no path that changes the state can skip it.
TEST_P(StoreTest, EventsRecordEveryVmStateChange) {
  auto h1 = store_->HeartbeatHost("h1", "http://1", HostCapacity{4, 4096, 1000, false});
  auto h2 = store_->HeartbeatHost("h2", "http://2", HostCapacity{4, 4096, 1000, false});
  ASSERT_TRUE(h1.ok() && h2.ok());
  auto vm = store_->PlaceAndInsertVm(NewVm("a"), {h1->id});
  ASSERT_TRUE(vm.ok()) << vm.error().message;
  ASSERT_TRUE(store_->ModifyVm(vm->id, [](Vm& v) { v.state = "running"; }).ok());
  ASSERT_TRUE(store_->TransitionVm(vm->id, VmOp::kStop).ok());                     // stopping
  ASSERT_TRUE(store_->ModifyVm(vm->id, [](Vm& v) { v.state = "running"; }).ok());  // back
  ASSERT_TRUE(store_->BeginMigration(vm->id, {h2->id}).ok());
  ASSERT_TRUE(store_->FinishMigration(vm->id).ok());
  ASSERT_TRUE(store_->ModifyVm(vm->id, [](Vm& v) { v.error = "only the error"; }).ok());
  ASSERT_TRUE(store_
                  ->ModifyVm(vm->id,
                             [](Vm& v) {
                               v.state = "error";
                               v.error = "guest died";
                             })
                  .ok());
  ASSERT_TRUE(store_->DeleteVm(vm->id).ok());
  auto events = store_->ListEvents(EventQuery{0, vm->id, "", 100});
  ASSERT_TRUE(events.ok()) << events.error().message;
  EXPECT_EQ(Kinds(*events),
            (std::vector<std::string>{"vm.state", "vm.state", "vm.state", "vm.state", "vm.state",
                                      "vm.failed", "vm.deleted"}));
  const auto data = [&](size_t i) { return nlohmann::json::parse(events->at(i).data); };
  EXPECT_EQ(data(0)["from"], "creating");
  EXPECT_EQ(data(0)["to"], "running");
  EXPECT_EQ(data(1)["to"], "stopping");
  EXPECT_EQ(data(3)["to"], "migrating");
  EXPECT_EQ(data(4)["from_host"], h1->id);
  EXPECT_EQ(data(4)["host"], h2->id);
  EXPECT_EQ(data(5)["error"], "guest died");
  for (const auto& e : *events) {
    EXPECT_EQ(e.owner_id, alice_.id);
    EXPECT_GT(e.time_ms, 0);
    EXPECT_FALSE(e.message.empty());
  }
  for (size_t i = 1; i < events->size(); ++i) EXPECT_GT(events->at(i).id, events->at(i - 1).id);
  // The host that came up is in the stream too (admin only: no owner).
  auto all = store_->ListEvents(EventQuery{0, "", "", 1000});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(Kinds(*all).front(), "host.up");
}

TEST_P(StoreTest, HostEventsHaveNoOwner) {
  auto h = store_->HeartbeatHost("h1", "http://1", HostCapacity{4, 4096, 1000, false});
  ASSERT_TRUE(h.ok());
  // An unchanged heartbeat is no event; draining twice is one.
  ASSERT_TRUE(store_->HeartbeatHost("h1", "http://1", HostCapacity{4, 4096, 1000, false}).ok());
  ASSERT_TRUE(store_->SetHostDraining("h1", true).ok());
  ASSERT_TRUE(store_->SetHostDraining("h1", true).ok());
  ASSERT_TRUE(store_->SetHostDraining("h1", false).ok());
  auto down = store_->MarkStaleHostsDown(NowMs() + 1000);
  ASSERT_TRUE(down.ok());
  ASSERT_TRUE(store_->HeartbeatHost("h1", "http://1", HostCapacity{4, 4096, 1000, false}).ok());
  auto events = store_->ListEvents(EventQuery{});
  ASSERT_TRUE(events.ok());
  EXPECT_EQ(Kinds(*events), (std::vector<std::string>{"host.up", "host.drain", "host.undrain",
                                                      "host.down", "host.up"}));
  for (const auto& e : *events) {
    EXPECT_EQ(e.host_id, h->id);
    EXPECT_EQ(e.owner_id, "");
    EXPECT_EQ(e.vm_id, "");
  }
  // Not an owner's: a user's filter never matches them.
  EXPECT_TRUE(store_->ListEvents(EventQuery{0, "", alice_.id, 100})->empty());
}

TEST_P(StoreTest, EventsAreFilteredByOwnerAndVm) {
  auto bob = store_->CreateUser("bob", "user");
  ASSERT_TRUE(bob.ok());
  auto h = store_->HeartbeatHost("h1", "http://1", HostCapacity{8, 8192, 1000, false});
  auto a = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  Vm bv = NewVm("b");
  bv.owner_id = bob->first.id;
  auto b = store_->PlaceAndInsertVm(bv, {h->id});
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(store_->TransitionVm(a->id, {"creating"}, "running").ok());
  ASSERT_TRUE(store_->TransitionVm(b->id, {"creating"}, "running").ok());
  auto alices = store_->ListEvents(EventQuery{0, "", alice_.id, 100});
  ASSERT_TRUE(alices.ok());
  ASSERT_EQ(alices->size(), 1u);
  EXPECT_EQ(alices->at(0).vm_id, a->id);
  // Bob asking for alice's VM by id gets nothing.
  EXPECT_TRUE(store_->ListEvents(EventQuery{0, a->id, bob->first.id, 100})->empty());
  EXPECT_EQ(store_->ListEvents(EventQuery{0, b->id, bob->first.id, 100})->size(), 1u);
  EXPECT_EQ(store_->ListEvents(EventQuery{0, "", "", 100})->size(), 3u);  // + host.up
}

TEST_P(StoreTest, EventCursorPagesAndRetentionKeepsTheNewest) {
  std::vector<int64_t> ids;
  for (int i = 0; i < 25; ++i) {
    auto id = store_->AppendEvent(
        Event{0, 0, "vm.placed", "vm-x", "", alice_.id, "n" + std::to_string(i), "{}"});
    ASSERT_TRUE(id.ok()) << id.error().message;
    ids.push_back(*id);
  }
  std::vector<std::string> seen;
  int64_t cursor = 0;
  for (int page = 0; page < 10; ++page) {
    auto got = store_->ListEvents(EventQuery{cursor, "", alice_.id, 10});
    ASSERT_TRUE(got.ok());
    if (got->empty()) break;
    for (const auto& e : *got) seen.push_back(e.message);
    cursor = got->back().id;
  }
  ASSERT_EQ(seen.size(), 25u);
  EXPECT_EQ(seen.front(), "n0");
  EXPECT_EQ(seen.back(), "n24");
  auto pruned = store_->PruneEvents(5);
  ASSERT_TRUE(pruned.ok());
  EXPECT_EQ(*pruned, 20);
  auto left = store_->ListEvents(EventQuery{0, "", "", 100});
  ASSERT_EQ(left->size(), 5u);
  EXPECT_EQ(left->front().message, "n20");
  EXPECT_EQ(*store_->PruneEvents(5), 0);
  // Ids are never reused: a cursor stays valid across retention.
  auto next = store_->AppendEvent(Event{0, 0, "vm.placed", "", "", "", "n25", "{}"});
  ASSERT_TRUE(next.ok());
  EXPECT_GT(*next, ids.back());
  EXPECT_EQ(store_->ListEvents(EventQuery{ids.back(), "", "", 100})->size(), 1u);
}

// The history is in the database: a new Store (a restarted controller)
// reads it back.
TEST_P(StoreTest, EventsSurviveReopen) {
  auto h = store_->HeartbeatHost("h1", "http://1", HostCapacity{4, 4096, 1000, false});
  auto vm = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  ASSERT_TRUE(vm.ok());
  ASSERT_TRUE(store_->TransitionVm(vm->id, {"creating"}, "running").ok());
  store_.reset();
  auto s = Store::Open(db_->target());
  ASSERT_TRUE(s.ok()) << s.error().message;
  store_ = std::move(s).value();
  auto events = store_->ListEvents(EventQuery{0, vm->id, alice_.id, 100});
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(events->at(0).data)["to"], "running");
}

// An event that cannot be written never fails the change it records.
TEST_P(StoreTest, FailedEventWriteDoesNotFailTheChange) {
  auto h = store_->HeartbeatHost("h1", "http://1", HostCapacity{4, 4096, 1000, false});
  auto vm = store_->PlaceAndInsertVm(NewVm("a"), {h->id});
  ASSERT_TRUE(vm.ok());
  {
    auto db = OpenSqlBackend(db_->target());
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->ExecScript("DROP TABLE events").ok());
  }
  ASSERT_TRUE(store_->TransitionVm(vm->id, {"creating"}, "running").ok());
  ASSERT_TRUE(store_->ModifyVm(vm->id, [](Vm& v) { v.state = "stopped"; }).ok());
  EXPECT_EQ(store_->GetVm(vm->id, "")->state, "stopped");
  EXPECT_EQ(store_->event_write_failures(), 2);
  EXPECT_FALSE(store_->AppendEvent(Event{0, 0, "vm.placed", "", "", "", "x", "{}"}).ok());
}

TEST_P(StoreTest, DatasetsArePerOwnerWithImmutableVersions) {
  auto bob = store_->CreateUser("bob", "user");
  ASSERT_TRUE(bob.ok());
  auto d = store_->CreateDataset(alice_.id, "genome");
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->id.rfind("ds-", 0), 0u);
  // Unique per owner, not across owners.
  auto again = store_->CreateDataset(alice_.id, "genome");
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kAlreadyExists);
  auto bobs = store_->CreateDataset(bob->first.id, "genome");
  ASSERT_TRUE(bobs.ok());
  // Another owner's dataset is not found, by id or by name.
  EXPECT_EQ(store_->GetDataset(d->id, bob->first.id).error().code, ErrorCode::kNotFound);
  auto by_name = store_->GetDataset("genome", bob->first.id);
  ASSERT_TRUE(by_name.ok());
  EXPECT_EQ(by_name->id, bobs->id);
  EXPECT_EQ(store_->ListDatasets(alice_.id)->size(), 1u);
  EXPECT_EQ(store_->ListDatasets("")->size(), 2u);
  auto found = store_->FindDatasetByName(alice_.id, "genome");
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_FALSE(store_->FindDatasetByName(alice_.id, "nope")->has_value());

  DatasetVersion v{d->id, 1, "dir", 1 << 20, "abc", 4, 4, 4 << 19, 1};
  ASSERT_TRUE(store_->AddDatasetVersion(v).ok());
  EXPECT_EQ(store_->AddDatasetVersion(v).error().code, ErrorCode::kAlreadyExists);
  v.version = 2;
  v.kind = "file";
  v.sent_chunks = 1;
  ASSERT_TRUE(store_->AddDatasetVersion(v).ok());
  v.version = 3;
  v.kind = "bogus";
  EXPECT_FALSE(store_->AddDatasetVersion(v).ok());  // the database refuses other kinds
  auto versions = store_->ListDatasetVersions(d->id);
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->size(), 2u);
  EXPECT_EQ((*versions)[0].kind, "dir");
  EXPECT_EQ((*versions)[1].sent_chunks, 1);
  EXPECT_TRUE(*store_->DeleteDatasetVersion(d->id, 1));
  EXPECT_FALSE(*store_->DeleteDatasetVersion(d->id, 1));
  ASSERT_TRUE(store_->DeleteDataset(d->id).ok());
  EXPECT_EQ(store_->GetDataset(d->id, "").error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(store_->ListDatasetVersions(d->id)->empty());
  EXPECT_EQ(store_->ListDatasets("")->size(), 1u);
}

TEST_P(StoreTest, DatasetsAreSharedWithNamedUsers) {
  auto bob = store_->CreateUser("bob", "user");
  auto carol = store_->CreateUser("carol", "user");
  ASSERT_TRUE(bob.ok() && carol.ok());
  auto d = store_->CreateDataset(alice_.id, "genome");
  auto other = store_->CreateDataset(alice_.id, "private");
  ASSERT_TRUE(d.ok() && other.ok());
  auto by_owner = store_->FindDatasetByOwnerName("alice", "genome");
  ASSERT_TRUE(by_owner.ok() && by_owner->has_value());
  EXPECT_EQ((*by_owner)->id, d->id);
  EXPECT_FALSE(store_->FindDatasetByOwnerName("bob", "genome")->has_value());
  EXPECT_FALSE(store_->FindDatasetByOwnerName("alice", "nope")->has_value());
  EXPECT_EQ(store_->GetUserByName("carol")->id, carol->first.id);
  EXPECT_EQ(store_->GetUserByName("dave").error().code, ErrorCode::kNotFound);

  EXPECT_FALSE(*store_->IsDatasetSharedWith(d->id, bob->first.id));
  ASSERT_TRUE(store_->ShareDataset(d->id, bob->first.id).ok());
  ASSERT_TRUE(store_->ShareDataset(d->id, bob->first.id).ok());  // twice is once
  ASSERT_TRUE(store_->ShareDataset(d->id, carol->first.id).ok());
  EXPECT_TRUE(*store_->IsDatasetSharedWith(d->id, bob->first.id));
  EXPECT_FALSE(*store_->IsDatasetSharedWith(other->id, bob->first.id));
  auto shares = store_->ListDatasetShares(d->id);
  ASSERT_TRUE(shares.ok());
  ASSERT_EQ(shares->size(), 2u);
  EXPECT_EQ((*shares)[0].name, "bob");
  EXPECT_EQ((*shares)[1].name, "carol");
  auto with_bob = store_->ListDatasetsSharedWith(bob->first.id);
  ASSERT_TRUE(with_bob.ok());
  ASSERT_EQ(with_bob->size(), 1u);
  EXPECT_EQ((*with_bob)[0].id, d->id);
  // Sharing does not change ownership lookups.
  EXPECT_EQ(store_->GetDataset(d->id, bob->first.id).error().code, ErrorCode::kNotFound);

  EXPECT_TRUE(*store_->UnshareDataset(d->id, bob->first.id));
  EXPECT_FALSE(*store_->UnshareDataset(d->id, bob->first.id));
  EXPECT_FALSE(*store_->IsDatasetSharedWith(d->id, bob->first.id));
  EXPECT_TRUE(store_->ListDatasetsSharedWith(bob->first.id)->empty());
  // Deleting the dataset removes its shares.
  ASSERT_TRUE(store_->DeleteDataset(d->id).ok());
  EXPECT_TRUE(store_->ListDatasetsSharedWith(carol->first.id)->empty());
  EXPECT_TRUE(store_->ListDatasetShares(d->id)->empty());
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, testing_db::Backends(), testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
