#include "api/admission.h"

namespace vmgrid {

Admission::Admission(std::string what, int64_t per_user, int64_t total, int retry_after_s)
    : what_(std::move(what)), per_user_(per_user), total_(total), retry_after_s_(retry_after_s) {}

Result<Admission::SlotPtr> Admission::Acquire(const std::string& user, int64_t n, bool trusted) {
  std::lock_guard<std::mutex> l(mu_);
  int64_t& mine = held_[user];
  const bool user_limit = !trusted && mine + n > per_user_;
  if (user_limit || (total_ > 0 && total_held_ + n > total_)) {
    if (mine == 0) held_.erase(user);
    Error e = MakeError(ErrorCode::kTooManyRequests,
                        user_limit ? "too many " + what_ + " at once: at most " +
                                         std::to_string(per_user_) +
                                         " per user; try again when some have finished"
                                   : "the controller is busy with " + std::to_string(total_) + " " +
                                         what_ + " of all users; try again shortly");
    e.retry_after_s = retry_after_s_;
    return e;
  }
  mine += n;
  total_held_ += n;
  return std::make_shared<Slot>(this, user, n);
}

int64_t Admission::held(const std::string& user) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = held_.find(user);
  return it == held_.end() ? 0 : it->second;
}

void Admission::Release(const std::string& user, int64_t n) {
  std::lock_guard<std::mutex> l(mu_);
  total_held_ -= n;
  if (auto it = held_.find(user); it != held_.end() && (it->second -= n) <= 0) held_.erase(it);
}

}  // namespace vmgrid
