// How a benchmark writes its table into docs/benchmarks.md: between markers,
// so a rerun replaces its own block and nothing else.
#pragma once

#include <string>

#include "common/result.h"
#include "common/util.h"

namespace vmgrid::bench {

// Replaces the text between "<!-- MARKER:begin -->" and "<!-- MARKER:end -->"
// in the markdown file `docs` with `md`, or appends `heading` and a new
// marked block when the markers are not there yet.
inline Status WriteDocsSection(const std::string& docs, const std::string& marker,
                               const std::string& heading, const std::string& md) {
  std::string begin = "<!-- " + marker + ":begin -->", end = "<!-- " + marker + ":end -->";
  auto old = ReadFile(docs);
  std::string text = old.ok() ? *old : "# Benchmarks\n\n";
  std::string block = begin + "\n" + md + end;
  auto b = text.find(begin), e = text.find(end);
  if (b != std::string::npos && e != std::string::npos)
    text.replace(b, e + end.size() - b, block);
  else
    text += "\n" + heading + "\n\n" + block + "\n";
  return WriteFileAtomic(docs, text);
}

}  // namespace vmgrid::bench
