#include "vmm/test_util.h"

#include <pwd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

namespace vmgrid::vmm::testing {

namespace {
std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

TempDir::TempDir() {
  char tmpl[] = "/tmp/vmm-XXXXXX";
  char* p = ::mkdtemp(tmpl);
  path_ = p != nullptr ? p : "/tmp";
}

TempDir::~TempDir() {
  std::error_code ec;
  if (path_ != "/tmp") std::filesystem::remove_all(path_, ec);
}

bool ProcessLive(pid_t pid) {
  std::string stat = Slurp("/proc/" + std::to_string(pid) + "/stat");
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return false;
  char state = stat[paren + 2];
  return state != 'Z' && state != 'X';
}

std::vector<pid_t> ProcessesMentioning(const std::string& needle) {
  std::vector<pid_t> found;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t pid = std::stoi(name);
    if (pid == ::getpid()) continue;
    std::string cmdline = Slurp(e.path().string() + "/cmdline");
    if (cmdline.find(needle) != std::string::npos && ProcessLive(pid)) found.push_back(pid);
  }
  return found;
}

int Sh(const std::string& command) {
  int rc = std::system(command.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string TestRunAs() {
  if (const char* env = std::getenv("VMGRID_TEST_RUNAS")) return env;
  return (::geteuid() == 0 && ::getpwnam("nobody") != nullptr) ? "nobody" : "";
}

bool GiveTo(const std::string& path, const std::string& user) {
  if (user.empty()) return true;
  struct passwd* pw = ::getpwnam(user.c_str());
  return pw != nullptr && ::chown(path.c_str(), pw->pw_uid, pw->pw_gid) == 0;
}

int64_t MsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               start)
      .count();
}

std::string RandomUuid() {
  std::random_device rd;
  std::uniform_int_distribution<int> hex(0, 15);
  const char* digits = "0123456789abcdef";
  std::string u = "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx";
  for (char& c : u) {
    if (c == 'x') c = digits[hex(rd)];
    if (c == 'y') c = digits[8 + hex(rd) % 4];
  }
  return u;
}

std::optional<TinyImage> FindTinyImage(const std::string& default_dir, std::string* why) {
  const char* env = std::getenv("VMGRID_TINY_IMAGE");
  std::string dir = env != nullptr ? env : default_dir;
  TinyImage img;
  img.dir = dir;
  img.kernel = dir + "/vmlinuz";
  img.initrd = dir + "/initrd.img";
  img.rootfs = dir + "/rootfs.raw";
  for (const std::string& f : {img.kernel, img.initrd, img.rootfs, dir + "/manifest.json"}) {
    if (!std::filesystem::exists(f)) {
      *why = "tiny image not built (" + f + " missing; run guest/build-tiny.sh)";
      return std::nullopt;
    }
  }
  std::ifstream in(dir + "/manifest.json");
  nlohmann::json m = nlohmann::json::parse(in, nullptr, false);
  if (m.is_discarded() || !m.contains("append") || !m["append"].is_string()) {
    *why = "manifest.json has no \"append\" string";
    return std::nullopt;
  }
  img.append = m["append"];
  img.fast_kernel = img.kernel;
  if (m.contains("kernel") && m["kernel"].is_string() &&
      std::filesystem::exists(dir + "/" + m["kernel"].get<std::string>())) {
    img.fast_kernel = dir + "/" + m["kernel"].get<std::string>();
  }
  return img;
}

}  // namespace vmgrid::vmm::testing
