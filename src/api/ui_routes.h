// The web portal at /ui/ (docs/portal.md): static files from the binary
// (api/ui_assets.h), served without authentication — they hold no data; the
// pages call the /v1 API with the user's bearer token like any client.
//
// Security: a request names a file only through a lookup in the embedded
// table (no file system, so no traversal); unknown names are 404; every
// answer carries the portal's security headers (a Content-Security-Policy
// without inline script, nosniff, no framing, no referrer).
#pragma once

#include <httplib.h>

#include <functional>
#include <string>
#include <string_view>

namespace vmgrid {

// What GET /ui/`name` answers: status, content type and body. `name` is
// the path after "/ui/" as httplib decoded it ("" = index.html).
struct UiReply {
  int status = 404;
  std::string content_type;
  std::string_view body;
};
UiReply ServeUiFile(std::string_view name);

// The Content-Type of an embedded file, from its extension.
std::string UiContentType(std::string_view name);

// Sets the portal's security headers on a response.
void SetUiSecurityHeaders(httplib::Response& res);

using UiHandlerWrapper =
    std::function<httplib::Server::Handler(const std::string& pattern, httplib::Server::Handler)>;

// Installs GET /ui (a redirect to /ui/) and GET /ui/NAME on `server`;
// `wrap` lets the controller time them like its other routes.
void InstallUiRoutes(httplib::Server& server, const UiHandlerWrapper& wrap);

}  // namespace vmgrid
