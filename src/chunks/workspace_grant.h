// WorkspaceGrant: the capability that lets one host read and publish the
// durable versions of one persistent workspace on the image server
// (docs/vm-lifecycle.md, "Durable workspaces"). The image server's bearer
// token is shared by every host, so it cannot protect a user's workspace
// from another host; names in the workspace namespace (workspace ids,
// "ws-...") need a grant as well: HMAC-SHA-256 under a key only the
// controller and the image server hold, over (name, host, generation).
//
// The controller mints a grant for the host it places the workspace on
// (VmSpec::durable); the image server checks it on every manifest route of
// that name and refuses a publish whose generation is lower than the
// highest it has seen for the name (a host the workspace moved away from
// cannot overwrite the newer versions). Chunks are content-addressed and
// not covered: reading one needs its digest, which only a manifest names.
//
// Thread-safe (pure functions).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace vmgrid {

// The HTTP header that carries a grant.
inline constexpr const char* kWorkspaceGrantHeader = "X-Vmgrid-Workspace-Grant";

// Image server names of workspace versions are the workspace ids ("ws-...").
bool IsWorkspaceBlobName(std::string_view name);

struct WorkspaceGrant {
  std::string name;         // the workspace's image server name (its id)
  std::string host;         // the host it is granted to
  uint64_t generation = 0;  // grows each time the workspace moves to another host
  bool operator==(const WorkspaceGrant&) const = default;
};

// "vmgw1:NAME:HOST:GEN:MAC". `key` must not be empty.
std::string MintWorkspaceGrant(const std::string& key, const WorkspaceGrant& grant);
// The grant `token` carries if its MAC is right under `key` and it names
// `name`; kPermissionDenied otherwise (nothing about why beyond "invalid").
Result<WorkspaceGrant> VerifyWorkspaceGrant(const std::string& key, const std::string& token,
                                            const std::string& name);

}  // namespace vmgrid
