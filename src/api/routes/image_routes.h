// The image routes of the REST API: POST/GET /v1/images, GET/DELETE
// /v1/images/{ref}, PUT /v1/images/{ref}/files/{disk,kernel,initrd} (the
// body streamed to a file), POST /v1/images/{ref}/finalize and
// /v1/images/{ref}/checkpoint. Each parses its request and calls ImageService.
#pragma once

#include "api/routes/route.h"

namespace vmgrid {

class ImageService;

void InstallImageRoutes(RouteInstaller& s, ImageService& images);

}  // namespace vmgrid
