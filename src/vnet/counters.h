// Why the switch drops a frame or a tunnel packet, and the counters it keeps
// per port and per network. Counters are plain integers owned by the switch;
// readers get copies (SwitchHost::Counters) taken under the switch's lock.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace vmgrid::vnet {

// Reasons a frame from a port (or out of a tunnel) is not delivered.
enum class DropReason : uint8_t {
  kNone = 0,
  kMalformed,            // truncated/oversized frame, bad ARP/IPv4/UDP header or checksum
  kVlanTagged,           // 802.1Q / 802.1ad tags are refused
  kUnsupportedProtocol,  // neither ARP nor IPv4 (IPv6 included: the networks are IPv4-only)
  kSpoofedMac,           // Ethernet source is not the port's MAC
  kSpoofedIp,            // IPv4 source is not the port's address (DHCP from 0.0.0.0 excepted)
  kSpoofedArp,           // ARP sender MAC/IP not the port's own
  kUnknownDestination,   // unicast to a MAC (or ARP for an IP) the controller did not give
  kNotServed,            // addressed to the switch for something it does not serve
  kDhcpRefused,          // malformed DHCP, or a request the switch will not answer
  kDnsRefused,           // malformed DNS query
  kTxFailed,             // the destination's socket was full or gone (counted on the destination)
  kCount,
};
inline constexpr size_t kDropReasonCount = static_cast<size_t>(DropReason::kCount);
const char* DropReasonName(DropReason reason);

struct PortCounters {
  uint64_t rx_frames = 0;  // datagrams read from the VM
  uint64_t tx_frames = 0;  // datagrams delivered to the VM
  uint64_t arp_answered = 0;
  uint64_t dhcp_answered = 0;
  uint64_t dns_answered = 0;
  uint64_t echo_answered = 0;                      // pings to the switch's addresses
  std::array<uint64_t, kDropReasonCount> drops{};  // indexed by DropReason

  uint64_t drop(DropReason r) const { return drops[static_cast<size_t>(r)]; }
  void Drop(DropReason r) { ++drops[static_cast<size_t>(r)]; }
};

// Reasons a tunnel packet is refused before its frame is looked at.
enum class TunnelDrop : uint8_t {
  kNone = 0,
  kTruncated,       // shorter than header + tag
  kBadHeader,       // unknown version/type, reserved bits set
  kUnknownNetwork,  // no switch for that network id on this host
  kUnknownSender,   // sender host is not a peer of the network
  kUnknownEpoch,    // neither the current nor the previous key epoch
  kAuthFailed,      // AEAD tag did not verify (wrong key, tampered)
  kReplayed,        // sequence number already seen
  kTooOld,          // sequence number left of the replay window
  kCount,
};
inline constexpr size_t kTunnelDropCount = static_cast<size_t>(TunnelDrop::kCount);
const char* TunnelDropName(TunnelDrop reason);

struct TunnelCounters {
  uint64_t tx_packets = 0;
  uint64_t tx_failed = 0;   // sendmmsg refused (peer address unreachable, buffer full)
  uint64_t tx_no_key = 0;   // frames for a remote host while no key is installed
  uint64_t rx_packets = 0;  // authenticated and fresh
  std::array<uint64_t, kTunnelDropCount> drops{};
  // Frames that came out of a tunnel but were not delivered, by reason
  // (kSpoofedMac: source MAC not a NIC of the sending host).
  std::array<uint64_t, kDropReasonCount> frame_drops{};

  uint64_t drop(TunnelDrop r) const { return drops[static_cast<size_t>(r)]; }
  void Drop(TunnelDrop r) { ++drops[static_cast<size_t>(r)]; }
  uint64_t frame_drop(DropReason r) const { return frame_drops[static_cast<size_t>(r)]; }
  void FrameDrop(DropReason r) { ++frame_drops[static_cast<size_t>(r)]; }
};

}  // namespace vmgrid::vnet
