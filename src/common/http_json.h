// JSON-over-HTTP conventions shared by the controller's and the agent's
// servers (cpp-httplib): the error body, status codes, bearer tokens and
// strict request-body parsing. Thread-safe (stateless).
#pragma once

#include <httplib.h>

#include <initializer_list>
#include <nlohmann/json.hpp>
#include <set>
#include <span>
#include <string>

#include "common/paging.h"
#include "common/result.h"

namespace vmgrid {

// Largest JSON request body accepted.
constexpr size_t kMaxJsonBody = 1 << 20;
// Deepest nesting of arrays/objects accepted in a request body.
constexpr int kMaxJsonDepth = 64;

int HttpStatusFor(ErrorCode code);
// Writes {"error":{"code":..., "message":...}} with the matching status.
void SendError(httplib::Response& res, const Error& error);
void SendJson(httplib::Response& res, int status, const nlohmann::json& body);
// The same for a body that is JSON text already.
void SendJsonText(httplib::Response& res, int status, std::string text);

// An exception escaping a handler (a bug) answers 500 with the JSON error
// body instead of an empty response, and httplib's own error answers (404
// without a route, 413) carry the JSON error body too.
void InstallJsonErrorHandlers(httplib::Server& server);

// "Bearer TOKEN" -> TOKEN, or "" when absent/malformed.
std::string BearerToken(const httplib::Request& req);
bool ConstantTimeEquals(const std::string& a, const std::string& b);

// Parses a JSON object body. An empty body gives {} when `allow_empty`.
// Rejects bodies over kMaxJsonBody, non-objects and malformed JSON with a
// message naming the problem (and the byte offset for syntax errors).
Result<nlohmann::json> ParseJsonObject(const std::string& body, bool allow_empty = true);

// Strict field access for request bodies: wrong types, out-of-range values
// and unknown fields are errors that name the field.
class JsonFields {
 public:
  JsonFields(const nlohmann::json& obj, std::initializer_list<const char*> allowed);
  // The same with a named list (api/routes.h keeps the controller's).
  JsonFields(const nlohmann::json& obj, std::span<const char* const> allowed);
  // Fails on the first field that is not in `allowed`.
  Status CheckUnknown() const;

  Result<std::string> String(const char* name, bool required, const std::string& def = "") const;
  Result<int64_t> Int(const char* name, int64_t def, int64_t min, int64_t max) const;
  Result<bool> Bool(const char* name, bool def) const;
  // One of `choices`.
  Result<std::string> Enum(const char* name, std::initializer_list<const char*> choices,
                           const std::string& def) const;
  Result<std::vector<std::string>> StringList(const char* name, bool required,
                                              size_t max_items) const;

 private:
  const nlohmann::json& obj_;
  std::set<std::string> allowed_;
};

// Query parameters, strictly: every parameter of `req` is one of `known`
// (else kInvalidArgument listing them); an integer parameter is decimal and
// in [min, max] (`def` when absent).
Status CheckQueryParams(const httplib::Request& req, std::initializer_list<const char*> known);
Result<int64_t> IntQueryParam(const httplib::Request& req, const std::string& name, int64_t def,
                              int64_t min, int64_t max);

// A list endpoint's page (docs/api.md, "Paging"): ?limit=1..kMaxPageLimit
// (default kMaxPageLimit) and ?cursor= (the previous page's `next`).
// Refuses any other parameter, as CheckQueryParams does.
constexpr int64_t kMaxPageLimit = 1000;
Result<PageRequest> PageQueryParams(const httplib::Request& req);
// Adds `next` to a list answer when there is a next page.
void AddNext(nlohmann::json& answer, const std::string& next);

// Names: 1-63 chars of [A-Za-z0-9._-], starting with a letter or digit.
Status ValidateName(const std::string& what, const std::string& name);

}  // namespace vmgrid
