// VirtualSwitch: the user-level switch of ONE virtual network on one host.
// Its ports are unix datagram sockets, one per VM NIC, spoken to by QEMU's
// `-netdev dgram` (docs/vnet.md has the exact QEMU arguments). Nothing is
// learned from traffic: the controller gives every NIC's MAC, IP, name and
// host, and the switch
//   - drops what a port may not send (port_policy.h) and counts why;
//   - answers ARP for every known address itself (proxy ARP), and DHCP and
//     DNS for its ports, from the network's service address (subnet + 2);
//   - forwards unicast to the local port or remote host owning the
//     destination MAC, drops unknown unicast (counted), and copies broadcast
//     and multicast to the network's other local ports and remote hosts only;
//   - carries frames to and from other hosts through the network's tunnel.
// Addresses reserved in every subnet: .0 (network), .1 (gateway, the egress
// NAT: ARP answered only when egress is on, with the gateway port's MAC once
// it is attached, AddRouterPort), .2 (the switch: DHCP server, DNS), the
// broadcast address.
//
// Thread-safety: none. A VirtualSwitch is driven by the SwitchHost that owns
// it, under the host's lock (switch_host.h); SwitchHost is the API the agent
// calls. Failures of control methods leave the switch unchanged.
#pragma once

#include <netinet/in.h>
#include <sys/types.h>
#include <sys/un.h>

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "vmm/unique_fd.h"
#include "vnet/counters.h"
#include "vnet/frame.h"
#include "vnet/port_policy.h"
#include "vnet/tunnel.h"
#include "vnet/tx_batch.h"

namespace vmgrid::vnet {

struct NetworkConfig {
  uint32_t id = 0;   // the controller's network id: in every tunnel header; not 0
  std::string name;  // DNS domain (VM.NAME) and DHCP option 15; [a-z0-9-], 1..63
  Ipv4Addr subnet = 0;
  int prefix_len = 24;  // 8..29
  bool egress = false;  // router option and ARP for the gateway (.1)
  uint32_t lease_seconds = 3600;
  uint16_t mtu = 0;  // DHCP option 26 when non-zero (e.g. 1400 to avoid fragmenting tunnels)

  Ipv4Addr netmask() const { return prefix_len == 0 ? 0 : ~Ipv4Addr{0} << (32 - prefix_len); }
  Ipv4Addr gateway_ip() const { return subnet + 1; }
  Ipv4Addr service_ip() const { return subnet + 2; }
  Ipv4Addr broadcast_ip() const { return subnet | ~netmask(); }
  // 02:56:NN:NN:NN:NN (locally administered, network id): the switch's own
  // MAC for its replies. The controller must not give VMs MACs in 02:56:*.
  MacAddr switch_mac() const;
};

struct PortConfig {
  std::string name;  // unique on this switch (e.g. "VMID-0")
  MacAddr mac{};
  Ipv4Addr ip = 0;      // the controller's address for this NIC (0: none)
  std::string vm_name;  // DNS name (VM and VM.NETWORK); may be empty
  // The switch binds switch_path (QEMU's remote.path) and sends to vm_path
  // (QEMU's local.path, bound by QEMU). Both shorter than sun_path (108).
  std::string switch_path;
  std::string vm_path;
  // When set, switch_path is chowned to this uid/gid and made mode 0660, so a
  // QEMU running as the VM's own uid may send to it.
  std::optional<uid_t> socket_uid;
  std::optional<gid_t> socket_gid;
};

// The value of QEMU's `-netdev` option that connects a NIC to `port`:
//   dgram,id=ID,local.type=unix,local.path=VM_PATH,remote.type=unix,remote.path=SWITCH_PATH
// (commas in paths doubled, as QEMU's option syntax wants). QEMU binds
// VM_PATH and sends every frame to SWITCH_PATH. Pair it with
// `-device virtio-net-pci,netdev=ID,mac=MAC` using the port's MAC.
std::string QemuNetdevArg(const PortConfig& port, const std::string& netdev_id);

// A NIC of this network on another host.
struct RemoteNic {
  MacAddr mac{};
  Ipv4Addr ip = 0;
  std::string vm_name;
  HostId host = 0;
};

// Another host of this network: where its tunnel socket listens.
struct PeerHost {
  HostId id = 0;
  Ipv4Addr ip = 0;
  uint16_t port = 0;
};

// One port: the socket QEMU sends to and its identity. Owned by the switch.
struct Port {
  PortConfig config;
  PortIdentity identity;
  vmm::UniqueFd fd;
  sockaddr_un vm_addr{};
  socklen_t vm_addr_len = 0;
  PortCounters counters;
  uint64_t token = 0;     // the SwitchHost's epoll token
  ino_t bound_inode = 0;  // the socket file we bound (not to unlink a successor's)
  dev_t bound_dev = 0;
  ~Port();  // unlinks switch_path if this port still owns it
};

class VirtualSwitch;
using VirtualSwitchPtr = std::unique_ptr<VirtualSwitch>;

// What the loop gives a switch to work with for one pass.
struct SwitchIo {
  TxBatch& tx;
  ScratchBuffers& scratch;
  int tunnel_fd;  // the host's UDP socket
};

class VirtualSwitch {
 public:
  static Result<VirtualSwitchPtr> Create(const NetworkConfig& config, HostId local_host);
  ~VirtualSwitch();

  const NetworkConfig& config() const { return config_; }

  // Binds the port's socket (an existing file at switch_path is replaced:
  // that is how a restarted switch takes over) and adds the NIC to the
  // forwarding, ARP and DNS tables. kAlreadyExists for a name, MAC or IP
  // already on the network; kInvalidArgument for an address outside the
  // subnet or reserved, a multicast MAC, a path too long.
  Result<Port*> AddPort(const PortConfig& port);
  // A router port: the network's egress gateway (egress_gateway.h) on one
  // end of a connected unix datagram socket pair, `fd` being the switch's
  // end. It owns `mac` and `ip` (the gateway address, which AddPort refuses
  // to VMs): ARP for `ip` is answered with `mac`, frames to `mac` go to the
  // gateway. Its IPv4 frames may carry any source outside the subnet (NAT);
  // they are counted like any port's, stay on this host (never tunnelled:
  // every host of the network has its own gateway with the same MAC), and
  // broadcasts are not copied to it. kAlreadyExists for a taken name or MAC.
  Result<Port*> AddRouterPort(const std::string& name, const MacAddr& mac, Ipv4Addr ip,
                              vmm::UniqueFd fd);
  // kNotFound if there is no such port. Closes and unlinks its socket.
  Status RemovePort(const std::string& name);
  Port* FindPort(const std::string& name);
  std::vector<Port*> ports();

  // Replaces the remote part of the network: its other hosts and their NICs.
  // Every NIC's host must be among `peers`; MACs, IPs and names must not
  // collide with local ports or each other.
  Status SetRemote(const std::vector<PeerHost>& peers, const std::vector<RemoteNic>& nics);

  Status InstallTunnelKey(uint32_t epoch, std::span<const uint8_t> key,
                          KeyUse use = KeyUse::kSealAndOpen) {
    return codec_.InstallKey(epoch, key, use);
  }

  const TunnelCounters& tunnel_counters() const { return tunnel_counters_; }

  // Data path. A frame a port sent (the datagram as read; `truncated` when it
  // did not fit the buffer).
  void HandleFromPort(Port& port, std::span<const uint8_t> frame, bool truncated, SwitchIo& io);
  // A tunnel packet whose header names this network.
  void HandleFromTunnel(std::span<const uint8_t> packet, SwitchIo& io);

 private:
  VirtualSwitch(const NetworkConfig& config, HostId local_host);
  struct Peer {
    PeerHost host;
    sockaddr_in addr{};
  };

  void RebuildTables();
  // `local`: the NIC is to be a port here (else a remote NIC of the plan).
  // The one NIC on both sides, a port here and a remote NIC with the same
  // MAC, address and name, is no conflict: a VM live-migrating here has its
  // port before the plan moves its NIC (the port wins, RebuildTables).
  Status CheckNic(const MacAddr& mac, Ipv4Addr ip, const std::string& vm_name, bool local) const;
  void HandleArp(Port& port, const Frame& f, SwitchIo& io);
  void HandleDhcp(Port& port, const Frame& f, SwitchIo& io);
  void HandleDns(Port& port, const Frame& f, SwitchIo& io);
  void SendToPort(Port& to, const uint8_t* data, size_t len, SwitchIo& io);
  void SendToPeers(std::span<const uint8_t> frame, const Peer* only, SwitchIo& io);
  void Reply(Port& to, const UdpEndpoints& ends, std::span<const uint8_t> payload, SwitchIo& io);

  NetworkConfig config_;
  MacAddr switch_mac_{};
  TunnelCodec codec_;
  TunnelCounters tunnel_counters_;
  std::vector<std::unique_ptr<Port>> ports_;
  std::vector<Peer> peers_;
  std::vector<RemoteNic> remote_nics_;
  // Derived from ports_, peers_ and remote_nics_ by RebuildTables.
  std::unordered_map<uint64_t, Port*> local_by_mac_;
  std::unordered_map<uint64_t, const RemoteNic*> remote_by_mac_;
  std::unordered_map<HostId, const Peer*> peer_by_id_;
  std::unordered_map<Ipv4Addr, MacAddr> mac_by_ip_;
  std::unordered_map<std::string, Ipv4Addr> ip_by_name_;
};

}  // namespace vmgrid::vnet
