#include "api/routes/image_routes.h"

#include <httplib.h>

#include "api/routes.h"
#include "api/services/image_service.h"
#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

void InstallImageRoutes(RouteInstaller& s, ImageService& images) {
  s.Post(
      "/v1/images",
      [&images](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
        JsonFields f(body, request_fields::kCreateImage);
        VMG_RETURN_IF_ERROR(f.CheckUnknown());
        NewImage n;
        VMG_ASSIGN_OR_RETURN(n.name, f.String("name", true));
        VMG_ASSIGN_OR_RETURN(n.format, f.Enum("format", {"raw", "qcow2"}, "raw"));
        VMG_ASSIGN_OR_RETURN(n.has_kernel, f.Bool("has_kernel", false));
        VMG_ASSIGN_OR_RETURN(n.has_initrd, f.Bool("has_initrd", false));
        VMG_ASSIGN_OR_RETURN(n.append, f.String("append", false));
        VMG_ASSIGN_OR_RETURN(n.min_memory_mb, f.Int("min_memory_mb", 64, 16, 1 << 20));
        VMG_ASSIGN_OR_RETURN(json image, images.Create(c, n));
        return Reply{201, image};
      },
      kUserRoles);
  s.Get(
      "/v1/images",
      [&images](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(PageRequest page, PageQueryParams(req));
        VMG_ASSIGN_OR_RETURN(json list, images.List(c, page));
        return Reply{200, list};
      },
      kUserRoles);
  s.Get(R"(/v1/images/([^/]+))",
        [&images](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(json image, images.Get(c, req.matches[1]));
          return Reply{200, image};
        },
        kUserRoles);
  s.PutStream(R"(/v1/images/([^/]+)/files/(disk|kernel|initrd))",
              [&images](const Caller& c, const Req& req, const BodyReader& body) -> Result<Reply> {
                VMG_ASSIGN_OR_RETURN(json image,
                                     images.Upload(c, req.matches[1], req.matches[2], body));
                return Reply{200, image};
              },
              kUserRoles);
  s.Post(R"(/v1/images/([^/]+)/finalize)",
         [&images](const Caller& c, const Req& req) -> Result<Reply> {
           VMG_ASSIGN_OR_RETURN(json op, images.Finalize(c, req.matches[1]));
           return Reply{202, op};
         },
         kUserRoles);
  s.Post(R"(/v1/images/([^/]+)/checkpoint)",
         [&images](const Caller& c, const Req& req) -> Result<Reply> {
           // An image the caller may not change is refused whatever the body says.
           VMG_RETURN_IF_ERROR(images.OwnImage(c, req.matches[1]));
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body));
           JsonFields f(body, request_fields::kImageCheckpoint);
           VMG_RETURN_IF_ERROR(f.CheckUnknown());
           // The memory's bounds depend on the image: the service checks them.
           VMG_ASSIGN_OR_RETURN(int64_t mem, f.Int("memory_mb", -1, INT64_MIN, INT64_MAX));
           VMG_ASSIGN_OR_RETURN(int64_t vcpus, f.Int("vcpus", 1, 1, 64));
           std::optional<int64_t> memory_mb;
           if (body.contains("memory_mb") && !body["memory_mb"].is_null()) memory_mb = mem;
           VMG_ASSIGN_OR_RETURN(json image, images.Checkpoint(c, req.matches[1], memory_mb,
                                                              static_cast<int>(vcpus)));
           return Reply{202, image};
         },
         kUserRoles);
  s.Delete(R"(/v1/images/([^/]+))",
           [&images](const Caller& c, const Req& req) -> Result<Reply> {
             VMG_RETURN_IF_ERROR(images.Delete(c, req.matches[1]));
             return Reply{204, nullptr};
           },
           kUserRoles);
}

}  // namespace vmgrid
