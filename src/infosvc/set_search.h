// Set (co-allocation) search: among n candidates with integer weights, find
// k distinct ones whose weights sum into [lo, hi]. This answers the paper's
// "four different VMs on the same network with total memory between 512 MB
// and 1 GB" per group without enumerating k-way self-joins (O(n^k)).
//
// Algorithm (docs/infosvc.md): sort by weight; the k smallest and k largest
// bound every k-subset sum. Walk from the k smallest towards the k largest by
// exchanging one member for its next larger neighbour at a time; every
// exchange raises the sum by one adjacent gap, so if no gap exceeds hi - lo
// the walk cannot step over [lo, hi] and finds a set in O(n log n + n k). If
// the walk steps over the window, an exact dynamic program over (count, sum)
// settles it in O(n k W) for W = hi - min(weight) (bounded by `max_dp_cells`).
// Thread-safe (pure).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace vmgrid {

struct SetSearchStats {
  bool used_dp = false;
  int64_t steps = 0;  // exchanges or DP cells visited
};

// Returns indices into `weights` of k distinct items with lo <= sum <= hi, or
// nullopt if there is none (or if the DP would exceed max_dp_cells, in which
// case stats->used_dp is set and the answer may be a false negative).
std::optional<std::vector<size_t>> FindKSubsetInRange(const std::vector<int64_t>& weights, size_t k,
                                                      int64_t lo, int64_t hi,
                                                      SetSearchStats* stats = nullptr,
                                                      int64_t max_dp_cells = 50'000'000);

}  // namespace vmgrid
