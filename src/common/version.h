// The version of vmgrid (`vmgrid --version`, GET /v1/health): CMake's
// project(VERSION) in the top CMakeLists.txt, the one place it is set,
// compiled in from src/common/version.cc.in.
#pragma once

namespace vmgrid {
extern const char* const kVersion;
}  // namespace vmgrid
