#include "dev/host_namespaces.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "common/subprocess.h"
#include "common/util.h"

namespace vmgrid {

namespace {

// Runs `tool args...` (ip, tc), failing with its stderr.
Status Run(const char* tool, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {tool};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = RunProcessChecked(argv, std::chrono::seconds(20));
  if (!r.ok()) return r.error();
  return Status::Ok();
}
Status Ip(const std::vector<std::string>& args) { return Run("ip", args); }
Status Tc(const std::vector<std::string>& args) { return Run("tc", args); }

}  // namespace

Result<std::unique_ptr<HostNamespaces>> HostNamespaces::Create(int hosts) {
  if (hosts < 1 || hosts > 200)
    return MakeError(ErrorCode::kInvalidArgument, "1 to 200 host namespaces");
  if (geteuid() != 0)
    return MakeError(ErrorCode::kPermissionDenied, "host namespaces need root (ip netns)");
  std::unique_ptr<HostNamespaces> n(new HostNamespaces());
  const unsigned pid = static_cast<unsigned>(getpid());
  n->tag_ = std::to_string(pid);
  n->prefix_ =
      "10." + std::to_string(200 + (pid >> 8) % 50) + "." + std::to_string(pid & 0xff) + ".";
  n->root_ip_ = n->prefix_ + "1";
  n->bridge_ = "vgb" + n->tag_;
  n->hosts_ = hosts;
  (void)Ip({"link", "del", n->bridge_});  // a crashed run of a process with our pid
  VMG_RETURN_IF_ERROR(Ip({"link", "add", n->bridge_, "type", "bridge"}));
  VMG_RETURN_IF_ERROR(Ip({"addr", "add", n->root_ip_ + "/24", "dev", n->bridge_}));
  VMG_RETURN_IF_ERROR(Ip({"link", "set", n->bridge_, "up"}));
  for (int i = 0; i < hosts; ++i) {
    const std::string ns = n->netns(i), link = n->root_link(i);
    (void)Ip({"netns", "del", ns});
    VMG_RETURN_IF_ERROR(Ip({"netns", "add", ns}));
    n->created_ = i + 1;
    VMG_RETURN_IF_ERROR(
        Ip({"link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns}));
    VMG_RETURN_IF_ERROR(Ip({"link", "set", link, "master", n->bridge_, "up"}));
    VMG_RETURN_IF_ERROR(Ip({"-n", ns, "addr", "add", n->host_ip(i) + "/24", "dev", "eth0"}));
    VMG_RETURN_IF_ERROR(Ip({"-n", ns, "link", "set", "eth0", "up"}));
    VMG_RETURN_IF_ERROR(Ip({"-n", ns, "link", "set", "lo", "up"}));
  }
  return n;
}

HostNamespaces::~HostNamespaces() {
  for (int i = 0; i < created_; ++i) {
    (void)Ip({"link", "del", root_link(i)});  // gone already if the namespace went first
    (void)Ip({"netns", "del", netns(i)});
  }
  (void)Ip({"link", "del", bridge_});
}

std::string HostNamespaces::host_ip(int index) const { return prefix_ + std::to_string(index + 2); }

std::string HostNamespaces::netns(int index) const {
  return "vmgrid-" + tag_ + "-h" + std::to_string(index + 1);
}

std::string HostNamespaces::root_link(int index) const {
  return "vgl" + tag_ + "h" + std::to_string(index + 1);
}

std::vector<std::string> HostNamespaces::all_ips() const {
  std::vector<std::string> out = {root_ip_};
  for (int i = 0; i < hosts_; ++i) out.push_back(host_ip(i));
  return out;
}

Status HostNamespaces::ShapeLink(int index, int rate_kbit) {
  if (index < 0 || index >= hosts_) return MakeError(ErrorCode::kInvalidArgument, "no such host");
  const std::string ns = netns(index), link = root_link(index);
  if (rate_kbit <= 0) {
    (void)Tc({"qdisc", "del", "dev", link, "root"});
    (void)Tc({"-n", ns, "qdisc", "del", "dev", "eth0", "root"});
    return Status::Ok();
  }
  // A burst of at least one 1500-byte frame plus headroom; 50 ms of queue.
  const std::string rate = std::to_string(rate_kbit) + "kbit";
  const std::string burst = std::to_string(std::max(32, rate_kbit / 800)) + "kb";
  VMG_RETURN_IF_ERROR(Tc({"qdisc", "replace", "dev", link, "root", "tbf", "rate", rate, "burst",
                          burst, "latency", "50ms"}));
  return Tc({"-n", ns, "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst",
             burst, "latency", "50ms"});
}

Result<std::pair<uint64_t, uint64_t>> HostNamespaces::LinkBytes(int index) const {
  const std::string base = "/sys/class/net/" + root_link(index) + "/statistics/";
  VMG_ASSIGN_OR_RETURN(std::string rx, ReadFile(base + "rx_bytes", 64));
  VMG_ASSIGN_OR_RETURN(std::string tx, ReadFile(base + "tx_bytes", 64));
  try {
    return std::make_pair(static_cast<uint64_t>(std::stoull(rx)),
                          static_cast<uint64_t>(std::stoull(tx)));
  } catch (const std::exception&) {
    return MakeError(ErrorCode::kInternal, "unreadable counters of " + root_link(index));
  }
}

std::vector<std::string> HostNamespaces::InNamespace(int index,
                                                     const std::vector<std::string>& argv) const {
  std::vector<std::string> out = {"ip", "netns", "exec", netns(index)};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

}  // namespace vmgrid
