#include "images/image_file.h"

#include <sys/stat.h>

#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/subprocess.h"

namespace vmgrid {

namespace {

Result<std::string> ReadHead(const std::string& path, size_t n) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0)
    return MakeError(ErrorCode::kInvalidArgument, path + ": " + strerror(errno));
  if (!S_ISREG(st.st_mode))
    return MakeError(ErrorCode::kInvalidArgument, path + " is not a regular file");
  if (st.st_size == 0) return MakeError(ErrorCode::kInvalidArgument, path + " is empty");
  std::ifstream in(path, std::ios::binary);
  if (!in) return MakeError(ErrorCode::kInvalidArgument, "cannot read " + path);
  std::string head(n, '\0');
  in.read(head.data(), static_cast<std::streamsize>(n));
  head.resize(static_cast<size_t>(in.gcount()));
  return head;
}

bool StartsWith(const std::string& s, const char* magic, size_t n, size_t offset = 0) {
  return s.size() >= offset + n && std::memcmp(s.data() + offset, magic, n) == 0;
}

}  // namespace

Result<std::string> SniffDiskFormat(const std::string& path) {
  VMG_ASSIGN_OR_RETURN(std::string head, ReadHead(path, 4));
  return std::string(StartsWith(head, "QFI\xfb", 4) ? "qcow2" : "raw");
}

Result<DiskInfo> InspectDisk(const std::string& path, const std::string& claimed_format,
                             bool needs_boot_sector) {
  if (claimed_format != "raw" && claimed_format != "qcow2")
    return MakeError(ErrorCode::kInvalidArgument,
                     "disk format must be raw or qcow2, not '" + claimed_format + "'");
  VMG_ASSIGN_OR_RETURN(std::string head, ReadHead(path, 512));
  bool is_qcow2 = StartsWith(head, "QFI\xfb", 4);
  if (claimed_format == "qcow2" && !is_qcow2)
    return MakeError(ErrorCode::kInvalidArgument,
                     "the disk is not a qcow2 image (no qcow2 header); import it with format raw");
  if (claimed_format == "raw" && is_qcow2)
    return MakeError(ErrorCode::kInvalidArgument,
                     "the disk is a qcow2 image, not raw; import it with format qcow2");
  if (claimed_format == "raw" && needs_boot_sector &&
      !(head.size() == 512 && static_cast<unsigned char>(head[510]) == 0x55 &&
        static_cast<unsigned char>(head[511]) == 0xAA))
    return MakeError(ErrorCode::kInvalidArgument,
                     "the disk has no boot sector (MBR signature 55AA missing): give a kernel and "
                     "initrd to boot it, or import a bootable disk");

  auto out = RunProcessChecked({"qemu-img", "info", "--output=json", "-f", claimed_format, path},
                               std::chrono::seconds(60));
  if (!out.ok()) return MakeError(ErrorCode::kInvalidArgument, "not a valid " + claimed_format +
                                                                   " image: " + out.error().message);
  nlohmann::json info = nlohmann::json::parse(*out, nullptr, false);
  if (info.is_discarded() || !info.is_object())
    return MakeError(ErrorCode::kInternal, "qemu-img info printed unparsable JSON");
  if (info.contains("backing-filename"))
    return MakeError(ErrorCode::kInvalidArgument,
                     "qcow2 images with a backing file are not accepted (the backing file could "
                     "name any file on the host); flatten it first: qemu-img convert -O qcow2 IN OUT");
  if (info.contains("format-specific") && info["format-specific"].contains("data") &&
      info["format-specific"]["data"].value("data-file", "") != "")
    return MakeError(ErrorCode::kInvalidArgument, "qcow2 images with an external data file are not accepted");
  DiskInfo d;
  d.format = claimed_format;
  d.virtual_size = info.value("virtual-size", int64_t{0});
  d.actual_size = info.value("actual-size", int64_t{0});
  if (d.virtual_size <= 0)
    return MakeError(ErrorCode::kInvalidArgument, "the disk has a virtual size of 0");
  if (d.virtual_size > kMaxVirtualDiskBytes)
    return MakeError(ErrorCode::kInvalidArgument, "the disk claims a virtual size over 4 TiB");
  if (claimed_format == "qcow2") {
    auto check = RunProcess({"qemu-img", "check", "-f", "qcow2", path}, std::chrono::minutes(5));
    if (!check.ok()) return check.error();
    // Exit 0 = clean, 3 = leaked clusters only (harmless); others mean corruption.
    if (check->exit_code != 0 && check->exit_code != 3)
      return MakeError(ErrorCode::kInvalidArgument, "the qcow2 image is corrupt (qemu-img check exit " +
                                                        std::to_string(check->exit_code) + ")");
  }
  return d;
}

Status CheckKernel(const std::string& path) {
  VMG_ASSIGN_OR_RETURN(std::string head, ReadHead(path, 0x210));
  if (StartsWith(head, "HdrS", 4, 0x202)) return Status::Ok();
  // An uncompressed ELF vmlinux, booted through its PVH entry point: it saves
  // the guest the kernel's self-decompression (seconds under TCG).
  if (StartsWith(head, "\x7f" "ELF", 4) && head.size() >= 20 && head[4] == 2 /* 64-bit */ &&
      static_cast<unsigned char>(head[18]) == 62 /* EM_X86_64 */ && head[19] == 0)
    return Status::Ok();
  return MakeError(ErrorCode::kInvalidArgument,
                   "the kernel is neither a Linux bzImage (boot header 'HdrS' at 0x202) nor an "
                   "x86-64 ELF vmlinux");
}

Status CheckInitrd(const std::string& path) {
  VMG_ASSIGN_OR_RETURN(std::string head, ReadHead(path, 8));
  static const struct {
    const char* magic;
    size_t n;
  } kMagics[] = {
      {"\x1f\x8b", 2},           // gzip
      {"\x28\xb5\x2f\xfd", 4},   // zstd
      {"\xfd" "7zXZ", 5},        // xz
      {"\x5d\x00\x00", 3},       // lzma
      {"\x02\x21\x4c\x18", 4},   // lz4 legacy
      {"BZh", 3},                // bzip2
      {"070701", 6},             // cpio newc
      {"070702", 6},             // cpio crc
  };
  for (const auto& m : kMagics)
    if (StartsWith(head, m.magic, m.n)) return Status::Ok();
  return MakeError(ErrorCode::kInvalidArgument,
                   "the initrd is neither a cpio archive nor a compressed one");
}

}  // namespace vmgrid
