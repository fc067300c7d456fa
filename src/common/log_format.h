// `--log-format text|json` of every server role: text is spdlog's default
// pattern; json writes one object per line, {"time": ISO-8601 UTC with
// milliseconds, "level", "pid", "thread", "msg"}, for log shippers that
// index fields. The message is JSON-escaped (control characters and
// invalid UTF-8 bytes as \uXXXX), so a line is always valid JSON.
// Call before the role starts threads: spdlog's formatter is not swapped
// atomically for loggers in use.
#pragma once

#include <spdlog/formatter.h>

#include <memory>
#include <string>

#include "common/result.h"

namespace vmgrid {

// "text" or "json"; kInvalidArgument for anything else (nothing changed).
Status SetLogFormat(const std::string& format);

// The json formatter itself (tests format messages with it directly).
std::unique_ptr<spdlog::formatter> NewJsonLogFormatter();

}  // namespace vmgrid
