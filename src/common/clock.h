// Clock: the wall clock as an injectable dependency, so that code which
// stamps or expires things by time (the controller's services, operation
// records) can be tested with time under the test's control.
// Thread-safe: implementations must be.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "common/util.h"

namespace vmgrid {

class Clock {
 public:
  virtual ~Clock() = default;
  // Milliseconds since the Unix epoch.
  virtual int64_t NowMs() const = 0;
};

class SystemClock : public Clock {
 public:
  int64_t NowMs() const override { return vmgrid::NowMs(); }
  // The process-wide instance (stateless).
  static const Clock& Get() {
    static const SystemClock clock;
    return clock;
  }
};

// A monotonic clock (std::chrono::steady_clock, in ms from an arbitrary
// origin): for durations that must not jump with the wall clock, such as
// how long a host has been silent (docs/host-failure.md).
class SteadyClock : public Clock {
 public:
  int64_t NowMs() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  static const Clock& Get() {
    static const SteadyClock clock;
    return clock;
  }
};

// For tests: time moves only when told to.
class FakeClock : public Clock {
 public:
  explicit FakeClock(int64_t now_ms = 1'700'000'000'000) : now_(now_ms) {}
  int64_t NowMs() const override { return now_.load(); }
  void Advance(int64_t ms) { now_ += ms; }
  void Set(int64_t ms) { now_ = ms; }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace vmgrid
