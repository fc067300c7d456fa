// Frames and messages a guest would send, built by hand for the vnet tests.
#pragma once

#include <cstring>
#include <string>
#include <vector>

#include "vnet/frame.h"

namespace vmgrid::vnet::testing {

inline MacAddr Mac(uint8_t last) { return {0x52, 0x54, 0x00, 0x00, 0x00, last}; }
inline Ipv4Addr Ip(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return Ipv4Addr{a} << 24 | Ipv4Addr{b} << 16 | Ipv4Addr{c} << 8 | d;
}

inline std::vector<uint8_t> ArpFrame(uint16_t op, const MacAddr& eth_src, const MacAddr& eth_dst,
                                     const MacAddr& sender_mac, Ipv4Addr sender_ip,
                                     Ipv4Addr target_ip, const MacAddr& target_mac = {}) {
  std::vector<uint8_t> f(42, 0);
  std::memcpy(&f[0], eth_dst.data(), 6);
  std::memcpy(&f[6], eth_src.data(), 6);
  Store16(&f[12], kEtherTypeArp);
  Store16(&f[14], 1);
  Store16(&f[16], kEtherTypeIpv4);
  f[18] = 6;
  f[19] = 4;
  Store16(&f[20], op);
  std::memcpy(&f[22], sender_mac.data(), 6);
  Store32(&f[28], sender_ip);
  std::memcpy(&f[32], target_mac.data(), 6);
  Store32(&f[38], target_ip);
  return f;
}

inline std::vector<uint8_t> ArpRequest(const MacAddr& mac, Ipv4Addr ip, Ipv4Addr target) {
  return ArpFrame(1, mac, kBroadcastMac, mac, ip, target);
}

inline std::vector<uint8_t> UdpFrame(const MacAddr& src_mac, const MacAddr& dst_mac,
                                     Ipv4Addr src_ip, Ipv4Addr dst_ip, uint16_t sport,
                                     uint16_t dport, const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> f(kMaxFrameLen);
  UdpEndpoints e{src_mac, dst_mac, src_ip, dst_ip, sport, dport};
  f.resize(BuildUdpFrame(f, e, payload));
  return f;
}

inline std::vector<uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }

// A DHCP client message as udhcpc/dhclient send it.
inline std::vector<uint8_t> DhcpClientMessage(uint8_t type, const MacAddr& chaddr, uint32_t xid,
                                              Ipv4Addr requested = 0, Ipv4Addr server = 0,
                                              uint16_t flags = 0) {
  std::vector<uint8_t> m(236, 0);
  m[0] = 1;
  m[1] = 1;
  m[2] = 6;
  Store32(&m[4], xid);
  Store16(&m[10], flags);
  std::memcpy(&m[28], chaddr.data(), 6);
  for (uint8_t b : {99, 130, 83, 99}) m.push_back(b);
  m.insert(m.end(), {53, 1, type});
  m.insert(m.end(), {61, 7, 1});  // client identifier: htype + MAC
  m.insert(m.end(), chaddr.begin(), chaddr.end());
  if (requested) {
    m.insert(m.end(), {50, 4, 0, 0, 0, 0});
    Store32(&m[m.size() - 4], requested);
  }
  if (server) {
    m.insert(m.end(), {54, 4, 0, 0, 0, 0});
    Store32(&m[m.size() - 4], server);
  }
  m.insert(m.end(), {55, 4, 1, 3, 6, 15});  // parameter request list
  m.push_back(255);
  m.resize(300, 0);
  return m;
}

inline std::vector<uint8_t> DnsQueryMessage(uint16_t id, const std::string& name,
                                            uint16_t qtype = 1) {
  std::vector<uint8_t> m = {0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
  Store16(&m[0], id);
  size_t start = 0;
  while (start <= name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    m.push_back(static_cast<uint8_t>(dot - start));
    m.insert(m.end(), name.begin() + static_cast<long>(start),
             name.begin() + static_cast<long>(dot));
    start = dot + 1;
  }
  m.push_back(0);
  m.insert(m.end(), {0, 0, 0, 1});
  Store16(&m[m.size() - 4], qtype);
  return m;
}

}  // namespace vmgrid::vnet::testing
