// Validation of image files a user brings (disk, kernel, initrd). Image files
// are untrusted input: a file must be what it claims to be, and a qcow2 may
// not name a backing file (that could point anywhere on the host).
// Thread-safe (stateless).
#pragma once

#include <cstdint>
#include <string>

#include "common/result.h"

namespace vmgrid {

struct DiskInfo {
  std::string format;          // "raw" or "qcow2"
  int64_t virtual_size = 0;    // bytes the guest sees
  int64_t actual_size = 0;     // bytes allocated on the host
};

// Largest disk a guest may see; bigger claims are treated as hostile.
constexpr int64_t kMaxVirtualDiskBytes = int64_t{4} << 40;

// Checks that `path` is a disk of `claimed_format` ("raw" or "qcow2"), that a
// qcow2 is consistent and has no backing file, and (when `needs_boot_sector`)
// that a raw disk carries an MBR/GPT boot signature. Uses `qemu-img`.
Result<DiskInfo> InspectDisk(const std::string& path, const std::string& claimed_format,
                             bool needs_boot_sector);

// Format guessed from the first bytes ("qcow2" or "raw").
Result<std::string> SniffDiskFormat(const std::string& path);

// A Linux kernel: a bzImage (boot protocol header "HdrS"), or an x86-64 ELF
// vmlinux that QEMU boots through its PVH entry.
Status CheckKernel(const std::string& path);

// An initramfs: cpio, or gzip/zstd/xz/lzma/lz4/bzip2 compressed.
Status CheckInitrd(const std::string& path);

}  // namespace vmgrid
