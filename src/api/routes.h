// The controller's REST routes as data: every route Controller installs, the
// path under which src/api/openapi.json and docs/api.md document it, and the
// fields each JSON request body may hold. Handlers hand the same field lists
// to JsonFields, and openapi_test compares this table with the routes the
// controller really installs (Controller::installed_routes), with the OpenAPI
// document and with docs/api.md, so none of them can drift unnoticed.
//
// Adding a route: register it in Controller::InstallRoutes, add a RouteSpec
// here (and its body's field list, used by the handler), document it in
// openapi.json and docs/api.md; openapi_test says what is missing.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proto/host_report.h"

namespace vmgrid {

// Allow-lists of request bodies (JsonFields): the one list of what a handler
// accepts.
namespace request_fields {
inline constexpr const char* kCreateUser[] = {"name", "role"};
inline constexpr const char* kUserQuota[] = {"vms", "vcpus", "memory_mb", "image_bytes",
                                             "workspace_bytes"};
inline constexpr const char* kRegisterHost[] = {"name"};
// A heartbeat tolerates fields it does not know (agents may be newer than
// the controller); these are the ones it reads.
// The heartbeat is the agent's host report (proto/host_report.h).
inline constexpr auto& kHeartbeat = kHostReportFields;
inline constexpr auto& kHeartbeatCapacity = kHostCapacityFields;
inline constexpr const char* kCreateImage[] = {"name",       "format", "has_kernel",
                                               "has_initrd", "append", "min_memory_mb"};
inline constexpr const char* kImageCheckpoint[] = {"memory_mb", "vcpus"};
inline constexpr const char* kCreateVm[] = {
    "image",           "name",      "vcpus",           "memory_mb", "disk",
    "start",           "workspace", "from_checkpoint", "network",   "from_future",
    "policy",          "site",      "host_network",    "count",     "same",
    "total_memory_mb", "nets",      "restart",         "data"};
inline constexpr const char* kTotalMemory[] = {"min", "max"};
inline constexpr const char* kCreateNetwork[] = {"name", "subnet", "egress"};
inline constexpr const char* kShareNetwork[] = {"user"};
inline constexpr const char* kVmCheckpoint[] = {"leave_running"};
inline constexpr const char* kForward[] = {"nic", "guest_port", "listen_ip", "listen_port"};
inline constexpr const char* kExec[] = {"argv", "input", "timeout_s"};
// `vm cp` chunks (proto/guest_file.h parses them with these same fields).
inline constexpr const char* kFileRead[] = {"path", "offset", "length"};
inline constexpr const char* kFileWrite[] = {"path", "offset", "data"};
inline constexpr const char* kMigrateVm[] = {"to"};
inline constexpr const char* kDrainHost[] = {"parallel"};
// Dataset pushes (docs/datasets.md): one chunk, then the version's draft manifest.
inline constexpr const char* kDatasetChunk[] = {"data"};
inline constexpr const char* kDatasetVersion[] = {"kind", "size", "chunk_size", "chunks"};
inline constexpr const char* kShareDataset[] = {"user"};
// Grid jobs (docs/jobs.md): the job, its output, and each of its `data` list.
inline constexpr const char* kSubmitJob[] = {"image", "count",     "argv",    "resume",
                                             "vcpus", "memory_mb", "retries", "timeout_s",
                                             "data",  "output"};
inline constexpr const char* kJobOutput[] = {"dataset", "mount", "size_mb"};
inline constexpr const char* kJobData[] = {"name", "dataset", "version", "mount"};
inline constexpr const char* kQuery[] = {"sql", "set", "max_rows", "timeout_ms"};
inline constexpr const char* kSetQuery[] = {"from", "size", "same",  "sum",
                                            "min",  "max",  "where", "max_sets"};
}  // namespace request_fields

// A JSON object a handler reads from a request body: the body itself
// (`field` empty) or the object in one of its fields.
struct BodyObject {
  std::string_view field;
  std::span<const char* const> fields;
  // Unknown fields are refused (JsonFields::CheckUnknown); the schema must
  // then say additionalProperties: false and list exactly `fields`.
  bool strict = true;
};

struct RouteSpec {
  std::string_view method;           // GET, POST, PUT, DELETE
  std::string_view pattern;          // the cpp-httplib pattern it is registered with
  std::string_view doc_path;         // its path in openapi.json ({ref}, {name}, {id}, {kind})
  std::span<const BodyObject> body;  // empty: no JSON body is read
};

// Every route of the controller's main listener, in registration order.
std::span<const RouteSpec> ControllerRoutes();

// (method, pattern) of a route as installed.
using InstalledRoute = std::pair<std::string, std::string>;

// Forwards registrations to a cpp-httplib server and notes each one, so the
// routes a controller installs can be compared with ControllerRoutes().
template <class Server>
class RouteRecorder {
 public:
  RouteRecorder(Server& server, std::vector<InstalledRoute>* installed)
      : server_(server), installed_(installed) {}
  template <class H>
  void Get(const std::string& pattern, H&& h) {
    Note("GET", pattern);
    server_.Get(pattern, std::forward<H>(h));
  }
  template <class H>
  void Post(const std::string& pattern, H&& h) {
    Note("POST", pattern);
    server_.Post(pattern, std::forward<H>(h));
  }
  template <class H>
  void Put(const std::string& pattern, H&& h) {
    Note("PUT", pattern);
    server_.Put(pattern, std::forward<H>(h));
  }
  template <class H>
  void Delete(const std::string& pattern, H&& h) {
    Note("DELETE", pattern);
    server_.Delete(pattern, std::forward<H>(h));
  }

 private:
  void Note(const char* method, const std::string& pattern) {
    installed_->emplace_back(method, pattern);
  }
  Server& server_;
  std::vector<InstalledRoute>* installed_;
};

}  // namespace vmgrid
