// The REST API's description against the code: api/routes.h must list the
// routes a controller really installs, src/api/openapi.json (as embedded and
// served) and docs/api.md must document exactly those routes, and each
// request schema must hold exactly the fields its handler accepts. Runs a
// controller in-process on SQLite and loopback (no agents, no QEMU).
#include "api/openapi.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "api/controller.h"
#include "api/routes.h"
#include "client/api_client.h"
#include "common/util.h"

namespace vmgrid {
namespace {

using nlohmann::json;
using MethodPath = std::pair<std::string, std::string>;

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return out;
}

json Document() { return json::parse(kOpenApiJson); }

// Follows a local "$ref" ("#/components/schemas/X").
const json& Resolve(const json& doc, const json& node) {
  if (!node.is_object() || !node.contains("$ref")) return node;
  std::string ref = node["$ref"];
  EXPECT_EQ(ref.rfind("#/", 0), 0u) << ref;
  return Resolve(doc, doc.at(json::json_pointer(ref.substr(1))));
}

std::set<std::string> Fields(std::span<const char* const> fields) {
  return {fields.begin(), fields.end()};
}

std::string Join(const std::set<std::string>& s) {
  std::string out;
  for (const auto& x : s) out += (out.empty() ? "" : ", ") + x;
  return out;
}

// "/v1/vms/{ref}" -> "/v1/vms/{}" (docs/api.md spells {kind} as its values).
std::string Blank(const std::string& path) {
  return std::regex_replace(path, std::regex(R"(\{[^}]*\})"), "{}");
}

TEST(OpenApiTest, RoutesMatchWhatTheControllerInstalls) {
  std::string dir = std::filesystem::temp_directory_path() / ("vmgrid-openapi-XXXXXX");
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  ControllerOptions o;
  o.listen = "127.0.0.1:0";
  o.state_dir = dir;
  o.tls.plain_http = true;
  o.http_threads = 16;
  Controller controller(o);
  auto st = controller.Start();
  ASSERT_TRUE(st.ok()) << st.error().message;

  std::multiset<MethodPath> installed(controller.installed_routes().begin(),
                                      controller.installed_routes().end());
  std::multiset<MethodPath> table;
  for (const RouteSpec& r : ControllerRoutes())
    table.emplace(std::string(r.method), std::string(r.pattern));
  for (const auto& r : installed)
    EXPECT_EQ(table.count(r), installed.count(r))
        << r.first << " " << r.second << " is installed but not in api/routes.h (or twice)";
  for (const auto& r : table)
    EXPECT_EQ(installed.count(r), 1u)
        << r.first << " " << r.second << " is in api/routes.h but not installed";

  // The parsers use the table's lists: a body with an unknown field is
  // refused naming exactly the allowed ones. Routes with path parameters
  // look their object up first, so only those without are asked.
  auto admin = ReadFile(dir + "/admin.token");
  auto agent = ReadFile(dir + "/agent.token");
  ASSERT_TRUE(admin.ok() && agent.ok());
  int probed = 0;
  for (const RouteSpec& r : ControllerRoutes()) {
    if (r.doc_path.find('{') != std::string_view::npos) continue;
    for (const BodyObject& b : r.body) {
      if (!b.strict) continue;
      json body = {{"zz_probe", 1}};
      if (!b.field.empty()) body = {{std::string(b.field), body}};
      if (r.doc_path == "/v1/query" && b.field == "set") body["sql"] = nullptr;
      std::string token = r.doc_path == "/v1/agent/register" ? *agent : *admin;
      token.erase(token.find_last_not_of("\n") + 1);
      ApiClient client(controller.url(), token);
      auto answer = r.method == "POST" ? client.Post(std::string(r.doc_path), body)
                                       : client.Put(std::string(r.doc_path), body);
      ASSERT_FALSE(answer.ok()) << r.method << " " << r.doc_path << " accepted " << body;
      const std::string& msg = answer.error().message;
      std::smatch m;
      if (!std::regex_search(msg, m,
                             std::regex(R"(unknown field 'zz_probe' \(allowed: ([^)]*)\))"))) {
        // Nested objects may be checked after other fields; top-level never.
        EXPECT_FALSE(b.field.empty()) << r.method << " " << r.doc_path << ": " << msg;
        continue;
      }
      EXPECT_EQ(m[1].str(), Join(Fields(b.fields)))
          << r.method << " " << r.doc_path << " " << b.field;
      ++probed;
    }
  }
  EXPECT_GE(probed, 5);
  controller.Shutdown();
  controller.Wait(std::chrono::seconds(5));
  std::filesystem::remove_all(dir);
}

TEST(OpenApiTest, EveryRouteIsInTheDocumentAndNothingElse) {
  json doc = Document();
  std::set<MethodPath> documented;
  for (const auto& [path, item] : doc["paths"].items())
    for (const auto& [method, op] : item.items())
      if (method != "parameters") documented.emplace(method, path);
  std::set<MethodPath> table;
  for (const RouteSpec& r : ControllerRoutes()) {
    MethodPath mp{Lower(r.method), std::string(r.doc_path)};
    table.insert(mp);
    EXPECT_TRUE(documented.count(mp)) << r.method << " " << r.doc_path << " is not in openapi.json";
  }
  for (const auto& mp : documented)
    EXPECT_TRUE(table.count(mp)) << mp.first << " " << mp.second
                                 << " is in openapi.json but the controller has no such route";
}

// A documented path, its parameters filled in, matches the registered
// pattern, and it has one parameter per capture group.
TEST(OpenApiTest, DocumentedPathsMatchTheirPatterns) {
  json doc = Document();
  for (const RouteSpec& r : ControllerRoutes()) {
    std::string path(r.doc_path);
    if (!doc["paths"].contains(path)) continue;  // reported above
    const json& item = doc["paths"][path];
    std::map<std::string, std::string> sample;
    auto params = item.value("parameters", json::array());
    auto more = item[Lower(r.method)].value("parameters", json::array());
    params.insert(params.end(), more.begin(), more.end());
    for (const auto& p : params) {
      const json& param = Resolve(doc, p);
      if (param.value("in", "") != "path") continue;
      const json& schema = param.contains("schema") ? Resolve(doc, param["schema"]) : param;
      sample[param["name"]] = schema.contains("enum") ? schema["enum"][0].get<std::string>() : "x1";
    }
    std::string filled = path;
    size_t groups = 0;
    for (std::smatch m; std::regex_search(filled, m, std::regex(R"(\{([^}]*)\})"));) {
      ASSERT_TRUE(sample.count(m[1])) << path << ": no path parameter '" << m[1] << "' described";
      filled = m.prefix().str() + sample[m[1]] + m.suffix().str();
      ++groups;
    }
    std::regex pattern{std::string(r.pattern)};
    EXPECT_TRUE(std::regex_match(filled, pattern)) << filled << " !~ " << r.pattern;
    EXPECT_EQ(pattern.mark_count(), groups) << r.pattern << " vs " << path;
  }
}

TEST(OpenApiTest, RequestSchemasHoldExactlyTheAcceptedFields) {
  json doc = Document();
  for (const RouteSpec& r : ControllerRoutes()) {
    SCOPED_TRACE(std::string(r.method) + " " + std::string(r.doc_path));
    if (!doc["paths"].contains(std::string(r.doc_path))) continue;  // reported above
    const json& op = doc["paths"][std::string(r.doc_path)][Lower(r.method)];
    const json* content = op.contains("requestBody") ? &op["requestBody"]["content"] : nullptr;
    if (r.body.empty()) {
      EXPECT_TRUE(content == nullptr || !content->contains("application/json"))
          << "documents a JSON body the handler does not read";
      continue;
    }
    ASSERT_TRUE(content != nullptr && content->contains("application/json")) << "no JSON body";
    const json& body = Resolve(doc, (*content)["application/json"]["schema"]);
    for (const BodyObject& b : r.body) {
      SCOPED_TRACE(b.field.empty() ? "body" : std::string(b.field));
      const std::string field(b.field);
      if (!field.empty() && !(body.contains("properties") && body["properties"].contains(field))) {
        ADD_FAILURE() << "no schema";
        continue;
      }
      const json& schema = field.empty() ? body : Resolve(doc, body["properties"][field]);
      std::set<std::string> props;
      const json properties = schema.value("properties", json::object());
      for (const auto& [k, v] : properties.items()) props.insert(k);
      EXPECT_EQ(Join(props), Join(Fields(b.fields)));
      const json required = schema.value("required", json::array());
      for (const auto& req : required)
        EXPECT_TRUE(props.count(req)) << "required field " << req << " is not a property";
      bool closed =
          schema.contains("additionalProperties") && schema["additionalProperties"] == false;
      EXPECT_EQ(closed, b.strict) << (b.strict ? "the handler refuses unknown fields"
                                               : "the handler ignores unknown fields");
    }
  }
}

// docs/api.md's endpoint table lists the same routes.
TEST(OpenApiTest, ApiMarkdownListsEveryRoute) {
  std::ifstream in(std::string(VMGRID_SOURCE_DIR) + "/docs/api.md");
  ASSERT_TRUE(in) << "docs/api.md";
  std::set<MethodPath> listed;
  std::regex row(R"(^\| (GET|POST|PUT|DELETE) \| (/[^ |\\]*(\\\|[^ |\\]*)*)( \([a-z]+\))? \|)");
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_search(line, m, row)) listed.emplace(m[1], Blank(m[2]));
  }
  std::set<MethodPath> table;
  for (const RouteSpec& r : ControllerRoutes())
    table.emplace(std::string(r.method), Blank(std::string(r.doc_path)));
  for (const auto& mp : table)
    EXPECT_TRUE(listed.count(mp)) << mp.first << " " << mp.second << " missing from docs/api.md";
  for (const auto& mp : listed)
    EXPECT_TRUE(table.count(mp)) << mp.first << " " << mp.second
                                 << " in docs/api.md but the controller has no such route";
}

}  // namespace
}  // namespace vmgrid
