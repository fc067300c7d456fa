// Anti-spoofing: what a port (one VM NIC) may send. A port has one MAC and at
// most one IPv4 address, both given by the controller; the guest is hostile
// and anything else it sends is dropped with a reason that is counted.
// Thread-safety: pure functions.
#pragma once

#include "vnet/frame.h"

namespace vmgrid::vnet {

struct PortIdentity {
  MacAddr mac{};
  Ipv4Addr ip = 0;  // 0: none assigned (then only DHCP from 0.0.0.0 passes)
  // A router port (the network's egress gateway, egress_gateway.h): its IPv4
  // frames carry the outside's source addresses, so any IPv4 source passes
  // here (the switch still refuses sources inside the subnet but its own).
  // MAC and ARP rules are those of every port.
  bool router = false;
};

// The verdict on a parsed frame from `port` (kNone: accepted):
//   - Ethernet source must be the port's MAC (kSpoofedMac);
//   - ARP: sender MAC must be the port's MAC and sender IP the port's address,
//     or 0.0.0.0 (an RFC 5227 probe) (kSpoofedArp); gratuitous ARP for its
//     own address is therefore allowed;
//   - IPv4: source must be the port's address, or 0.0.0.0 for DHCP client
//     traffic (UDP 68 -> 67) (kSpoofedIp); any source from a router port;
//   - any other ethertype: kUnsupportedProtocol.
DropReason CheckFromPort(const PortIdentity& port, const Frame& frame);

// True for a DHCP client message (UDP 68 -> 67, unfragmented).
inline bool IsDhcpClientMessage(const Frame& f) {
  return f.udp && f.udp->src_port == 68 && f.udp->dst_port == 67;
}

}  // namespace vmgrid::vnet
