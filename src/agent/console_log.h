// ConsoleLogFiles: a VM's serial console log on its host, bounded and read
// by offset (proto/console_log.h; GET /v1/vms/ID/console).
//
// QEMU appends the guest's ttyS0 output to RUN/console.log (-chardev
// file,append=on: a VM started again appends). A guest may print without
// end, so the agent trims it (Trim, from its heartbeat loop): once the file
// is over `max_bytes`, its last `keep_bytes` go to console.old in the VM's
// own directory, the file is emptied, and console.base records the log
// offset the emptied file starts at. Reads see one stream: console.old, then
// console.log. Output QEMU appends between a trim's read and its truncation
// (microseconds) is lost; a QEMU started before append=on (an older agent)
// keeps writing at its old position, which reads back as dropped NUL bytes.
//
// Trust: RUN/ belongs to QEMU's user, so a compromised QEMU may put a link,
// FIFO or device there: console.log is opened without following links, not
// blocking, and used only if it is a regular file. console.old and
// console.base are in the agent's own directory (written atomically).
// Thread-compatible: the caller serialises Trim with Read of one VM.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"
#include "proto/console_log.h"

namespace vmgrid {

// What an agent keeps per VM: the live file is trimmed past kConsoleLogMaxBytes
// to its last kConsoleLogKeepBytes.
inline constexpr int64_t kConsoleLogMaxBytes = 8 << 20;
inline constexpr int64_t kConsoleLogKeepBytes = 1 << 20;

class ConsoleLogFiles {
 public:
  // `live`: QEMU's file (RUN/console.log); `keep_dir`: the agent's directory
  // for console.old and console.base.
  ConsoleLogFiles(std::string live, std::string keep_dir);

  // Up to `max_bytes` (1..kConsoleReadMaxBytes) from log offset `offset`,
  // or the last `max_bytes` when offset < 0. An offset before what is kept
  // starts at the oldest byte kept (`dropped` says how many were missed);
  // one past the end (the log began again, e.g. the VM moved hosts) starts
  // there too. A log not written yet reads as empty.
  Result<ConsoleLog> Read(int64_t offset, int64_t max_bytes) const;

  // Trims as described above when the live file is over `max_bytes`;
  // returns whether it did.
  Result<bool> Trim(int64_t max_bytes, int64_t keep_bytes) const;

 private:
  std::string live_, old_, base_;
};

// The guest's bytes as printable UTF-8: newlines and tabs kept; other
// control bytes and whole ANSI escape sequences dropped; invalid UTF-8 as
// U+FFFD.
std::string PrintableConsoleText(std::string_view bytes);

// How many bytes of `bytes` end before an incomplete UTF-8 sequence at its
// end (bytes.size() when there is none), so a chunk never splits a
// character that the next chunk completes.
size_t CompleteUtf8Prefix(std::string_view bytes);

}  // namespace vmgrid
