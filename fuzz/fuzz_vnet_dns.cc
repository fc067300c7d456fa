// fuzz_vnet_dns: ParseDnsQuery, the switch's reading of a guest's DNS query
// (src/vnet/dns.h). Oracles: no read outside the input (ASan); an accepted
// query has a lower-case name of at most 253 bytes from [a-z0-9-_.] whose
// question section lies inside the input; the response echoes id and
// question.
#include <cstdint>
#include <cstring>

#include "fuzz_common.h"
#include "vnet/dns.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmgrid::vnet;
  auto q = ParseDnsQuery({data, size});
  vmgrid::fuzz::Trace("dns", q.ok(), q.ok() ? q->name : q.error().message);
  if (!q.ok()) return 0;
  FUZZ_CHECK(!q->name.empty() && q->name.size() <= 253, q->name);
  for (char c : q->name)
    FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.',
               q->name);
  FUZZ_CHECK(q->question.data() == data + 12 && 12 + q->question.size() <= size, "question span");
  auto r = BuildDnsResponse(*q, DnsRcode::kNoError, 0x0a000001, 10);
  FUZZ_CHECK(r.size() == 12 + q->question.size() + 16, "response size");
  FUZZ_CHECK(Load16(&r[0]) == q->id, "id");
  FUZZ_CHECK(std::memcmp(&r[12], q->question.data(), q->question.size()) == 0, "question echo");
  return 0;
}
