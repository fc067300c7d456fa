// fuzz_vnet_frame: ParseFrame and the port policy (src/vnet/frame.h,
// port_policy.h), run on every frame a guest sends. Oracles: the parser
// never reads outside its input (ASan) and its views lie inside it and
// inside each other; an accepted frame carries the port's own source MAC and
// (for IPv4) its own address or a DHCP client message from 0.0.0.0.
#include <cstdint>

#include "fuzz_common.h"
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
  return 0;
}
