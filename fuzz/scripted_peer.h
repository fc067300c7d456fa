// ScriptedPeer: the far end of a socketpair that plays QEMU's monitor or the
// guest agent from a fuzz input, so the real QmpClient / GuestAgentClient /
// UnixStream code runs unmodified against hostile replies.
//
// Determinism without threads: the fuzz binaries link with
// -Wl,--wrap=poll,--wrap=nanosleep. UnixStream only calls poll() when its
// socket has no data (or no room); __wrap_poll then lets the active peer act:
// it reads the client's requests, sends the next scripted chunk (or EOF when
// the script is exhausted) and polls with a zero timeout. An empty chunk
// sends nothing, which the client sees as a timeout. Sleeps on the fuzzing
// thread return at once while a peer is active (retry loops are bounded by
// the script, not by wall time).
//
// Fuzz input format (shared by fuzz_qmp and fuzz_qga):
//   line 1        operations to run, one character each (see each target)
//   the rest      the peer's output, split into chunks at every "~~~\n"
// Placeholders in a chunk are replaced when the chunk is sent: "@id@" by the
// "id" of the client's latest request, "@a.KEY@" by the latest value of
// arguments.KEY in any request (e.g. "@a.id@" is the guest-sync-delimited id,
// "@a.job-id@" the drive-backup job name).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "vmm/unix_stream.h"

namespace vmgrid::fuzz {

struct Script {
  std::string ops;
  std::vector<std::string> chunks;
};

// Splits a fuzz input as described above; at most `max_ops` operations.
Script ParseScript(const uint8_t* data, size_t size, size_t max_ops = 16);

class ScriptedPeer {
 public:
  explicit ScriptedPeer(std::vector<std::string> chunks);
  ~ScriptedPeer();
  ScriptedPeer(const ScriptedPeer&) = delete;
  ScriptedPeer& operator=(const ScriptedPeer&) = delete;

  // The client's end (call once). While this peer is alive and active,
  // polls on that fd are served by the script.
  vmm::UnixStream TakeClientStream();

  // Called by __wrap_poll when the client waits on its socket.
  void OnClientWait(short events);
  int client_fd() const { return client_fd_; }

  size_t requests_seen() const { return requests_; }

 private:
  void DrainRequests();
  void HandleRequestLine(std::string_view line);
  std::string Substitute(const std::string& chunk) const;
  void Flush();

  int peer_fd_ = -1;
  int client_fd_ = -1;
  bool client_taken_ = false;
  std::vector<std::string> chunks_;
  size_t next_chunk_ = 0;
  std::string out_;  // scripted bytes the socket has not accepted yet
  bool eof_sent_ = false;
  std::string in_;  // partial request line
  std::map<std::string, std::string> vars_;
  size_t requests_ = 0;
};

// Makes `peer` the one __wrap_poll serves and makes sleeps on this thread
// return immediately, for the scope's lifetime.
class ActivePeer {
 public:
  explicit ActivePeer(ScriptedPeer* peer);
  ~ActivePeer();
  ActivePeer(const ActivePeer&) = delete;
  ActivePeer& operator=(const ActivePeer&) = delete;
};

}  // namespace vmgrid::fuzz
