#include "nbd/block_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "vmm/unique_fd.h"

namespace vmgrid::nbd {

Result<std::shared_ptr<FileBlockSource>> FileBlockSource::Open(const std::string& path) {
  vmm::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    int err = errno;
    return MakeError(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kInternal,
                     "open " + path + ": " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return MakeError(ErrorCode::kInternal, "stat " + path + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    return MakeError(ErrorCode::kInvalidArgument, path + ": not a regular file or block device");
  }
  // lseek gives the size of block devices too, where st_size is 0.
  off_t end = ::lseek(fd.get(), 0, SEEK_END);
  if (end < 0) return MakeError(ErrorCode::kInternal, "seek " + path + ": " + std::strerror(errno));
  return std::shared_ptr<FileBlockSource>(
      new FileBlockSource(fd.Release(), static_cast<uint64_t>(end), path));
}

FileBlockSource::~FileBlockSource() { ::close(fd_); }

Status FileBlockSource::Read(uint64_t offset, size_t len, char* out) {
  if (offset > size_ || len > size_ - offset) {
    return MakeError(ErrorCode::kInvalidArgument, "read beyond the end of " + path_);
  }
  while (len > 0) {
    ssize_t n = ::pread(fd_, out, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kInternal, "pread " + path_ + " at " + std::to_string(offset) +
                                                 ": " + std::strerror(errno));
    }
    if (n == 0) {
      return MakeError(ErrorCode::kInternal, "short read of " + path_ + " at " +
                                                 std::to_string(offset) + " (file shrank?)");
    }
    out += n;
    offset += static_cast<uint64_t>(n);
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status MemoryBlockSource::Read(uint64_t offset, size_t len, char* out) {
  if (offset > data_.size() || len > data_.size() - offset) {
    return MakeError(ErrorCode::kInvalidArgument, "read beyond the end of the memory source");
  }
  data_.copy(out, len, offset);
  return Status::Ok();
}

}  // namespace vmgrid::nbd
