// fuzz_vnet_frame: ParseFrame, the port policy and the egress policy
// (src/vnet/frame.h, port_policy.h, egress_policy.h), run on every frame a
// guest sends. Oracles: the parser never reads outside its input (ASan) and
// its views lie inside it and inside each other; an accepted frame carries
// the port's own source MAC and (for IPv4) its own address or a DHCP client
// message from 0.0.0.0 (any source from a router port); a frame the egress
// policy lets out is an ARP reply or IPv4 to neither loopback, 0/8, a host
// address, link-local, multicast nor the subnet (but its gateway).
#include <cstdint>

#include "fuzz_common.h"
#include "vnet/egress_policy.h"
#include "vnet/frame.h"
#include "vnet/port_policy.h"

namespace {
bool Inside(std::span<const uint8_t> inner, std::span<const uint8_t> outer) {
  return inner.data() >= outer.data() && inner.data() + inner.size() <= outer.data() + outer.size();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmgrid::vnet;
  const std::span<const uint8_t> in(data, size);
  FrameParse p = ParseFrame(in);
  vmgrid::fuzz::Trace("parse", p.ok(), DropReasonName(p.error));
  if (!p.ok()) return 0;
  const Frame& f = p.frame;
  FUZZ_CHECK(size >= kEthernetHeaderLen && size <= kMaxFrameLen, "accepted length");
  if (f.ipv4) {
    FUZZ_CHECK(Inside(f.ipv4->payload, in), "IPv4 payload outside the frame");
    if (f.udp) FUZZ_CHECK(Inside(f.udp->payload, f.ipv4->payload), "UDP payload outside IPv4");
  }
  FUZZ_CHECK(!(f.udp && !f.ipv4), "UDP without IPv4");
  // Two ports: one with an address, one waiting for DHCP.
  for (const PortIdentity& port : {PortIdentity{{0x52, 0x54, 0, 0, 0, 1}, 0x0a000005},
                                   PortIdentity{{0x52, 0x54, 0, 0, 0, 1}, 0}}) {
    DropReason v = CheckFromPort(port, f);
    if (v != DropReason::kNone) continue;
    FUZZ_CHECK(f.eth.src == port.mac, "accepted a foreign source MAC");
    if (f.arp) {
      FUZZ_CHECK(f.arp->sender_mac == port.mac, "accepted a foreign ARP sender");
      FUZZ_CHECK(f.arp->sender_ip == 0 || f.arp->sender_ip == port.ip, "accepted a foreign ARP IP");
    } else {
      FUZZ_CHECK(f.ipv4.has_value(), "accepted neither ARP nor IPv4");
      FUZZ_CHECK(
          (port.ip != 0 && f.ipv4->src == port.ip) || (f.ipv4->src == 0 && IsDhcpClientMessage(f)),
          "accepted a foreign IPv4 source");
    }
  }
  // A router port (the egress gateway) is held to the MAC and ARP rules only.
  const PortIdentity router{{0x52, 0x55, 0x0a, 0, 0, 1}, 0x0a000001, /*router=*/true};
  if (CheckFromPort(router, f) == DropReason::kNone) {
    FUZZ_CHECK(f.eth.src == router.mac, "router: accepted a foreign source MAC");
    FUZZ_CHECK(!f.arp || f.arp->sender_ip == 0 || f.arp->sender_ip == router.ip,
               "router: accepted a foreign ARP IP");
  }
  EgressScope scope;
  scope.subnet = 0x0a000000;
  scope.netmask = 0xffffff00;
  scope.gateway_ip = 0x0a000001;
  scope.host_addresses = {0x0a010203, 0xc0a80114};
  const EgressDrop e = CheckToOutside(f, scope);
  vmgrid::fuzz::Trace("egress", e == EgressDrop::kNone, EgressDropName(e));
  if (e == EgressDrop::kNone) {
    if (f.arp) {
      FUZZ_CHECK(f.arp->op == 2, "egress: let an ARP request out");
    } else {
      FUZZ_CHECK(f.ipv4.has_value(), "egress: let a non-IPv4 frame out");
      const Ipv4Addr d = f.ipv4->dst;
      FUZZ_CHECK((d >> 24) != 127 && (d >> 24) != 0, "egress: loopback or 0/8");
      FUZZ_CHECK((d >> 16) != 0xa9fe && (d >> 28) < 0xe, "egress: link-local or multicast");
      FUZZ_CHECK(d != 0x0a010203 && d != 0xc0a80114, "egress: a host address");
      FUZZ_CHECK((d & scope.netmask) != scope.subnet || d == scope.gateway_ip,
                 "egress: the network's own subnet");
    }
  }
  return 0;
}
