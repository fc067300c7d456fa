// FutureId: the id of a row of the information service's `futures` view
// ("a VM of image I could start on host H by boot|resume"), which a create
// realizes with {"from_future": ID}. Its text form is
// "fut-IMAGEID-HOSTID-START"; the view builds it in SQL with
// FutureIdSqlExpression, the controller parses it with ParseFutureId, so the
// format lives here only. Host ids are "host-..." (NewId("host")), which is
// what separates the image id from the host id.
// Thread-safe (values and pure functions).
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace vmgrid {

struct FutureId {
  std::string image_id;
  std::string host_id;
  std::string start;  // "boot" or "resume"
  std::string ToString() const;
  bool operator==(const FutureId&) const = default;
};

// kInvalidArgument naming the expected form for anything else.
Result<FutureId> ParseFutureId(std::string_view id);

// An SQL expression (SQLite and PostgreSQL) building the id from three
// column expressions.
std::string FutureIdSqlExpression(const std::string& image_id, const std::string& host_id,
                                  const std::string& start);

}  // namespace vmgrid
