// What a controller route is: a function of the authenticated caller and the
// request that parses the request, calls one service and returns its answer
// (a status and a JSON body) or an error — never writing an error by hand.
// The controller wraps each route with authentication, the role check and
// admission (RouteInstaller), and sends the answer or the error's JSON body.
#pragma once

#include <cstddef>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "api/routes.h"
#include "common/result.h"
#include "store/store.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace vmgrid {

// The authenticated caller of a route.
struct Caller {
  User user;
  bool admin() const { return user.role == "admin"; }
  OwnerFilter owner() const { return admin() ? "" : user.id; }
};

struct Reply {
  Reply() = default;
  Reply(int s, nlohmann::json b) : status(s), body(std::move(b)) {}
  // An answer whose body is JSON text already (sent instead of `body`):
  // assembled from cached pieces (GET /v1/vms).
  static Reply Text(int s, std::string t) {
    Reply r;
    r.status = s;
    r.text = std::move(t);
    return r;
  }

  int status = 200;
  nlohmann::json body;
  std::optional<std::string> text;
};

using Route = std::function<Result<Reply>(const Caller&, const httplib::Request&)>;

// Reads a request body in pieces, handing each to `receive` (which answers
// false to stop); false if the body could not be read whole. httplib's
// ContentReader is one.
using BodyReader = std::function<bool(const std::function<bool(const char*, size_t)>& receive)>;
// A route whose body is streamed (image uploads): it is called before a byte
// of the body is read, so a refusal is answered without reading it.
using StreamRoute =
    std::function<Result<Reply>(const Caller&, const httplib::Request&, const BodyReader&)>;

// Registers routes on a server: `Install` wraps `route` with authentication
// and a check that the caller's role is one of `roles`.
class RouteInstaller {
 public:
  virtual ~RouteInstaller() = default;
  virtual void Get(const std::string& pattern, Route route, std::set<std::string> roles) = 0;
  virtual void Post(const std::string& pattern, Route route, std::set<std::string> roles) = 0;
  virtual void Put(const std::string& pattern, Route route, std::set<std::string> roles) = 0;
  virtual void Delete(const std::string& pattern, Route route, std::set<std::string> roles) = 0;
  virtual void PutStream(const std::string& pattern, StreamRoute route,
                         std::set<std::string> roles) = 0;
};

inline const std::set<std::string> kUserRoles = {"admin", "user"};

}  // namespace vmgrid
