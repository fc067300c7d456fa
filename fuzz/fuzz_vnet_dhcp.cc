// fuzz_vnet_dhcp: ParseDhcpRequest, the switch's reading of a guest's DHCP
// message (src/vnet/dhcp.h). Oracles: no read outside the input (ASan); an
// accepted message is a BOOTREQUEST for Ethernet with a known type; the
// switch's reply to it is a BOOTREPLY of at least 300 bytes carrying its xid.
#include <cstdint>

#include "fuzz_common.h"
#include "vnet/dhcp.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmgrid::vnet;
  auto r = ParseDhcpRequest({data, size});
  vmgrid::fuzz::Trace("dhcp", r.ok(), r.ok() ? "" : r.error().message);
  if (!r.ok()) return 0;
  FUZZ_CHECK(size >= 241 && data[0] == 1 && data[1] == 1 && data[2] == 6, "accepted header");
  const auto t = static_cast<uint8_t>(r->type);
  FUZZ_CHECK(t >= 1 && t <= 8, "message type");
  DhcpReply reply;
  reply.type = r->type == DhcpType::kRequest ? DhcpType::kAck : DhcpType::kOffer;
  reply.xid = r->xid;
  reply.chaddr = r->chaddr;
  reply.domain = "net";
  auto m = BuildDhcpReply(reply);
  FUZZ_CHECK(m.size() >= 300 && m[0] == 2 && Load32(&m[4]) == r->xid, "reply");
  return 0;
}
