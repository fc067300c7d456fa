// The web portal's static files (src/api/ui), embedded in the binary at
// build time by src/api/ui/embed.cmake: the controller serves them at /ui/
// (api/ui_routes.h) with nothing on disk.
#pragma once

#include <span>
#include <string_view>

namespace vmgrid {

struct UiAsset {
  // The file's name inside src/api/ui ("index.html", "app.js"); no folders.
  std::string_view name;
  std::string_view body;
};

// Every embedded file, sorted by name. Static storage; thread-safe.
std::span<const UiAsset> UiAssets();

}  // namespace vmgrid
