#include "agent/overlay_templates.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "common/subprocess.h"
#include "common/util.h"

namespace vmgrid {
namespace fs = std::filesystem;

namespace {

Status QemuImgCreate(const std::string& backing, const std::string& format,
                     const std::string& dest) {
  auto r = RunProcessChecked(
      {"qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", format, dest},
      std::chrono::minutes(5));
  if (!r.ok()) return r.error();
  return Status::Ok();
}

// What an empty overlay's bytes depend on, for a backing file.
Result<std::string> TemplateKey(const std::string& backing, const std::string& format) {
  struct stat st;
  if (stat(backing.c_str(), &st) != 0)
    return MakeError(ErrorCode::kNotFound, "backing file " + backing + ": " + strerror(errno));
  if (!S_ISREG(st.st_mode))
    return MakeError(ErrorCode::kInvalidArgument, "backing file " + backing + " is not a file");
  return Sha256Hex(format + "\n" + backing + "\n" + std::to_string(st.st_dev) + ":" +
                   std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
                   std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec));
}

// Copies `from` to a new file `to` (O_EXCL), in the kernel where it can.
Status CopyNewFile(const std::string& from, const std::string& to) {
  std::error_code ec;
  if (!fs::copy_file(from, to, fs::copy_options::none, ec))
    return MakeError(
        ec == std::errc::file_exists ? ErrorCode::kAlreadyExists : ErrorCode::kInternal,
        "copying overlay template to " + to + ": " + ec.message());
  return Status::Ok();
}

}  // namespace

Status OverlayTemplates::MakeTemplate(const std::string& backing, const std::string& format,
                                      const std::string& path) {
  VMG_RETURN_IF_ERROR(MakeDirs(dir_, 0700));
  // Made under a unique name and renamed: concurrent first uses of one
  // backing file each make one, and the last rename wins (they are equal).
  std::string tmp = path + ".tmp-" + NewToken().substr(0, 12);
  Status st = QemuImgCreate(backing, format, tmp);
  if (st.ok() && rename(tmp.c_str(), path.c_str()) != 0)
    st = MakeError(ErrorCode::kInternal, "rename " + tmp + ": " + strerror(errno));
  if (!st.ok()) unlink(tmp.c_str());
  return st;
}

Status OverlayTemplates::Create(const std::string& backing, const std::string& format,
                                const std::string& dest) {
  // An NBD export given as a "json:" pseudo-path names this VM's own socket:
  // no other overlay shares it.
  if (backing.rfind("json:", 0) == 0) return QemuImgCreate(backing, format, dest);
  VMG_ASSIGN_OR_RETURN(std::string key, TemplateKey(backing, format));
  std::string path = dir_ + "/" + key + ".qcow2";
  if (FileExists(path) && CopyNewFile(path, dest).ok()) {
    std::lock_guard<std::mutex> l(mu_);
    ++hits_;
    return Status::Ok();
  }
  VMG_RETURN_IF_ERROR(MakeTemplate(backing, format, path));
  {
    std::lock_guard<std::mutex> l(mu_);
    TrimLocked();
  }
  return CopyNewFile(path, dest);
}

int OverlayTemplates::hits() const {
  std::lock_guard<std::mutex> l(mu_);
  return hits_;
}

void OverlayTemplates::TrimLocked() {
  std::error_code ec;
  std::vector<std::pair<fs::file_time_type, fs::path>> templates;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    if (e.path().extension() != ".qcow2") continue;
    templates.emplace_back(e.last_write_time(ec), e.path());
  }
  if (templates.size() <= static_cast<size_t>(kMaxTemplates)) return;
  std::sort(templates.begin(), templates.end());
  for (size_t i = 0; i + kMaxTemplates < templates.size(); ++i) fs::remove(templates[i].second, ec);
}

}  // namespace vmgrid
