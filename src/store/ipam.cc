#include "store/ipam.h"

#include <arpa/inet.h>

#include <cstdio>

namespace vmgrid {

Result<Subnet> ParseSubnet(const std::string& cidr) {
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "subnet '" + cidr + "': " + why + " (expected e.g. 10.20.0.0/24)");
  };
  const size_t slash = cidr.find('/');
  if (slash == std::string::npos) return bad("no /PREFIX");
  const std::string addr = cidr.substr(0, slash), bits = cidr.substr(slash + 1);
  if (bits.empty() || bits.size() > 2 || bits.find_first_not_of("0123456789") != std::string::npos)
    return bad("the prefix is not a number");
  const int prefix = std::stoi(bits);
  if (prefix < kMinPrefix || prefix > kMaxPrefix)
    return bad("the prefix must be /" + std::to_string(kMinPrefix) + " to /" +
               std::to_string(kMaxPrefix));
  in_addr a{};
  if (addr.size() > 15 || inet_pton(AF_INET, addr.c_str(), &a) != 1)
    return bad("not an IPv4 address");
  const uint32_t base = ntohl(a.s_addr);
  const uint32_t mask = ~uint32_t{0} << (32 - prefix);
  if (base & ~mask)
    return bad("host bits are set; the network address is " + Ipv4String(base & mask));
  auto within = [&](uint32_t net, int len) {
    const uint32_t m = ~uint32_t{0} << (32 - len);
    return (base & m) == net && prefix >= len;
  };
  if (!within(0x0A000000, 8) && !within(0xAC100000, 12) && !within(0xC0A80000, 16) &&
      !within(0x64400000, 10))
    return bad(
        "not inside a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, "
        "100.64.0.0/10)");
  return Subnet{base, prefix};
}

std::string Ipv4String(uint32_t addr) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%u.%u.%u.%u", addr >> 24, (addr >> 16) & 255, (addr >> 8) & 255,
                addr & 255);
  return buf;
}

std::string FormatSubnet(const Subnet& s) {
  return Ipv4String(s.base) + "/" + std::to_string(s.prefix);
}

std::string HostAddress(const Subnet& s, uint32_t index) { return Ipv4String(s.base + index); }

std::string NicMac(int64_t vni, uint32_t index) {
  char buf[18];
  const auto v = static_cast<uint32_t>(vni) & 0xFFFFFF;
  std::snprintf(buf, sizeof buf, "0a:%02x:%02x:%02x:%02x:%02x", v >> 16, (v >> 8) & 255, v & 255,
                (index >> 8) & 255, index & 255);
  return buf;
}

}  // namespace vmgrid
