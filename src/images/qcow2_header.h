// Reading the header of an untrusted qcow2 file without QEMU. A qcow2 header
// may name other files (a backing file, an external data file) that QEMU and
// qemu-img would open with the opener's rights; vmgrid refuses such images
// before any QEMU tool touches them, at upload, at finalize and on agents.
// Thread-safe (stateless). Spec: QEMU docs/interop/qcow2.txt.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace vmgrid {

struct Qcow2Header {
  uint32_t version = 0;  // 2 or 3
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  std::string backing_file;  // the name, when it lies within the bytes parsed
  uint32_t cluster_bits = 0;
  uint64_t virtual_size = 0;
  uint32_t crypt_method = 0;
  uint64_t incompatible_features = 0;    // version 3 only; 0 for version 2
  bool has_data_file_extension = false;  // header extension 0x44415441
  bool has_backing_format_extension = false;
  bool has_encryption_extension = false;
};

// Incompatible feature bits (qcow2.txt).
inline constexpr uint64_t kQcow2Dirty = 1u << 0;
inline constexpr uint64_t kQcow2Corrupt = 1u << 1;
inline constexpr uint64_t kQcow2ExternalData = 1u << 2;
inline constexpr uint64_t kQcow2CompressionType = 1u << 3;
inline constexpr uint64_t kQcow2ExtendedL2 = 1u << 4;

// Parses the header and its extensions from the first bytes of a file (pass
// at least the first cluster, up to 64 KiB is enough for every image vmgrid
// accepts). Fails with kInvalidArgument on anything malformed: bad magic,
// unknown version, fields out of range, extensions running past `head`.
Result<Qcow2Header> ParseQcow2Header(std::string_view head);

// Refuses what vmgrid never opens for a user: a backing file, an external
// data file, encryption, a corrupt flag, unknown incompatible features, or a
// virtual size over `max_virtual_size`. Messages name no host paths.
Status CheckUntrustedQcow2(const Qcow2Header& h, uint64_t max_virtual_size);

// Reads the head of an open file (pread, the offset is left alone) and
// applies both of the above.
Result<Qcow2Header> CheckUntrustedQcow2Fd(int fd, uint64_t max_virtual_size);

// The backing file name a qcow2 at `path` records ("" for none or a raw
// file). For vmgrid's own overlays, whose chain it walks to find the layer
// that is a user's image; never used to decide whether a user image is safe.
Result<std::string> Qcow2BackingFile(const std::string& path);

// Same, opening `path` read-only (O_NOFOLLOW is not used: agents get images
// through symlinked caches); the caller must ensure `path` cannot change.
Result<Qcow2Header> CheckUntrustedQcow2File(const std::string& path, uint64_t max_virtual_size);

}  // namespace vmgrid
