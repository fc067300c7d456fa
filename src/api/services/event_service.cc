#include "api/services/event_service.h"

#include <algorithm>
#include <chrono>

namespace vmgrid {

using nlohmann::json;

namespace {
// A follower looks again when the store's event bell rings (a commit of
// this controller that wrote events), and at least this often for the
// changes that do not ring it (another controller's, Store::EventBell):
// reads of an indexed row or range on a reader connection, bounded by the
// followers' admission.
constexpr auto kFollowPoll = std::chrono::milliseconds(250);
}  // namespace

EventService::EventService(Store& store, Admission& followers, const std::atomic<bool>* stop)
    : store_(store), followers_(followers), stop_(stop) {}

Result<EventPage> EventService::List(const Caller& c, const EventListRequest& r) {
  if (r.limit < 1 || r.limit > kMaxLimit)
    return MakeError(ErrorCode::kInvalidArgument, "limit must be 1.." + std::to_string(kMaxLimit));
  if (r.after < 0) return MakeError(ErrorCode::kInvalidArgument, "after must be >= 0");
  if (r.last < 0 || r.last > kMaxLimit)
    return MakeError(ErrorCode::kInvalidArgument, "last must be 1.." + std::to_string(kMaxLimit));
  if (r.wait_ms < 0 || r.wait_ms > kMaxWaitMs)
    return MakeError(ErrorCode::kInvalidArgument,
                     "wait must be 0.." + std::to_string(kMaxWaitMs / 1000) + " s");
  EventQuery q;
  q.after = r.after;
  q.limit = r.limit;
  q.owner = c.owner();
  if (!r.vm.empty()) {
    auto vm = store_.GetVm(r.vm, c.owner());
    if (vm.ok()) {
      q.vm_id = vm->id;
    } else if (vm.error().code != ErrorCode::kNotFound) {
      return vm.error();
    } else {
      // A deleted VM's history, by its id: found only if the caller may see
      // some of it (the same answer as for a VM that never was).
      VMG_ASSIGN_OR_RETURN(auto any, store_.ListEvents(EventQuery{0, r.vm, c.owner(), 1}));
      if (any.empty()) return vm.error();
      q.vm_id = r.vm;
    }
  }
  if (r.last > 0) {
    // The newest `last`: the cursor just before them.
    VMG_ASSIGN_OR_RETURN(auto newest, store_.ListEvents(EventQuery{0, q.vm_id, q.owner, r.last,
                                                                   /*newest=*/true}));
    q.after = newest.empty() ? 0 : newest.front().id - 1;
    if (!newest.empty()) q.limit = std::max<int64_t>(q.limit, static_cast<int64_t>(newest.size()));
  }
  uint64_t bell = store_.EventBell();  // before the read: no commit after it is missed
  VMG_ASSIGN_OR_RETURN(auto events, store_.ListEvents(q));
  if (events.empty() && r.follow && r.wait_ms > 0) {
    VMG_ASSIGN_OR_RETURN(Admission::SlotPtr slot, followers_.Acquire(c.user.id, 1, c.admin()));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(r.wait_ms);
    while (events.empty() && std::chrono::steady_clock::now() < deadline &&
           !(stop_ && stop_->load())) {
      WaitBell(bell, deadline);
      bell = store_.EventBell();
      VMG_ASSIGN_OR_RETURN(events, store_.ListEvents(q));
    }
  }
  EventPage page;
  page.next = events.empty() ? q.after : events.back().id;
  page.events = std::move(events);
  return page;
}

Result<Vm> EventService::VmWhenNot(const Caller& c, const std::string& ref, VmState state,
                                   int64_t wait_ms) {
  if (wait_ms < 0 || wait_ms > kMaxWaitMs)
    return MakeError(ErrorCode::kInvalidArgument,
                     "wait must be 0.." + std::to_string(kMaxWaitMs / 1000) + " s");
  uint64_t bell = store_.EventBell();
  VMG_ASSIGN_OR_RETURN(Vm vm, store_.GetVm(ref, c.owner()));
  const std::string waiting_for = ToString(state);
  if (vm.state != waiting_for || wait_ms == 0) return vm;
  VMG_ASSIGN_OR_RETURN(Admission::SlotPtr slot, followers_.Acquire(c.user.id, 1, c.admin()));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  while (vm.state == waiting_for && std::chrono::steady_clock::now() < deadline &&
         !(stop_ && stop_->load())) {
    WaitBell(bell, deadline);
    bell = store_.EventBell();
    // By id: a rename meanwhile changes nothing; a deletion is kNotFound.
    VMG_ASSIGN_OR_RETURN(vm, store_.GetVm(vm.id, c.owner()));
  }
  return vm;
}

void EventService::WaitBell(uint64_t seen, std::chrono::steady_clock::time_point deadline) const {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  store_.WaitEventBell(seen, std::clamp(left, std::chrono::milliseconds(0), kFollowPoll));
}

json EventService::EventJson(const Event& e) {
  json data = json::parse(e.data, nullptr, false);
  if (data.is_discarded()) data = json::object();
  return json{{"id", e.id},           {"time_ms", e.time_ms},   {"kind", e.kind},
              {"vm_id", e.vm_id},     {"host_id", e.host_id},   {"owner_id", e.owner_id},
              {"message", e.message}, {"data", std::move(data)}};
}

}  // namespace vmgrid
