// The flags the interleaved benchmarks (instantiate, storm, guest_disk,
// fanout) share: --runs N, --seed N, --no-write and --docs PATH, plus each
// one's own.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>

#include "die.h"

namespace vmgrid::bench {

struct BenchFlags {
  int runs = 10;
  uint64_t seed = 1;
  bool write = true;  // rewrite the benchmark's section of `docs`
  std::string docs;
};

// Parses argv into `f` (its fields are the defaults). `own(arg, next)` is
// asked first about every argument; it returns how many it consumed (1, or 2
// with its value `next`, which is null at the end) or 0 for not its own.
// Anything else dies with `usage`.
inline BenchFlags ParseBenchFlags(
    int argc, char** argv, BenchFlags f, const std::string& usage,
    const std::function<int(const std::string& arg, const char* next)>& own = nullptr) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : nullptr;
    if (int used = own ? own(a, next) : 0; used > 0) {
      i += used - 1;
    } else if (a == "--runs" && next) {
      f.runs = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--seed" && next) {
      f.seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--no-write") {
      f.write = false;
    } else if (a == "--docs" && next) {
      f.docs = argv[++i];
    } else {
      Die("usage: " + usage);
    }
  }
  return f;
}

}  // namespace vmgrid::bench
