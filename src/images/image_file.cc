#include "images/image_file.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/subprocess.h"
#include "images/qcow2_header.h"

namespace vmgrid {

namespace {

Result<std::string> ReadHeadFd(int fd, size_t n) {
  struct stat st;
  if (fstat(fd, &st) != 0) return MakeError(ErrorCode::kInvalidArgument, "cannot stat the file");
  if (!S_ISREG(st.st_mode))
    return MakeError(ErrorCode::kInvalidArgument, "the file is not a regular file");
  if (st.st_size == 0) return MakeError(ErrorCode::kInvalidArgument, "the file is empty");
  std::string head(n, '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, head.data() + got, n - got, static_cast<off_t>(got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return MakeError(ErrorCode::kInvalidArgument, "cannot read the file");
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  head.resize(got);
  return head;
}

// Closes on scope exit.
struct OwnedFd {
  int fd = -1;
  ~OwnedFd() {
    if (fd >= 0) close(fd);
  }
};

Result<std::string> ReadHead(const std::string& path, size_t n) {
  OwnedFd f{open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) return MakeError(ErrorCode::kInvalidArgument, path + ": " + strerror(errno));
  return ReadHeadFd(f.fd, n);
}

bool StartsWith(const std::string& s, const char* magic, size_t n, size_t offset = 0) {
  return s.size() >= offset + n && std::memcmp(s.data() + offset, magic, n) == 0;
}

}  // namespace

Result<std::string> SniffDiskFormat(const std::string& path) {
  VMG_ASSIGN_OR_RETURN(std::string head, ReadHead(path, 4));
  return std::string(StartsWith(head, "QFI\xfb", 4) ? "qcow2" : "raw");
}

ProcessOptions UntrustedToolOptions(std::chrono::milliseconds timeout) {
  ProcessOptions o;
  o.timeout = timeout;
  if (geteuid() == 0) {
    const struct passwd* pw = getpwnam("vmgrid-qemu");
    if (!pw) pw = getpwnam("nobody");
    if (pw) {
      o.drop_privileges = true;
      o.uid = pw->pw_uid;
      o.gid = pw->pw_gid;
    }
  }
  return o;
}

Result<DiskInfo> InspectDisk(const std::string& path, const std::string& claimed_format,
                             bool needs_boot_sector) {
  OwnedFd f{open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) return MakeError(ErrorCode::kInvalidArgument, path + ": " + strerror(errno));
  return InspectDiskFd(f.fd, claimed_format, needs_boot_sector);
}

Result<DiskInfo> InspectDiskFd(int fd, const std::string& claimed_format, bool needs_boot_sector) {
  if (claimed_format != "raw" && claimed_format != "qcow2")
    return MakeError(ErrorCode::kInvalidArgument,
                     "disk format must be raw or qcow2, not '" + claimed_format + "'");
  VMG_ASSIGN_OR_RETURN(std::string head, ReadHeadFd(fd, 512));
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

  if (is_qcow2) {
    // Before any QEMU tool opens it: qemu-img would follow a backing file.
    VMG_RETURN_IF_ERROR(CheckUntrustedQcow2Fd(fd, kMaxVirtualDiskBytes));
  }
  // qemu-img reads the very file we hold, through our fd, unprivileged.
  ProcessOptions po = UntrustedToolOptions(std::chrono::seconds(60));
  po.stdin_fd = fd;
  auto out =
      RunProcess({"qemu-img", "info", "--output=json", "-f", claimed_format, "/dev/stdin"}, po);
  if (!out.ok()) return out.error();
  if (out->exit_code != 0)
    return MakeError(ErrorCode::kInvalidArgument,
                     "not a valid " + claimed_format + " image (qemu-img info failed)");
  nlohmann::json info = nlohmann::json::parse(out->out, nullptr, false);
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
    ProcessOptions co = UntrustedToolOptions(std::chrono::minutes(5));
    co.stdin_fd = fd;
    auto check = RunProcess({"qemu-img", "check", "-f", "qcow2", "/dev/stdin"}, co);
    if (!check.ok()) return check.error();
    // Exit 0 = clean, 3 = leaked clusters only (harmless); others mean corruption.
    if (check->exit_code != 0 && check->exit_code != 3)
      return MakeError(ErrorCode::kInvalidArgument, "the qcow2 image is corrupt (qemu-img check exit " +
                                                        std::to_string(check->exit_code) + ")");
  }
  return d;
}

Status ConvertUntrustedQcow2ToRaw(const std::string& src, const std::string& dst,
                                  std::chrono::milliseconds timeout) {
  unlink(dst.c_str());
  OwnedFd in{open(src.c_str(), O_RDONLY | O_CLOEXEC)};
  if (in.fd < 0) return MakeError(ErrorCode::kInternal, "cannot open the disk to convert");
  VMG_ASSIGN_OR_RETURN(Qcow2Header h, CheckUntrustedQcow2Fd(in.fd, kMaxVirtualDiskBytes));
  ProcessOptions po = UntrustedToolOptions(timeout);
  po.stdin_fd = in.fd;
  {
    // Made here, at its final size, and given to the tool's user: qemu-img
    // writes into it (-n) and cannot create files of its own.
    OwnedFd out{open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644)};
    if (out.fd < 0) return MakeError(ErrorCode::kInternal, "cannot create the converted disk");
    if (ftruncate(out.fd, static_cast<off_t>(h.virtual_size)) != 0 ||
        (po.drop_privileges && fchown(out.fd, po.uid, po.gid) != 0)) {
      unlink(dst.c_str());
      return MakeError(ErrorCode::kInternal, "cannot prepare the converted disk");
    }
  }
  auto r =
      RunProcess({"qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", "/dev/stdin", dst}, po);
  if (!r.ok() || r->exit_code != 0) {
    unlink(dst.c_str());
    if (!r.ok()) return r.error();
    return MakeError(ErrorCode::kInvalidArgument,
                     "the qcow2 image could not be converted (qemu-img convert failed)");
  }
  return Status::Ok();
}

Status CheckKernel(const std::string& path) {
  OwnedFd f{open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) return MakeError(ErrorCode::kInvalidArgument, path + ": " + strerror(errno));
  return CheckKernelFd(f.fd);
}

Status CheckKernelFd(int fd) {
  VMG_ASSIGN_OR_RETURN(std::string head, ReadHeadFd(fd, 0x210));
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
  OwnedFd f{open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) return MakeError(ErrorCode::kInvalidArgument, path + ": " + strerror(errno));
  return CheckInitrdFd(f.fd);
}

Status CheckInitrdFd(int fd) {
  VMG_ASSIGN_OR_RETURN(std::string head, ReadHeadFd(fd, 8));
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
