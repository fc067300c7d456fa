// fuzz_qcow2_header: ParseQcow2Header / CheckUntrustedQcow2, vmgrid's own
// reading of an untrusted qcow2 header (src/images/qcow2_header.h). Oracle:
// an accepted image has no backing file, no external data file bit or
// extension, no encryption, and a virtual size within the limit; the parser
// never reads past its input (ASan).
#include <cstdint>
#include <string_view>

#include "fuzz_common.h"
#include "images/qcow2_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view head(reinterpret_cast<const char*>(data), size);
  auto h = vmgrid::ParseQcow2Header(head);
  if (!h.ok()) return 0;
  FUZZ_CHECK(h->version == 2 || h->version == 3, "version");
  FUZZ_CHECK(h->cluster_bits >= 9 && h->cluster_bits <= 21, "cluster_bits");
  FUZZ_CHECK(h->backing_file.size() <= 1023, "backing file name length");
  const uint64_t limit = uint64_t{1} << 40;
  if (vmgrid::CheckUntrustedQcow2(*h, limit).ok()) {
    FUZZ_CHECK(h->backing_file_offset == 0 && h->backing_file_size == 0 && h->backing_file.empty(),
               "accepted an image with a backing file");
    FUZZ_CHECK(
        !h->has_data_file_extension && !(h->incompatible_features & vmgrid::kQcow2ExternalData),
        "accepted an image with an external data file");
    FUZZ_CHECK(h->crypt_method == 0 && !h->has_encryption_extension, "accepted an encrypted image");
    FUZZ_CHECK(h->virtual_size > 0 && h->virtual_size <= limit, "virtual size");
  }
  return 0;
}
