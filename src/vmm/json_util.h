// Helpers for JSON that comes from an untrusted peer (QEMU, the guest agent):
// parsing that never throws and bounds nesting, and typed field access that
// never asserts on a wrong type.
// Thread-safety: stateless free functions; safe from any thread.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace vmgrid::vmm {

// Deep nesting is rejected before parsing because some json operations recurse
// and a hostile peer could otherwise exhaust the stack.
inline constexpr int kMaxJsonDepth = 64;

// Parses `text`; malformed input, bad UTF-8 or nesting deeper than
// `max_depth` yields kInternal (the peer violated the protocol).
Result<nlohmann::json> ParseUntrustedJson(std::string_view text, int max_depth = kMaxJsonDepth);

// Serializes a caller-built value; invalid UTF-8 in strings is an argument
// error rather than an exception.
Result<std::string> DumpJson(const nlohmann::json& value);

// Typed lookups on an object; nullopt/nullptr when `obj` is not an object, the
// key is missing, or the value has another type.
const nlohmann::json* FindField(const nlohmann::json& obj, const char* key);
std::optional<std::string> GetString(const nlohmann::json& obj, const char* key);
std::optional<int64_t> GetInt(const nlohmann::json& obj, const char* key);
std::optional<bool> GetBool(const nlohmann::json& obj, const char* key);

}  // namespace vmgrid::vmm
