// The DNS responder's wire format (RFC 1035): a strict parser for the one
// kind of query the switch answers (a standard query with exactly one
// question, uncompressed name) and the response builder. Which names exist
// is the switch's business (VirtualSwitch); this file only speaks the format.
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

inline constexpr uint16_t kDnsTypeA = 1;
inline constexpr uint16_t kDnsClassIn = 1;

struct DnsQuery {
  uint16_t id = 0;
  bool recursion_desired = false;
  std::string name;  // lower-cased, labels joined by '.', no trailing dot
  uint16_t qtype = 0;
  uint16_t qclass = 0;
  // The question section as received (echoed in the response).
  std::span<const uint8_t> question;
};

// Refused (error): shorter than a header, a response (QR=1), an opcode other
// than QUERY, TC set, QDCOUNT != 1, answer or authority records, more than
// one additional record (one EDNS OPT is tolerated and ignored), a label
// longer than 63 or a compression pointer in the question, a name longer than
// 253 characters, a name with bytes other than letters, digits, '-' and '_',
// or a question past the end.
Result<DnsQuery> ParseDnsQuery(std::span<const uint8_t> payload);

enum class DnsRcode : uint8_t { kNoError = 0, kFormErr = 1, kServFail = 2, kNxDomain = 3 };

// The response to `query`: the question echoed, AA and RA as given, and one A
// record for `answer` (only when rcode is kNoError and answer is set).
std::vector<uint8_t> BuildDnsResponse(const DnsQuery& query, DnsRcode rcode,
                                      std::optional<Ipv4Addr> answer, uint32_t ttl_seconds);

}  // namespace vmgrid::vnet
