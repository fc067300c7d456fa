// How a benchmark program stops on an error it cannot measure past: the
// message on stderr after the program's name ("nbd_read: ..."), exit status
// 1. For main() and the steps it cannot go on without; code meant to be
// shared between benchmarks returns Result/Status instead and leaves the
// choice to its caller.
#pragma once

#include <errno.h>  // program_invocation_short_name (glibc)

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "common/result.h"

namespace vmgrid::bench {

[[noreturn]] inline void Die(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", program_invocation_short_name, what.c_str());
  std::exit(1);
}

// The value of `r`, or Die with "what: <the error>".
template <typename T>
T Must(Result<T> r, const std::string& what) {
  if (!r.ok()) Die(what + ": " + r.error().message);
  return std::move(r).value();
}

inline void Must(const Status& st, const std::string& what) {
  if (!st.ok()) Die(what + ": " + st.error().message);
}

// The same for an error that already says what failed: Die with its message.
template <typename T>
T Must(Result<T> r) {
  if (!r.ok()) Die(r.error().message);
  return std::move(r).value();
}

inline void Must(const Status& st) {
  if (!st.ok()) Die(st.error().message);
}

}  // namespace vmgrid::bench
