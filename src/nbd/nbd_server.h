// NbdServer: exports read-only block sources over NBD to local clients (QEMU
// processes using an export as a backing file, qemu-img, nbdcopy). Listens on
// a unix socket, and optionally on TCP 127.0.0.1 for tests and benchmarks.
// One thread per connection; each connection's requests are served in order.
//
// Threat model: any local process that can open the socket is an untrusted
// client. Every message is bounds-checked (see nbd_protocol.h); a client can
// never read outside its export, write anything, or take the server down. It
// can hold a thread: the connection count is capped and the handshake has a
// deadline.
//
// Thread-safety: every method may be called from any thread, except that
// Start and Stop must not race each other. The destructor calls Stop.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/result.h"
#include "nbd/block_source.h"
#include "nbd/export_table.h"
#include "nbd/nbd_session.h"
#include "vmm/unique_fd.h"

namespace vmgrid::nbd {

struct NbdServerOptions {
  std::string unix_socket_path;  // empty: no unix listener
  int unix_socket_mode = 0600;   // widen (0660) when QEMU runs as another user of our group
  bool listen_tcp = false;       // 127.0.0.1 only
  uint16_t tcp_port = 0;         // 0: any free port; see NbdServer::tcp_port()
  size_t max_connections = 256;  // beyond this, new connections are closed at once
  // A connection that has not selected an export within this time is closed.
  std::chrono::milliseconds handshake_timeout{30000};
  uint32_t max_payload = kMaxPayload;  // advertised and enforced request size limit
  // READs of one connection served in parallel (a BlockSource may block on
  // a fetch; QEMU pipelines requests). 0: one at a time, in order.
  int session_workers = 4;
};

struct NbdStats {
  uint64_t connections = 0;         // accepted since construction
  uint64_t active_connections = 0;  // currently being served
  uint64_t requests = 0;
  uint64_t bytes_read = 0;
  uint64_t errors = 0;         // error replies and protocol violations
  uint64_t source_errors = 0;  // BlockSource::Read failures (answered with EIO)
};

class NbdServer {
 public:
  explicit NbdServer(NbdServerOptions options);
  ~NbdServer();
  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  // Exports can be added and removed at any time, before or after Start.
  // Removing an export refuses new clients of it; connected clients keep
  // reading it until they disconnect (their session holds the source).
  // Errors: see ExportTable.
  Status AddExport(const std::string& name, BlockSourcePtr source);
  Status RemoveExport(const std::string& name);

  // Binds the listeners and starts accepting. A stale unix socket left by a
  // dead server is replaced; kAlreadyExists if a live server answers on the
  // path or the path is not a socket; kFailedPrecondition if already
  // started; kInvalidArgument for a path too long for a sockaddr_un;
  // kInternal for other socket errors. On failure: no side effects.
  Status Start();

  // Stops accepting, disconnects every client (each one's current request
  // finishes first: a BlockSource::Read in progress is waited for), joins
  // all threads and removes the unix socket. Idempotent.
  void Stop();

  uint16_t tcp_port() const { return tcp_port_; }  // valid after a successful Start
  const std::string& unix_socket_path() const { return options_.unix_socket_path; }
  NbdStats stats() const;

 private:
  struct Connection {
    vmm::UniqueFd fd;  // closed by its own thread when the session ends, under mu_
    std::thread thread;
    bool done = false;  // guarded by mu_
    std::string peer;
  };

  Status Listen();
  void AcceptLoop();
  void Accept(int listen_fd, bool tcp);
  void Serve(Connection* connection);
  void ReapFinished();
  void CloseListeners();

  const NbdServerOptions options_;
  ExportTable exports_;
  NbdCounters counters_;
  std::atomic<uint64_t> active_{0};

  bool started_ = false;  // touched by Start/Stop only
  vmm::UniqueFd unix_fd_;
  uint64_t unix_inode_ = 0;  // to unlink only our own socket
  vmm::UniqueFd tcp_fd_;
  uint16_t tcp_port_ = 0;
  vmm::UniqueFd wake_read_, wake_write_;  // Stop -> accept loop
  std::thread accept_thread_;
  uint64_t next_id_ = 0;  // accept thread only

  std::mutex mu_;
  std::list<std::unique_ptr<Connection>> connections_;  // guarded by mu_
};

}  // namespace vmgrid::nbd
