#include "infosvc/set_search.h"

#include <algorithm>
#include <numeric>

namespace vmgrid {

std::optional<std::vector<size_t>> FindKSubsetInRange(const std::vector<int64_t>& weights, size_t k,
                                                      int64_t lo, int64_t hi, SetSearchStats* stats,
                                                      int64_t max_dp_cells) {
  SetSearchStats local;
  SetSearchStats& st = stats ? *stats : local;
  const size_t n = weights.size();
  if (k == 0)
    return lo <= 0 && 0 <= hi ? std::optional<std::vector<size_t>>(std::vector<size_t>{})
                              : std::nullopt;
  if (k > n || lo > hi) return std::nullopt;
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return weights[a] < weights[b]; });
  std::vector<int64_t> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = weights[order[i]];

  int64_t min_sum = 0, max_sum = 0;
  for (size_t i = 0; i < k; ++i) {
    min_sum += w[i];
    max_sum += w[n - 1 - i];
  }
  if (min_sum > hi || max_sum < lo) return std::nullopt;

  // Exchange walk. `pos[j]` is the sorted index of the j-th member; members
  // stay increasing. Move the largest member that can move right by one;
  // when it reaches its final place (n-k+j), move the next one.
  std::vector<size_t> pos(k);
  std::iota(pos.begin(), pos.end(), 0);
  int64_t sum = min_sum;
  auto answer = [&](const std::vector<size_t>& sorted_idx) {
    std::vector<size_t> out;
    for (size_t p : sorted_idx) out.push_back(order[p]);
    return out;
  };
  for (size_t j = k; j-- > 0;) {
    size_t target = n - k + j;
    while (pos[j] < target) {
      if (sum >= lo && sum <= hi) return answer(pos);
      sum += w[pos[j] + 1] - w[pos[j]];
      ++pos[j];
      ++st.steps;
    }
  }
  if (sum >= lo && sum <= hi) return answer(pos);

  // The walk stepped over the window: exact DP over (items used, sum) with
  // sums shifted so the smallest weight is 0 (weights may be large, the
  // window is what matters). reach[c][s]: a c-subset of the first i items
  // sums to s + c*base.
  st.used_dp = true;
  const int64_t base = w[0];
  const int64_t span = hi - static_cast<int64_t>(k) * base;  // max shifted sum
  if (span < 0) return std::nullopt;
  if (static_cast<double>(n) * static_cast<double>(k) * static_cast<double>(span + 1) >
      static_cast<double>(max_dp_cells))
    return std::nullopt;
  const size_t width = static_cast<size_t>(span) + 1;
  // from[i][c][s] is too large to keep; keep per item the layer it first
  // reached each state, then backtrack.
  std::vector<int32_t> first(static_cast<size_t>(k + 1) * width, -1);
  auto at = [&](size_t c, size_t s) -> int32_t& { return first[c * width + s]; };
  at(0, 0) = static_cast<int32_t>(n);  // reachable before any item
  for (size_t i = 0; i < n; ++i) {
    int64_t d = w[i] - base;
    if (d > span) break;
    for (size_t c = std::min(k, i + 1); c >= 1; --c) {
      for (int64_t s = span; s >= d; --s) {
        ++st.steps;
        if (at(c, static_cast<size_t>(s)) == -1 && at(c - 1, static_cast<size_t>(s - d)) != -1 &&
            at(c - 1, static_cast<size_t>(s - d)) != static_cast<int32_t>(i))
          at(c, static_cast<size_t>(s)) = static_cast<int32_t>(i);
      }
    }
  }
  int64_t lo_shift = lo - static_cast<int64_t>(k) * base;
  for (int64_t s = std::max<int64_t>(0, lo_shift); s <= span; ++s) {
    if (at(k, static_cast<size_t>(s)) == -1) continue;
    // Backtrack: the item that first reached (c, s) was added to a (c-1)-set
    // reached by strictly earlier items.
    std::vector<size_t> chosen;
    size_t c = k;
    int64_t cur = s;
    int32_t limit = static_cast<int32_t>(n);
    bool ok = true;
    while (c > 0) {
      int32_t item = at(c, static_cast<size_t>(cur));
      if (item < 0 || item >= limit) {
        // Reached first by a later item; search an earlier predecessor.
        ok = false;
        break;
      }
      chosen.push_back(static_cast<size_t>(item));
      cur -= w[static_cast<size_t>(item)] - base;
      limit = item;
      --c;
    }
    if (ok && cur == 0) return answer(chosen);
  }
  return std::nullopt;
}

}  // namespace vmgrid
