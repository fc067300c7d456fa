#include "images/qcow2_header.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace vmgrid {

namespace {

constexpr size_t kMaxHead = 64 * 1024;
constexpr uint32_t kExtEnd = 0;
constexpr uint32_t kExtBackingFormat = 0xe2792aca;
constexpr uint32_t kExtFullDiskEncryption = 0x0537be77;
constexpr uint32_t kExtDataFile = 0x44415441;

uint32_t Be32(std::string_view s, size_t off) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(s[off + i]);
  return v;
}

uint64_t Be64(std::string_view s, size_t off) {
  return (uint64_t{Be32(s, off)} << 32) | Be32(s, off + 4);
}

Error Bad(const std::string& what) {
  return Error{ErrorCode::kInvalidArgument, "not a valid qcow2 image: " + what};
}

}  // namespace

Result<Qcow2Header> ParseQcow2Header(std::string_view head) {
  if (head.size() < 72) return Bad("header too short");
  if (head.substr(0, 4) != std::string_view("QFI\xfb", 4)) return Bad("no qcow2 magic");
  Qcow2Header h;
  h.version = Be32(head, 4);
  if (h.version != 2 && h.version != 3)
    return Bad("unsupported version " + std::to_string(h.version));
  h.backing_file_offset = Be64(head, 8);
  h.backing_file_size = Be32(head, 16);
  h.cluster_bits = Be32(head, 20);
  h.virtual_size = Be64(head, 24);
  h.crypt_method = Be32(head, 32);
  if (h.cluster_bits < 9 || h.cluster_bits > 21) return Bad("cluster size out of range");
  if (h.backing_file_offset != 0) {
    if (h.backing_file_size == 0 || h.backing_file_size > 1023)
      return Bad("bad backing file name length");
    if (h.backing_file_offset < head.size() &&
        h.backing_file_size <= head.size() - h.backing_file_offset)
      h.backing_file.assign(head.substr(h.backing_file_offset, h.backing_file_size));
  }
  size_t header_length = 72;
  if (h.version == 3) {
    if (head.size() < 104) return Bad("header too short");
    h.incompatible_features = Be64(head, 72);
    header_length = Be32(head, 100);
    if (header_length < 104 || header_length % 8 != 0) return Bad("bad header length");
  }
  // Header extensions follow the header, inside the first cluster.
  const size_t cluster = size_t{1} << h.cluster_bits;
  size_t limit = std::min(cluster, head.size());
  if (header_length > limit) return Bad("header longer than what was read");
  size_t off = header_length;
  for (;;) {
    if (off + 8 > limit) return Bad("header extensions run past the first cluster");
    uint32_t type = Be32(head, off);
    uint32_t len = Be32(head, off + 4);
    if (type == kExtEnd) break;
    size_t padded = (static_cast<size_t>(len) + 7) & ~size_t{7};
    if (len > limit || off + 8 + padded > limit)
      return Bad("header extension runs past the first cluster");
    if (type == kExtDataFile) h.has_data_file_extension = true;
    if (type == kExtBackingFormat) h.has_backing_format_extension = true;
    if (type == kExtFullDiskEncryption) h.has_encryption_extension = true;
    off += 8 + padded;
  }
  return h;
}

Status CheckUntrustedQcow2(const Qcow2Header& h, uint64_t max_virtual_size) {
  if (h.backing_file_offset != 0 || h.backing_file_size != 0 || h.has_backing_format_extension)
    return MakeError(
        ErrorCode::kInvalidArgument,
        "qcow2 images with a backing file are not accepted (the backing file could name "
        "any file on the host); flatten it first: qemu-img convert -O qcow2 IN OUT");
  if ((h.incompatible_features & kQcow2ExternalData) || h.has_data_file_extension)
    return MakeError(ErrorCode::kInvalidArgument,
                     "qcow2 images with an external data file are not accepted");
  if (h.crypt_method != 0 || h.has_encryption_extension)
    return MakeError(ErrorCode::kInvalidArgument, "encrypted qcow2 images are not accepted");
  if (h.incompatible_features & kQcow2Corrupt)
    return MakeError(ErrorCode::kInvalidArgument, "the qcow2 image is marked corrupt");
  const uint64_t known = kQcow2Dirty | kQcow2CompressionType | kQcow2ExtendedL2;
  if (h.incompatible_features & ~(known | kQcow2ExternalData | kQcow2Corrupt))
    return MakeError(ErrorCode::kInvalidArgument,
                     "the qcow2 image uses unknown incompatible features");
  if (h.virtual_size == 0)
    return MakeError(ErrorCode::kInvalidArgument, "the disk has a virtual size of 0");
  if (h.virtual_size > max_virtual_size)
    return MakeError(ErrorCode::kInvalidArgument, "the disk claims a virtual size over the limit");
  return Status::Ok();
}

Result<Qcow2Header> CheckUntrustedQcow2Fd(int fd, uint64_t max_virtual_size) {
  std::string head(kMaxHead, '\0');
  size_t got = 0;
  while (got < head.size()) {
    ssize_t n = pread(fd, head.data() + got, head.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return MakeError(ErrorCode::kInternal, "cannot read the image header");
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  head.resize(got);
  VMG_ASSIGN_OR_RETURN(Qcow2Header h, ParseQcow2Header(head));
  VMG_RETURN_IF_ERROR(CheckUntrustedQcow2(h, max_virtual_size));
  return h;
}

Result<std::string> Qcow2BackingFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return MakeError(ErrorCode::kInvalidArgument, "cannot open the image file");
  std::string head(kMaxHead, '\0');
  ssize_t n = pread(fd, head.data(), head.size(), 0);
  close(fd);
  if (n < 0) return MakeError(ErrorCode::kInternal, "cannot read the image header");
  head.resize(static_cast<size_t>(n));
  if (head.size() < 4 || head.compare(0, 4, std::string("QFI\xfb", 4)) != 0) return std::string();
  VMG_ASSIGN_OR_RETURN(Qcow2Header h, ParseQcow2Header(head));
  return h.backing_file;
}

Result<Qcow2Header> CheckUntrustedQcow2File(const std::string& path, uint64_t max_virtual_size) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return MakeError(ErrorCode::kInvalidArgument, "cannot open the image file");
  auto r = CheckUntrustedQcow2Fd(fd, max_virtual_size);
  close(fd);
  return r;
}

}  // namespace vmgrid
