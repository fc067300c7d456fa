#include "infosvc/set_search.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

namespace vmgrid {
namespace {

// Brute force over all k-subsets (small n only).
bool Exists(const std::vector<int64_t>& w, size_t k, int64_t lo, int64_t hi, size_t start = 0,
            int64_t sum = 0) {
  if (k == 0) return sum >= lo && sum <= hi;
  for (size_t i = start; i < w.size(); ++i)
    if (Exists(w, k - 1, lo, hi, i + 1, sum + w[i])) return true;
  return false;
}

void CheckAnswer(const std::vector<int64_t>& w, size_t k, int64_t lo, int64_t hi,
                 const std::optional<std::vector<size_t>>& got) {
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), k);
  std::set<size_t> distinct(got->begin(), got->end());
  EXPECT_EQ(distinct.size(), k);
  int64_t sum = 0;
  for (size_t i : *got) sum += w.at(i);
  EXPECT_GE(sum, lo);
  EXPECT_LE(sum, hi);
}

TEST(SetSearchTest, PaperExampleFourVmsBetween512MbAnd1Gb) {
  std::vector<int64_t> mem = {2048, 128, 512, 256, 128, 1024, 64, 256};
  auto r = FindKSubsetInRange(mem, 4, 512, 1024);
  CheckAnswer(mem, 4, 512, 1024, r);
  EXPECT_FALSE(FindKSubsetInRange(mem, 4, 5000, 6000).has_value());
  EXPECT_FALSE(FindKSubsetInRange(mem, 9, 0, 1 << 20).has_value());
}

TEST(SetSearchTest, NeedsTheExactFallbackWhenGapsAreWide) {
  // k=2, window [10,10]: walk 1+2, 1+20 overshoots; only 2+8? no: {1,9}.
  std::vector<int64_t> w = {1, 2, 9, 40};
  SetSearchStats st;
  auto r = FindKSubsetInRange(w, 2, 10, 10, &st);
  CheckAnswer(w, 2, 10, 10, r);
}

TEST(SetSearchTest, AgreesWithBruteForce) {
  std::mt19937 rng(42);
  for (int iter = 0; iter < 3000; ++iter) {
    size_t n = 1 + rng() % 10;
    std::vector<int64_t> w(n);
    for (auto& x : w) x = 1 + static_cast<int64_t>(rng() % (iter % 2 ? 50 : 4096));
    size_t k = 1 + rng() % n;
    int64_t lo = static_cast<int64_t>(rng() % 4000), hi = lo + static_cast<int64_t>(rng() % 300);
    auto got = FindKSubsetInRange(w, k, lo, hi);
    bool want = Exists(w, k, lo, hi);
    ASSERT_EQ(got.has_value(), want) << "iter " << iter;
    if (want) CheckAnswer(w, k, lo, hi, got);
  }
}

TEST(SetSearchTest, ScalesToLargeGroups) {
  std::mt19937 rng(7);
  std::vector<int64_t> w(100000);
  for (auto& x : w) x = 64 << (rng() % 6);  // 64 MB .. 2 GB
  SetSearchStats st;
  auto r = FindKSubsetInRange(w, 4, 512, 1024, &st);
  CheckAnswer(w, 4, 512, 1024, r);
}

}  // namespace
}  // namespace vmgrid
