#include "api/op_queue.h"

#include <algorithm>

#include "common/util.h"

namespace vmgrid {

using nlohmann::json;

OpQueue::OpQueue(const Clock& clock, size_t max_workers)
    : clock_(clock), max_workers_(std::max<size_t>(1, max_workers)) {}

OpQueue::~OpQueue() {
  std::vector<std::thread> workers;
  bool busy;
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
    busy = running_ > 0;
    workers.swap(workers_);
  }
  work_cv_.notify_all();
  for (auto& t : workers) busy ? t.detach() : t.join();
}

void OpQueue::Run(const std::string& vm_id, std::function<void()> fn) {
  bool wake;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!vm_id.empty()) inflight_.insert(vm_id);
    ++running_;
    queue_.push_back([this, vm_id, fn = std::move(fn)]() mutable {
      {
        // What the work holds (an admission slot, a claim) is let go before
        // it counts as ended, so whoever sees the queue idle sees it released.
        auto work = std::move(fn);
        work();
      }
      bool none;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (!vm_id.empty()) inflight_.erase(inflight_.find(vm_id));
        none = --running_ == 0;
      }
      if (none) idle_cv_.notify_all();
    });
    wake = idle_workers_ >= queue_.size() || workers_.size() >= max_workers_;
    if (!wake) workers_.emplace_back([this] { Worker(); });
  }
  if (wake) work_cv_.notify_one();
}

void OpQueue::Worker() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    ++idle_workers_;
    work_cv_.wait(l, [this] { return stop_ || !queue_.empty(); });
    --idle_workers_;
    if (queue_.empty()) return;  // stopping, nothing left
    auto op = std::move(queue_.front());
    queue_.pop_front();
    l.unlock();
    op();
    l.lock();
  }
}

OpQueue::Load OpQueue::load() const {
  std::lock_guard<std::mutex> l(mu_);
  // running_ counts work from Run to its end, queued work included.
  return Load{queue_.size(), running_ - static_cast<int>(queue_.size())};
}

bool OpQueue::InFlight(const std::string& vm_id) const {
  std::lock_guard<std::mutex> l(mu_);
  return inflight_.count(vm_id) > 0;
}

bool OpQueue::WaitIdle(std::chrono::milliseconds grace) {
  std::unique_lock<std::mutex> l(mu_);
  return idle_cv_.wait_for(l, grace, [this] { return running_ == 0; });
}

json OpQueue::Start(Operation& op) {
  op.id = NewId("op");
  op.state = "running";
  op.created_ms = clock_.NowMs();
  std::lock_guard<std::mutex> l(records_mu_);
  // Forget finished operations past their time, and the owner's oldest
  // finished ones beyond the per-user count.
  std::vector<std::pair<int64_t, std::string>> finished;
  for (auto it = records_.begin(); it != records_.end();) {
    if (it->second.state != "running" && it->second.finished_ms < op.created_ms - kKeepMs) {
      it = records_.erase(it);
      continue;
    }
    if (it->second.state != "running" && it->second.owner_id == op.owner_id)
      finished.push_back({it->second.finished_ms, it->first});
    ++it;
  }
  if (finished.size() >= kFinishedPerUser) {
    std::sort(finished.begin(), finished.end());
    for (size_t i = 0; i + kFinishedPerUser <= finished.size(); ++i)
      records_.erase(finished[i].second);
  }
  records_[op.id] = op;
  return ToJson(op);
}

json OpQueue::Finish(const std::string& id, const Result<json>& outcome) {
  std::lock_guard<std::mutex> l(records_mu_);
  auto it = records_.find(id);
  if (it == records_.end()) return nullptr;
  Operation& op = it->second;
  op.finished_ms = clock_.NowMs();
  if (outcome.ok()) {
    op.state = "succeeded";
    op.result = *outcome;
  } else {
    op.state = "failed";
    op.error = {{"code", ErrorCodeName(outcome.error().code)},
                {"message", outcome.error().message}};
  }
  return ToJson(op);
}

void OpQueue::SetProgress(const std::string& id, const std::string& step, int percent,
                          const json& more) {
  json progress = more.is_object() ? more : json::object();
  progress["step"] = step;
  progress["percent"] = std::clamp(percent, 0, 100);
  std::lock_guard<std::mutex> l(records_mu_);
  if (auto it = records_.find(id); it != records_.end() && it->second.state == "running")
    it->second.progress = std::move(progress);
}

Result<json> OpQueue::Get(const std::string& id, const std::string& user_id, bool admin) const {
  std::lock_guard<std::mutex> l(records_mu_);
  auto it = records_.find(id);
  if (it == records_.end() || (!admin && it->second.owner_id != user_id))
    return MakeError(ErrorCode::kNotFound, "operation '" + id + "' not found");
  return ToJson(it->second);
}

json OpQueue::ToJson(const Operation& op) const {
  auto id_or_null = [](const std::string& v) { return v.empty() ? json(nullptr) : json(v); };
  return {{"id", op.id},
          {"kind", op.kind},
          {"vm_id", id_or_null(op.vm_id)},
          {"image_id", id_or_null(op.image_id)},
          {"workspace_id", id_or_null(op.workspace_id)},
          {"state", op.state},
          {"progress", op.state == "running" ? op.progress : json(nullptr)},
          {"result", op.result},
          {"error", op.error},
          {"created_at", FormatTimeMs(op.created_ms)},
          {"finished_at", op.finished_ms ? json(FormatTimeMs(op.finished_ms)) : json(nullptr)}};
}

}  // namespace vmgrid
