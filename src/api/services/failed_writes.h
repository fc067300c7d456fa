// Store writes that failed after an operation had done its work (clean-up
// and bookkeeping that the next reconcile settles): each is logged with
// what was being written, and counted. /metrics shows each service's count
// as vmgrid_store_failed_writes_total{service=...}.
#pragma once

#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdint>
#include <string_view>

#include "common/result.h"

namespace vmgrid {

class FailedWrites {
 public:
  // Logs and counts `st` if it failed; `what` says what was being written.
  void Count(const Status& st, std::string_view what) {
    if (st.ok()) return;
    spdlog::warn("{}: {} (store write failed; continuing)", what, st.error().message);
    n_.fetch_add(1);
  }
  int64_t total() const { return n_.load(); }

 private:
  std::atomic<int64_t> n_{0};
};

}  // namespace vmgrid
