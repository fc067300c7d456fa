// SwitchHost: every virtual switch of one host, served by one thread. The
// agent's one object for virtual networking: it adds networks, ports (one per
// VM NIC), the remote part of each network (peer hosts and their NICs) and
// tunnel keys, and reads counters. The thread runs an epoll loop over every
// port socket of every network plus one UDP socket for all tunnels (packets
// name their network), reading and writing in batches (recvmmsg/sendmmsg).
//
// Why one thread for all networks: a port's frames need only its network's
// tables, so a pass over one socket is cheap, and one thread keeps the tunnel
// socket and the lock simple; the goal (>= 1 Mpps) is per core. To use more
// cores later, shard networks over several SwitchHosts with their own UDP ports.
//
// Thread-safety: every public method may be called from any thread. A mutex
// protects all switches; the loop holds it while it handles one batch (tens
// of microseconds), so control calls wait at most that long. Control
// methods fail without side effects.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "vmm/unique_fd.h"
#include "vnet/egress_gateway.h"
#include "vnet/virtual_switch.h"

namespace vmgrid::vnet {

struct SwitchHostOptions {
  HostId host_id = 0;               // this host's id in tunnel headers (not 0)
  Ipv4Addr tunnel_ip = 0x7f000001;  // address the tunnel UDP socket binds
  uint16_t tunnel_port = 0;         // 0: any free port (see tunnel_port())
  size_t batch = 64;                // datagrams per recvmmsg
};

// Linux caps a unix datagram socket's receive queue at net.unix.max_dgram_qlen
// datagrams (default 10), read when a socket is created; the switch drops
// what does not fit in a VM's queue (docs/vnet.md, "Queue length"). Raises
// the setting of this network namespace to `wanted` if it is lower (needs
// root) and returns the value in effect. Call it before creating ports and
// starting QEMUs: existing sockets keep their old limit.
Result<int> EnsureUnixDgramQueueLength(int wanted);

// The name of a network's router port to its egress gateway (a VM port of
// that name is refused as a duplicate).
inline constexpr char kEgressPortName[] = "egress";

class SwitchHost;
using SwitchHostPtr = std::unique_ptr<SwitchHost>;

class SwitchHost {
 public:
  // Binds the tunnel socket and starts the loop thread.
  static Result<SwitchHostPtr> Start(const SwitchHostOptions& options);
  // Stops the thread and closes every socket (port paths are unlinked).
  ~SwitchHost();
  SwitchHost(const SwitchHost&) = delete;
  SwitchHost& operator=(const SwitchHost&) = delete;

  uint16_t tunnel_port() const { return tunnel_port_; }
  HostId host_id() const { return options_.host_id; }

  // kAlreadyExists if the network id is present; see VirtualSwitch::Create.
  // With config.egress, also starts the network's EgressGateway on a router
  // port named kEgressPortName (.1, MAC EgressGatewayMac); on failure
  // nothing is added.
  Status AddNetwork(const NetworkConfig& config);
  // Removes the network, all its ports, its gateway and its forwards.
  // kNotFound if absent.
  Status RemoveNetwork(uint32_t network_id);
  // See VirtualSwitch::AddPort / RemovePort. Removing a port also removes
  // the forwards to its address; the egress port cannot be removed alone.
  Status AddPort(uint32_t network_id, const PortConfig& port);
  Status RemovePort(uint32_t network_id, const std::string& port_name);

  // `vm forward`: the host listens at listen_ip:listen_port (0: a free port)
  // and carries each TCP connection through the network's egress gateway to
  // guest_ip:guest_port. Returns the port listened on. guest_ip must be the
  // address of a NIC (port) of the network on this host (kNotFound);
  // kFailedPrecondition for a network without egress; kAlreadyExists for an
  // address in use. Nothing changes on failure.
  Result<uint16_t> AddForward(uint32_t network_id, Ipv4Addr guest_ip, uint16_t guest_port,
                              Ipv4Addr listen_ip = 0x7f000001, uint16_t listen_port = 0);
  // kNotFound if the network or the forward is absent.
  Status RemoveForward(uint32_t network_id, Ipv4Addr listen_ip, uint16_t listen_port);
  Result<std::vector<PortForward>> GetForwards(uint32_t network_id) const;
  // kFailedPrecondition for a network without egress.
  Result<EgressCounters> GetEgressCounters(uint32_t network_id) const;
  // Replaces the network's peer hosts and remote NICs (VirtualSwitch::SetRemote).
  Status SetRemote(uint32_t network_id, const std::vector<PeerHost>& peers,
                   const std::vector<RemoteNic>& nics);
  // Installs a key epoch of the network's tunnel (TunnelCodec::InstallKey).
  // Rotation without loss: kOpenOnly on every host of the network, then
  // kSealAndOpen on every host.
  Status InstallTunnelKey(uint32_t network_id, uint32_t epoch, std::span<const uint8_t> key,
                          KeyUse use = KeyUse::kSealAndOpen);

  Result<PortCounters> GetPortCounters(uint32_t network_id, const std::string& port_name) const;
  Result<TunnelCounters> GetTunnelCounters(uint32_t network_id) const;
  // Tunnel packets no switch here could take (bad header, unknown network).
  TunnelCounters host_tunnel_counters() const;

 private:
  explicit SwitchHost(const SwitchHostOptions& options);
  void Loop();
  void ReadPort(VirtualSwitch& sw, Port& port);
  void ReadTunnel();
  Status Register(Port* port);
  VirtualSwitch* Find(uint32_t network_id) const;
  Result<EgressGateway*> FindGateway(uint32_t network_id) const;

  struct Source {
    VirtualSwitch* sw;
    Port* port;
  };

  const SwitchHostOptions options_;
  uint16_t tunnel_port_ = 0;
  vmm::UniqueFd epoll_;
  vmm::UniqueFd wake_;  // eventfd: Stop
  vmm::UniqueFd tunnel_;
  std::atomic<bool> stop_{false};
  std::thread thread_;

  mutable std::mutex mu_;
  // State below is protected by mu_.
  std::map<uint32_t, VirtualSwitchPtr> switches_;
  std::map<uint32_t, EgressGatewayPtr> gateways_;  // networks with egress
  std::unordered_map<uint64_t, Source> sources_;   // epoll token -> port
  uint64_t next_token_ = 16;                       // 0: wake, 1: tunnel
  TunnelCounters host_counters_;
  // Loop-thread buffers (also under mu_ while used).
  std::vector<uint8_t> rx_data_;
  std::vector<mmsghdr> rx_msgs_;
  std::vector<iovec> rx_iovs_;
  std::vector<sockaddr_in> rx_addrs_;
  TxBatch tx_;
  ScratchBuffers scratch_;
};

}  // namespace vmgrid::vnet
