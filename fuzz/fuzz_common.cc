#include "fuzz_common.h"

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

// Undefined behaviour is a finding: stop at the first report (libFuzzer then
// saves the input). UBSAN_OPTIONS=halt_on_error=0 explores past known ones.
extern "C" const char* __ubsan_default_options() {
  return "halt_on_error=1:print_stacktrace=1:print_summary=1";
}

namespace vmgrid::fuzz {

void QuietLogging() {
  auto logger =
      std::make_shared<spdlog::logger>("fuzz", std::make_shared<spdlog::sinks::null_sink_mt>());
  logger->set_level(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

namespace {
void RemoveScratch() {
  std::error_code ec;
  std::filesystem::remove_all(ScratchDir(), ec);
}
}  // namespace

const std::string& ScratchDir() {
  // Never destroyed: RemoveScratch runs from atexit after static destructors.
  static const std::string* dir = new std::string([] {
    std::string base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string tmpl = base + "/vmgrid-fuzz-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::perror("fuzz: mkdtemp");
      std::abort();
    }
    std::atexit(RemoveScratch);
    return tmpl;
  }());
  return *dir;
}

MemFile::MemFile(std::string_view data) {
  fd_ = memfd_create("fuzz-input", MFD_CLOEXEC);
  if (fd_ < 0) {
    std::perror("fuzz: memfd_create");
    std::abort();
  }
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd_, data.data() + off, data.size() - off);
    if (n <= 0) {
      std::perror("fuzz: write memfd");
      std::abort();
    }
    off += static_cast<size_t>(n);
  }
  path_ = "/proc/self/fd/" + std::to_string(fd_);
}

MemFile::~MemFile() { close(fd_); }

void Trace(const char* op, bool ok, std::string_view detail) {
  static const bool enabled = std::getenv("VMGRID_FUZZ_TRACE") != nullptr;
  if (!enabled) return;
  std::fprintf(stderr, "trace: %s -> %s: %.*s\n", op, ok ? "ok" : "error",
               static_cast<int>(std::min<size_t>(detail.size(), 300)), detail.data());
}

void InvariantFailed(const char* what, std::string_view detail) {
  std::fprintf(stderr, "==fuzz== invariant failed: %s\n", what);
  if (!detail.empty())
    std::fprintf(stderr, "==fuzz== detail: %.*s\n", static_cast<int>(detail.size()), detail.data());
  std::abort();
}

}  // namespace vmgrid::fuzz
