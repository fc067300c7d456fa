// "HOST:PORT" as every role's listen flags, agent URLs and forwards spell
// it: one parser, so each place rejects the same inputs with the same words.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace vmgrid {

struct HostPort {
  std::string host;  // as written; "[::1]" keeps its brackets
  int port = 0;      // 0..65535; 0 means "any free port" where a flag allows it
};

// Splits at the last ':' (so "[::1]:80" works). The host must not be empty,
// the port is 1 to 5 decimal digits up to 65535. `what`, if not empty,
// starts the error message (for example "--tunnel-listen").
Result<HostPort> ParseHostPort(std::string_view text, std::string_view what = "");

// The host without IPv6 brackets ("[::1]" -> "::1"), for inet_pton and bind.
std::string UnbracketHost(const std::string& host);

}  // namespace vmgrid
