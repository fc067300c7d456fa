#include "chunks/workspace_grant.h"

#include <vector>

#include "common/http_json.h"
#include "common/util.h"

namespace vmgrid {

namespace {
constexpr std::string_view kPrefix = "vmgw1";

std::vector<std::string> SplitColon(const std::string& s) {
  std::vector<std::string> out(1);
  for (char c : s) {
    if (c == ':')
      out.emplace_back();
    else
      out.back() += c;
  }
  return out;
}
}  // namespace

bool IsWorkspaceBlobName(std::string_view name) { return name.rfind("ws-", 0) == 0; }

std::string MintWorkspaceGrant(const std::string& key, const WorkspaceGrant& g) {
  std::string body =
      std::string(kPrefix) + ":" + g.name + ":" + g.host + ":" + std::to_string(g.generation);
  return body + ":" + HmacSha256Hex(key, body);
}

Result<WorkspaceGrant> VerifyWorkspaceGrant(const std::string& key, const std::string& token,
                                            const std::string& name) {
  auto denied = [&] {
    return MakeError(ErrorCode::kPermissionDenied, "no valid workspace grant for " + name +
                                                       " (header " + kWorkspaceGrantHeader + ")");
  };
  if (key.empty() || token.size() > 512) return denied();
  std::vector<std::string> parts = SplitColon(token);
  if (parts.size() != 5 || parts[0] != kPrefix || parts[1] != name) return denied();
  if (!ValidateName("host", parts[2]).ok() || parts[3].empty() || parts[3].size() > 18)
    return denied();
  for (char c : parts[3])
    if (c < '0' || c > '9') return denied();
  std::string body = token.substr(0, token.rfind(':'));
  if (!ConstantTimeEquals(HmacSha256Hex(key, body), parts[4])) return denied();
  return WorkspaceGrant{parts[1], parts[2], std::stoull(parts[3])};
}

}  // namespace vmgrid
