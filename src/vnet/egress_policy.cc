#include "vnet/egress_policy.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace vmgrid::vnet {

namespace {

bool InNet(Ipv4Addr ip, Ipv4Addr net, int prefix) {
  const Ipv4Addr mask = prefix == 0 ? 0 : ~Ipv4Addr{0} << (32 - prefix);
  return (ip & mask) == net;
}

}  // namespace

const char* EgressDropName(EgressDrop reason) {
  switch (reason) {
    case EgressDrop::kNone:
      return "none";
    case EgressDrop::kMalformed:
      return "malformed";
    case EgressDrop::kHostLoopback:
      return "host_loopback";
    case EgressDrop::kHostLocal:
      return "host_local";
    case EgressDrop::kLinkLocal:
      return "link_local";
    case EgressDrop::kMulticast:
      return "multicast";
    case EgressDrop::kThisNetwork:
      return "this_network";
    case EgressDrop::kTooManyFlows:
      return "too_many_flows";
    case EgressDrop::kCount:
      break;
  }
  return "unknown";
}

EgressDrop CheckToOutside(const Frame& frame, const EgressScope& scope) {
  // The switch's proxy-ARP replies to slirp's requests for VM addresses:
  // slirp needs them to address its frames (guests' ARP never gets here).
  if (frame.arp) return frame.arp->op == 2 ? EgressDrop::kNone : EgressDrop::kMalformed;
  if (!frame.ipv4) return EgressDrop::kMalformed;
  const Ipv4Addr dst = frame.ipv4->dst;
  if (InNet(dst, 0x7f000000, 8)) return EgressDrop::kHostLoopback;
  // connect() to 0.0.0.0 reaches this host's loopback on Linux.
  if (InNet(dst, 0, 8)) return EgressDrop::kHostLocal;
  if (InNet(dst, 0xa9fe0000, 16)) return EgressDrop::kLinkLocal;
  if (InNet(dst, 0xe0000000, 3)) return EgressDrop::kMulticast;  // 224/4 and 240/4
  // The gateway itself: slirp answers pings, carries the replies of port
  // forwards' connections, and refuses new connections to it (it would map
  // them to the host's loopback; disable_host_loopback).
  if (dst == scope.gateway_ip) return EgressDrop::kNone;
  if ((dst & scope.netmask) == scope.subnet) return EgressDrop::kThisNetwork;
  if (std::binary_search(scope.host_addresses.begin(), scope.host_addresses.end(), dst))
    return EgressDrop::kHostLocal;
  return EgressDrop::kNone;
}

bool StartsNewFlow(const Frame& f) {
  if (!f.ipv4 || f.ipv4->protocol != 6) return true;
  if (f.ipv4->fragment || f.ipv4->payload.size() < 20) return true;
  const uint8_t flags = f.ipv4->payload[13];
  return (flags & 0x12) == 0x02;
}

Result<std::vector<Ipv4Addr>> LocalIpv4Addresses() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0)
    return MakeError(ErrorCode::kInternal, std::string("getifaddrs: ") + std::strerror(errno));
  std::vector<Ipv4Addr> out;
  for (ifaddrs* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
    out.push_back(ntohl(reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr));
  }
  freeifaddrs(list);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

MacAddr EgressGatewayMac(Ipv4Addr gateway_ip) {
  MacAddr m{0x52, 0x55, 0, 0, 0, 0};
  Store32(&m[2], gateway_ip);
  return m;
}

}  // namespace vmgrid::vnet
