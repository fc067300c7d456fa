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
    return MakeError(
        ErrorCode::kInvalidArgument,
        "qcow2 images with a backing file are not accepted (the backing file could "
        "name any file on the host); flatten it first: qemu-img convert -O qcow2 IN OUT");
  if (info.contains("format-specific") && info["format-specific"].contains("data") &&
      info["format-specific"]["data"].value("data-file", "") != "")
    return MakeError(ErrorCode::kInvalidArgument,
                     "qcow2 images with an external data file are not accepted");
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
      return MakeError(ErrorCode::kInvalidArgument,
                       "the qcow2 image is corrupt (qemu-img check exit " +
                           std::to_string(check->exit_code) + ")");
  }
  // What it expands to: compressed clusters count uncompressed, and a copy
  // or overlay of it can grow to a fully allocated image.
  ProcessOptions mo = UntrustedToolOptions(std::chrono::minutes(5));
  mo.stdin_fd = fd;
  auto measure = RunProcess(
      {"qemu-img", "measure", "--output=json", "-f", claimed_format, "-O", "qcow2", "/dev/stdin"},
      mo);
  if (!measure.ok()) return measure.error();
  if (measure->exit_code != 0)
    return MakeError(ErrorCode::kInvalidArgument,
                     "not a valid " + claimed_format + " image (qemu-img measure failed)");
  nlohmann::json m = nlohmann::json::parse(measure->out, nullptr, false);
  if (!m.is_object() || !m["required"].is_number_unsigned() ||
      !m["fully-allocated"].is_number_unsigned())
    return MakeError(ErrorCode::kInternal, "qemu-img measure printed unexpected JSON");
  d.expanded_size = m["required"].get<int64_t>();
  d.max_clone_size = m["fully-allocated"].get<int64_t>();
  if (d.max_clone_size < d.virtual_size || d.expanded_size < 0 ||
      d.expanded_size > d.max_clone_size)
    return MakeError(ErrorCode::kInternal, "qemu-img measure printed implausible sizes");
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
  // qemu-img opens /dev/stdin again, which checks the file's mode: lend the
  // tool's group read access for the run (as CopyUntrustedQcow2Top does), so
  // a file only its owner may read (a workspace, a checkpoint) converts too.
  struct stat before;
  if (fstat(in.fd, &before) != 0) {
    unlink(dst.c_str());
    return MakeError(ErrorCode::kInternal, "cannot stat the disk to convert");
  }
  const bool lend = po.drop_privileges && (before.st_mode & 0044) != 0044;
  if (lend && (fchown(in.fd, before.st_uid, po.gid) != 0 || fchmod(in.fd, 0640) != 0)) {
    unlink(dst.c_str());
    return MakeError(ErrorCode::kInternal, "cannot open the disk to the converting user");
  }
  auto r =
      RunProcess({"qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", "/dev/stdin", dst}, po);
  if (lend) {
    (void)fchown(in.fd, before.st_uid, before.st_gid);
    (void)fchmod(in.fd, before.st_mode & 07777);
  }
  if (!r.ok() || r->exit_code != 0) {
    unlink(dst.c_str());
    if (!r.ok()) return r.error();
    return MakeError(ErrorCode::kInvalidArgument,
                     "the qcow2 image could not be converted (qemu-img convert failed)");
  }
  return Status::Ok();
}

Status CopyUntrustedQcow2Top(const std::string& src, const std::string& dst,
                             const std::string& backing, const std::string& backing_format,
                             const ProcessOptions& tool) {
  unlink(dst.c_str());
  const std::string zero = dst + ".zero";
  unlink(zero.c_str());
  OwnedFd in{open(src.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC)};
  if (in.fd < 0) return MakeError(ErrorCode::kInternal, "cannot open the disk to copy");
  VMG_ASSIGN_OR_RETURN(std::string head, ReadHeadFd(in.fd, 64 << 10));
  VMG_ASSIGN_OR_RETURN(Qcow2Header h, ParseQcow2Header(head));
  // Its backing file is checked separately below; everything else as for
  // any user image.
  Qcow2Header unbacked = h;
  unbacked.backing_file_offset = 0;
  unbacked.backing_file_size = 0;
  unbacked.has_backing_format_extension = false;
  VMG_RETURN_IF_ERROR(CheckUntrustedQcow2(unbacked, kMaxVirtualDiskBytes));
  const bool header_backed = h.backing_file_offset != 0 || h.backing_file_size != 0;
  if (backing.empty() && header_backed)
    return MakeError(ErrorCode::kInvalidArgument,
                     "the disk names a backing file where it should have none");
  const std::string size = std::to_string(h.virtual_size);
  // The output, from trusted values only (-u: the backing is not opened).
  std::vector<std::string> create = {"qemu-img", "create", "-q", "-f", "qcow2", "-u"};
  if (!backing.empty()) create.insert(create.end(), {"-b", backing, "-F", backing_format});
  create.insert(create.end(), {dst, size});
  auto fail = [&](Error e) -> Error {
    unlink(dst.c_str());
    unlink(zero.c_str());
    return e;
  };
  if (auto r = RunProcessChecked(create, std::chrono::minutes(1)); !r.ok()) return fail(r.error());
  if (tool.drop_privileges && chown(dst.c_str(), tool.uid, tool.gid) != 0)
    return fail(MakeError(ErrorCode::kInternal, "cannot prepare the copy"));
  chmod(dst.c_str(), 0600);
  nlohmann::json src_spec = {{"driver", "qcow2"},
                             {"file", {{"driver", "file"}, {"filename", "/dev/stdin"}}},
                             {"backing", nullptr}};
  if (!backing.empty()) {
    // Present, so unallocated clusters are not zeros, and never read
    // (convert -B copies only what the top layer holds).
    OwnedFd z{open(zero.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644)};
    if (z.fd < 0 || ftruncate(z.fd, static_cast<off_t>(h.virtual_size)) != 0)
      return fail(MakeError(ErrorCode::kInternal, "cannot prepare the copy"));
    src_spec["backing"] = {{"driver", "raw"}, {"file", {{"driver", "file"}, {"filename", zero}}}};
  }
  nlohmann::json dst_spec = {
      {"driver", "qcow2"}, {"file", {{"driver", "file"}, {"filename", dst}}}, {"backing", nullptr}};
  std::vector<std::string> convert = {"qemu-img", "convert", "-n", "-O", "qcow2"};
  if (!backing.empty()) convert.insert(convert.end(), {"-B", backing});
  convert.insert(convert.end(), {"json:" + src_spec.dump(), "json:" + dst_spec.dump()});
  // qemu-img opens /dev/stdin again, which checks the file's mode: lend the
  // tool's group read access for the run (the file's directory stays closed
  // to it, so only this fd leads there).
  struct stat before;
  if (fstat(in.fd, &before) != 0)
    return fail(MakeError(ErrorCode::kInternal, "cannot stat the disk"));
  const bool lend = tool.drop_privileges;
  if (lend && (fchown(in.fd, 0, tool.gid) != 0 || fchmod(in.fd, 0640) != 0))
    return fail(MakeError(ErrorCode::kInternal, "cannot open the disk to the copying user"));
  ProcessOptions po = tool;
  po.stdin_fd = in.fd;
  auto r = RunProcess(convert, po);
  if (lend) {
    (void)fchown(in.fd, before.st_uid, before.st_gid);
    (void)fchmod(in.fd, before.st_mode & 07777);
  }
  unlink(zero.c_str());
  if (!r.ok()) return fail(r.error());
  if (r->exit_code != 0)
    return fail(MakeError(ErrorCode::kInvalidArgument,
                          "the disk could not be copied (qemu-img convert failed)"));
  // Written by a process that read hostile input: check what it wrote.
  OwnedFd out{open(dst.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC)};
  if (out.fd < 0) return fail(MakeError(ErrorCode::kInternal, "cannot open the copy"));
  auto out_head = ReadHeadFd(out.fd, 64 << 10);
  if (!out_head.ok()) return fail(out_head.error());
  auto oh = ParseQcow2Header(*out_head);
  if (!oh.ok()) return fail(oh.error());
  Qcow2Header out_unbacked = *oh;
  out_unbacked.backing_file_offset = 0;
  out_unbacked.backing_file_size = 0;
  out_unbacked.has_backing_format_extension = false;
  if (Status st = CheckUntrustedQcow2(out_unbacked, kMaxVirtualDiskBytes); !st.ok())
    return fail(st.error());
  if (oh->backing_file != backing || oh->virtual_size != h.virtual_size ||
      (backing.empty() && (oh->backing_file_offset != 0 || oh->backing_file_size != 0)))
    return fail(
        MakeError(ErrorCode::kInvalidArgument, "the copy of the disk is not what was asked for"));
  return Status::Ok();
}

Status CopyUntrustedQcow2TopAndMiddle(const std::string& src, const std::string& middle,
                                      const std::string& dst, const std::string& backing,
                                      const std::string& backing_format,
                                      const ProcessOptions& tool) {
  VMG_RETURN_IF_ERROR(CopyUntrustedQcow2Top(src, dst, middle, "qcow2", tool));
  // dst's header is ours (checked to name `middle`); its clusters are the
  // guest's data, which a safe rebase only reads and compares.
  auto r = RunProcessChecked(
      {"qemu-img", "rebase", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, dst},
      std::chrono::minutes(30));
  if (!r.ok()) {
    unlink(dst.c_str());
    return r.error().Wrap("rebasing the copy onto its base");
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
  if (StartsWith(head,
                 "\x7f"
                 "ELF",
                 4) &&
      head.size() >= 20 && head[4] == 2 /* 64-bit */ &&
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
      {"\x1f\x8b", 2},          // gzip
      {"\x28\xb5\x2f\xfd", 4},  // zstd
      {"\xfd"
       "7zXZ",
       5},                      // xz
      {"\x5d\x00\x00", 3},      // lzma
      {"\x02\x21\x4c\x18", 4},  // lz4 legacy
      {"BZh", 3},               // bzip2
      {"070701", 6},            // cpio newc
      {"070702", 6},            // cpio crc
  };
  for (const auto& m : kMagics)
    if (StartsWith(head, m.magic, m.n)) return Status::Ok();
  return MakeError(ErrorCode::kInvalidArgument,
                   "the initrd is neither a cpio archive nor a compressed one");
}

}  // namespace vmgrid
