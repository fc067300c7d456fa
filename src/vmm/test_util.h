// Test-only helpers shared by the vmm unit and integration tests: temporary
// directories and looking at processes from the outside.
// Thread-safety: TempDir is a plain value; the functions are stateless.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vmgrid::vmm::testing {

// A unique empty directory under /tmp (short, so socket paths fit), removed
// with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Pids of live (non-zombie) processes whose command line mentions `needle`.
std::vector<pid_t> ProcessesMentioning(const std::string& needle);

// True if `pid` exists and is not a zombie.
bool ProcessLive(pid_t pid);

// Runs a shell command (test setup only, e.g. qemu-img); returns its exit code.
int Sh(const std::string& command);

// The user QEMU runs as in integration tests: $VMGRID_TEST_RUNAS, else
// nobody when we are root (so the permission rules of qemu_process.h are
// exercised), else none.
std::string TestRunAs();

// Gives path to user (chown), for files QEMU running as -runas user must
// write; true at once when user is empty (no -runas).
bool GiveTo(const std::string& path, const std::string& user);

// Milliseconds since `start` on the steady clock.
int64_t MsSince(std::chrono::steady_clock::time_point start);

// A random RFC 4122 v4 UUID.
std::string RandomUuid();

// The tiny guest image (guest/build-tiny.sh): its files and manifest values.
struct TinyImage {
  std::string dir;
  std::string kernel;       // the bzImage (vmlinuz)
  std::string fast_kernel;  // the manifest's "kernel" (the PVH vmlinux when there is one)
  std::string initrd, rootfs, append;
};

// The image in $VMGRID_TINY_IMAGE, else in `default_dir`; nullopt with the
// reason in *why when it is not built (tests then skip).
std::optional<TinyImage> FindTinyImage(const std::string& default_dir, std::string* why);

}  // namespace vmgrid::vmm::testing
