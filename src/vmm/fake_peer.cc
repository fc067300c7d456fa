#include "vmm/fake_peer.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace vmgrid::vmm::testing {

std::string FakeConn::ReadLineWithFds(std::vector<int>* fds) {
  for (;;) {
    size_t nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return line;
    }
    pollfd pfd{fd_, POLLIN, 0};
    if (::poll(&pfd, 1, 5000) <= 0) return "";
    char data[65536];
    iovec iov{data, sizeof(data)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
    if (n <= 0) return "";
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && fds != nullptr) {
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          fds->push_back(fd);
        }
      }
    }
    buf_.append(data, static_cast<size_t>(n));
  }
}

std::string FakeConn::ReadLine() {
  std::vector<int> fds;
  std::string line = ReadLineWithFds(&fds);
  for (int fd : fds) ::close(fd);
  return line;
}

void FakeConn::Write(const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;  // the client went away; the test checks its side
    off += static_cast<size_t>(n);
  }
}

bool FakeConn::WaitClosed() {
  for (;;) {
    pollfd pfd{fd_, POLLIN, 0};
    if (::poll(&pfd, 1, 5000) <= 0) return false;
    char c[4096];
    ssize_t n = ::recv(fd_, c, sizeof(c), 0);
    if (n <= 0) return true;
  }
}

FakeServer::FakeServer(const std::string& path, std::vector<Script> scripts) : path_(path) {
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ::unlink(path.c_str());
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd_, 8) != 0) {
    std::abort();  // a test environment problem, not a code path under test
  }
  thread_ = std::thread([this, scripts = std::move(scripts)]() {
    for (const Script& script : scripts) {
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (::poll(&pfd, 1, 10000) <= 0 || stopping_) return;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      FakeConn conn(fd);
      script(conn);
      ::close(fd);
    }
  });
}

void FakeServer::Join() {
  if (thread_.joinable()) thread_.join();
}

FakeServer::~FakeServer() {
  stopping_ = true;
  ::shutdown(listen_fd_, SHUT_RDWR);  // wakes the accept poll
  Join();
  ::close(listen_fd_);
  ::unlink(path_.c_str());
}

}  // namespace vmgrid::vmm::testing
