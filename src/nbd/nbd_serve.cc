// nbd_serve: serves files read-only with NbdServer until SIGINT/SIGTERM. A
// developer tool for trying clients against the server by hand and for
// throughput measurements (docs/nbd.md); the agent embeds NbdServer instead.
//
//   nbd_serve SOCKET NAME=FILE [NAME=FILE...] [--tcp PORT]
#include <signal.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "nbd/nbd_server.h"

int main(int argc, char** argv) {
  using namespace vmgrid::nbd;
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s SOCKET NAME=FILE [NAME=FILE...] [--tcp PORT]\n", argv[0]);
    return 2;
  }
  NbdServerOptions options;
  options.unix_socket_path = argv[1];
  std::vector<std::pair<std::string, std::string>> exports;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--tcp" && i + 1 < argc) {
      options.listen_tcp = true;
      options.tcp_port = static_cast<uint16_t>(std::atoi(argv[++i]));
      continue;
    }
    size_t eq = arg.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "bad export %s (want NAME=FILE)\n", arg.c_str());
      return 2;
    }
    exports.emplace_back(arg.substr(0, eq), arg.substr(eq + 1));
  }

  // Block the signals before any thread starts so only sigwait sees them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  NbdServer server(options);
  for (const auto& [name, path] : exports) {
    auto source = FileBlockSource::Open(path);
    if (!source.ok()) {
      std::fprintf(stderr, "%s\n", source.error().message.c_str());
      return 1;
    }
    if (auto st = server.AddExport(name, *source); !st.ok()) {
      std::fprintf(stderr, "%s\n", st.error().message.c_str());
      return 1;
    }
  }
  if (auto st = server.Start(); !st.ok()) {
    std::fprintf(stderr, "%s\n", st.error().message.c_str());
    return 1;
  }
  if (options.listen_tcp) std::printf("tcp port %u\n", server.tcp_port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  server.Stop();
  NbdStats s = server.stats();
  std::printf("connections=%lu requests=%lu bytes_read=%lu errors=%lu source_errors=%lu\n",
              static_cast<unsigned long>(s.connections), static_cast<unsigned long>(s.requests),
              static_cast<unsigned long>(s.bytes_read), static_cast<unsigned long>(s.errors),
              static_cast<unsigned long>(s.source_errors));
  return 0;
}
