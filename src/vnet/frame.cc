#include "vnet/frame.h"

#include <cstdio>
#include <cstring>

namespace vmgrid::vnet {

const char* DropReasonName(DropReason reason) {
  switch (reason) {
    case DropReason::kNone:
      return "none";
    case DropReason::kMalformed:
      return "malformed";
    case DropReason::kVlanTagged:
      return "vlan_tagged";
    case DropReason::kUnsupportedProtocol:
      return "unsupported_protocol";
    case DropReason::kSpoofedMac:
      return "spoofed_mac";
    case DropReason::kSpoofedIp:
      return "spoofed_ip";
    case DropReason::kSpoofedArp:
      return "spoofed_arp";
    case DropReason::kUnknownDestination:
      return "unknown_destination";
    case DropReason::kNotServed:
      return "not_served";
    case DropReason::kDhcpRefused:
      return "dhcp_refused";
    case DropReason::kDnsRefused:
      return "dns_refused";
    case DropReason::kTxFailed:
      return "tx_failed";
    case DropReason::kCount:
      break;
  }
  return "?";
}

const char* TunnelDropName(TunnelDrop reason) {
  switch (reason) {
    case TunnelDrop::kNone:
      return "none";
    case TunnelDrop::kTruncated:
      return "truncated";
    case TunnelDrop::kBadHeader:
      return "bad_header";
    case TunnelDrop::kUnknownNetwork:
      return "unknown_network";
    case TunnelDrop::kUnknownSender:
      return "unknown_sender";
    case TunnelDrop::kUnknownEpoch:
      return "unknown_epoch";
    case TunnelDrop::kAuthFailed:
      return "auth_failed";
    case TunnelDrop::kReplayed:
      return "replayed";
    case TunnelDrop::kTooOld:
      return "too_old";
    case TunnelDrop::kCount:
      break;
  }
  return "?";
}

std::string FormatMac(const MacAddr& mac) {
  char buf[18];
  std::snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3],
                mac[4], mac[5]);
  return buf;
}

namespace {
int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

Result<MacAddr> ParseMac(const std::string& text) {
  MacAddr mac{};
  if (text.size() != 17) return MakeError(ErrorCode::kInvalidArgument, "bad MAC: " + text);
  for (size_t i = 0; i < 6; ++i) {
    int hi = HexDigit(text[i * 3]), lo = HexDigit(text[i * 3 + 1]);
    if (hi < 0 || lo < 0 || (i < 5 && text[i * 3 + 2] != ':'))
      return MakeError(ErrorCode::kInvalidArgument, "bad MAC: " + text);
    mac[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return mac;
}

std::string FormatIpv4(Ipv4Addr ip) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255,
                ip & 255);
  return buf;
}

Result<Ipv4Addr> ParseIpv4(const std::string& text) {
  Ipv4Addr ip = 0;
  size_t i = 0;
  for (int part = 0; part < 4; ++part) {
    if (part > 0) {
      if (i >= text.size() || text[i] != '.')
        return MakeError(ErrorCode::kInvalidArgument, "bad IPv4 address: " + text);
      ++i;
    }
    size_t start = i;
    unsigned v = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9' && i - start < 3)
      v = v * 10 + static_cast<unsigned>(text[i++] - '0');
    if (i == start || v > 255 || (i - start > 1 && text[start] == '0'))
      return MakeError(ErrorCode::kInvalidArgument, "bad IPv4 address: " + text);
    ip = ip << 8 | v;
  }
  if (i != text.size()) return MakeError(ErrorCode::kInvalidArgument, "bad IPv4 address: " + text);
  return ip;
}

uint32_t ChecksumAdd(uint32_t sum, std::span<const uint8_t> data) {
  size_t i = 0;
  for (; i + 1 < data.size(); i += 2) sum += Load16(&data[i]);
  if (i < data.size()) sum += static_cast<uint32_t>(data[i]) << 8;
  // Fold early so long inputs cannot overflow 32 bits.
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return sum;
}

uint16_t ChecksumFinish(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

namespace {

FrameParse Fail(DropReason why) {
  FrameParse p;
  p.error = why;
  return p;
}

}  // namespace

FrameParse ParseFrame(std::span<const uint8_t> data) {
  if (data.size() < kEthernetHeaderLen || data.size() > kMaxFrameLen)
    return Fail(DropReason::kMalformed);
  FrameParse out;
  Frame& f = out.frame;
  std::memcpy(f.eth.dst.data(), &data[0], 6);
  std::memcpy(f.eth.src.data(), &data[6], 6);
  f.eth.ethertype = Load16(&data[12]);
  const auto l3 = data.subspan(kEthernetHeaderLen);
  switch (f.eth.ethertype) {
    case kEtherTypeVlan:
    case kEtherTypeQinQ:
      return Fail(DropReason::kVlanTagged);
    case kEtherTypeArp: {
      if (l3.size() < 28) return Fail(DropReason::kMalformed);
      if (Load16(&l3[0]) != 1 || Load16(&l3[2]) != kEtherTypeIpv4 || l3[4] != 6 || l3[5] != 4)
        return Fail(DropReason::kMalformed);
      ArpPacket a;
      a.op = Load16(&l3[6]);
      if (a.op != 1 && a.op != 2) return Fail(DropReason::kMalformed);
      std::memcpy(a.sender_mac.data(), &l3[8], 6);
      a.sender_ip = Load32(&l3[14]);
      std::memcpy(a.target_mac.data(), &l3[18], 6);
      a.target_ip = Load32(&l3[24]);
      f.arp = a;
      return out;
    }
    case kEtherTypeIpv4: {
      if (l3.size() < 20) return Fail(DropReason::kMalformed);
      if ((l3[0] >> 4) != 4) return Fail(DropReason::kMalformed);
      const size_t ihl = static_cast<size_t>(l3[0] & 0x0f) * 4;
      const size_t total = Load16(&l3[2]);
      if (ihl < 20 || ihl > l3.size() || total < ihl || total > l3.size())
        return Fail(DropReason::kMalformed);
      if (ChecksumFinish(ChecksumAdd(0, l3.first(ihl))) != 0) return Fail(DropReason::kMalformed);
      Ipv4Packet ip;
      const uint16_t frag = Load16(&l3[6]);
      ip.fragment = (frag & 0x2000) != 0 || (frag & 0x1fff) != 0;
      ip.ttl = l3[8];
      ip.protocol = l3[9];
      ip.src = Load32(&l3[12]);
      ip.dst = Load32(&l3[16]);
      ip.payload = l3.subspan(ihl, total - ihl);
      f.ipv4 = ip;
      if (ip.protocol == kIpProtoUdp && !ip.fragment) {
        if (ip.payload.size() < 8) return Fail(DropReason::kMalformed);
        const size_t ulen = Load16(&ip.payload[4]);
        if (ulen < 8 || ulen > ip.payload.size()) return Fail(DropReason::kMalformed);
        UdpDatagram u;
        u.src_port = Load16(&ip.payload[0]);
        u.dst_port = Load16(&ip.payload[2]);
        u.payload = ip.payload.subspan(8, ulen - 8);
        f.udp = u;
      }
      return out;
    }
    default:
      return out;
  }
}

size_t BuildArpReply(std::span<uint8_t> out, const MacAddr& sender_mac, Ipv4Addr sender_ip,
                     const MacAddr& target_mac, Ipv4Addr target_ip) {
  constexpr size_t kLen = 60;  // 14 + 28, padded to Ethernet's minimum
  if (out.size() < kLen) return 0;
  uint8_t* p = out.data();
  std::memset(p, 0, kLen);
  std::memcpy(p, target_mac.data(), 6);
  std::memcpy(p + 6, sender_mac.data(), 6);
  Store16(p + 12, kEtherTypeArp);
  uint8_t* a = p + 14;
  Store16(a, 1);
  Store16(a + 2, kEtherTypeIpv4);
  a[4] = 6;
  a[5] = 4;
  Store16(a + 6, 2);
  std::memcpy(a + 8, sender_mac.data(), 6);
  Store32(a + 14, sender_ip);
  std::memcpy(a + 18, target_mac.data(), 6);
  Store32(a + 24, target_ip);
  return kLen;
}

size_t BuildUdpFrame(std::span<uint8_t> out, const UdpEndpoints& ends,
                     std::span<const uint8_t> payload) {
  const size_t ip_total = 20 + 8 + payload.size();
  const size_t len = kEthernetHeaderLen + ip_total;
  if (ip_total > 0xffff || out.size() < len || len > kMaxFrameLen) return 0;
  uint8_t* p = out.data();
  std::memcpy(p, ends.dst_mac.data(), 6);
  std::memcpy(p + 6, ends.src_mac.data(), 6);
  Store16(p + 12, kEtherTypeIpv4);
  uint8_t* ip = p + kEthernetHeaderLen;
  ip[0] = 0x45;
  ip[1] = 0;
  Store16(ip + 2, static_cast<uint16_t>(ip_total));
  Store16(ip + 4, 0);       // id
  Store16(ip + 6, 0x4000);  // DF
  ip[8] = 64;
  ip[9] = kIpProtoUdp;
  Store16(ip + 10, 0);
  Store32(ip + 12, ends.src_ip);
  Store32(ip + 16, ends.dst_ip);
  Store16(ip + 10, ChecksumFinish(ChecksumAdd(0, {ip, 20})));
  uint8_t* udp = ip + 20;
  const uint16_t ulen = static_cast<uint16_t>(8 + payload.size());
  Store16(udp, ends.src_port);
  Store16(udp + 2, ends.dst_port);
  Store16(udp + 4, ulen);
  Store16(udp + 6, 0);
  if (!payload.empty()) std::memcpy(udp + 8, payload.data(), payload.size());
  // Pseudo-header: src, dst, zero+protocol, UDP length.
  uint32_t sum = ChecksumAdd(0, {ip + 12, 8});
  sum += kIpProtoUdp;
  sum += ulen;
  sum = ChecksumAdd(sum, {udp, ulen});
  uint16_t csum = ChecksumFinish(sum);
  Store16(udp + 6, csum == 0 ? 0xffff : csum);
  return len;
}

bool IsIcmpEchoRequest(const Frame& f) {
  return f.ipv4 && f.ipv4->protocol == kIpProtoIcmp && !f.ipv4->fragment &&
         f.ipv4->payload.size() >= 8 && f.ipv4->payload[0] == 8 && f.ipv4->payload[1] == 0;
}

size_t BuildIcmpEchoReply(std::span<uint8_t> out, const UdpEndpoints& ends,
                          std::span<const uint8_t> request) {
  const size_t ip_total = 20 + request.size();
  const size_t len = kEthernetHeaderLen + ip_total;
  if (request.size() < 8 || out.size() < len || len > kMaxFrameLen) return 0;
  uint8_t* p = out.data();
  std::memcpy(p, ends.dst_mac.data(), 6);
  std::memcpy(p + 6, ends.src_mac.data(), 6);
  Store16(p + 12, kEtherTypeIpv4);
  uint8_t* ip = p + kEthernetHeaderLen;
  ip[0] = 0x45;
  ip[1] = 0;
  Store16(ip + 2, static_cast<uint16_t>(ip_total));
  Store16(ip + 4, 0);
  Store16(ip + 6, 0x4000);
  ip[8] = 64;
  ip[9] = kIpProtoIcmp;
  Store16(ip + 10, 0);
  Store32(ip + 12, ends.src_ip);
  Store32(ip + 16, ends.dst_ip);
  Store16(ip + 10, ChecksumFinish(ChecksumAdd(0, {ip, 20})));
  uint8_t* icmp = ip + 20;
  std::memcpy(icmp, request.data(), request.size());
  icmp[0] = 0;  // echo reply
  icmp[1] = 0;
  Store16(icmp + 2, 0);
  Store16(icmp + 2, ChecksumFinish(ChecksumAdd(0, {icmp, request.size()})));
  return len;
}

}  // namespace vmgrid::vnet
