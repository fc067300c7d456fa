// An emulated WAN in front of a grid's server, as the benchmarks that
// compare LAN and WAN fetches set it up (docs/linkem.md).
#pragma once

#include <cstdlib>
#include <string>

#include "common/result.h"
#include "linkem/link_emulator.h"

namespace vmgrid::bench {

// Options for a link of `rtt_ms` and `mbit` in front of the server at `url`
// (SCHEME://HOST:PORT).
inline linkem::LinkEmulatorOptions WanOptions(const std::string& url, double rtt_ms, double mbit) {
  linkem::LinkEmulatorOptions lo;
  lo.target_port = static_cast<uint16_t>(std::atoi(url.substr(url.rfind(':') + 1).c_str()));
  lo.rtt = std::chrono::microseconds(static_cast<int64_t>(rtt_ms * 1000));
  lo.rate_bps = static_cast<uint64_t>(mbit * 1e6);
  return lo;
}

// Starts `link` and returns `url` with the emulator's port: the same scheme
// and host, so that TLS (the grid's default) goes through it unchanged.
inline Result<std::string> StartInFront(linkem::LinkEmulator& link, const std::string& url) {
  auto port = link.Start();
  if (!port.ok()) return port.error();
  return url.substr(0, url.rfind(':') + 1) + std::to_string(*port);
}

}  // namespace vmgrid::bench
