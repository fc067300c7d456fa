#include "vnet/port_policy.h"

namespace vmgrid::vnet {

DropReason CheckFromPort(const PortIdentity& port, const Frame& frame) {
  if (frame.eth.src != port.mac) return DropReason::kSpoofedMac;
  if (frame.arp) {
    const ArpPacket& a = *frame.arp;
    if (a.sender_mac != port.mac) return DropReason::kSpoofedArp;
    if (a.sender_ip != 0 && (port.ip == 0 || a.sender_ip != port.ip))
      return DropReason::kSpoofedArp;
    return DropReason::kNone;
  }
  if (frame.ipv4) {
    const Ipv4Packet& ip = *frame.ipv4;
    if (port.router) return DropReason::kNone;
    if (port.ip != 0 && ip.src == port.ip) return DropReason::kNone;
    if (ip.src == 0 && IsDhcpClientMessage(frame)) return DropReason::kNone;
    return DropReason::kSpoofedIp;
  }
  return DropReason::kUnsupportedProtocol;
}

}  // namespace vmgrid::vnet
