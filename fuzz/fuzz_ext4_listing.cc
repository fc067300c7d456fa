// fuzz_ext4_listing: ParseDebugfsListing and VetDirectoryEntries
// (images/ext4_listing.h), which read what debugfs prints about the
// directories of an ext4 image another user may have crafted before a pull
// extracts it. Oracles: no crash; a refusal has a message; an accepted
// listing has no entry whose name holds '/' or a newline; a vetted one has
// no ".", "..", empty, duplicate or special (device, FIFO, socket) entry.
#include <cstdint>
#include <set>
#include <string>

#include "fuzz_common.h"
#include "images/ext4_listing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = (vmgrid::fuzz::QuietLogging(), true);
  (void)quiet;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto parsed = vmgrid::ParseDebugfsListing(text);
  vmgrid::fuzz::Trace("parse", parsed.ok(), parsed.ok() ? "" : parsed.error().message);
  if (!parsed.ok()) {
    FUZZ_CHECK(!parsed.error().message.empty(), "a refusal without a message");
    return 0;
  }
  for (const auto& e : *parsed)
    FUZZ_CHECK(e.name.find_first_of("/\n") == std::string::npos, "a name with '/' or newline");
  const uint32_t inode = parsed->empty() ? 2 : parsed->front().inode;
  auto vetted = vmgrid::VetDirectoryEntries(*parsed, inode, "/");
  vmgrid::fuzz::Trace("vet", vetted.ok(), vetted.ok() ? "" : vetted.error().message);
  if (!vetted.ok()) {
    FUZZ_CHECK(!vetted.error().message.empty(), "a refusal without a message");
    return 0;
  }
  std::set<std::string> names;
  for (const auto& e : *vetted) {
    FUZZ_CHECK(!e.name.empty() && e.name != "." && e.name != "..", "a bad name: " + e.name);
    FUZZ_CHECK(e.name.find('\0') == std::string::npos, "a NUL in a name");
    FUZZ_CHECK(e.IsDir() || e.IsRegular() || e.IsSymlink(), "a special file: " + e.name);
    FUZZ_CHECK(e.inode != 0, "an unused slot");
    FUZZ_CHECK(names.insert(e.name).second, "a duplicate: " + e.name);
  }
  return 0;
}
