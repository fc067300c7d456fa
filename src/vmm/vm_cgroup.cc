#include "vmm/vm_cgroup.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace vmgrid {
namespace {

Result<std::string> ReadSmall(const std::string& path) {
  std::ifstream in(path);
  if (!in) return MakeError(ErrorCode::kUnavailable, "cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// cgroupfs files take one write(2) each; no truncation, no temp files.
Status WriteControl(const std::string& path, const std::string& value) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return MakeError(ErrorCode::kUnavailable, "open " + path + ": " + std::strerror(errno));
  ssize_t n = ::write(fd, value.data(), value.size());
  int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(value.size()))
    return MakeError(ErrorCode::kUnavailable,
                     "write " + path + ": " + std::strerror(n < 0 ? err : EIO));
  return Status::Ok();
}

bool HasWord(const std::string& text, const std::string& word) {
  std::istringstream in(text);
  for (std::string w; in >> w;)
    if (w == word) return true;
  return false;
}

Status EnableForChildren(const std::string& dir) {
  VMG_ASSIGN_OR_RETURN(std::string enabled, ReadSmall(dir + "/cgroup.subtree_control"));
  if (HasWord(enabled, "cpu") && HasWord(enabled, "memory")) return Status::Ok();
  return WriteControl(dir + "/cgroup.subtree_control", "+cpu +memory");
}

bool ValidVmId(const std::string& id) {
  if (id.empty() || id.size() > 64 || id[0] == '.') return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
      return false;
  return true;
}

}  // namespace

Result<VmCgroups> VmCgroups::Open(const std::string& root) {
  auto controllers = ReadSmall(root + "/cgroup.controllers");
  if (!controllers.ok())
    return MakeError(ErrorCode::kUnavailable,
                     root + " is not a cgroup v2 hierarchy (no cgroup.controllers)");
  if (!HasWord(*controllers, "cpu") || !HasWord(*controllers, "memory"))
    return MakeError(ErrorCode::kUnavailable,
                     root + " does not offer the cpu and memory controllers");
  VMG_RETURN_IF_ERROR(EnableForChildren(root));
  std::string dir = root + "/vmgrid";
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return MakeError(ErrorCode::kUnavailable, "mkdir " + dir + ": " + std::strerror(errno));
  VMG_RETURN_IF_ERROR(EnableForChildren(dir));
  return VmCgroups(dir);
}

Result<std::string> VmCgroups::Prepare(const std::string& vm_id, const CgroupLimits& limits) const {
  if (!ValidVmId(vm_id)) return MakeError(ErrorCode::kInvalidArgument, "bad VM id for a cgroup");
  if (limits.vcpus < 1 || limits.memory_mb < 1 || limits.overhead_mb < 0)
    return MakeError(ErrorCode::kInvalidArgument, "bad cgroup limits");
  std::string dir = dir_ + "/" + vm_id;
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return MakeError(ErrorCode::kUnavailable, "mkdir " + dir + ": " + std::strerror(errno));
  const int64_t bytes = (limits.memory_mb + limits.overhead_mb) << 20;
  VMG_RETURN_IF_ERROR(WriteControl(dir + "/memory.max", std::to_string(bytes)));
  // Swap would let a guest exceed its memory at the host's expense.
  (void)WriteControl(dir + "/memory.swap.max", "0");  // absent without swap accounting
  constexpr int64_t kPeriodUs = 100000;
  VMG_RETURN_IF_ERROR(WriteControl(dir + "/cpu.max", std::to_string(limits.vcpus * kPeriodUs) +
                                                         " " + std::to_string(kPeriodUs)));
  return dir;
}

void VmCgroups::Remove(const std::string& vm_id) const {
  if (!ValidVmId(vm_id)) return;
  (void)::rmdir((dir_ + "/" + vm_id).c_str());
}

}  // namespace vmgrid
