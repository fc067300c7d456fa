// Address management of virtual networks (IPAM): IPv4 subnets in CIDR form,
// the addresses the Store hands out in them, and the MAC of each NIC. Pure
// functions; the Store keeps which addresses are taken (table nics).
//
// In a subnet of size N (prefix /16 to /28), host indexes 1 to
// kFirstVmIndex - 1 are the network's own (the switch answers as gateway,
// DHCP and DNS server from index 1: docs/vnet.md), and VMs get indexes
// kFirstVmIndex to N - 2 (N - 1 is the broadcast address).
#pragma once

#include <cstdint>
#include <string>

#include "common/result.h"

namespace vmgrid {

struct Subnet {
  uint32_t base = 0;  // network address, host order
  int prefix = 0;
  uint32_t size() const { return prefix == 0 ? 0 : uint32_t{1} << (32 - prefix); }
  // The highest host index a VM may have (the one before broadcast).
  uint32_t last_vm_index() const { return size() - 2; }
};

inline constexpr int kMinPrefix = 16;  // 65,536 addresses: a host index fits the MAC's 16 bits
inline constexpr int kMaxPrefix = 28;  // 16 addresses: room for a few VMs
inline constexpr uint32_t kFirstVmIndex = 10;

// Parses "A.B.C.D/P" (P in [kMinPrefix, kMaxPrefix]) of a private range
// (10/8, 172.16/12, 192.168/16, 100.64/10). The address must be the
// network's (no host bits set). Errors say what was wrong.
Result<Subnet> ParseSubnet(const std::string& cidr);
std::string FormatSubnet(const Subnet& s);

std::string Ipv4String(uint32_t addr);  // host order -> "a.b.c.d"
std::string HostAddress(const Subnet& s, uint32_t index);

// The MAC of the NIC with host index `index` on the network with tunnel id
// `vni` (24 bits): 0a:VV:VV:VV:II:II. 0x0a: unicast, locally administered.
std::string NicMac(int64_t vni, uint32_t index);

}  // namespace vmgrid
