// Validation of image files a user brings (disk, kernel, initrd). Image files
// are untrusted input: a file must be what it claims to be, and a qcow2 may
// not name a backing file (that could point anywhere on the host).
// Thread-safe (stateless).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "common/result.h"
#include "common/subprocess.h"

namespace vmgrid {

struct DiskInfo {
  std::string format;        // "raw" or "qcow2"
  int64_t virtual_size = 0;  // bytes the guest sees
  int64_t actual_size = 0;   // bytes allocated on the host
  // `qemu-img measure -O qcow2`: the bytes its data takes as an uncompressed
  // qcow2 (what it expands to), and a fully allocated qcow2 of its virtual
  // size (what an overlay or copy of it can grow to, metadata included).
  int64_t expanded_size = 0;
  int64_t max_clone_size = 0;
};

// Largest disk a guest may see; bigger claims are treated as hostile.
constexpr int64_t kMaxVirtualDiskBytes = int64_t{4} << 40;

// Checks that `path` is a disk of `claimed_format` ("raw" or "qcow2"), that a
// qcow2 is consistent and has no backing file, and (when `needs_boot_sector`)
// that a raw disk carries an MBR/GPT boot signature, and measures it (see
// DiskInfo). Uses `qemu-img`.
Result<DiskInfo> InspectDisk(const std::string& path, const std::string& claimed_format,
                             bool needs_boot_sector);

// The same for an open file: `fd` is what is validated, so a caller that
// validates a file and then renames it (by fd identity) publishes exactly
// the bytes that were checked. A qcow2 header is read by vmgrid itself first
// (images/qcow2_header.h): a backing file, external data file or encryption
// is refused before any QEMU tool opens the file. qemu-img then reads the
// file through this fd (as /dev/stdin), never by path, and when we run as
// root it runs as the unprivileged user vmgrid-qemu (nobody if absent).
Result<DiskInfo> InspectDiskFd(int fd, const std::string& claimed_format, bool needs_boot_sector);

// Converts a user's qcow2 at `src` (checked again: no backing or data file)
// to a new raw file `dst` (replaced if present), with qemu-img reading `src`
// through an fd and running unprivileged as for InspectDiskFd. On failure
// `dst` does not exist.
Status ConvertUntrustedQcow2ToRaw(const std::string& src, const std::string& dst,
                                  std::chrono::milliseconds timeout);

// Copies the top layer of a qcow2 that a VM's QEMU wrote (a checkpoint's
// disk: header and content are the guest's to choose once it owns QEMU) to a
// new qcow2 `dst` (replaced if present) backed by `backing` of format
// `backing_format`, or standalone when `backing` is "". As `qemu-img convert
// -B` does, only clusters allocated in `src`'s own layer are copied (zeroed
// ones as zero clusters). The backing file `src`'s header names is never
// opened: with a `backing`, qemu-img sees an empty file of the same size in
// its place (so unallocated clusters stay unallocated); without one, a
// header naming a backing file is refused (kInvalidArgument), as are
// external data files and encryption. qemu-img runs under `tool` (a VM's
// uid, or UntrustedToolOptions), reads `src` through an fd (for which `src`
// is made readable to tool.gid, 0640, and given its owner and mode back after)
// and writes only into `dst`, which is made beforehand (from trusted values
// only) and given to the tool's user; its header is checked afterwards to
// name exactly `backing`. On failure `dst` does not exist.
Status CopyUntrustedQcow2Top(const std::string& src, const std::string& dst,
                             const std::string& backing, const std::string& backing_format,
                             const ProcessOptions& tool);

// As CopyUntrustedQcow2Top, for a `src` whose own backing is `middle` (a
// trusted qcow2 the agent made, itself over `backing`): the copy lies on
// `backing` and holds `src`'s layer and `middle`'s, so that it shows the same
// disk without `middle` (a VM resumed from an image's post-boot checkpoint,
// whose checkpoint is published as a delta over the image). The top layer is
// copied over `middle` as above, then rebased safely (qemu-img rebase, as
// this process, on the trusted files only) onto `backing`. On failure `dst`
// does not exist.
Status CopyUntrustedQcow2TopAndMiddle(const std::string& src, const std::string& middle,
                                      const std::string& dst, const std::string& backing,
                                      const std::string& backing_format,
                                      const ProcessOptions& tool);

// How qemu-img and other tools are run on user files: as vmgrid-qemu (or
// nobody) when this process is root, unchanged otherwise.
ProcessOptions UntrustedToolOptions(std::chrono::milliseconds timeout);

// Format guessed from the first bytes ("qcow2" or "raw").
Result<std::string> SniffDiskFormat(const std::string& path);

// A Linux kernel: a bzImage (boot protocol header "HdrS"), or an x86-64 ELF
// vmlinux that QEMU boots through its PVH entry.
Status CheckKernel(const std::string& path);
Status CheckKernelFd(int fd);

// An initramfs: cpio, or gzip/zstd/xz/lzma/lz4/bzip2 compressed.
Status CheckInitrd(const std::string& path);
Status CheckInitrdFd(int fd);

}  // namespace vmgrid
