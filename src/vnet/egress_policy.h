// What a guest may send to the outside through its network's egress gateway
// (egress_gateway.h): never to this host itself, link-local, multicast or its
// own subnet. Pure functions on parsed frames, beside the gateway's MAC and
// the host's address list they use. docs/vnet.md, "Egress and port forwards".
// Thread-safety: pure functions (LocalIpv4Addresses reads the system).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/result.h"
#include "vnet/frame.h"

namespace vmgrid::vnet {

// Why the gateway refuses a frame a guest sent towards the outside.
enum class EgressDrop : uint8_t {
  kNone = 0,
  kMalformed,     // neither IPv4 nor an ARP reply (the switch's answers to slirp's requests)
  kHostLoopback,  // 127.0.0.0/8
  kHostLocal,     // an address of this host's interfaces, or 0.0.0.0/8 (which means "this host")
  kLinkLocal,     // 169.254.0.0/16 (cloud metadata services live there)
  kMulticast,     // 224.0.0.0/4, 240.0.0.0/4 and 255.255.255.255
  kThisNetwork,   // an address of the network's own subnet other than the gateway
  kTooManyFlows,  // a new flow (StartsNewFlow) while slirp holds its maximum of sockets
  kCount,
};
inline constexpr size_t kEgressDropCount = static_cast<size_t>(EgressDrop::kCount);
const char* EgressDropName(EgressDrop reason);

// The addresses a frame is judged against.
struct EgressScope {
  Ipv4Addr subnet = 0;
  Ipv4Addr netmask = 0;
  Ipv4Addr gateway_ip = 0;
  // This host's own IPv4 addresses (LocalIpv4Addresses), sorted.
  std::vector<Ipv4Addr> host_addresses;
};

// The verdict on a parsed frame going to the outside: kNone to let slirp
// have it. Only the destination is judged; the switch has already checked
// that the source is the sending VM's own address. ARP replies pass (the
// switch answers slirp's ARP requests for VMs; it never forwards a guest's ARP).
EgressDrop CheckToOutside(const Frame& frame, const EgressScope& scope);

// True unless the frame is a TCP segment other than a connection request
// (SYN without ACK): such a segment belongs to a flow slirp already has a
// socket for (or slirp resets it); anything else may make slirp open one.
bool StartsNewFlow(const Frame& frame);

// This host's IPv4 interface addresses (getifaddrs), sorted, unique.
Result<std::vector<Ipv4Addr>> LocalIpv4Addresses();

// libslirp's own MAC for the gateway: it sends every frame from
// 52:55:<the 4 bytes of its host address> (QEMU's user networking does the
// same); the switch's router port must have exactly this MAC.
MacAddr EgressGatewayMac(Ipv4Addr gateway_ip);

}  // namespace vmgrid::vnet
