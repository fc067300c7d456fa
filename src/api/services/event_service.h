// EventService: the event stream's read side (GET /v1/events). The store
// records state changes itself (Store, "the event stream"), services add
// what only they know with Store::AppendEvent (vm.placed, vm.migrated); this service
// decides who sees what: a user sees the events of their own VMs, the admin
// every event, host events included. A follower (follow=true) waits for the
// next event up to a bound, holding a slot of `followers` meanwhile, so one
// user cannot hold more than a few of the controller's threads this way.
// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "api/admission.h"
#include "api/routes/route.h"
#include "common/result.h"
#include "common/vm_state.h"
#include "store/store.h"

namespace vmgrid {

struct EventListRequest {
  int64_t after = 0;         // cursor: events with a larger id
  int64_t last = 0;          // > 0: the newest `last` events instead (after is ignored)
  std::string vm;            // a VM's id or name ("" = all visible); a deleted VM by id
  int64_t limit = 100;       // 1..kMaxLimit
  bool follow = false;       // wait for the next event when there is none yet
  int64_t wait_ms = 25'000;  // how long a follower waits at most (<= kMaxWaitMs)
};

struct EventPage {
  std::vector<Event> events;
  int64_t next = 0;  // the cursor to pass as `after` next time
};

class EventService {
 public:
  static constexpr int64_t kMaxLimit = 1000;
  static constexpr int64_t kMaxWaitMs = 60'000;
  // `stop` (may be null) ends a follower's wait early (controller shutdown).
  EventService(Store& store, Admission& followers, const std::atomic<bool>* stop = nullptr);

  // The events `c` may see, as asked. kNotFound for a VM the caller cannot
  // see (as every VM route); kInvalidArgument for a bad limit; a follower
  // over its bound gets the admission's refusal (429).
  Result<EventPage> List(const Caller& c, const EventListRequest& r);

  // VM `ref` of `c` once its state is no longer `state`, or as it is after
  // `wait_ms` (GET /v1/vms/ID?while=STATE&wait=S: a client waiting for an
  // operation learns its end at once instead of polling). A VM deleted
  // meanwhile is kNotFound; waiting holds a follower's slot (429 over the
  // bound), as following events does.
  Result<Vm> VmWhenNot(const Caller& c, const std::string& ref, VmState state, int64_t wait_ms);

  // The JSON form of an event in API answers.
  static nlohmann::json EventJson(const Event& e);

 private:
  // Until the store's event bell is no longer `seen`, for at most a poll
  // interval and never past `deadline`.
  void WaitBell(uint64_t seen, std::chrono::steady_clock::time_point deadline) const;

  Store& store_;
  Admission& followers_;
  const std::atomic<bool>* stop_;
};

}  // namespace vmgrid
