#include "scripted_peer.h"

#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "vmm/unique_fd.h"

namespace vmgrid::fuzz {

namespace {

constexpr std::string_view kChunkSeparator = "~~~\n";

ScriptedPeer* g_active_peer = nullptr;
thread_local bool t_fast_sleep = false;

std::string ScalarText(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number() || v.is_boolean()) return v.dump();
  return {};
}

}  // namespace

Script ParseScript(const uint8_t* data, size_t size, size_t max_ops) {
  Script s;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t nl = in.find('\n');
  s.ops = std::string(in.substr(0, std::min(nl, max_ops)));
  if (nl == std::string_view::npos) return s;
  std::string_view rest = in.substr(nl + 1);
  for (;;) {
    size_t sep = rest.find(kChunkSeparator);
    s.chunks.emplace_back(rest.substr(0, sep));
    if (sep == std::string_view::npos) break;
    rest.remove_prefix(sep + kChunkSeparator.size());
  }
  return s;
}

ScriptedPeer::ScriptedPeer(std::vector<std::string> chunks) : chunks_(std::move(chunks)) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    std::perror("fuzz: socketpair");
    std::abort();  // the harness cannot run; not a finding
  }
  client_fd_ = fds[0];
  peer_fd_ = fds[1];
}

ScriptedPeer::~ScriptedPeer() {
  if (g_active_peer == this) g_active_peer = nullptr;
  ::close(peer_fd_);
  if (!client_taken_) ::close(client_fd_);
}

vmm::UnixStream ScriptedPeer::TakeClientStream() {
  client_taken_ = true;
  return vmm::UnixStream(vmm::UniqueFd(client_fd_));
}

void ScriptedPeer::OnClientWait(short events) {
  DrainRequests();
  if ((events & POLLIN) && out_.empty() && !eof_sent_) {
    if (next_chunk_ < chunks_.size()) {
      out_ = Substitute(chunks_[next_chunk_++]);  // may be empty: the client times out
    } else {
      ::shutdown(peer_fd_, SHUT_WR);
      eof_sent_ = true;
    }
  }
  Flush();
}

void ScriptedPeer::DrainRequests() {
  for (;;) {
    char buf[16384];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
    iovec iov{buf, sizeof(buf)};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(peer_fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n <= 0) return;
    // fds passed with getfd must not pile up across iterations.
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        ::close(fd);
      }
    }
    in_.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = in_.find('\n')) != std::string::npos) {
      HandleRequestLine(std::string_view(in_).substr(0, nl));
      in_.erase(0, nl + 1);
    }
  }
}

void ScriptedPeer::HandleRequestLine(std::string_view line) {
  ++requests_;
  while (!line.empty() && line.front() == '\xff') line.remove_prefix(1);  // QGA resync byte
  nlohmann::json req = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!req.is_object()) return;  // our own client wrote it; cannot happen
  if (auto it = req.find("id"); it != req.end()) vars_["id"] = ScalarText(*it);
  if (auto args = req.find("arguments"); args != req.end() && args->is_object()) {
    for (const auto& [key, value] : args->items()) vars_["a." + key] = ScalarText(value);
  }
}

std::string ScriptedPeer::Substitute(const std::string& chunk) const {
  std::string out;
  out.reserve(chunk.size());
  size_t i = 0;
  while (i < chunk.size()) {
    size_t at = chunk.find('@', i);
    if (at == std::string::npos) break;
    out.append(chunk, i, at - i);
    size_t end = chunk.find('@', at + 1);
    if (end != std::string::npos && end - at <= 64) {
      auto it = vars_.find(chunk.substr(at + 1, end - at - 1));
      if (it != vars_.end()) {
        out += it->second;
        i = end + 1;
        continue;
      }
    }
    out += '@';
    i = at + 1;
  }
  out.append(chunk, i, std::string::npos);
  return out;
}

void ScriptedPeer::Flush() {
  while (!out_.empty()) {
    ssize_t n = ::send(peer_fd_, out_.data(), out_.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) return;  // full: the rest goes out at the client's next wait
    out_.erase(0, static_cast<size_t>(n));
  }
}

ActivePeer::ActivePeer(ScriptedPeer* peer) {
  g_active_peer = peer;
  t_fast_sleep = true;
}

ActivePeer::~ActivePeer() {
  g_active_peer = nullptr;
  t_fast_sleep = false;
}

}  // namespace vmgrid::fuzz

// Linked with -Wl,--wrap=poll,--wrap=nanosleep (see fuzz/CMakeLists.txt).
extern "C" {
int __real_poll(struct pollfd* fds, nfds_t nfds, int timeout);
int __real_nanosleep(const struct timespec* req, struct timespec* rem);

int __wrap_poll(struct pollfd* fds, nfds_t nfds, int timeout) {
  using vmgrid::fuzz::g_active_peer;
  if (g_active_peer != nullptr && nfds == 1 && fds[0].fd == g_active_peer->client_fd()) {
    g_active_peer->OnClientWait(fds[0].events);
    return __real_poll(fds, nfds, 0);
  }
  return __real_poll(fds, nfds, timeout);
}

int __wrap_nanosleep(const struct timespec* req, struct timespec* rem) {
  if (vmgrid::fuzz::t_fast_sleep) return 0;
  return __real_nanosleep(req, rem);
}
}
