#include "vnet/dns.h"

#include <cstring>

namespace vmgrid::vnet {

namespace {

Error Bad(const std::string& what) {
  return MakeError(ErrorCode::kInvalidArgument, "dns: " + what);
}

// vector::insert trips GCC 12's -Warray-bounds (a false positive); append by hand.
void Append(std::vector<uint8_t>& out, const uint8_t* data, size_t n) {
  if (n == 0) return;
  const size_t at = out.size();
  out.resize(at + n);
  std::memcpy(&out[at], data, n);
}

bool NameByteOk(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

}  // namespace

Result<DnsQuery> ParseDnsQuery(std::span<const uint8_t> p) {
  if (p.size() < 12) return Bad("shorter than a header");
  DnsQuery q;
  q.id = Load16(&p[0]);
  const uint16_t flags = Load16(&p[2]);
  if (flags & 0x8000) return Bad("not a query");
  if (((flags >> 11) & 0xf) != 0) return Bad("opcode is not QUERY");
  if (flags & 0x0200) return Bad("truncated query");
  q.recursion_desired = (flags & 0x0100) != 0;
  if (Load16(&p[4]) != 1) return Bad("not exactly one question");
  if (Load16(&p[6]) != 0 || Load16(&p[8]) != 0) return Bad("answer/authority records in a query");
  if (Load16(&p[10]) > 1) return Bad("more than one additional record");
  size_t i = 12;
  while (true) {
    if (i >= p.size()) return Bad("name past the end");
    const uint8_t len = p[i];
    if (len == 0) {
      ++i;
      break;
    }
    if (len & 0xc0) return Bad("compressed or extended label in the question");
    if (i + 1 + len > p.size()) return Bad("label past the end");
    if (!q.name.empty()) q.name.push_back('.');
    for (size_t k = 0; k < len; ++k) {
      uint8_t c = p[i + 1 + k];
      if (!NameByteOk(c)) return Bad("bad byte in name");
      if (c >= 'A' && c <= 'Z') c = static_cast<uint8_t>(c - 'A' + 'a');
      q.name.push_back(static_cast<char>(c));
    }
    if (q.name.size() > 253) return Bad("name too long");
    i += 1 + len;
  }
  if (q.name.empty()) return Bad("empty name");
  if (i + 4 > p.size()) return Bad("question past the end");
  q.qtype = Load16(&p[i]);
  q.qclass = Load16(&p[i + 2]);
  i += 4;
  q.question = p.subspan(12, i - 12);
  return q;
}

std::vector<uint8_t> BuildDnsResponse(const DnsQuery& query, DnsRcode rcode,
                                      std::optional<Ipv4Addr> answer, uint32_t ttl_seconds) {
  const bool with_answer = rcode == DnsRcode::kNoError && answer.has_value();
  std::vector<uint8_t> out(12, 0);
  Store16(&out[0], query.id);
  uint16_t flags = 0x8000 | 0x0400 | 0x0080;  // QR, AA, RA
  if (query.recursion_desired) flags |= 0x0100;
  flags |= static_cast<uint16_t>(rcode);
  Store16(&out[2], flags);
  Store16(&out[4], query.question.empty() ? 0 : 1);
  Store16(&out[6], with_answer ? 1 : 0);
  Append(out, query.question.data(), query.question.size());
  if (with_answer) {
    uint8_t rr[16];
    Store16(rr, 0xc00c);  // pointer to the question's name
    Store16(rr + 2, kDnsTypeA);
    Store16(rr + 4, kDnsClassIn);
    Store32(rr + 6, ttl_seconds);
    Store16(rr + 10, 4);
    Store32(rr + 12, *answer);
    Append(out, rr, sizeof rr);
  }
  return out;
}

}  // namespace vmgrid::vnet
