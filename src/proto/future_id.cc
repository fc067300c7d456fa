#include "proto/future_id.h"

namespace vmgrid {

namespace {
constexpr std::string_view kPrefix = "fut-";
}

std::string FutureId::ToString() const {
  return std::string(kPrefix) + image_id + "-" + host_id + "-" + start;
}

Result<FutureId> ParseFutureId(std::string_view fid) {
  const std::string quoted = "'" + std::string(fid) + "'";
  size_t h = fid.find("-host-");
  size_t last = fid.rfind('-');
  if (!fid.starts_with(kPrefix) || h == std::string_view::npos || h < kPrefix.size() ||
      last <= h + 5)
    return MakeError(ErrorCode::kInvalidArgument,
                     quoted + " is not a future id (fut-IMAGE-HOST-START)");
  FutureId f;
  f.start = std::string(fid.substr(last + 1));
  if (f.start != "boot" && f.start != "resume")
    return MakeError(ErrorCode::kInvalidArgument, quoted + " is not a future id");
  f.image_id = std::string(fid.substr(kPrefix.size(), h - kPrefix.size()));
  f.host_id = std::string(fid.substr(h + 1, last - h - 1));
  return f;
}

std::string FutureIdSqlExpression(const std::string& image_id, const std::string& host_id,
                                  const std::string& start) {
  return "'" + std::string(kPrefix) + "' || " + image_id + " || '-' || " + host_id + " || '-' || " +
         start;
}

}  // namespace vmgrid
