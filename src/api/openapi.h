// The OpenAPI 3 description of the REST API (src/api/openapi.json, embedded
// at build time and served at /v1/openapi.json).
#pragma once

namespace vmgrid {
extern const char* const kOpenApiJson;
}
