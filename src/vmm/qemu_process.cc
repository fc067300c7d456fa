#include "vmm/qemu_process.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/kvm.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/util.h"

extern char** environ;

namespace vmgrid {

namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using vmm::Clock;
using vmm::Deadline;
using vmm::DeadlineAfter;
using vmm::MillisUntil;
using vmm::UniqueFd;

constexpr size_t kSunPathMax = 107;  // sizeof(sockaddr_un::sun_path) - 1
constexpr milliseconds kKillWait(10000);

Error ErrnoError(ErrorCode code, const std::string& what, int err) {
  return MakeError(code, what + ": " + std::strerror(err));
}

bool ValidId(const std::string& s, size_t max_len) {
  if (s.empty() || s.size() > max_len) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

// A /proc file's text, or "" if it cannot be read (the process is gone).
std::string ReadProcFile(const std::string& path) {
  auto text = ReadFile(path, 1 << 20);
  return text.ok() ? *text : "";
}

std::string TailOfFile(const std::string& path, size_t max_bytes = kLogTailBytes) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  std::streamoff size = in.tellg();
  std::streamoff start = std::max<std::streamoff>(0, size - static_cast<std::streamoff>(max_bytes));
  in.seekg(start);
  std::string tail(static_cast<size_t>(size - start), '\0');
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r')) tail.pop_back();
  return tail;
}

std::string DiagnosticTail(const std::string& run_dir) {
  std::string out;
  std::string err = TailOfFile(RunPath(run_dir, kQemuStderrName));
  std::string log = TailOfFile(RunPath(run_dir, kQemuLogName));
  if (!err.empty()) out += "; qemu stderr: " + err;
  if (!log.empty()) out += "; qemu.log: " + log;
  return out;
}

Result<pid_t> ReadPidFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return MakeError(ErrorCode::kNotFound, "no pidfile " + path);
  std::string text;
  std::getline(in, text, '\0');
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  pid_t pid = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), pid);
  if (ec != std::errc() || ptr != text.data() + text.size() || pid <= 1) {
    return MakeError(ErrorCode::kInternal, "malformed pidfile " + path);
  }
  return pid;
}

// Process state letter from /proc/PID/stat, or 0 if there is no such process.
char ProcState(pid_t pid) {
  std::string stat = ReadProcFile("/proc/" + std::to_string(pid) + "/stat");
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return 0;
  return stat[paren + 2];
}

// The -pidfile argument of process `pid` if it is a QEMU (canonical path),
// else "".
std::string QemuPidfileOf(pid_t pid) {
  std::string raw = ReadProcFile("/proc/" + std::to_string(pid) + "/cmdline");
  std::vector<std::string> argv;
  for (size_t start = 0; start < raw.size();) {
    size_t end = raw.find('\0', start);
    if (end == std::string::npos) end = raw.size();
    argv.push_back(raw.substr(start, end - start));
    start = end + 1;
  }
  if (argv.empty() || fs::path(argv[0]).filename().string().find("qemu") == std::string::npos) {
    return "";
  }
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] != "-pidfile") continue;
    std::error_code ec;
    fs::path got = fs::weakly_canonical(argv[i + 1], ec);
    return ec ? "" : got.string();
  }
  return "";
}

// True if `pid` is a QEMU whose -pidfile lies in `run_dir`: guards against
// acting on a recycled pid or on some unrelated process.
bool IsQemuForRunDir(pid_t pid, const std::string& run_dir) {
  std::error_code ec;
  fs::path want = fs::weakly_canonical(RunPath(run_dir, kPidFileName), ec);
  if (ec) return false;
  std::string got = QemuPidfileOf(pid);
  return !got.empty() && got == want.string();
}

// Every live QEMU process of this machine with its -pidfile (canonical).
std::vector<std::pair<pid_t, std::string>> QemuProcesses() {
  std::vector<std::pair<pid_t, std::string>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (std::string pidfile = QemuPidfileOf(pid); !pidfile.empty())
      out.emplace_back(pid, std::move(pidfile));
  }
  return out;
}

bool ExitedNoPidfd(pid_t pid) {
  char state = ProcState(pid);
  return state == 0 || state == 'Z' || state == 'X';
}

bool Exited(pid_t pid, const UniqueFd& pidfd) {
  if (!pidfd.valid()) return ExitedNoPidfd(pid);
  pollfd pfd{pidfd.get(), POLLIN, 0};
  return ::poll(&pfd, 1, 0) > 0;
}

bool WaitGone(pid_t pid, const UniqueFd& pidfd, Deadline deadline) {
  for (;;) {
    if (pidfd.valid()) {
      pollfd pfd{pidfd.get(), POLLIN, 0};
      int rc = ::poll(&pfd, 1, MillisUntil(deadline));
      if (rc > 0) return true;
      if (rc == 0) return false;
      if (errno != EINTR) return ExitedNoPidfd(pid);
      continue;
    }
    if (ExitedNoPidfd(pid)) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(20));
  }
}

// Raw syscalls: glibc 2.36's <sys/pidfd.h> lacks extern "C" and cannot be
// linked from C++.
int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }
int PidfdSendSignal(int pidfd, int sig) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

// SIGKILL that cannot hit a recycled pid when a pidfd is available.
void SendKill(pid_t pid, const UniqueFd& pidfd) {
  if (pidfd.valid()) {
    PidfdSendSignal(pidfd.get(), SIGKILL);
  } else {
    ::kill(pid, SIGKILL);
  }
}

UniqueFd OpenPidfd(pid_t pid) { return UniqueFd(PidfdOpen(pid)); }

void RemoveRuntimeFilesIn(const std::string& run_dir) {
  for (const char* name : {kQmpSocketName, kQgaSocketName, kPidFileName}) {
    ::unlink(RunPath(run_dir, name).c_str());
  }
  // NICs' default local sockets (QEMU leaves them behind).
  for (int i = 0; i < kMaxNics; ++i) ::unlink(DefaultNicSocketPath(run_dir, i).c_str());
}

std::string Absolute(const std::string& path) {
  if (path.empty()) return path;
  std::error_code ec;
  fs::path abs = fs::absolute(path, ec);
  return ec ? path : abs.lexically_normal().string();
}

// Who QEMU runs as. Resolved before fork: nothing after fork may allocate.
struct Credentials {
  bool drop = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups (kvm, to open /dev/kvm)
};

Result<Credentials> ResolveCredentials(const QemuConfig& c) {
  Credentials cred;
  if (c.uid >= 0) {
    cred.drop = true;
    cred.uid = static_cast<uid_t>(c.uid);
    cred.gid = static_cast<gid_t>(c.gid);
  } else if (!c.runas.empty()) {
    struct passwd* pw = ::getpwnam(c.runas.c_str());
    if (pw == nullptr)
      return MakeError(ErrorCode::kInvalidArgument, "runas: no such user " + c.runas);
    cred.drop = true;
    cred.uid = pw->pw_uid;
    cred.gid = pw->pw_gid;
  } else {
    return cred;
  }
  if (::geteuid() != 0) {
    if (::geteuid() == cred.uid)
      cred.drop = false;  // already that user
    else
      return MakeError(ErrorCode::kFailedPrecondition, "running QEMU as another user needs root");
  }
  cred.groups.push_back(cred.gid);
  if (struct group* kvm = ::getgrnam("kvm")) cred.groups.push_back(kvm->gr_gid);
  return cred;
}

// Resolved before fork (execvp may allocate while searching PATH).
std::string FindExecutable(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string candidate = (end > start ? dirs.substr(start, end - start) : ".") + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return name;
}

// Starts `argv` detached: fork, setsid, fork again, so QEMU's parent is init
// (or a subreaper) and it is in a session of its own — a signal to the
// agent's process group (Ctrl-C, a supervisor's kill) must not reach it. The
// grandchild resets signals, sets umask 077, points stdin at /dev/null and
// stdout/stderr at `stderr_fd`, puts `state_fd` (if >= 0) at kIncomingStateFd,
// closes every other fd, drops to `cred` and execs. Returns QEMU's pid once exec succeeded; between
// fork and exec only async-signal-safe calls run.
Result<pid_t> SpawnDetached(const std::vector<std::string>& argv, int stderr_fd, int state_fd,
                            const Credentials& cred, const std::string& cgroup_dir) {
  std::string binary = FindExecutable(argv[0]);
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0) return ErrnoError(ErrorCode::kInternal, "pipe", errno);
  UniqueFd report_read(report[0]), report_write(report[1]);
  UniqueFd dev_null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!dev_null.valid()) return ErrnoError(ErrorCode::kInternal, "open /dev/null", errno);
  UniqueFd cgroup_procs;
  if (!cgroup_dir.empty()) {
    std::string procs = cgroup_dir + "/cgroup.procs";
    cgroup_procs.Reset(::open(procs.c_str(), O_WRONLY | O_CLOEXEC));
    if (!cgroup_procs.valid()) return ErrnoError(ErrorCode::kInternal, "open " + procs, errno);
  }

  pid_t middle = ::fork();
  if (middle < 0) return ErrnoError(ErrorCode::kInternal, "fork", errno);
  if (middle == 0) {
    int w = report_write.get();
    auto die = [&w](int err) {
      int32_t msg[2] = {-1, err};
      (void)!::write(w, msg, sizeof msg);
      ::_exit(127);
    };
    if (::setsid() < 0) die(errno);
    pid_t qemu = ::fork();
    if (qemu < 0) die(errno);
    if (qemu > 0) {
      int32_t msg[2] = {static_cast<int32_t>(qemu), 0};
      (void)!::write(w, msg, sizeof msg);
      ::_exit(0);
    }
    // The grandchild: becomes QEMU.
    sigset_t empty;
    sigemptyset(&empty);
    ::sigprocmask(SIG_SETMASK, &empty, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) (void)::sigaction(sig, &dfl, nullptr);
    }
    ::umask(077);
    // Into the VM's cgroup while still privileged ("0": the writer itself).
    if (cgroup_procs.valid() && ::write(cgroup_procs.get(), "0", 1) != 1) die(errno);
    if (::dup2(dev_null.get(), 0) < 0 || ::dup2(stderr_fd, 1) < 0 || ::dup2(stderr_fd, 2) < 0)
      die(errno);
    int first_closed = 3;
    if (state_fd >= 0) {
      // The report pipe must not sit where the state goes.
      if (w == kIncomingStateFd) {
        w = ::fcntl(w, F_DUPFD_CLOEXEC, kIncomingStateFd + 1);
        if (w < 0) ::_exit(127);
      }
      if (state_fd == kIncomingStateFd) {
        if (::fcntl(state_fd, F_SETFD, 0) != 0) die(errno);  // keep it across exec
      } else if (::dup2(state_fd, kIncomingStateFd) < 0) {   // dup2 clears close-on-exec
        die(errno);
      }
      first_closed = kIncomingStateFd + 1;
    }
    // Belt and braces next to O_CLOEXEC: fds opened by other libraries
    // without it (sockets, the agent's database) must not leak into a VM.
    // Only the report pipe (close-on-exec) and the state stay.
    if (w > first_closed)
      (void)::close_range(static_cast<unsigned>(first_closed), static_cast<unsigned>(w - 1), 0);
    (void)::close_range(static_cast<unsigned>(std::max(w + 1, first_closed)), ~0U, 0);
    if (::chdir("/") != 0) die(errno);
    if (cred.drop) {
      if (::setgroups(cred.groups.size(), cred.groups.data()) != 0) die(errno);
      if (::setgid(cred.gid) != 0) die(errno);
      if (::setuid(cred.uid) != 0) die(errno);
    }
    ::execve(binary.c_str(), cargv.data(), environ);
    die(errno);
  }
  report_write.Reset();
  int status = 0;
  while (::waitpid(middle, &status, 0) < 0 && errno == EINTR) {
  }
  // Reads the middle process's message, then EOF (exec closed the pipe) or
  // the grandchild's errno.
  int32_t msg[4] = {0, 0, 0, 0};
  size_t got = 0;
  while (got < sizeof msg) {
    ssize_t n = ::read(report_read.get(), reinterpret_cast<char*>(msg) + got, sizeof msg - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  if (got < 2 * sizeof(int32_t) || msg[0] < 0) {
    return ErrnoError(ErrorCode::kInternal, "start " + argv[0], got >= 8 ? msg[1] : EIO);
  }
  if (got >= 4 * sizeof(int32_t)) {
    return ErrnoError(ErrorCode::kInternal, "exec " + binary, msg[3]);
  }
  return static_cast<pid_t>(msg[0]);
}

// Waits for QEMU's foreground process, which exits once the daemon finished
// initializing. Returns its exit status, or -1 if someone else reaped it.
Result<int> WaitLauncher(pid_t pid, Deadline deadline) {
  milliseconds nap(2);
  for (;;) {
    int status = 0;
    pid_t rc = ::waitpid(pid, &status, WNOHANG);
    if (rc == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (rc < 0 && errno == ECHILD) return -1;  // SIGCHLD ignored or reaped elsewhere
    if (rc < 0 && errno != EINTR) return ErrnoError(ErrorCode::kInternal, "waitpid", errno);
    if (Clock::now() >= deadline)
      return MakeError(ErrorCode::kTimeout, "QEMU did not start in time");
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, milliseconds(50));
  }
}

}  // namespace

std::string RunPath(const std::string& run_dir, const char* name) {
  std::string dir = run_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir == "/" ? "/" + std::string(name) : dir + "/" + name;
}

Status ValidateQemuConfig(const QemuConfig& c) {
  auto invalid = [](const std::string& msg) { return MakeError(ErrorCode::kInvalidArgument, msg); };
  if (!ValidId(c.vm_id, 64)) return invalid("vm_id must match [A-Za-z0-9._-]{1,64}");
  if (c.vcpus < 1 || c.vcpus > 255) return invalid("vcpus must be in [1, 255]");
  if (c.memory_mb < 16 || c.memory_mb > 1024 * 1024)
    return invalid("memory_mb must be in [16, 1048576]");
  if (c.run_dir.empty()) return invalid("run_dir is required");
  // Option-list values: QEMU would split at a comma (",," escaping exists but
  // is not worth the risk of a silently different device).
  for (const std::string* v : {&c.run_dir, &c.disk_path, &c.nbd_socket}) {
    if (v->find(',') != std::string::npos) return invalid("path contains a comma: " + *v);
  }
  for (const std::string* v :
       {&c.run_dir, &c.disk_path, &c.kernel, &c.initrd, &c.append, &c.cgroup_dir}) {
    if (v->find('\0') != std::string::npos || v->find('\n') != std::string::npos) {
      return invalid("NUL or newline in a path or the kernel command line");
    }
  }
  // Launch makes run_dir absolute, which can only lengthen it; check both.
  for (const std::string& dir : {c.run_dir, Absolute(c.run_dir)}) {
    if (RunPath(dir, kQmpSocketName).size() > kSunPathMax) {
      return invalid("run_dir too long for a unix socket path (max " + std::to_string(kSunPathMax) +
                     " bytes incl. /qmp.sock): " + dir);
    }
  }
  if (c.disk_format != "qcow2" && c.disk_format != "raw")
    return invalid("disk_format must be qcow2 or raw");
  if (c.disk_untrusted_depth < 0 || c.disk_untrusted_depth > 16)
    return invalid("disk_untrusted_depth must be in [0, 16]");
  if (c.kernel.empty() && (!c.initrd.empty() || !c.append.empty())) {
    return invalid("initrd/append require a kernel");
  }
  if (!c.accel.empty() && c.accel != "tcg" && c.accel != "kvm")
    return invalid("accel must be tcg, kvm or empty");
  if (!c.vmgenid.empty() && !ValidUuid(c.vmgenid)) return invalid("vmgenid must be a UUID");
  if (!c.runas.empty() && !ValidId(c.runas, 32)) return invalid("runas is not a valid user name");
  if ((c.uid < 0) != (c.gid < 0)) return invalid("uid and gid go together");
  if (c.uid == 0 || c.gid == 0) return invalid("QEMU must not run as uid or gid 0");
  if (c.nbd_depth < 0 || c.nbd_depth > 8) return invalid("nbd_depth must be in [0, 8]");
  if ((c.nbd_depth > 0) != !c.nbd_socket.empty())
    return invalid("nbd_socket and nbd_depth go together");
  if (c.nbd_depth > 0 && c.disk_path.empty()) return invalid("nbd_socket needs a disk");
  if (c.nbd_socket.size() > kSunPathMax)
    return invalid("nbd_socket too long for a unix socket path");
  if (c.qemu_binary.empty()) return invalid("qemu_binary is required");
  if (!c.incoming_file.empty() && !c.incoming) return invalid("incoming_file needs incoming");
  if (c.data_disks.size() > static_cast<size_t>(kMaxDataDisks))
    return invalid("at most " + std::to_string(kMaxDataDisks) + " data disks");
  for (const DataDiskConfig& d : c.data_disks) {
    for (const std::string* v : {&d.path, &d.nbd_socket})
      if (v->find_first_of(std::string(",\n\0", 3)) != std::string::npos)
        return invalid("data disk path contains a comma, NUL or newline: " + *v);
    if (d.path.empty()) return invalid("a data disk needs a path");
    if (d.format != "qcow2" && d.format != "raw")
      return invalid("data disk format must be qcow2 or raw");
    if (!d.nbd_socket.empty() && d.format != "qcow2")
      return invalid("a data disk's NBD backing needs a qcow2 overlay");
    if (d.nbd_socket.size() > kSunPathMax)
      return invalid("data disk nbd_socket too long for a unix socket path");
    if (d.serial.empty() || d.serial.size() > 20 ||
        d.serial.find_first_not_of(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != std::string::npos)
      return invalid("data disk serial must match [A-Za-z0-9-]{1,20}");
  }
  // Default local sockets live in run_dir, which Launch makes absolute.
  VMG_RETURN_IF_ERROR(ValidateNics(c.nics, c.run_dir));
  std::vector<NicConfig> absolute_nics = c.nics;
  for (NicConfig& nic : absolute_nics) {
    nic.local_path = Absolute(nic.local_path);
    nic.remote_path = Absolute(nic.remote_path);
  }
  VMG_RETURN_IF_ERROR(ValidateNics(absolute_nics, Absolute(c.run_dir)));
  return Status::Ok();
}

// One option and its value per line mirrors the command line.
// clang-format off
std::vector<std::string> BuildQemuArgv(const QemuConfig& c) {
  const bool kvm = c.accel == "kvm";
  const std::string& run = c.run_dir;
  std::vector<std::string> a = {
      c.qemu_binary,
      "-machine", std::string("q35,accel=") + (kvm ? "kvm" : "tcg"),
      "-cpu", kvm ? "host" : "max",
      "-smp", std::to_string(c.vcpus),
      "-m", std::to_string(c.memory_mb),
      "-nodefaults",
      "-no-user-config",
      "-display", "none",
  };
  if (!c.kernel.empty()) {
    a.insert(a.end(), {"-kernel", c.kernel});
    if (!c.initrd.empty()) a.insert(a.end(), {"-initrd", c.initrd});
    if (!c.append.empty()) a.insert(a.end(), {"-append", c.append});
  }
  if (!c.disk_path.empty()) {
    std::string nbd;  // backing.(...)file.server.path=SOCKET
    if (c.nbd_depth > 0) {
      for (int i = 0; i < c.nbd_depth; ++i) nbd += "backing.";
      nbd = "," + nbd + "file.server.path=" + c.nbd_socket;
    }
    std::string cut;  // backing.(...)backing= (the user's layer has no backing file)
    if (c.disk_untrusted_depth > 0) {
      for (int i = 0; i < c.disk_untrusted_depth; ++i) cut += "backing.";
      cut = "," + cut + "backing=";
    }
    a.insert(a.end(), {"-drive",
                       "file=" + c.disk_path + ",if=none,id=disk0,format=" + c.disk_format +
                           ",cache=writeback,discard=unmap" + nbd + cut,
                       "-device", "virtio-blk-pci,drive=disk0,id=vda"});
  }
  a.insert(a.end(), {
      "-device", "virtio-serial-pci,id=vser0",
      "-chardev", "socket,path=" + RunPath(run, kQgaSocketName) + ",server=on,wait=off,id=qga0",
      "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
      "-device", "virtio-rng-pci,id=rng0",
      "-device", "vmgenid,id=vmgen0,guid=" + (c.vmgenid.empty() ? std::string("auto") : c.vmgenid),
  });
  std::vector<std::string> nics = BuildNicArgs(c.nics, run);
  a.insert(a.end(), nics.begin(), nics.end());
  for (size_t i = 0; i < c.data_disks.size(); ++i) {
    const DataDiskConfig& d = c.data_disks[i];
    const std::string id = "data" + std::to_string(i);
    char slot[8];
    std::snprintf(slot, sizeof slot, "0x%x", 0x18 + static_cast<unsigned>(i));
    a.insert(a.end(), {"-drive",
                       "file=" + d.path + ",if=none,id=" + id + ",format=" + d.format +
                           ",cache=writeback" + (d.readonly ? ",read-only=on" : "") +
                           (d.nbd_socket.empty() ? "" : ",backing.file.server.path=" + d.nbd_socket),
                       "-device", "virtio-blk-pci,drive=" + id + ",id=v" + id + ",serial=" + d.serial +
                           ",addr=" + slot});
  }
  a.insert(a.end(), {
      // Appended to (a VM started again keeps its log); the agent bounds it
      // (agent/console_log.h).
      "-chardev", "file,id=serial0,path=" + RunPath(run, kConsoleLogName) + ",append=on",
      "-serial", "chardev:serial0",
      "-qmp", "unix:" + RunPath(run, kQmpSocketName) + ",server=on,wait=off",
      "-pidfile", RunPath(run, kPidFileName),
      "-D", RunPath(run, kQemuLogName),
  });
  if (c.incoming && !c.incoming_file.empty()) {
    // MIGRATION events from the start: the load may end before QMP is
    // connected (query-migrate tells then), or after (the event tells).
    a.insert(a.end(), {"-incoming", "fd:" + std::to_string(kIncomingStateFd), "-global",
                       "migration.x-events=on"});
  } else if (c.incoming) {
    a.insert(a.end(), {"-incoming", "defer"});
  }
  if (c.start_paused) a.push_back("-S");
  if (c.reboot_exits) a.insert(a.end(), {"-action", "reboot=shutdown"});
  if (c.sandbox) a.insert(a.end(), {"-sandbox", kSandboxOptions});
  a.insert(a.end(), {"-name", c.vm_id + ",process=vmgrid-" + c.vm_id});
  return a;
}
// clang-format on

bool KvmAvailable() {
  UniqueFd fd(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!fd.valid()) return false;
  return ::ioctl(fd.get(), KVM_GET_API_VERSION, 0) == KVM_API_VERSION;
}

namespace {

// Starts the exact machine/cpu combination Launch would use for KVM, paused,
// and quits it over QMP on stdin. Exit status 0 means KVM really works.
bool ProbeKvm(const std::string& qemu_binary) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return false;
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  const std::string commands = "{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n";
  // Fits in the pipe buffer, so writing before the child runs cannot block.
  if (::write(write_end.get(), commands.data(), commands.size()) !=
      static_cast<ssize_t>(commands.size())) {
    return false;
  }
  write_end.Reset();
  std::vector<std::string> argv = {
      qemu_binary,       "-machine", "q35,accel=kvm", "-cpu", "host", "-nodefaults",
      "-no-user-config", "-display", "none",          "-S",   "-qmp", "stdio"};
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, read_end.get(), 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, cargv[0], &actions, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return false;
  Result<int> status = WaitLauncher(pid, DeadlineAfter(milliseconds(10000)));
  if (!status.ok()) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    return false;
  }
  return *status == 0;
}

}  // namespace

bool KvmIsHardwareAssisted(const std::string& sys_module_dir) {
  std::error_code ec;
  return std::filesystem::exists(sys_module_dir + "/kvm_intel", ec) ||
         std::filesystem::exists(sys_module_dir + "/kvm_amd", ec);
}

bool KvmUsableBy(const std::string& qemu_binary) {
  static std::mutex mu;
  static std::map<std::string, bool> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(qemu_binary);
  if (it != cache.end()) return it->second;
  const char* env = std::getenv("VMGRID_ACCEL");
  const std::string forced = env ? env : "";
  bool usable = false;
  if (forced == "tcg") {
    usable = false;
  } else if (!KvmAvailable()) {
    if (forced == "kvm") spdlog::warn("VMGRID_ACCEL=kvm but /dev/kvm is not usable; using TCG");
  } else if (forced != "kvm" && !KvmIsHardwareAssisted()) {
    // /dev/kvm without kvm_intel/kvm_amd: PVM (kvm_pvm) on a nested host.
    // It starts QEMU (the probe passes) but runs only PVM-enabled guest
    // kernels; a stock Debian kernel stops with a KVM internal error early in
    // boot and the guest never answers.
    spdlog::warn(
        "/dev/kvm is not hardware-assisted KVM (no kvm_intel/kvm_amd module; kvm_pvm runs only "
        "PVM-enabled guest kernels); using TCG. VMGRID_ACCEL=kvm forces KVM");
  } else {
    usable = ProbeKvm(qemu_binary);
    if (!usable)
      spdlog::warn("/dev/kvm is present but {} cannot run q35 with -cpu host; using TCG",
                   qemu_binary);
  }
  cache[qemu_binary] = usable;
  return usable;
}

QemuProcess::QemuProcess(std::string run_dir, pid_t pid, vmm::UniqueFd pidfd,
                         std::unique_ptr<QmpClient> qmp)
    : run_dir_(std::move(run_dir)), pid_(pid), pidfd_(std::move(pidfd)), qmp_(std::move(qmp)) {}

QemuProcess::~QemuProcess() = default;

Result<std::unique_ptr<QemuProcess>> QemuProcess::Launch(const QemuConfig& config,
                                                         milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  VMG_RETURN_IF_ERROR(ValidateQemuConfig(config));
  QemuConfig cfg = config;
  for (std::string* p : {&cfg.run_dir, &cfg.disk_path, &cfg.kernel, &cfg.initrd}) *p = Absolute(*p);
  for (DataDiskConfig& d : cfg.data_disks) d.path = Absolute(d.path);
  for (NicConfig& nic : cfg.nics) {
    nic.local_path = Absolute(nic.local_path);
    nic.remote_path = Absolute(nic.remote_path);
  }
  if (cfg.accel.empty()) cfg.accel = KvmUsableBy(cfg.qemu_binary) ? "kvm" : "tcg";
  VMG_ASSIGN_OR_RETURN(Credentials cred, ResolveCredentials(cfg));
  const std::string& run = cfg.run_dir;

  std::error_code ec;
  if (fs::create_directories(run, ec)) {
    fs::permissions(run, fs::perms::owner_all, ec);
    // QEMU creates its sockets, pidfile and logs here as its own user.
    if (cred.drop && ::chown(run.c_str(), cred.uid, cred.gid) != 0)
      return ErrnoError(ErrorCode::kInternal, "chown " + run, errno);
  } else if (ec) {
    return MakeError(ErrorCode::kInternal, "create run_dir " + run + ": " + ec.message());
  }
  std::string pidfile = RunPath(run, kPidFileName);
  if (Result<pid_t> old = ReadPidFile(pidfile);
      old.ok() && !ExitedNoPidfd(*old) && IsQemuForRunDir(*old, run)) {
    return MakeError(ErrorCode::kAlreadyExists,
                     "QEMU pid " + std::to_string(*old) + " is already running in " + run);
  }
  // Stale files would let us mistake a dead VM's pidfile or socket for ours.
  RemoveRuntimeFilesIn(run);

  std::string stderr_path = RunPath(run, kQemuStderrName);
  UniqueFd err_fd(::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!err_fd.valid()) return ErrnoError(ErrorCode::kInternal, "open " + stderr_path, errno);

  UniqueFd state_fd;
  if (!cfg.incoming_file.empty()) {
    state_fd.Reset(::open(cfg.incoming_file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!state_fd.valid()) {
      return ErrnoError(errno == ENOENT ? ErrorCode::kNotFound : ErrorCode::kInternal,
                        "open saved state " + cfg.incoming_file, errno);
    }
  }

  std::vector<std::string> argv = BuildQemuArgv(cfg);
  Result<pid_t> spawned = SpawnDetached(argv, err_fd.get(), state_fd.get(), cred, cfg.cgroup_dir);
  err_fd.Reset();
  state_fd.Reset();
  if (!spawned.ok())
    return MakeError(spawned.error().code, spawned.error().message + DiagnosticTail(run));
  pid_t pid = *spawned;
  UniqueFd pidfd = OpenPidfd(pid);
  auto fail = [&](const Error& e) -> Error {
    SendKill(pid, pidfd);
    (void)WaitGone(pid, pidfd, DeadlineAfter(kKillWait));
    RemoveRuntimeFilesIn(run);
    return MakeError(e.code, "launch failed: " + e.message + DiagnosticTail(run));
  };
  // QMP answers once QEMU finished initializing (commands run in its main
  // loop); until then, watch for an early exit (bad option, missing file).
  std::unique_ptr<QmpClient> qmp;
  for (;;) {
    if (Exited(pid, pidfd)) {
      return fail(MakeError(ErrorCode::kInternal, "QEMU exited during startup"));
    }
    if (Clock::now() >= deadline)
      return fail(MakeError(ErrorCode::kTimeout, "QEMU did not start in time"));
    auto left = std::min<int64_t>(MillisUntil(deadline), 1000);
    auto connected =
        QmpClient::Connect(RunPath(run, kQmpSocketName), milliseconds(std::max<int64_t>(left, 1)));
    if (connected.ok()) {
      qmp = std::move(connected).value();
      break;
    }
    if (connected.error().code != ErrorCode::kTimeout &&
        connected.error().code != ErrorCode::kUnavailable &&
        connected.error().code != ErrorCode::kNotFound) {
      return fail(connected.error());
    }
  }
  if (!IsQemuForRunDir(pid, run)) {
    return fail(MakeError(ErrorCode::kInternal, "QEMU pid " + std::to_string(pid) + " vanished"));
  }
  spdlog::info("launched qemu pid {} for {} in {}{}", pid, cfg.vm_id, run,
               cred.drop ? " as uid " + std::to_string(cred.uid) : std::string());
  return std::unique_ptr<QemuProcess>(new QemuProcess(run, pid, std::move(pidfd), std::move(qmp)));
}

int KillQemusForRunDir(const std::string& run_dir, milliseconds timeout) {
  std::error_code ec;
  const std::string want = fs::weakly_canonical(RunPath(Absolute(run_dir), kPidFileName), ec);
  if (ec) return 0;
  std::vector<pid_t> killed;
  for (const auto& [pid, pidfile] : QemuProcesses())
    if (pidfile == want && ::kill(pid, SIGKILL) == 0) killed.push_back(pid);
  // SIGKILL also ends a stopped process; init reaps them (not our children).
  const Deadline deadline = DeadlineAfter(timeout);
  for (pid_t pid : killed)
    while (!ExitedNoPidfd(pid) && Clock::now() < deadline)
      std::this_thread::sleep_for(milliseconds(10));
  return static_cast<int>(killed.size());
}

std::vector<std::string> KillOrphanQemus(const std::string& vms_root, milliseconds timeout) {
  std::error_code ec;
  const fs::path root = fs::weakly_canonical(Absolute(vms_root), ec);
  if (ec) return {};
  const std::string prefix = root.string() + "/";
  std::vector<std::string> orphans;
  for (const auto& [pid, pidfile] : QemuProcesses()) {
    if (!pidfile.starts_with(prefix)) continue;
    // ROOT/ID/run/qemu.pid: the VM's directory is gone.
    const std::string id =
        pidfile.substr(prefix.size(), pidfile.find('/', prefix.size()) - prefix.size());
    if (id.empty() || fs::exists(root / id, ec)) continue;
    spdlog::warn("killing QEMU pid {} of VM {}: its directory {} is gone", pid, id,
                 (root / id).string());
    (void)KillQemusForRunDir((root / id / "run").string(), timeout);
    orphans.push_back(id);
  }
  return orphans;
}

Result<std::unique_ptr<QemuProcess>> QemuProcess::Adopt(const std::string& run_dir,
                                                        milliseconds timeout) {
  std::string run = Absolute(run_dir);
  VMG_ASSIGN_OR_RETURN(pid_t pid, ReadPidFile(RunPath(run, kPidFileName)));
  UniqueFd pidfd = OpenPidfd(pid);
  if (Exited(pid, pidfd) || !IsQemuForRunDir(pid, run)) {
    return MakeError(ErrorCode::kNotFound,
                     "no QEMU running in " + run + " (stale pid " + std::to_string(pid) + ")");
  }
  auto qmp = QmpClient::Connect(RunPath(run, kQmpSocketName), timeout);
  if (!qmp.ok()) return qmp.error().Wrap("adopt " + run);
  return std::unique_ptr<QemuProcess>(
      new QemuProcess(run, pid, std::move(pidfd), std::move(qmp).value()));
}

std::string QemuProcess::LogTail() const {
  // Not daemonized, QEMU reports errors on its stderr (qemu.stderr), and
  // -D logging goes to qemu.log.
  std::string err = TailOfFile(RunPath(run_dir_, kQemuStderrName));
  std::string log = TailOfFile(RunPath(run_dir_, kQemuLogName));
  return err.empty() ? log : log.empty() ? err : err + "\n" + log;
}

std::string QemuProcess::ConsoleTail(size_t max_bytes) const {
  return TailOfFile(RunPath(run_dir_, kConsoleLogName), max_bytes);
}

bool QemuProcess::Alive() const { return !Exited(pid_, pidfd_); }

bool QemuProcess::WaitExit(Deadline deadline) const { return WaitGone(pid_, pidfd_, deadline); }

void QemuProcess::RemoveRuntimeFiles() const { RemoveRuntimeFilesIn(run_dir_); }

Status QemuProcess::Quit(milliseconds grace) {
  Deadline deadline = DeadlineAfter(grace);
  if (Alive()) {
    Result<nlohmann::json> r = qmp_->Execute("quit", nlohmann::json::object(), grace);
    // QEMU may close the socket before its reply is read; only the exit counts.
    if (!r.ok() && r.error().code != ErrorCode::kUnavailable) {
      spdlog::warn("qemu pid {}: quit: {}", pid_, r.error().message);
    }
    if (!WaitExit(deadline)) {
      spdlog::warn("qemu pid {} still running {} ms after quit; killing", pid_, grace.count());
      return Kill();
    }
  }
  qmp_->Close();
  RemoveRuntimeFiles();
  return Status::Ok();
}

Status QemuProcess::Kill() {
  if (Alive()) {
    if (!pidfd_.valid() && !IsQemuForRunDir(pid_, run_dir_)) {
      return MakeError(ErrorCode::kInternal,
                       "pid " + std::to_string(pid_) + " is no longer our QEMU");
    }
    SendKill(pid_, pidfd_);
    if (!WaitExit(DeadlineAfter(kKillWait))) {
      return MakeError(ErrorCode::kInternal,
                       "QEMU pid " + std::to_string(pid_) + " survived SIGKILL");
    }
  }
  qmp_->Close();
  RemoveRuntimeFiles();
  return Status::Ok();
}

}  // namespace vmgrid
