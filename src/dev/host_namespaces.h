// HostNamespaces: one network namespace per simulated host, joined to this
// machine's root namespace by a bridge, so that a LocalGrid's agents (and
// the tunnels between them) talk over real links instead of loopback.
//
//   root namespace                     namespace "vmgrid-PID-h1"
//   bridge vgbPID  10.A.B.1/24  <--->  veth eth0  10.A.B.2/24   (host-1)
//                               <--->  veth eth0  10.A.B.3/24   (host-2) ...
//
// The subnet 10.A.B.0/24 (A in 200..249) is derived from the owning
// process's pid, so grids of concurrent test processes do not collide. Only
// addresses of namespaces we create are used. Needs root and `ip`; tc's tbf
// shapes a host's link (the kernel here has no netem, so no added delay).
// Everything is removed by the destructor (and a namespace of a crashed run
// carries its pid in its name).
// Not thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/result.h"

namespace vmgrid {

class HostNamespaces {
 public:
  // Creates the bridge and `hosts` namespaces with their links up.
  static Result<std::unique_ptr<HostNamespaces>> Create(int hosts);
  ~HostNamespaces();
  HostNamespaces(const HostNamespaces&) = delete;
  HostNamespaces& operator=(const HostNamespaces&) = delete;

  // The root namespace's address on the bridge (servers agents reach).
  const std::string& root_ip() const { return root_ip_; }
  // Host `index`'s (0-based) address and namespace name.
  std::string host_ip(int index) const;
  std::string netns(int index) const;
  // The root end of host `index`'s link (its byte counters count what
  // crossed the link).
  std::string root_link(int index) const;
  // Every address above (for certificates).
  std::vector<std::string> all_ips() const;

  // Limits host `index`'s link to `rate_kbit` in both directions (tc tbf);
  // 0 removes the limit.
  Status ShapeLink(int index, int rate_kbit);

  // Bytes received and sent by the root end of host `index`'s link.
  Result<std::pair<uint64_t, uint64_t>> LinkBytes(int index) const;

  // argv prefixed to run a command inside host `index`'s namespace.
  std::vector<std::string> InNamespace(int index, const std::vector<std::string>& argv) const;

 private:
  HostNamespaces() = default;
  std::string tag_;     // pid-derived, in every name
  std::string prefix_;  // "10.A.B."
  std::string root_ip_;
  std::string bridge_;
  int hosts_ = 0;
  int created_ = 0;  // namespaces created so far (for clean-up)
};

}  // namespace vmgrid
