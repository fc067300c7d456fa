// The machine line every benchmark prints with its results: cores, CPU
// model, memory.
#pragma once

#include <unistd.h>

#include <fstream>
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

}  // namespace vmgrid::bench
