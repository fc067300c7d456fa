#include "api/host_credentials.h"

#include "common/http_json.h"
#include "common/util.h"

namespace vmgrid {

Result<HostCredentials> HostCredentials::Open(const std::string& key_file) {
  if (!FileExists(key_file))
    VMG_RETURN_IF_ERROR(WriteFileAtomic(key_file, NewToken() + NewToken() + "\n", 0600));
  VMG_ASSIGN_OR_RETURN(std::string key, ReadTokenFile(key_file));
  if (key.size() < 32)
    return MakeError(ErrorCode::kFailedPrecondition, key_file + " holds no usable key (too short)");
  return HostCredentials(std::move(key));
}

std::string HostCredentials::HostToken(const std::string& host_name) const {
  return kHostPrefix + host_name + "." + HmacSha256Hex(key_, "vmgrid host token\n" + host_name);
}

std::string HostCredentials::AgentApiToken(const std::string& host_name) const {
  return "vmga." + HmacSha256Hex(key_, "vmgrid agent api token\n" + host_name);
}

std::optional<std::string> HostCredentials::VerifyHostToken(const std::string& token) const {
  if (!LooksLikeHostToken(token)) return std::nullopt;
  const size_t dot = token.rfind('.');
  if (dot == std::string::npos || dot < sizeof kHostPrefix) return std::nullopt;
  std::string name = token.substr(sizeof kHostPrefix - 1, dot - (sizeof kHostPrefix - 1));
  if (!ValidateName("host", name).ok()) return std::nullopt;
  if (!ConstantTimeEquals(token, HostToken(name))) return std::nullopt;
  return name;
}

}  // namespace vmgrid
