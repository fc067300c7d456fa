// Bounds-checked views of the frames a guest NIC sends (Ethernet II, ARP for
// IPv4, IPv4, UDP) and builders for the replies the switch makes itself.
// Every input is untrusted: parsing never reads outside the span it is given
// and never allocates, because it runs once per frame on the data path.
// Thread-safety: free functions on caller-owned memory.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "common/result.h"
#include "vnet/counters.h"

namespace vmgrid::vnet {

using MacAddr = std::array<uint8_t, 6>;
using Ipv4Addr = uint32_t;  // host byte order; 0 = unassigned / 0.0.0.0

inline constexpr MacAddr kBroadcastMac = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
inline constexpr size_t kEthernetHeaderLen = 14;
// Largest frame a port accepts (a 1500-byte MTU frame is 1514; QEMU's dgram
// netdev adds no virtio-net header). Larger datagrams are dropped as malformed.
inline constexpr size_t kMaxFrameLen = 1518;

inline constexpr uint16_t kEtherTypeIpv4 = 0x0800;
inline constexpr uint16_t kEtherTypeArp = 0x0806;
inline constexpr uint16_t kEtherTypeVlan = 0x8100;
inline constexpr uint16_t kEtherTypeQinQ = 0x88a8;
inline constexpr uint8_t kIpProtoIcmp = 1;
inline constexpr uint8_t kIpProtoUdp = 17;

inline bool IsMulticast(const MacAddr& mac) { return (mac[0] & 1) != 0; }  // incl. broadcast
inline uint64_t MacKey(const MacAddr& mac) {
  uint64_t k = 0;
  for (uint8_t b : mac) k = (k << 8) | b;
  return k;
}
std::string FormatMac(const MacAddr& mac);
Result<MacAddr> ParseMac(const std::string& text);  // "52:54:00:12:34:56"
std::string FormatIpv4(Ipv4Addr ip);
Result<Ipv4Addr> ParseIpv4(const std::string& text);  // dotted quad, no leading zeros

struct EthernetHeader {
  MacAddr dst{};
  MacAddr src{};
  uint16_t ethertype = 0;
};

// ARP for IPv4 over Ethernet (htype 1, ptype 0x0800, hlen 6, plen 4) only.
struct ArpPacket {
  uint16_t op = 0;  // 1 request, 2 reply
  MacAddr sender_mac{};
  Ipv4Addr sender_ip = 0;
  MacAddr target_mac{};
  Ipv4Addr target_ip = 0;
};

struct Ipv4Packet {
  Ipv4Addr src = 0;
  Ipv4Addr dst = 0;
  uint8_t protocol = 0;
  uint8_t ttl = 0;
  bool fragment = false;             // MF set or offset != 0: no transport header parsed
  std::span<const uint8_t> payload;  // bounded by the header's total length
};

struct UdpDatagram {
  uint16_t src_port = 0;
  uint16_t dst_port = 0;
  std::span<const uint8_t> payload;  // bounded by the UDP length field
};

// A parsed frame: views into the caller's buffer, valid while it lives.
struct Frame {
  EthernetHeader eth;
  std::optional<ArpPacket> arp;    // ethertype ARP
  std::optional<Ipv4Packet> ipv4;  // ethertype IPv4
  std::optional<UdpDatagram> udp;  // IPv4, protocol UDP, not a fragment
};

// The outcome of ParseFrame: the frame, or why it is refused
// (kMalformed, kVlanTagged). Other ethertypes parse (eth only) and are left
// to the port policy.
struct FrameParse {
  DropReason error = DropReason::kNone;
  Frame frame;
  bool ok() const { return error == DropReason::kNone; }
};

// Checks, in order: at least an Ethernet header, no 802.1Q/802.1ad tag, then
// for ARP a complete IPv4-over-Ethernet ARP body, for IPv4 version 4, IHL >= 5,
// header and total length inside the frame (Ethernet padding after the total
// length is allowed), a valid header checksum, and for unfragmented UDP a
// length field of at least 8 inside the IPv4 payload.
FrameParse ParseFrame(std::span<const uint8_t> data);

// The Internet checksum (RFC 1071) of `data`, folded, not yet inverted, added to `sum`.
uint32_t ChecksumAdd(uint32_t sum, std::span<const uint8_t> data);
uint16_t ChecksumFinish(uint32_t sum);

// Builders write into `out` and return the frame's length, or 0 when `out`
// is too small (never a partial write past out.size()).
size_t BuildArpReply(std::span<uint8_t> out, const MacAddr& sender_mac, Ipv4Addr sender_ip,
                     const MacAddr& target_mac, Ipv4Addr target_ip);

struct UdpEndpoints {
  MacAddr src_mac{};
  MacAddr dst_mac{};
  Ipv4Addr src_ip = 0;
  Ipv4Addr dst_ip = 0;
  uint16_t src_port = 0;
  uint16_t dst_port = 0;
};
// Ethernet + IPv4 (TTL 64, DF, no options) + UDP with both checksums.
size_t BuildUdpFrame(std::span<uint8_t> out, const UdpEndpoints& ends,
                     std::span<const uint8_t> payload);

// True for an unfragmented ICMP echo request (type 8, code 0, >= 8 bytes).
bool IsIcmpEchoRequest(const Frame& frame);
// Ethernet + IPv4 (TTL 64, no options) + ICMP echo reply (type 0) carrying
// the request's identifier, sequence and data (`request` is its ICMP message).
size_t BuildIcmpEchoReply(std::span<uint8_t> out, const UdpEndpoints& ends,
                          std::span<const uint8_t> request);

// Big-endian loads and stores (callers check bounds first).
inline uint16_t Load16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t Load32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 |
         static_cast<uint32_t>(p[2]) << 8 | p[3];
}
inline uint64_t Load64(const uint8_t* p) {
  return static_cast<uint64_t>(Load32(p)) << 32 | Load32(p + 4);
}
inline void Store16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void Store32(uint8_t* p, uint32_t v) {
  Store16(p, static_cast<uint16_t>(v >> 16));
  Store16(p + 2, static_cast<uint16_t>(v));
}
inline void Store64(uint8_t* p, uint64_t v) {
  Store32(p, static_cast<uint32_t>(v >> 32));
  Store32(p + 4, static_cast<uint32_t>(v));
}

}  // namespace vmgrid::vnet
