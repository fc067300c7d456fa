// The web portal's static route (api/ui_routes.h) through a real controller
// (in-process, SQLite, plain HTTP on loopback): content types, the security
// headers on every answer, 404 for unknown names, traversal attempts sent as
// raw bytes (so no client normalizes them), /ui -> /ui/, and that /ui/ needs
// no token while /v1 still does. Also checks the embedded files themselves:
// no inline script and no HTML built from strings in the scripts.
#include "api/ui_routes.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <regex>
#include <string>

#include "api/controller.h"
#include "api/ui_assets.h"
#include "common/util.h"

namespace vmgrid {
namespace {

TEST(UiAssetsTest, EmbedsThePortal) {
  for (const char* name : {"index.html", "app.js", "api.js", "dom.js", "vms.js", "images.js",
                           "hosts.js", "queries.js", "networks.js", "chart.js", "style.css"}) {
    UiReply r = ServeUiFile(name);
    EXPECT_EQ(r.status, 200) << name;
    EXPECT_FALSE(r.body.empty()) << name;
  }
  EXPECT_EQ(ServeUiFile("").body, ServeUiFile("index.html").body);
  EXPECT_EQ(ServeUiFile("embed.cmake").status, 404);  // the build script is not shipped
}

TEST(UiAssetsTest, ContentTypes) {
  EXPECT_EQ(UiContentType("index.html"), "text/html; charset=utf-8");
  EXPECT_EQ(UiContentType("app.js"), "text/javascript; charset=utf-8");
  EXPECT_EQ(UiContentType("style.css"), "text/css; charset=utf-8");
  EXPECT_EQ(UiContentType("favicon.svg"), "image/svg+xml");
  EXPECT_EQ(UiContentType("x.bin"), "application/octet-stream");
}

// The CSP forbids inline script; the scripts put API data into the page with
// textContent and DOM calls only (docs/portal.md, "Security").
TEST(UiAssetsTest, NoInlineScriptAndNoHtmlFromStrings) {
  const std::regex inline_script(R"(<script(?![^>]*\bsrc=)[^>]*>)");
  const std::regex handler_attr(R"(<[^>]+\son[a-z]+\s*=)", std::regex::icase);
  for (const UiAsset& a : UiAssets()) {
    std::string body(a.body);
    if (a.name.ends_with(".html")) {
      EXPECT_FALSE(std::regex_search(body, inline_script)) << a.name;
      EXPECT_FALSE(std::regex_search(body, handler_attr)) << a.name;
      EXPECT_EQ(body.find("style="), std::string::npos) << a.name;
    }
    if (a.name.ends_with(".js")) {
      for (const char* sink : {"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                               "eval(", "new Function", "javascript:"}) {
        EXPECT_EQ(body.find(sink), std::string::npos) << a.name << " uses " << sink;
      }
    }
  }
}

class UiRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / "vmgrid-ui-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_.data()), nullptr);
    ControllerOptions o;
    o.listen = "127.0.0.1:0";
    o.state_dir = dir_;
    o.tls.plain_http = true;
    o.http_threads = 8;
    controller_ = std::make_unique<Controller>(o);
    auto st = controller_->Start();
    ASSERT_TRUE(st.ok()) << st.error().message;
    auto token = ReadFile(dir_ + "/admin.token");
    ASSERT_TRUE(token.ok());
    admin_token_ = *token;
    admin_token_.erase(admin_token_.find_last_not_of("\n") + 1);
    std::string url = controller_->url();  // http://127.0.0.1:PORT
    port_ = std::stoi(url.substr(url.rfind(':') + 1));
  }
  void TearDown() override {
    controller_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  struct Answer {
    int status = 0;
    std::string head;  // status line and headers, lower-cased
    std::string body;
  };
  // One request written as raw bytes (the target exactly as given).
  Answer Raw(const std::string& target, const std::string& extra_headers = "") {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    EXPECT_GE(fd, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    std::string req = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" +
                      extra_headers + "\r\n";
    EXPECT_EQ(::write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
    std::string all;
    char buf[16384];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) break;
      all.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    Answer ans;
    size_t end = all.find("\r\n\r\n");
    if (end == std::string::npos) return ans;
    ans.head = all.substr(0, end);
    for (auto& c : ans.head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    ans.body = all.substr(end + 4);
    if (ans.head.size() > 12) ans.status = std::stoi(ans.head.substr(9, 3));
    return ans;
  }
  static std::string Header(const Answer& a, const std::string& name) {
    std::smatch m;
    std::regex re("\r\n" + name + ": ([^\r]*)");
    return std::regex_search(a.head, m, re) ? m[1].str() : std::string();
  }
  static void ExpectSecurityHeaders(const Answer& a, const std::string& what) {
    std::string csp = Header(a, "content-security-policy");
    EXPECT_NE(csp.find("default-src 'self'"), std::string::npos) << what << ": " << csp;
    EXPECT_NE(csp.find("script-src 'self'"), std::string::npos) << what;
    EXPECT_EQ(csp.find("unsafe-inline"), std::string::npos) << what;
    EXPECT_EQ(csp.find("unsafe-eval"), std::string::npos) << what;
    EXPECT_NE(csp.find("frame-ancestors 'none'"), std::string::npos) << what;
    EXPECT_EQ(Header(a, "x-content-type-options"), "nosniff") << what;
    EXPECT_EQ(Header(a, "x-frame-options"), "deny") << what;
    EXPECT_EQ(Header(a, "referrer-policy"), "no-referrer") << what;
  }

  std::string dir_;
  std::unique_ptr<Controller> controller_;
  std::string admin_token_;
  int port_ = 0;
};

TEST_F(UiRoutesTest, ServesFilesWithTheirTypesAndHeaders) {
  struct Case {
    const char* path;
    const char* type;
  } cases[] = {{"/ui/", "text/html; charset=utf-8"},
               {"/ui/index.html", "text/html; charset=utf-8"},
               {"/ui/app.js", "text/javascript; charset=utf-8"},
               {"/ui/vms.js", "text/javascript; charset=utf-8"},
               {"/ui/style.css", "text/css; charset=utf-8"},
               {"/ui/favicon.svg", "image/svg+xml"}};
  for (const auto& c : cases) {
    Answer a = Raw(c.path);
    EXPECT_EQ(a.status, 200) << c.path;
    EXPECT_EQ(Header(a, "content-type"), c.type) << c.path;
    ExpectSecurityHeaders(a, c.path);
  }
  Answer index = Raw("/ui/");
  EXPECT_NE(index.body.find(R"(<script type="module" src="app.js">)"), std::string::npos);
}

TEST_F(UiRoutesTest, RedirectsUiToUiSlash) {
  Answer a = Raw("/ui");
  EXPECT_EQ(a.status, 301);
  EXPECT_EQ(Header(a, "location"), "/ui/");
  ExpectSecurityHeaders(a, "/ui");
}

TEST_F(UiRoutesTest, UnknownNamesAre404WithTheHeaders) {
  for (const char* path : {"/ui/nope.js", "/ui/INDEX.HTML", "/ui/app.js/", "/ui/sub/app.js",
                           "/ui/embed.cmake", "/ui/app.js%00.html"}) {
    Answer a = Raw(path);
    EXPECT_EQ(a.status, 404) << path;
    ExpectSecurityHeaders(a, path);
  }
}

TEST_F(UiRoutesTest, TraversalFindsNothing) {
  // What a traversal would reach: the admin token in the state directory,
  // the controller's database, files of the machine.
  for (const char* path :
       {"/ui/../admin.token", "/ui/..%2fadmin.token", "/ui/%2e%2e/admin.token",
        "/ui/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/ui/../../../../etc/passwd", "/ui//etc/passwd",
        "/ui/%2fetc%2fpasswd", "/ui/....//....//etc/passwd", "/ui/..\\..\\etc\\passwd",
        "/ui/./index.html/../../admin.token", "/ui/%252e%252e/admin.token"}) {
    Answer a = Raw(path);
    EXPECT_NE(a.status, 200) << path;
    EXPECT_EQ(a.body.find(admin_token_), std::string::npos) << path;
    EXPECT_EQ(a.body.find("root:"), std::string::npos) << path;
  }
}

TEST_F(UiRoutesTest, PortalNeedsNoTokenButTheApiStillDoes) {
  EXPECT_EQ(Raw("/ui/").status, 200);
  EXPECT_EQ(Raw("/v1/vms").status, 401);
  EXPECT_EQ(Raw("/v1/whoami").status, 401);
  EXPECT_EQ(Raw("/v1/vms", "Authorization: Bearer " + admin_token_ + "\r\n").status, 200);
  // A token sent to /ui/ changes nothing and is not needed.
  Answer with = Raw("/ui/", "Authorization: Bearer " + admin_token_ + "\r\n");
  EXPECT_EQ(with.status, 200);
  EXPECT_EQ(with.body, Raw("/ui/").body);
}

}  // namespace
}  // namespace vmgrid
