# Turns the portal's static files (this folder, but this script) into a C++
# source: one char array per file and a table of them (api/ui_assets.h), so
# the controller serves the portal from its own binary and needs nothing
# else on disk. Run at build time by src/api/CMakeLists.txt:
#   cmake -DUI_DIR=… -DOUT=… -P embed.cmake
file(GLOB files RELATIVE "${UI_DIR}" "${UI_DIR}/*")
list(SORT files)
set(arrays "")
set(entries "")
set(i 0)
foreach(f IN LISTS files)
  if(f STREQUAL "embed.cmake" OR IS_DIRECTORY "${UI_DIR}/${f}")
    continue()
  endif()
  file(READ "${UI_DIR}/${f}" hex HEX)
  string(LENGTH "${hex}" n)
  if(n EQUAL 0)
    message(FATAL_ERROR "embed.cmake: ${f} is empty")
  endif()
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "'\\\\x\\1'," bytes "${hex}")
  string(APPEND arrays "const char kFile${i}[] = {${bytes}};\n")
  string(APPEND entries "    {\"${f}\", std::string_view(kFile${i}, sizeof kFile${i})},\n")
  math(EXPR i "${i} + 1")
endforeach()
file(WRITE "${OUT}.tmp" "// Generated from src/api/ui by src/api/ui/embed.cmake; do not edit.
#include \"api/ui_assets.h\"

namespace vmgrid {
namespace {
${arrays}
const UiAsset kAssets[] = {
${entries}};
}  // namespace

std::span<const UiAsset> UiAssets() { return kAssets; }

}  // namespace vmgrid
")
# Only a changed file touches the output (no rebuild of what depends on it otherwise).
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different "${OUT}.tmp" "${OUT}")
file(REMOVE "${OUT}.tmp")
