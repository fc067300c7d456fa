#include "vnet/dhcp.h"

#include <cstring>

namespace vmgrid::vnet {

namespace {

constexpr size_t kFixedLen = 236;  // op .. file
constexpr uint8_t kCookie[4] = {99, 130, 83, 99};

Error Bad(const std::string& what) {
  return MakeError(ErrorCode::kInvalidArgument, "dhcp: " + what);
}

}  // namespace

Result<DhcpRequest> ParseDhcpRequest(std::span<const uint8_t> p) {
  if (p.size() < kFixedLen + 4) return Bad("too short");
  if (p[0] != 1) return Bad("not a BOOTREQUEST");
  if (p[1] != 1 || p[2] != 6) return Bad("not Ethernet (htype/hlen)");
  if (std::memcmp(&p[kFixedLen], kCookie, 4) != 0) return Bad("no magic cookie");
  DhcpRequest r;
  r.xid = Load32(&p[4]);
  r.flags = Load16(&p[10]);
  r.ciaddr = Load32(&p[12]);
  std::memcpy(r.chaddr.data(), &p[28], 6);
  bool have_type = false, ended = false;
  size_t i = kFixedLen + 4;
  while (i < p.size()) {
    const uint8_t code = p[i];
    if (code == 0) {
      ++i;
      continue;
    }
    if (code == 255) {
      ended = true;
      break;
    }
    if (i + 1 >= p.size()) return Bad("option header past the end");
    const size_t len = p[i + 1];
    if (i + 2 + len > p.size()) return Bad("option " + std::to_string(code) + " past the end");
    const uint8_t* v = &p[i + 2];
    switch (code) {
      case 53:
        if (len != 1 || have_type) return Bad("bad or repeated message type");
        if (v[0] < 1 || v[0] > 8) return Bad("unknown message type");
        r.type = static_cast<DhcpType>(v[0]);
        have_type = true;
        break;
      case 50:
        if (len != 4) return Bad("bad requested address");
        r.requested_ip = Load32(v);
        break;
      case 54:
        if (len != 4) return Bad("bad server identifier");
        r.server_id = Load32(v);
        break;
      default:
        break;  // other options are skipped by their length
    }
    i += 2 + len;
  }
  if (!ended) return Bad("no end option");
  if (!have_type) return Bad("no message type");
  return r;
}

namespace {

// vector::insert trips GCC 12's -Warray-bounds (a false positive); append by hand.
void Append(std::vector<uint8_t>& out, const uint8_t* data, size_t n) {
  if (n == 0) return;
  const size_t at = out.size();
  out.resize(at + n);
  std::memcpy(&out[at], data, n);
}

void Option(std::vector<uint8_t>& out, uint8_t code, std::span<const uint8_t> value) {
  // Values longer than 255 are cut (only the domain/hostname could be, and
  // names are far shorter).
  const size_t len = value.size() > 255 ? 255 : value.size();
  out.push_back(code);
  out.push_back(static_cast<uint8_t>(len));
  Append(out, value.data(), len);
}

void Option32(std::vector<uint8_t>& out, uint8_t code, uint32_t v) {
  uint8_t b[4];
  Store32(b, v);
  Option(out, code, b);
}

void OptionText(std::vector<uint8_t>& out, uint8_t code, const std::string& s) {
  Option(out, code, {reinterpret_cast<const uint8_t*>(s.data()), s.size()});
}

}  // namespace

std::vector<uint8_t> BuildDhcpReply(const DhcpReply& r) {
  std::vector<uint8_t> out(kFixedLen, 0);
  out[0] = 2;  // BOOTREPLY
  out[1] = 1;
  out[2] = 6;
  Store32(&out[4], r.xid);
  Store16(&out[10], r.flags);
  Store32(&out[16], r.type == DhcpType::kNak ? 0 : r.yiaddr);
  Store32(&out[20], r.type == DhcpType::kNak ? 0 : r.server_id);  // siaddr
  std::memcpy(&out[28], r.chaddr.data(), 6);
  Append(out, kCookie, sizeof kCookie);
  const uint8_t type = static_cast<uint8_t>(r.type);
  Option(out, 53, {&type, 1});
  Option32(out, 54, r.server_id);
  if (r.type != DhcpType::kNak) {
    Option32(out, 51, r.lease_seconds);
    Option32(out, 58, r.lease_seconds / 2);
    Option32(out, 59, r.lease_seconds / 8 * 7);
    Option32(out, 1, r.subnet_mask);
    if (r.router) Option32(out, 3, *r.router);
    Option32(out, 6, r.dns_server);
    if (!r.domain.empty()) OptionText(out, 15, r.domain);
    if (!r.hostname.empty()) OptionText(out, 12, r.hostname);
    if (r.mtu != 0) {
      uint8_t m[2];
      Store16(m, r.mtu);
      Option(out, 26, m);
    }
  }
  out.push_back(255);
  if (out.size() < 300) out.resize(300, 0);
  return out;
}

}  // namespace vmgrid::vnet
