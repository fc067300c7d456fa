// Standard base64 (RFC 4648, padded, no line breaks) via OpenSSL's
// EVP_EncodeBlock/EVP_DecodeBlock, as used by the guest agent's *-b64 and
// *-data fields.
// Thread-safety: stateless; safe from any thread.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace vmgrid {

std::string Base64Encode(std::string_view data);

// Rejects anything that is not canonical padded base64 (kInternal: the data
// came from a peer that broke the protocol).
Result<std::string> Base64Decode(std::string_view text);

}  // namespace vmgrid
