// vmgrid-linkem: a WAN link emulator in front of a TCP service, for
// benchmarks (docs/linkem.md). Prints the bound port on stdout, then proxies
// until SIGINT/SIGTERM and prints the counters on stderr.
//
//   vmgrid-linkem --listen 127.0.0.1:0 --target 127.0.0.1:8470 --rtt-ms 40 --rate-mbit 100
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <string>

#include "common/host_port.h"
#include "linkem/link_emulator.h"

namespace {

// HOST:PORT ([V6]:PORT allowed) into the emulator's fields; false if malformed.
bool SplitHostPort(const std::string& s, std::string* host, uint16_t* port) {
  auto parsed = vmgrid::ParseHostPort(s);
  if (!parsed.ok()) return false;
  *host = vmgrid::UnbracketHost(parsed->host);
  *port = static_cast<uint16_t>(parsed->port);
  return true;
}

CLI::Validator HostPort() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        auto parsed = vmgrid::ParseHostPort(s);
        return parsed.ok() ? std::string() : parsed.error().message;
      },
      "HOST:PORT");
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  std::string target;
  double rtt_ms = 0;
  double rate_mbit = 0;
  bool per_connection = false;
  size_t queue_kib = 1024;
  size_t max_connections = 256;
  bool verbose = false;

  CLI::App app{"vmgrid-linkem: TCP proxy emulating a WAN link (delay + bandwidth cap).",
               "vmgrid-linkem"};
  app.add_option("--listen", listen, "Address to accept clients on (port 0: any)")
      ->check(HostPort())
      ->capture_default_str();
  app.add_option("--target", target, "Service to forward to")->required()->check(HostPort());
  app.add_option("--rtt-ms", rtt_ms, "Round-trip time added (half each way)")
      ->check(CLI::Range(0.0, 60000.0))
      ->capture_default_str();
  app.add_option("--rate-mbit", rate_mbit, "Bandwidth per direction in Mbit/s (0: unlimited)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  app.add_flag("--per-connection", per_connection,
               "Give each connection its own bandwidth instead of sharing one link");
  app.add_option("--queue-kib", queue_kib, "Bottleneck buffer per direction")
      ->check(CLI::Range(size_t{1}, size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--max-connections", max_connections, "Concurrent connections")
      ->check(CLI::Range(size_t{1}, size_t{100000}))
      ->capture_default_str();
  app.add_flag("-v,--verbose", verbose, "Debug logging");
  CLI11_PARSE(app, argc, argv);
  // stdout carries only the port, for scripts; logs go to stderr.
  spdlog::set_default_logger(spdlog::stderr_color_mt("linkem"));
  if (verbose) spdlog::set_level(spdlog::level::debug);

  vmgrid::linkem::LinkEmulatorOptions o;
  SplitHostPort(listen, &o.listen_host, &o.listen_port);
  SplitHostPort(target, &o.target_host, &o.target_port);
  o.rtt = std::chrono::microseconds(std::llround(rtt_ms * 1000));
  o.rate_bps = static_cast<uint64_t>(std::llround(rate_mbit * 1e6));
  o.shared_link = !per_connection;
  o.queue_bytes = queue_kib * 1024;
  o.max_connections = max_connections;

  // Block the signals before any thread starts so only sigwait sees them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  vmgrid::linkem::LinkEmulator emulator(o);
  auto port = emulator.Start();
  if (!port.ok()) {
    std::fprintf(stderr, "vmgrid-linkem: %s\n", port.error().message.c_str());
    return 1;
  }
  std::printf("%d\n", *port);
  std::fflush(stdout);
  spdlog::info("linkem: {}:{} -> {} rtt {} ms, rate {} Mbit/s ({})", o.listen_host, *port, target,
               rtt_ms, rate_mbit, per_connection ? "per connection" : "shared");
  int sig = 0;
  sigwait(&stop, &sig);
  emulator.Stop();
  auto s = emulator.stats();
  std::fprintf(stderr,
               "connections=%llu rejected=%llu target_failures=%llu bytes_to_target=%llu "
               "bytes_to_client=%llu\n",
               static_cast<unsigned long long>(s.connections),
               static_cast<unsigned long long>(s.rejected),
               static_cast<unsigned long long>(s.target_failures),
               static_cast<unsigned long long>(s.bytes_to_target),
               static_cast<unsigned long long>(s.bytes_to_client));
  return 0;
}
