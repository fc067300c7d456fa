#include "common/host_port.h"

namespace vmgrid {

Result<HostPort> ParseHostPort(std::string_view text, std::string_view what) {
  const std::string shown(text);
  const std::string prefix = what.empty() ? "" : std::string(what) + ": ";
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0)
    return MakeError(ErrorCode::kInvalidArgument,
                     prefix + "expected HOST:PORT (e.g. 127.0.0.1:8470), got '" + shown + "'");
  const std::string_view port = text.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != port.npos)
    return MakeError(ErrorCode::kInvalidArgument, prefix + "bad port in '" + shown + "' (0-65535)");
  int value = 0;
  for (char c : port) value = value * 10 + (c - '0');
  if (value > 65535)
    return MakeError(ErrorCode::kInvalidArgument, prefix + "bad port in '" + shown + "' (0-65535)");
  return HostPort{std::string(text.substr(0, colon)), value};
}

std::string UnbracketHost(const std::string& host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    return host.substr(1, host.size() - 2);
  return host;
}

}  // namespace vmgrid
