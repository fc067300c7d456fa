#include "api/ui_routes.h"

#include <algorithm>

#include "api/ui_assets.h"

namespace vmgrid {

namespace {

// No inline script or style, nothing from another origin; the pages talk
// only to this controller.
constexpr const char* kContentSecurityPolicy =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'";

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

std::string UiContentType(std::string_view name) {
  if (EndsWith(name, ".html")) return "text/html; charset=utf-8";
  if (EndsWith(name, ".js")) return "text/javascript; charset=utf-8";
  if (EndsWith(name, ".css")) return "text/css; charset=utf-8";
  if (EndsWith(name, ".svg")) return "image/svg+xml";
  if (EndsWith(name, ".png")) return "image/png";
  if (EndsWith(name, ".json")) return "application/json";
  return "application/octet-stream";
}

UiReply ServeUiFile(std::string_view name) {
  if (name.empty()) name = "index.html";
  auto assets = UiAssets();
  auto it =
      std::find_if(assets.begin(), assets.end(), [&](const UiAsset& a) { return a.name == name; });
  if (it == assets.end()) return {404, "text/plain; charset=utf-8", "not found\n"};
  return {200, UiContentType(it->name), it->body};
}

void SetUiSecurityHeaders(httplib::Response& res) {
  res.set_header("Content-Security-Policy", kContentSecurityPolicy);
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("X-Frame-Options", "DENY");
  res.set_header("Referrer-Policy", "no-referrer");
  res.set_header("Cross-Origin-Opener-Policy", "same-origin");
  // The files change with the binary; a browser asks again after an upgrade.
  res.set_header("Cache-Control", "no-cache");
}

void InstallUiRoutes(httplib::Server& server, const UiHandlerWrapper& wrap) {
  server.Get("/ui", wrap("/ui", [](const httplib::Request&, httplib::Response& res) {
               SetUiSecurityHeaders(res);
               res.set_redirect("/ui/", 301);
             }));
  server.Get(R"(/ui/(.*))", wrap("/ui/", [](const httplib::Request& req, httplib::Response& res) {
               SetUiSecurityHeaders(res);
               UiReply r = ServeUiFile(req.matches[1].str());
               res.status = r.status;
               res.set_content(r.body.data(), r.body.size(), r.content_type);
             }));
}

}  // namespace vmgrid
