// The DHCP server's wire format (RFC 2131/2132): parsing a client's message
// (untrusted, bounds-checked, options walked with their lengths checked) and
// building the switch's OFFER/ACK/NAK. The switch decides what to answer
// (VirtualSwitch); this file only speaks the format.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "vnet/frame.h"

namespace vmgrid::vnet {

enum class DhcpType : uint8_t {
  kDiscover = 1,
  kOffer = 2,
  kRequest = 3,
  kDecline = 4,
  kAck = 5,
  kNak = 6,
  kRelease = 7,
  kInform = 8,
};

struct DhcpRequest {
  DhcpType type = DhcpType::kDiscover;
  uint32_t xid = 0;
  uint16_t flags = 0;  // 0x8000: the client wants a broadcast reply
  Ipv4Addr ciaddr = 0;
  MacAddr chaddr{};
  std::optional<Ipv4Addr> requested_ip;  // option 50
  std::optional<Ipv4Addr> server_id;     // option 54
};

// A BOOTREQUEST with htype 1 / hlen 6, the magic cookie, well-formed options
// (each option's length inside the message, option 53 present exactly with
// length 1 and a known type; options 50 and 54 of length 4), ended by 255.
Result<DhcpRequest> ParseDhcpRequest(std::span<const uint8_t> payload);

struct DhcpReply {
  DhcpType type = DhcpType::kOffer;  // kOffer, kAck or kNak
  uint32_t xid = 0;
  uint16_t flags = 0;
  MacAddr chaddr{};
  Ipv4Addr yiaddr = 0;  // 0 in a NAK
  Ipv4Addr server_id = 0;
  Ipv4Addr subnet_mask = 0;
  std::optional<Ipv4Addr> router;  // only for networks with egress
  Ipv4Addr dns_server = 0;
  std::string domain;    // the network's name (option 15)
  std::string hostname;  // the VM's name (option 12), may be empty
  uint32_t lease_seconds = 3600;
  uint16_t mtu = 0;  // option 26 when non-zero
};

// The UDP payload of a BOOTREPLY (at least 300 bytes, as BOOTP clients expect).
std::vector<uint8_t> BuildDhcpReply(const DhcpReply& reply);

}  // namespace vmgrid::vnet
