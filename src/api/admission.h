// Admission control for the controller: how much of it one user may hold at
// once. Each kind of work (requests being handled, exec operations, creates,
// queries) has a per-user bound and optionally a bound over all users; a
// request over a bound is refused at once (HTTP 429 with Retry-After) rather
// than queued, so a flood costs the controller one cheap answer per request.
// Thread-safe.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/result.h"

namespace vmgrid {

class Admission {
 public:
  // What a granted slot holds; released by its destructor (RAII). Shared by
  // the asynchronous work it admits (copies of std::function need copyable
  // captures), released when the last holder is gone.
  class Slot {
   public:
    Slot(Admission* owner, std::string key, int64_t n)
        : owner_(owner), key_(std::move(key)), n_(n) {}
    ~Slot() { owner_->Release(key_, n_); }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;

   private:
    Admission* owner_;
    std::string key_;
    int64_t n_;
  };
  using SlotPtr = std::shared_ptr<Slot>;

  // `what` names the work in messages ("exec operations"); `per_user` and
  // `total` (0: unbounded) bound the units held at once; `retry_after_s` is
  // the hint given with a refusal.
  Admission(std::string what, int64_t per_user, int64_t total, int retry_after_s);

  // `n` units for `user`, or kResourceExhausted naming the limit. A
  // `trusted` user (the admin) is bounded only by the total.
  Result<SlotPtr> Acquire(const std::string& user, int64_t n = 1, bool trusted = false);
  int retry_after_s() const { return retry_after_s_; }
  int64_t held(const std::string& user);

 private:
  void Release(const std::string& user, int64_t n);

  const std::string what_;
  const int64_t per_user_, total_;
  const int retry_after_s_;
  std::mutex mu_;
  std::map<std::string, int64_t> held_;  // guarded by mu_; users holding > 0 only
  int64_t total_held_ = 0;               // guarded by mu_
};

}  // namespace vmgrid
