// HostCredentials: the per-host credentials of the agents.
//
// An agent joins with the join token (STATE/agent.token, role "agent"),
// which can do nothing but POST /v1/agent/register; registration answers two
// credentials bound to the host's name:
//   host token       "vmgh.NAME.MAC": the agent -> controller direction
//                     (heartbeats as NAME, and only as NAME);
//   agent API token  "vmga.MAC'": the controller -> agent direction (the
//                     agent accepts calls only with its own).
// Both are HMAC-SHA-256 of the name under a key only the controller holds
// (STATE/host-credential.key, 0600), with a different label each, so the
// controller stores nothing per host and neither credential of one host is
// worth anything on another host or in the other direction.
//
// Thread-safe after Open (read-only).
#pragma once

#include <optional>
#include <string>

#include "common/result.h"

namespace vmgrid {

class HostCredentials {
 public:
  // Reads the key from `key_file`, creating it (random, mode 0600) at first
  // start.
  static Result<HostCredentials> Open(const std::string& key_file);

  std::string HostToken(const std::string& host_name) const;
  std::string AgentApiToken(const std::string& host_name) const;

  // The host a host token belongs to; nullopt when `token` is not one this
  // controller issued (checked in constant time).
  std::optional<std::string> VerifyHostToken(const std::string& token) const;

  static bool LooksLikeHostToken(const std::string& token) {
    return token.rfind(kHostPrefix, 0) == 0;
  }

 private:
  static constexpr char kHostPrefix[] = "vmgh.";
  explicit HostCredentials(std::string key) : key_(std::move(key)) {}
  std::string key_;
};

}  // namespace vmgrid
