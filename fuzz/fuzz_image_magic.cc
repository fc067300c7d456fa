// fuzz_image_magic: the magic-number checks on user-supplied image files
// (SniffDiskFormat, CheckKernel, CheckInitrd). The input is the file's
// content, served from a memfd through /proc/self/fd/N. InspectDisk is not
// fuzzed: it runs qemu-img. Oracle: an independent reading of the formats as
// documented in src/images/image_file.h.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "fuzz_common.h"
#include "images/image_file.h"

namespace {

bool HasAt(std::string_view s, size_t off, std::string_view magic) {
  return s.size() >= off + magic.size() && s.substr(off, magic.size()) == magic;
}

bool ExpectKernel(std::string_view s) {
  if (HasAt(s, 0x202, "HdrS")) return true;  // bzImage boot protocol header
  return HasAt(s, 0,
               "\x7f"
               "ELF") &&
         s.size() >= 20 && s[4] == 2 &&                          // ELFCLASS64
         static_cast<unsigned char>(s[18]) == 62 && s[19] == 0;  // e_machine = EM_X86_64
}

bool ExpectInitrd(std::string_view s) {
  using namespace std::string_view_literals;
  for (std::string_view m :
       {"\x1f\x8b"sv, "\x28\xb5\x2f\xfd"sv,
        "\xfd"
        "7zXZ"sv,
        "\x5d\x00\x00"sv, "\x02\x21\x4c\x18"sv, "BZh"sv, "070701"sv, "070702"sv}) {
    if (HasAt(s, 0, m)) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view content(reinterpret_cast<const char*>(data), size);
  vmgrid::fuzz::MemFile file(content);

  auto format = vmgrid::SniffDiskFormat(file.path());
  if (size == 0) {
    FUZZ_CHECK(!format.ok(), "empty disk accepted");
  } else {
    FUZZ_CHECK(format.ok(), format.error().message);
    FUZZ_CHECK(*format == (HasAt(content, 0, "QFI\xfb") ? "qcow2" : "raw"), *format);
  }

  vmgrid::Status kernel = vmgrid::CheckKernel(file.path());
  FUZZ_CHECK(kernel.ok() == (size > 0 && ExpectKernel(content)), "CheckKernel verdict");

  vmgrid::Status initrd = vmgrid::CheckInitrd(file.path());
  FUZZ_CHECK(initrd.ok() == (size > 0 && ExpectInitrd(content)), "CheckInitrd verdict");
  return 0;
}
