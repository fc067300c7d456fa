// AllowedPaths: the directories an agent reads and writes on the
// controller's behalf (its state directory, the image directories it was
// given). Every path that arrives over the agent API is resolved here, with
// symlinks and ".." followed, and refused unless it lands under one of them,
// so a compromised or confused controller cannot make the agent read, write
// or delete arbitrary host files. Immutable after construction; thread-safe.
#pragma once

#include <string>
#include <vector>

#include "common/result.h"

namespace vmgrid {

class AllowedPaths {
 public:
  // Roots that do not exist (yet) are kept as given, made absolute.
  explicit AllowedPaths(const std::vector<std::string>& roots);

  // The canonical form of `path` (absolute; symlinks and ".." resolved as far
  // as the path exists) when it lies strictly under a root; else
  // kInvalidArgument naming `what` but not the path (messages reach users).
  Result<std::string> Resolve(const std::string& path, const std::string& what) const;

  const std::vector<std::string>& roots() const { return roots_; }

 private:
  std::vector<std::string> roots_;
};

}  // namespace vmgrid
