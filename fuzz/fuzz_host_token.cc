// fuzz_host_token: HostCredentials::VerifyHostToken, which parses the bearer
// token of every heartbeat before anything else looks at the request.
// Oracles: no crash; a token is accepted only as exactly the credential the
// controller issues for the name it carries; that name is a valid host name.
#include <cstdint>
#include <string>

#include "api/host_credentials.h"
#include "common/http_json.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const vmgrid::HostCredentials* creds = [] {
    auto c = vmgrid::HostCredentials::Open(vmgrid::fuzz::ScratchDir() + "/host-credential.key");
    FUZZ_CHECK(c.ok(), c.ok() ? "" : c.error().message);
    return new vmgrid::HostCredentials(std::move(c).value());
  }();
  const std::string token(reinterpret_cast<const char*>(data), size);
  auto name = creds->VerifyHostToken(token);
  vmgrid::fuzz::Trace("verify", name.has_value(), name.value_or(""));
  if (name) {
    FUZZ_CHECK(vmgrid::ValidateName("host", *name).ok(), *name);
    FUZZ_CHECK(creds->HostToken(*name) == token, token);
  }
  // Round trip: what is issued is accepted, for the input as a name too.
  if (vmgrid::ValidateName("host", token).ok())
    FUZZ_CHECK(creds->VerifyHostToken(creds->HostToken(token)) == token, token);
  return 0;
}
