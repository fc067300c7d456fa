// fuzz_query: the information service's restricted SQL on SQLite, as a
// hostile user sends it to POST /v1/query. Inputs are SQL text, run as user
// bob against a store that also holds user alice's VMs and private image,
// tokens and hosts with agent URLs.
// Oracles: no crash or sanitizer report; an answer never holds a value bob
// may not see (alice's ids and names, any token hash, a host URL) that the
// query does not spell out itself - the differential check of
// query_service_test.cc, on whatever the fuzzer finds; every refusal has a
// message. (The connections are read-only, so the store cannot change.)
#include <cstdint>
#include <memory>
#include <set>
#include <string>

#include "common/util.h"
#include "fuzz_common.h"
#include "infosvc/query_service.h"
#include "store/store.h"

namespace {

using vmgrid::QueryService;
using vmgrid::Store;

struct World {
  std::unique_ptr<Store> store;
  std::unique_ptr<QueryService> svc;
  vmgrid::QueryCaller bob;
  std::set<std::string> hidden;  // values bob must never see
};

World* Setup() {
  vmgrid::fuzz::QuietLogging();
  auto* w = new World;
  const std::string db = vmgrid::fuzz::ScratchDir() + "/query.db";
  auto store = Store::Open(db);
  FUZZ_CHECK(store.ok(), store.ok() ? "" : store.error().message);
  w->store = std::move(store).value();
  auto admin = w->store->CreateUser("admin", "admin");
  auto alice = w->store->CreateUser("alice", "user");
  auto bob = w->store->CreateUser("bob", "user");
  FUZZ_CHECK(admin.ok() && alice.ok() && bob.ok(), "users");
  w->bob = {bob->first.id, false};
  for (const auto& token : {admin->second, alice->second, bob->second})
    w->hidden.insert(vmgrid::Sha256Hex(token));
  w->hidden.insert(alice->first.id);
  vmgrid::Image pub;
  pub.id = "img-public";
  pub.name = "tiny";
  pub.owner_id = admin->first.id;
  pub.state = "ready";
  pub.format = "raw";
  pub.dir = "/x";
  pub.size_bytes = 1 << 20;
  vmgrid::Image priv = pub;
  priv.id = "img-alice-private";
  priv.name = "alice-private-image";
  priv.owner_id = alice->first.id;
  FUZZ_CHECK(w->store->InsertImage(pub).ok() && w->store->InsertImage(priv).ok(), "images");
  w->hidden.insert(priv.id);
  w->hidden.insert(priv.name);
  vmgrid::HostCapacity cap{16, 8192, 100000, false, "siteA", "net1", "x86_64"};
  auto h1 = w->store->HeartbeatHost("h1", "http://agent-one.internal:1", cap);
  FUZZ_CHECK(h1.ok(), "host");
  w->hidden.insert("http://agent-one.internal:1");
  for (int i = 0; i < 3; ++i) {
    for (const auto* owner : {&alice->first, &bob->first}) {
      vmgrid::Vm v;
      v.id = vmgrid::NewId("vm");
      v.name = owner->name + "-vm-" + std::to_string(i);
      v.owner_id = owner->id;
      v.image_id = owner == &alice->first && i == 0 ? priv.id : pub.id;
      v.state = "running";
      v.memory_mb = 128;
      v.disk = "clone";
      v.start = "boot";
      v.network = "blue";
      v.created_ms = v.updated_ms = vmgrid::NowMs();
      FUZZ_CHECK(w->store->PlaceAndInsertVm(v, {h1->id}).ok(), "vm");
      if (owner == &alice->first) {
        w->hidden.insert(v.id);
        w->hidden.insert(v.name);
        w->hidden.insert("disk-" + v.id);
      }
    }
  }
  auto svc = QueryService::Open(db);
  FUZZ_CHECK(svc.ok(), svc.ok() ? "" : svc.error().message);
  w->svc = std::move(svc).value();
  return w;
}

void CheckValue(const World& w, const nlohmann::json& v, const std::string& sql) {
  if (!v.is_string()) return;
  const auto& s = v.get_ref<const std::string&>();
  for (const auto& h : w.hidden) {
    // A value the query itself spells out (the fuzzer learns them from
    // comparisons) comes back as a literal or a column name: not a leak.
    if (sql.find(h) != std::string::npos) continue;
    FUZZ_CHECK(s.find(h) == std::string::npos, "bob saw '" + h + "' through: " + sql);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = Setup();
  const std::string sql(reinterpret_cast<const char*>(data), size);
  vmgrid::QueryLimits limits;
  limits.timeout_ms = 200;
  limits.max_rows = 1000;
  auto r = w->svc->Sql(w->bob, sql, limits);
  vmgrid::fuzz::Trace("sql", r.ok(), r.ok() ? "" : r.error().message);
  if (!r.ok()) {
    FUZZ_CHECK(!r.error().message.empty(), "refusal without a message: " + sql);
    return 0;
  }
  for (const auto& c : r->columns) CheckValue(*w, c, sql);
  for (const auto& row : r->rows)
    for (const auto& v : row) CheckValue(*w, v, sql);
  return 0;
}
