// Test-only fake QEMU/guest-agent peer: listens on a unix socket in a temp
// directory and runs a scripted conversation on a thread, so client parsing
// can be tested against malformed, oversized and interleaved input.
// Thread-safety: construct and destroy on the test thread; the script runs on
// the server thread and talks only through its FakeConn.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "vmm/test_util.h"

namespace vmgrid::vmm::testing {

class FakeConn {
 public:
  explicit FakeConn(int fd) : fd_(fd) {}
  // Next '\n'-terminated line (without it); "" on EOF/error/5 s timeout.
  std::string ReadLine();
  // Reads one line and returns the fds that arrived with it (SCM_RIGHTS).
  std::string ReadLineWithFds(std::vector<int>* fds);
  void Write(const std::string& data);
  // Waits (up to 5 s) for the client to close the connection.
  bool WaitClosed();
  int fd() const { return fd_; }

 private:
  int fd_;
  std::string buf_;
};

class FakeServer {
 public:
  using Script = std::function<void(FakeConn&)>;
  // Listens at `path`. Each script serves one accepted connection, in order.
  FakeServer(const std::string& path, std::vector<Script> scripts);
  ~FakeServer();  // stops accepting, joins the thread, closes all sockets
  // Waits until every script has finished (or the server gave up waiting).
  void Join();

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace vmgrid::vmm::testing
