// UniqueFd: sole owner of a file descriptor; closing it is tied to scope so no
// error path can leak an fd into a spawned QEMU or keep a socket half-open.
// Thread-safety: a plain value type; do not mutate one instance concurrently.
#pragma once

#include <unistd.h>

namespace vmgrid::vmm {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }

  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

  // close() is not retried on EINTR: on Linux the fd is released regardless,
  // and a retry could close an fd another thread has just been handed.
  void Reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace vmgrid::vmm
