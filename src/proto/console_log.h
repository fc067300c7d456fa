// A VM's serial console log (GET /v1/vms/ID/console, docs/api.md "Serial
// console"): what the guest printed on its first serial port (ttyS0). QEMU
// appends it to RUN/console.log on the VM's host; the host bounds it
// (vmm/console_log.h), so a guest printing without end cannot fill the
// host's disk. Offsets count the guest's bytes since the VM's first start
// on that host; output older than what the host keeps is gone.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"

namespace vmgrid {

// What one read returns at most (its JSON answer stays under 1 MiB even if
// every byte becomes U+FFFD), and by default.
inline constexpr int64_t kConsoleReadMaxBytes = 256 * 1024;
inline constexpr int64_t kConsoleReadDefaultBytes = 64 * 1024;

// One read of the log. `text` is the guest's output as printable UTF-8
// (newlines and tabs kept; other control bytes, escape sequences' ESC
// included, dropped; invalid UTF-8 as U+FFFD), so it can be shown as is.
struct ConsoleLog {
  std::string text;
  int64_t offset = 0;       // the log offset the text starts at
  int64_t next_offset = 0;  // where the next read continues (follow)
  int64_t size = 0;         // the log's end when read
  int64_t dropped = 0;      // bytes asked for that the host no longer keeps
  bool operator==(const ConsoleLog&) const = default;
};
nlohmann::json ToJson(const ConsoleLog& log);
// Strict (the controller reads an agent's answer): known fields, offsets in
// order, text at most kConsoleReadMaxBytes * 3 bytes (U+FFFD is 3 bytes).
Result<ConsoleLog> ConsoleLogFromJson(const nlohmann::json& j);

}  // namespace vmgrid
