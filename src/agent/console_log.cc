#include "agent/console_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "common/util.h"
#include "vmm/unique_fd.h"

namespace vmgrid {

namespace {

using vmm::UniqueFd;

constexpr char kOldName[] = "/console.old";
constexpr char kBaseName[] = "/console.base";

Error FileError(const std::string& what, const std::string& path) {
  return MakeError(ErrorCode::kInternal, what + " " + path + ": " + std::strerror(errno));
}

// The live file, if it exists and is a regular file (see the header's
// "Trust"); an invalid fd when it does not exist yet.
Result<UniqueFd> OpenLive(const std::string& path, bool write) {
  UniqueFd fd(
      open(path.c_str(), (write ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  // Not a regular file: said without the host's path (the answer reaches
  // the VM's owner).
  const Error not_regular = MakeError(
      ErrorCode::kPermissionDenied,
      "the VM's console log on its host is not a regular file (a link, FIFO or device put "
      "there by its QEMU?); it is not served");
  if (!fd.valid()) {
    if (errno == ENOENT) return UniqueFd();
    if (errno == ELOOP) return not_regular;
    return FileError("open", path);
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return FileError("stat", path);
  if (!S_ISREG(st.st_mode)) return not_regular;
  return fd;
}

int64_t FileSize(const UniqueFd& fd) {
  struct stat st {};
  if (!fd.valid() || fstat(fd.get(), &st) != 0) return 0;
  return st.st_size;
}

Result<std::string> ReadAt(const UniqueFd& fd, int64_t offset, int64_t length,
                           const std::string& path) {
  std::string out(static_cast<size_t>(std::max<int64_t>(length, 0)), '\0');
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = pread(fd.get(), out.data() + got, out.size() - got,
                      static_cast<off_t>(offset) + static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FileError("read", path);
    if (n == 0) break;  // trimmed meanwhile
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  return out;
}

int64_t ReadBase(const std::string& path) {
  auto text = ReadFile(path, 64);
  if (!text.ok()) return 0;
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
  return ec == std::errc() && v >= 0 ? v : 0;
}

// The length of the valid UTF-8 sequence at s[i] (0: invalid).
size_t Utf8Length(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  size_t n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if ((b(i + k) & 0xc0) != 0x80) return 0;
  // No overlong forms, surrogates or code points past U+10FFFF.
  if (n == 3 && ((c == 0xe0 && b(i + 1) < 0xa0) || (c == 0xed && b(i + 1) >= 0xa0))) return 0;
  if (n == 4 && ((c == 0xf0 && b(i + 1) < 0x90) || (c == 0xf4 && b(i + 1) >= 0x90))) return 0;
  return n;
}

}  // namespace

std::string PrintableConsoleText(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == 0x1b) {
      // ESC [ parameters intermediates final: a CSI sequence (colours,
      // cursor moves); ESC and one other byte otherwise.
      size_t j = i + 1;
      if (j < s.size() && s[j] == '[') {
        ++j;
        while (j < s.size() && static_cast<unsigned char>(s[j]) >= 0x20 &&
               static_cast<unsigned char>(s[j]) <= 0x3f)
          ++j;
        if (j < s.size() && static_cast<unsigned char>(s[j]) >= 0x40 &&
            static_cast<unsigned char>(s[j]) <= 0x7e)
          ++j;
        i = j;
      } else {
        i = std::min(s.size(), j + 1);
      }
      continue;
    }
    if (c < 0x80) {
      if (c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f)) out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    if (size_t n = Utf8Length(s, i); n > 0) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out.append("\xef\xbf\xbd");  // U+FFFD
      ++i;
    }
  }
  return out;
}

size_t CompleteUtf8Prefix(std::string_view s) {
  // A lead byte among the last three whose sequence runs past the end.
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const unsigned char c = static_cast<unsigned char>(s[s.size() - back]);
    if ((c & 0xc0) == 0x80) continue;  // a continuation byte: look further back
    const size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    return need > back ? s.size() - back : s.size();
  }
  return s.size();
}

ConsoleLogFiles::ConsoleLogFiles(std::string live, std::string keep_dir)
    : live_(std::move(live)), old_(keep_dir + kOldName), base_(keep_dir + kBaseName) {}

Result<ConsoleLog> ConsoleLogFiles::Read(int64_t offset, int64_t max_bytes) const {
  if (max_bytes < 1 || max_bytes > kConsoleReadMaxBytes)
    return MakeError(ErrorCode::kInvalidArgument,
                     "a console read is 1 to " + std::to_string(kConsoleReadMaxBytes) + " bytes");
  VMG_ASSIGN_OR_RETURN(UniqueFd live, OpenLive(live_, false));
  const int64_t base = ReadBase(base_);
  std::string old;
  if (auto text = ReadFile(old_, static_cast<size_t>(kConsoleReadMaxBytes) * 64); text.ok())
    old = std::move(text).value();
  const int64_t live_size = FileSize(live);
  const int64_t first = std::max<int64_t>(0, base - static_cast<int64_t>(old.size()));
  const int64_t size = base + live_size;

  ConsoleLog log;
  log.size = size;
  int64_t start = offset < 0 ? std::max(first, size - max_bytes) : offset;
  if (offset >= 0 && start < first) {
    log.dropped = first - start;
    start = first;
  }
  if (start > size) start = first;  // the log began again
  const int64_t end = std::min(size, start + max_bytes);
  std::string bytes;
  if (start < base) {
    const int64_t from = start - first;
    bytes = old.substr(static_cast<size_t>(from), static_cast<size_t>(std::min(end, base) - start));
  }
  if (end > base && live.valid()) {
    VMG_ASSIGN_OR_RETURN(std::string tail, ReadAt(live, std::max(start, base) - base,
                                                  end - std::max(start, base), live_));
    bytes += tail;
  }
  // A character split by the chunk's end is read whole by the next chunk.
  if (start + static_cast<int64_t>(bytes.size()) < size) {
    const size_t keep = CompleteUtf8Prefix(bytes);
    if (keep > 0) bytes.resize(keep);
  }
  log.offset = start;
  log.next_offset = start + static_cast<int64_t>(bytes.size());
  log.text = PrintableConsoleText(bytes);
  return log;
}

Result<bool> ConsoleLogFiles::Trim(int64_t max_bytes, int64_t keep_bytes) const {
  VMG_ASSIGN_OR_RETURN(UniqueFd live, OpenLive(live_, true));
  const int64_t size = FileSize(live);
  if (!live.valid() || size <= max_bytes) return false;
  keep_bytes = std::clamp<int64_t>(keep_bytes, 0, size);
  VMG_ASSIGN_OR_RETURN(std::string tail, ReadAt(live, size - keep_bytes, keep_bytes, live_));
  // Old tail first, then the new base, then the truncation: a crash in
  // between repeats a part of the log, never loses the tail.
  VMG_RETURN_IF_ERROR(WriteFileAtomic(old_, tail, 0600));
  VMG_RETURN_IF_ERROR(WriteFileAtomic(base_, std::to_string(ReadBase(base_) + size) + "\n", 0600));
  if (ftruncate(live.get(), 0) != 0) return FileError("truncate", live_);
  return true;
}

}  // namespace vmgrid
