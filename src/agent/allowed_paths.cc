#include "agent/allowed_paths.h"

#include <filesystem>

namespace vmgrid {

namespace fs = std::filesystem;

namespace {

std::string Canonical(const std::string& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(fs::absolute(p, ec), ec);
  if (ec) return "";
  return c.lexically_normal().string();
}

}  // namespace

AllowedPaths::AllowedPaths(const std::vector<std::string>& roots) {
  for (const auto& r : roots) {
    if (r.empty()) continue;
    std::string c = Canonical(r);
    while (c.size() > 1 && c.back() == '/') c.pop_back();
    if (!c.empty()) roots_.push_back(c);
  }
}

Result<std::string> AllowedPaths::Resolve(const std::string& path, const std::string& what) const {
  auto refuse = [&] {
    return MakeError(ErrorCode::kInvalidArgument,
                     what + " is outside the directories this agent serves");
  };
  if (path.empty() || path[0] != '/' || path.find('\0') != std::string::npos) return refuse();
  std::string c = Canonical(path);
  if (c.empty()) return refuse();
  for (const auto& root : roots_) {
    if (c.size() > root.size() + 1 && c.compare(0, root.size(), root) == 0 && c[root.size()] == '/')
      return c;
  }
  return refuse();
}

}  // namespace vmgrid
