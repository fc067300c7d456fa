#include "common/http_json.h"

#include <algorithm>
#include <charconv>

namespace vmgrid {

int HttpStatusFor(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return 400;
    case ErrorCode::kUnauthenticated:
      return 401;
    case ErrorCode::kPermissionDenied:
      return 403;
    case ErrorCode::kNotFound:
      return 404;
    case ErrorCode::kAlreadyExists:
    case ErrorCode::kFailedPrecondition:
    case ErrorCode::kResourceExhausted:
      return 409;
    case ErrorCode::kUnavailable:
      return 503;
    case ErrorCode::kTimeout:
      return 504;
    case ErrorCode::kTooManyRequests:
      return 429;
    case ErrorCode::kInternal:
      return 500;
  }
  return 500;
}

void SendJson(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  if (status == 204) return;
  res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n",
                  "application/json");
}

void SendJsonText(httplib::Response& res, int status, std::string text) {
  res.status = status;
  if (status == 204) return;
  // What set_content does, without copying a list of hundreds of kilobytes.
  text += '\n';
  res.body = std::move(text);
  res.set_header("Content-Type", "application/json");
}

void SendError(httplib::Response& res, const Error& error) {
  if (error.code == ErrorCode::kTooManyRequests)
    res.set_header("Retry-After", std::to_string(std::max(1, error.retry_after_s)));
  SendJson(res, HttpStatusFor(error.code),
           {{"error", {{"code", ErrorCodeName(error.code)}, {"message", error.message}}}});
}

void InstallJsonErrorHandlers(httplib::Server& server) {
  server.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        SendError(res, MakeError(ErrorCode::kInternal, "internal error: " + what));
      });
  // Answers httplib produces itself (no route, body too large) get the same
  // JSON error body as ours.
  server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404)
      SendError(
          res, MakeError(ErrorCode::kNotFound, "no such endpoint: " + req.method + " " + req.path));
    else if (res.status == 413)
      SendJson(res, 413,
               {{"error", {{"code", "payload_too_large"}, {"message", "request body too large"}}}});
    else if (res.status >= 400)
      SendJson(res, res.status,
               nlohmann::json{{"error",
                               {{"code", res.status < 500 ? "invalid_argument" : "internal"},
                                {"message", "HTTP " + std::to_string(res.status)}}}});
  });
}

std::string BearerToken(const httplib::Request& req) {
  std::string h = req.get_header_value("Authorization");
  const std::string prefix = "Bearer ";
  if (h.size() <= prefix.size() || h.compare(0, prefix.size(), prefix) != 0) return "";
  return h.substr(prefix.size());
}

bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

Status CheckQueryParams(const httplib::Request& req, std::initializer_list<const char*> known) {
  for (const auto& [name, value] : req.params) {
    bool ok = false;
    std::string list;
    for (const char* k : known) {
      ok = ok || name == k;
      list += (list.empty() ? "" : ", ") + std::string(k);
    }
    if (!ok)
      return MakeError(ErrorCode::kInvalidArgument,
                       "unknown query parameter '" + name + "' (known: " + list + ")");
  }
  return Status::Ok();
}

Result<int64_t> IntQueryParam(const httplib::Request& req, const std::string& name, int64_t def,
                              int64_t min, int64_t max) {
  if (!req.has_param(name)) return def;
  const std::string v = req.get_param_value(name);
  int64_t out = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || end != v.data() + v.size())
    return MakeError(ErrorCode::kInvalidArgument, "'" + name + "' must be an integer");
  if (out < min || out > max)
    return MakeError(ErrorCode::kInvalidArgument, "'" + name + "' must be " + std::to_string(min) +
                                                      " to " + std::to_string(max));
  return out;
}

Result<PageRequest> PageQueryParams(const httplib::Request& req) {
  VMG_RETURN_IF_ERROR(CheckQueryParams(req, {"limit", "cursor"}));
  for (const char* name : {"limit", "cursor"})
    if (req.get_param_value_count(name) > 1)
      return MakeError(ErrorCode::kInvalidArgument, std::string("give '") + name + "' once");
  PageRequest page;
  VMG_ASSIGN_OR_RETURN(page.limit, IntQueryParam(req, "limit", kMaxPageLimit, 1, kMaxPageLimit));
  if (req.has_param("cursor"))
    VMG_RETURN_IF_ERROR(DecodeCursor(req.get_param_value("cursor"), page));
  return page;
}

void AddNext(nlohmann::json& answer, const std::string& next) {
  if (!next.empty()) answer["next"] = next;
}

Result<nlohmann::json> ParseJsonObject(const std::string& body, bool allow_empty) {
  if (body.size() > kMaxJsonBody)
    return MakeError(ErrorCode::kInvalidArgument,
                     "request body is larger than " + std::to_string(kMaxJsonBody) + " bytes");
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) {
    if (allow_empty) return nlohmann::json::object();
    return MakeError(ErrorCode::kInvalidArgument,
                     "request body is empty; a JSON object is required");
  }
  // Deeply nested documents would overflow the stack when copied or
  // destroyed (both recurse); no request of ours nests more than a few levels.
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        return MakeError(ErrorCode::kInvalidArgument,
                         "JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  try {
    auto j = nlohmann::json::parse(body);
    if (!j.is_object())
      return MakeError(ErrorCode::kInvalidArgument,
                       std::string("request body must be a JSON object, not ") + j.type_name());
    return j;
  } catch (const nlohmann::json::parse_error& e) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "malformed JSON at byte " + std::to_string(e.byte) + ": " + e.what());
  } catch (const nlohmann::json::exception& e) {
    // e.g. a number too large for a double
    return MakeError(ErrorCode::kInvalidArgument, std::string("unusable JSON: ") + e.what());
  }
}

JsonFields::JsonFields(const nlohmann::json& obj, std::initializer_list<const char*> allowed)
    : obj_(obj) {
  for (const char* a : allowed) allowed_.insert(a);
}

JsonFields::JsonFields(const nlohmann::json& obj, std::span<const char* const> allowed)
    : obj_(obj) {
  for (const char* a : allowed) allowed_.insert(a);
}

Status JsonFields::CheckUnknown() const {
  for (const auto& [k, v] : obj_.items()) {
    if (!allowed_.count(k)) {
      std::string list;
      for (const auto& a : allowed_) list += (list.empty() ? "" : ", ") + a;
      return MakeError(ErrorCode::kInvalidArgument,
                       "unknown field '" + k + "' (allowed: " + list + ")");
    }
  }
  return Status::Ok();
}

Result<std::string> JsonFields::String(const char* name, bool required,
                                       const std::string& def) const {
  auto it = obj_.find(name);
  if (it == obj_.end() || it->is_null()) {
    if (required)
      return MakeError(ErrorCode::kInvalidArgument,
                       std::string("field '") + name + "' is required");
    return def;
  }
  if (!it->is_string())
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string("field '") + name + "' must be a string, not " + it->type_name());
  return it->get<std::string>();
}

Result<int64_t> JsonFields::Int(const char* name, int64_t def, int64_t min, int64_t max) const {
  auto it = obj_.find(name);
  if (it == obj_.end() || it->is_null()) return def;
  if (!it->is_number_integer())
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string("field '") + name + "' must be an integer, not " +
                         (it->is_number() ? "a fraction" : it->type_name()));
  int64_t v = it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                  ? INT64_MAX
                  : it->get<int64_t>();
  if (v < min || v > max)
    return MakeError(ErrorCode::kInvalidArgument, std::string("field '") + name + "' is " +
                                                      std::to_string(v) + "; it must be between " +
                                                      std::to_string(min) + " and " +
                                                      std::to_string(max));
  return v;
}

Result<bool> JsonFields::Bool(const char* name, bool def) const {
  auto it = obj_.find(name);
  if (it == obj_.end() || it->is_null()) return def;
  if (!it->is_boolean())
    return MakeError(
        ErrorCode::kInvalidArgument,
        std::string("field '") + name + "' must be true or false, not " + it->type_name());
  return it->get<bool>();
}

Result<std::string> JsonFields::Enum(const char* name, std::initializer_list<const char*> choices,
                                     const std::string& def) const {
  VMG_ASSIGN_OR_RETURN(std::string v, String(name, false, def));
  std::string list;
  for (const char* c : choices) {
    if (v == c) return v;
    list += (list.empty() ? "" : ", ") + std::string(c);
  }
  return MakeError(ErrorCode::kInvalidArgument,
                   std::string("field '") + name + "' is '" + v + "'; it must be one of: " + list);
}

Result<std::vector<std::string>> JsonFields::StringList(const char* name, bool required,
                                                        size_t max_items) const {
  auto it = obj_.find(name);
  if (it == obj_.end() || it->is_null()) {
    if (required)
      return MakeError(ErrorCode::kInvalidArgument,
                       std::string("field '") + name + "' is required");
    return std::vector<std::string>{};
  }
  if (!it->is_array())
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string("field '") + name + "' must be an array of strings");
  if (it->size() > max_items)
    return MakeError(
        ErrorCode::kInvalidArgument,
        std::string("field '") + name + "' has more than " + std::to_string(max_items) + " items");
  std::vector<std::string> out;
  for (const auto& e : *it) {
    if (!e.is_string())
      return MakeError(ErrorCode::kInvalidArgument,
                       std::string("field '") + name + "' must contain only strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

Status ValidateName(const std::string& what, const std::string& name) {
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument, what + " name '" + name + "' " + why);
  };
  if (name.empty() || name.size() > 63) return bad("must be 1 to 63 characters long");
  if (!isalnum(static_cast<unsigned char>(name[0])))
    return bad("must start with a letter or digit");
  for (char c : name)
    if (!isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
      return bad("may contain only letters, digits, '-', '_' and '.'");
  return Status::Ok();
}

}  // namespace vmgrid
