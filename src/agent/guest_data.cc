#include "agent/guest_data.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "common/subprocess.h"
#include "vmm/guest_agent_client.h"

namespace vmgrid {

std::string DataDiskPath(const std::string& vm_dir, size_t index, const DataDiskSpec& d) {
  return vm_dir + "/data" + std::to_string(index) + (d.blank_mb > 0 ? ".raw" : ".qcow2");
}

std::string DataDiskSocket(const std::string& run_dir, size_t index) {
  return run_dir + "/data" + std::to_string(index) + ".sock";
}

std::string DataExportUser(const std::string& vm_id, size_t index) {
  return vm_id + "/data" + std::to_string(index);
}

Status MakeDataDiskFile(const DataDiskSpec& d, const std::string& path,
                        const std::string& backing) {
  const std::string tmp = path + ".partial";
  unlink(tmp.c_str());
  Result<std::string> r = std::string();
  if (d.blank_mb > 0) {
    // Journal-less like the file systems `data push` builds; a fixed time and
    // no discard make it quick and the same every time.
    r = RunProcessChecked({"env", "E2FSPROGS_FAKE_TIME=1700000000", "mkfs.ext4", "-q", "-F", "-b",
                           "4096", "-O", "^has_journal", "-E", "root_owner=0:0,nodiscard", "-L",
                           d.dataset.substr(0, 16), tmp, std::to_string(d.blank_mb) + "M"},
                          std::chrono::minutes(2));
  } else {
    r = RunProcessChecked(
        {"qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", tmp},
        std::chrono::minutes(2));
  }
  if (r.ok() && rename(tmp.c_str(), path.c_str()) != 0)
    r = MakeError(ErrorCode::kInternal, "rename " + tmp + ": " + std::string(strerror(errno)));
  if (!r.ok()) {
    unlink(tmp.c_str());
    return r.error().Wrap("the disk of dataset " + d.dataset);
  }
  return Status::Ok();
}

Status MakeMirrorTargetFile(const DataDiskSpec& d, const std::string& path) {
  if (d.blank_mb <= 0)
    return MakeError(ErrorCode::kInvalidArgument, "dataset " + d.dataset + " is not blank");
  const std::string tmp = path + ".partial";
  unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return MakeError(ErrorCode::kInternal, "create " + tmp + ": " + std::string(strerror(errno)));
  int rc = ::ftruncate(fd, static_cast<off_t>(d.blank_mb) << 20);
  int err = errno;
  ::close(fd);
  if (rc == 0 && rename(tmp.c_str(), path.c_str()) != 0) {
    rc = -1;
    err = errno;
  }
  if (rc != 0) {
    unlink(tmp.c_str());
    return MakeError(ErrorCode::kInternal,
                     "the disk of dataset " + d.dataset + ": " + std::string(strerror(err)));
  }
  return Status::Ok();
}

const std::string& GuestMountScript() {
  static const std::string script = R"sh(
serial="$1"; mp="$2"; opts="$3"; dev=""; tries=0
while :; do
  for b in /sys/block/vd*; do
    [ "$(cat "$b/serial" 2>/dev/null)" = "$serial" ] && dev="/dev/${b##*/}"
  done
  [ -n "$dev" ] && break
  tries=$((tries + 1))
  if [ "$tries" -gt 150 ]; then echo "no disk with serial $serial appeared" >&2; exit 3; fi
  [ -w /sys/bus/pci/rescan ] && echo 1 >/sys/bus/pci/rescan
  sleep 0.2
done
if grep -q "^[^ ]* $mp " /proc/mounts; then
  grep -q "^$dev $mp " /proc/mounts && exit 0
  echo "$mp is already a mount point of something else" >&2; exit 4
fi
mkdir -p "$mp" || exit 5
mount -t ext4 -o "$opts" "$dev" "$mp" || exit 6
)sh";
  return script;
}

static Status RunInGuest(GuestAgentClient& ga, const std::vector<std::string>& argv,
                         std::chrono::milliseconds timeout, const std::string& what,
                         ErrorCode code) {
  VMG_ASSIGN_OR_RETURN(ExecResult r, ga.Exec(argv, "", timeout));
  if (r.signaled || r.exit_code != 0) {
    std::string said = r.err.empty() ? r.out : r.err;
    if (said.size() > 500) said.resize(500);
    while (!said.empty() && (said.back() == '\n' || said.back() == ' ')) said.pop_back();
    return MakeError(code, what + " failed in the guest (exit " + std::to_string(r.exit_code) +
                               (said.empty() ? "" : ": " + said) + ")");
  }
  return Status::Ok();
}

Status MountGuestData(GuestAgentClient& ga, const std::vector<DataDiskSpec>& data,
                      std::chrono::milliseconds timeout) {
  for (size_t i = 0; i < data.size(); ++i) {
    const DataDiskSpec& d = data[i];
    VMG_RETURN_IF_ERROR(RunInGuest(ga,
                                   {"/bin/sh", "-c", GuestMountScript(), "vmgrid-mount",
                                    DataDiskSerial(i), d.mount, d.rw ? "rw" : "ro"},
                                   timeout, "mounting dataset " + d.dataset + " at " + d.mount,
                                   ErrorCode::kInternal));
  }
  return Status::Ok();
}

Status RemountGuestData(GuestAgentClient& ga, const DataDiskSpec& d, bool ro,
                        std::chrono::milliseconds timeout) {
  return RunInGuest(ga,
                    {"/bin/sh", "-c", "sync && mount -o remount,\"$1\" \"$2\"", "vmgrid-remount",
                     ro ? "ro" : "rw", d.mount},
                    timeout,
                    "making " + d.mount + (ro ? " read-only" : " writable again") + " (dataset " +
                        d.dataset + ")",
                    ErrorCode::kFailedPrecondition);
}

}  // namespace vmgrid
