#include "api/routes/dataset_routes.h"

#include <httplib.h>

#include <charconv>

#include "api/routes.h"
#include "api/services/dataset_service.h"
#include "chunks/manifest.h"
#include "common/base64.h"
#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

namespace {

// A version in a path: 0 (the latest, where allowed) or 1..2^53.
Result<int64_t> ParseVersion(const std::string& s, bool allow_latest) {
  int64_t v = -1;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < (allow_latest ? 0 : 1) ||
      v > static_cast<int64_t>(kMaxManifestVersion))
    return MakeError(ErrorCode::kInvalidArgument, "bad version '" + s + "'");
  return v;
}

}  // namespace

void InstallDatasetRoutes(RouteInstaller& s, DatasetService& datasets) {
  s.Get(
      "/v1/datasets",
      [&datasets](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(PageRequest page, PageQueryParams(req));
        VMG_ASSIGN_OR_RETURN(json list, datasets.List(c, page));
        return Reply{200, list};
      },
      kUserRoles);
  // A ref where another user's dataset may be named: OWNER/NAME (docs/datasets.md, "Sharing").
  s.Get(R"(/v1/datasets/((?:[^/]+/)?[^/]+))",
        [&datasets](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(json d, datasets.Get(c, req.matches[1]));
          return Reply{200, d};
        },
        kUserRoles);
  s.Delete(R"(/v1/datasets/((?:[^/]+/)?[^/]+))",
           [&datasets](const Caller& c, const Req& req) -> Result<Reply> {
             VMG_RETURN_IF_ERROR(datasets.Delete(c, req.matches[1], std::nullopt));
             return Reply{204, nullptr};
           },
           kUserRoles);
  s.Delete(R"(/v1/datasets/([^/]+)/versions/([^/]+))",
           [&datasets](const Caller& c, const Req& req) -> Result<Reply> {
             VMG_ASSIGN_OR_RETURN(int64_t v, ParseVersion(req.matches[2], false));
             VMG_RETURN_IF_ERROR(datasets.Delete(c, req.matches[1], v));
             return Reply{204, nullptr};
           },
           kUserRoles);
  // `data share NAME USER` / `data unshare NAME USER`: read-only access for a named user.
  for (bool share : {true, false})
    s.Post(
        share ? R"(/v1/datasets/([^/]+)/share)" : R"(/v1/datasets/([^/]+)/unshare)",
        [&datasets, share](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
          JsonFields f(body, request_fields::kShareDataset);
          VMG_RETURN_IF_ERROR(f.CheckUnknown());
          VMG_ASSIGN_OR_RETURN(std::string user, f.String("user", true));
          VMG_ASSIGN_OR_RETURN(json d, datasets.Share(c, req.matches[1], user, share));
          return Reply{200, d};
        },
        kUserRoles);
  // `data commit VM NAME`: a VM's read-write attachment as the next version.
  s.Post(R"(/v1/vms/([^/]+)/data/((?:[^/]+/)?[^/]+)/commit)",
         [&datasets](const Caller& c, const Req& req) -> Result<Reply> {
           if (!req.body.empty()) {
             json body = json::parse(req.body, nullptr, false);
             if (!body.is_object() || !body.empty())
               return MakeError(ErrorCode::kInvalidArgument,
                                "a commit takes no body (or an empty object)");
           }
           VMG_ASSIGN_OR_RETURN(json op, datasets.Commit(c, req.matches[1], req.matches[2]));
           return Reply{202, op};
         },
         kUserRoles);
  s.Post(R"(/v1/datasets/([^/]+)/chunks)",
         [&datasets](const Caller& c, const Req& req) -> Result<Reply> {
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
           JsonFields f(body, request_fields::kDatasetChunk);
           VMG_RETURN_IF_ERROR(f.CheckUnknown());
           VMG_ASSIGN_OR_RETURN(std::string b64, f.String("data", true));
           auto data = Base64Decode(b64);
           if (!data.ok()) return MakeError(ErrorCode::kInvalidArgument, "data is not base64");
           VMG_ASSIGN_OR_RETURN(json out, datasets.PutChunk(c, req.matches[1], *data));
           return Reply{200, out};
         },
         kUserRoles);
  s.Post(R"(/v1/datasets/([^/]+)/versions)",
         [&datasets](const Caller& c, const Req& req) -> Result<Reply> {
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
           JsonFields f(body, request_fields::kDatasetVersion);
           VMG_RETURN_IF_ERROR(f.CheckUnknown());
           VMG_ASSIGN_OR_RETURN(std::string kind, f.Enum("kind", {"file", "dir"}, ""));
           if (kind.empty()) return MakeError(ErrorCode::kInvalidArgument, "kind is required");
           // The manifest's own strict parser checks size, chunk_size and chunks.
           json draft = json::object();
           for (const char* k : {"size", "chunk_size", "chunks"})
             if (body.contains(k)) draft[k] = body[k];
           VMG_ASSIGN_OR_RETURN(Manifest m, ParseManifestDraftJson(draft.dump()));
           VMG_ASSIGN_OR_RETURN(json out, datasets.Publish(c, req.matches[1], kind, std::move(m)));
           return Reply{201, out};
         },
         kUserRoles);
  s.Get(R"(/v1/datasets/((?:[^/]+/)?[^/]+)/versions/([^/]+)/manifest)",
        [&datasets](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(int64_t v, ParseVersion(req.matches[2], true));
          VMG_ASSIGN_OR_RETURN(json m, datasets.GetManifest(c, req.matches[1], v));
          return Reply{200, m};
        },
        kUserRoles);
  s.Get(R"(/v1/datasets/((?:[^/]+/)?[^/]+)/versions/([^/]+)/chunks/([^/]+))",
        [&datasets](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(int64_t v, ParseVersion(req.matches[2], true));
          VMG_ASSIGN_OR_RETURN(json out, datasets.GetChunk(c, req.matches[1], v, req.matches[3]));
          return Reply{200, out};
        },
        kUserRoles);
}

}  // namespace vmgrid
