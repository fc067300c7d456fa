// HostNetworks: the agent's virtual networking (docs/vnet.md, "Agents"). It
// owns the host's SwitchHost (one thread serving every network's switch and
// the host's tunnel socket), gives each VM NIC a switch port, and applies
// the controller's plan from each heartbeat reply: the host's tunnel number,
// and per network its peers, their NICs and the tunnel key.
//
// Restarts: the last plan (keys included; mode 0600) and the tunnel port are
// kept in STATE/vnet/plan.json. A restarted agent starts its switches from
// it at once, on the same UDP port, and VmRunner re-attaches the ports of
// the VMs it adopts, so a VM's network pauses for about the restart's
// length (QEMU keeps sending to the port's path; the new switch binds it).
//
// Key rotation without loss: a key epoch newer than the one sealing is
// first installed open-only, and seals from kPromoteAfter later, when every
// host of the network has had a heartbeat to learn it (docs/vnet.md, "Keys").
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "proto/network_plan.h"
#include "vmm/nic_config.h"
#include "vnet/switch_host.h"

namespace vmgrid {

struct HostNetworksOptions {
  std::string state_dir;  // the agent's: sockets in STATE/vnet, the plan in STATE/vnet/plan.json
  std::string tunnel_ip = "127.0.0.1";  // IPv4 the tunnel socket binds and peers send to
  int tunnel_port = 0;  // 0: the port of the last run (plan.json), else any free one
  // Raise net.unix.max_dgram_qlen to this (docs/vnet.md, "Queue length").
  int dgram_queue_length = 1024;
  std::chrono::milliseconds promote_after = std::chrono::seconds(6);
  // How long Attach waits for the first plan (the switches need the host's
  // tunnel number) before it gives up.
  std::chrono::milliseconds first_plan_wait = std::chrono::seconds(10);
};

class HostNetworks {
 public:
  // Reads plan.json if there is one and, when it names the host's number,
  // starts the switches and applies it. A plan.json that cannot be read or
  // parsed is set aside (renamed *.bad) with a warning: the next heartbeat
  // brings a fresh plan.
  static Result<std::unique_ptr<HostNetworks>> Open(const HostNetworksOptions& options);
  ~HostNetworks();

  // Where peers reach this host's tunnels; empty until the switches run.
  std::optional<TunnelEndpointReport> Endpoint() const;

  // Makes the switches match `plan` (starting them at the first plan that
  // names the host's number): adds the networks it lists, replaces each
  // one's peers and remote NICs, installs new keys; removes networks it no
  // longer lists once no local port uses them. Saves it as plan.json. A
  // network whose part fails (e.g. a colliding name) is logged and kept as
  // it was; the rest is applied. Returns the first such error.
  Status ApplyPlan(const HostNetworkPlan& plan);

  // One switch port per NIC of VM `vm_id` (named VMID-INDEX), creating the
  // NIC's network locally if the plan has not brought it yet (local traffic
  // flows at once; other hosts once the plan and key arrive). The port's
  // socket is owned by uid/gid (>= 0) so the VM's QEMU may send to it.
  // Replaces ports of the same VM left from an earlier run. Returns the
  // NICs for QemuConfig (QEMU binds RUN/nicI.sock).
  Result<std::vector<NicConfig>> Attach(const std::string& vm_id, const std::string& vm_name,
                                        const std::vector<NicSpec>& nics,
                                        const std::string& run_dir, int uid, int gid);
  // `vm forward`: listen_ip:listen_port (0: any) on this host carries TCP
  // connections to guest_port of `nic` (its network must have egress).
  // listen_ip: loopback or the tunnel address (nothing else of the host is
  // opened to users).
  Result<ForwardInfo> AddForward(const NicSpec& nic, const ForwardRequest& request);
  // AddForward's checks without opening anything: the forward of a stopped
  // VM, made when it starts (then AddForward may still find its port taken).
  // The answer has the requested port (which must not be 0).
  Result<ForwardInfo> CheckForward(const NicSpec& nic, const ForwardRequest& request) const;
  Status RemoveForward(const NicSpec& nic, const std::string& listen_ip, int listen_port);

  // Removes the VM's ports (those that exist).
  void Detach(const std::string& vm_id, const std::vector<NicSpec>& nics);

  // Counters of every port and network, for the host report.
  nlohmann::json Stats() const;
  // The same summed over the host's networks and ports (for /metrics:
  // network and port names are users', totals are not).
  struct Totals {
    bool running = false;
    size_t networks = 0, ports = 0;
    vnet::PortCounters ports_total;
    vnet::TunnelCounters tunnels;  // the networks' and the host's own
    vnet::EgressCounters egress;
  };
  Totals totals() const;

 private:
  explicit HostNetworks(HostNetworksOptions options);
  Status StartSwitchesLocked(uint32_t host_number);
  Status EnsureNetworkLocked(uint32_t vni, const std::string& name, const std::string& subnet,
                             bool egress);
  Status ApplyNetworkLocked(const NetworkPlan& n);
  void PromoteKeysLocked();
  std::string PlanFile() const;

  struct NetState {
    std::string name;
    std::string subnet;
    bool egress = false;
    int64_t sealing_epoch = 0;  // 0: no key yet (local traffic only)
    int64_t pending_epoch = 0;  // open-only, sealing from promote_at
    std::vector<uint8_t> pending_key;
    std::chrono::steady_clock::time_point promote_at;
    std::map<std::string, int> ports;  // port name -> NIC index
    // What each port was attached with: a re-attach with the same values
    // (a resume, an agent's re-adoption) keeps the port and its forwards
    // instead of replacing them, so no forward's listener is re-bound.
    std::map<std::string, vnet::PortConfig> configs;
  };

  const HostNetworksOptions options_;
  mutable std::mutex mu_;
  std::condition_variable started_cv_;
  // Guarded by mu_.
  vnet::SwitchHostPtr host_;
  uint32_t host_number_ = 0;
  int tunnel_port_ = 0;
  std::map<uint32_t, NetState> nets_;  // by vni
};

}  // namespace vmgrid
