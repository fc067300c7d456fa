// The machine line every benchmark prints with its results: cores, CPU
// model, memory; and what the benchmarks read about processes and QEMU.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

namespace vmgrid::bench {

// "2 cores (AMD EPYC ...), 23 GiB"
inline std::string MachineLine() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model = "unknown CPU";
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  return std::to_string(sysconf(_SC_NPROCESSORS_ONLN)) + " cores (" + model + "), " +
         std::to_string(sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGE_SIZE) / (1 << 30)) + " GiB";
}

// The 1-minute load average now (/proc/loadavg), -1 when unreadable.
inline double LoadAverage1() {
  std::ifstream in("/proc/loadavg");
  double l = -1;
  in >> l;
  return l;
}

// "QEMU 10.0.2": the version qemu-system-x86_64 prints, "QEMU (unknown)"
// when it cannot be run.
inline std::string QemuVersion() {
  std::string out;
  if (FILE* p = popen("qemu-system-x86_64 --version 2>/dev/null", "r")) {
    char b[256];
    if (fgets(b, sizeof b, p)) out = b;
    pclose(p);
  }
  const std::string prefix = "QEMU emulator version ";
  if (out.rfind(prefix, 0) != 0) return "QEMU (unknown)";
  out = out.substr(prefix.size());
  return "QEMU " + out.substr(0, out.find_first_of(" \n"));
}

// User plus system CPU time of process `pid` so far, in ms (/proc/PID/stat),
// or -1.
inline double ProcessCpuMs(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t p = text.rfind(')');
  if (p == std::string::npos) return -1;
  std::istringstream fields(text.substr(p + 2));
  std::string f;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {  // fields 14 and 15: utime, stime
    if (i == 14) utime = std::stod(f);
    if (i == 15) stime = std::stod(f);
  }
  return (utime + stime) * 1000.0 / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// "2026-12-06 11:30 UTC".
inline std::string Today() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%d %H:%M UTC", &tm);
  return b;
}

// The source tree's commit (`git rev-parse --short HEAD` in `source_dir`),
// with "+changes" when the tree differs from it; "unknown" without git.
inline std::string GitCommit(const std::string& source_dir) {
  auto run = [&](const std::string& args) {
    std::string out;
    if (FILE* p = popen(("git -C '" + source_dir + "' " + args + " 2>/dev/null").c_str(), "r")) {
      char b[256];
      while (fgets(b, sizeof b, p)) out += b;
      pclose(p);
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
  };
  std::string rev = run("rev-parse --short HEAD");
  if (rev.empty()) return "unknown";
  return run("status --porcelain --untracked-files=no").empty() ? rev : rev + "+changes";
}

}  // namespace vmgrid::bench
