#include "vmm/json_util.h"

namespace vmgrid::vmm {

namespace {

// Returns false if brackets outside strings nest deeper than max_depth.
bool DepthWithin(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

}  // namespace

Result<nlohmann::json> ParseUntrustedJson(std::string_view text, int max_depth) {
  if (!DepthWithin(text, max_depth)) {
    return MakeError(ErrorCode::kInternal, "JSON nested deeper than " + std::to_string(max_depth));
  }
  try {
    nlohmann::json value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded()) return MakeError(ErrorCode::kInternal, "malformed JSON");
    return value;
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kInternal, std::string("malformed JSON: ") + e.what());
  }
}

Result<std::string> DumpJson(const nlohmann::json& value) {
  try {
    return value.dump();
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kInvalidArgument, std::string("cannot encode JSON: ") + e.what());
  }
}

const nlohmann::json* FindField(const nlohmann::json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

std::optional<std::string> GetString(const nlohmann::json& obj, const char* key) {
  const nlohmann::json* v = FindField(obj, key);
  if (v == nullptr || !v->is_string()) return std::nullopt;
  return v->get<std::string>();
}

std::optional<int64_t> GetInt(const nlohmann::json& obj, const char* key) {
  const nlohmann::json* v = FindField(obj, key);
  if (v == nullptr || !v->is_number_integer()) return std::nullopt;
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t{INT64_MAX}) return std::nullopt;
  return v->get<int64_t>();
}

std::optional<bool> GetBool(const nlohmann::json& obj, const char* key) {
  const nlohmann::json* v = FindField(obj, key);
  if (v == nullptr || !v->is_boolean()) return std::nullopt;
  return v->get<bool>();
}

}  // namespace vmgrid::vmm
