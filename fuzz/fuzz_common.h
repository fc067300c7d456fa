// Helpers shared by the fuzz targets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace vmgrid::fuzz {

// Routes spdlog to a null sink at trace level: log statements (and their
// formatting of peer data) still run, but print nothing.
void QuietLogging();

// A private directory for files the code under test creates, removed at exit
// (on tmpfs when /dev/shm exists, so per-run file I/O stays off the disk).
const std::string& ScratchDir();

// An anonymous in-memory file holding `data`; the code under test opens it
// through /proc/self/fd/N. The fd is closed when the object dies.
class MemFile {
 public:
  explicit MemFile(std::string_view data);
  ~MemFile();
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// When VMGRID_FUZZ_TRACE is set, prints what the harness saw (for writing
// and checking seed inputs by hand); silent otherwise.
void Trace(const char* op, bool ok, std::string_view detail);

// Aborts (a fuzzer "crash") with a message when an invariant of the code
// under test does not hold.
[[noreturn]] void InvariantFailed(const char* what, std::string_view detail = {});
#define FUZZ_CHECK(cond, detail)                                   \
  do {                                                             \
    if (!(cond)) ::vmgrid::fuzz::InvariantFailed(#cond, (detail)); \
  } while (0)

}  // namespace vmgrid::fuzz
