#include "proto/console_log.h"

#include <limits>

#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;

json ToJson(const ConsoleLog& log) {
  return {{"text", log.text},
          {"offset", log.offset},
          {"next_offset", log.next_offset},
          {"size", log.size},
          {"dropped", log.dropped}};
}

Result<ConsoleLog> ConsoleLogFromJson(const json& j) {
  if (!j.is_object())
    return MakeError(ErrorCode::kInvalidArgument, "a console log must be a JSON object");
  JsonFields f(j, {"text", "offset", "next_offset", "size", "dropped"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max() / 2;
  ConsoleLog log;
  VMG_ASSIGN_OR_RETURN(log.text, f.String("text", true));
  VMG_ASSIGN_OR_RETURN(log.offset, f.Int("offset", 0, 0, kMax));
  VMG_ASSIGN_OR_RETURN(log.next_offset, f.Int("next_offset", 0, 0, kMax));
  VMG_ASSIGN_OR_RETURN(log.size, f.Int("size", 0, 0, kMax));
  VMG_ASSIGN_OR_RETURN(log.dropped, f.Int("dropped", 0, 0, kMax));
  if (log.text.size() > static_cast<size_t>(3 * kConsoleReadMaxBytes))
    return MakeError(ErrorCode::kInvalidArgument, "a console log answer's text is too long");
  if (log.offset > log.next_offset || log.next_offset > log.size ||
      log.next_offset - log.offset > kConsoleReadMaxBytes)
    return MakeError(ErrorCode::kInvalidArgument,
                     "a console log answer's offsets are out of order (offset " +
                         std::to_string(log.offset) + ", next " + std::to_string(log.next_offset) +
                         ", size " + std::to_string(log.size) + ")");
  return log;
}

}  // namespace vmgrid
