// MigrationTunnel: carries one QEMU migration stream between two hosts over
// TLS 1.3 with the migration's one-time pre-shared key (OpenSSL), in place of
// QEMU's own TLS on the stream.
//
// Why: QEMU 7.2 hands TLS every piece of its stream separately (a page, then
// its 8-byte header), so gnutls makes one record and one send() per piece:
// ~40,000 of each for an 80 MB guest, which held the stream to ~40-110 MB/s
// on this machine against ~800 MB/s in clear (docs/benchmarks.md, "Live
// migration"). Here QEMU writes its stream in clear into one end of a
// socketpair (migrate "fd:"), a thread reads it in 256 KiB pieces and sends
// them as full 16 KiB TLS records; the other host's tunnel decrypts into
// the socketpair its QEMU reads (migrate-incoming "fd:"). The disk mirror
// (NBD) keeps QEMU's TLS.
//
// Security (docs/migration.md, "Threat model"): TLS 1.3 only, one cipher
// suite (TLS_AES_128_GCM_SHA256), PSK with (EC)DHE key exchange (psk_dhe_ke:
// forward secrecy), no certificates, no session tickets, no early data. The
// listener completes at most one handshake: a peer with another identity or
// key fails its handshake (the PSK binder does not verify) and the listener
// waits for the next connection; a peer that stalls its handshake is dropped
// after kHandshakeTimeout. Nothing is written to QEMU before a handshake
// succeeded. The stream flows one way (source to target: QEMU's return path
// is not enabled); bytes the target's side receives from QEMU are dropped.
//
// Lifetime: RAII. The destructor stops the thread (shutting the sockets
// down wakes it) and closes everything; QEMU then sees the stream end.
// Thread-safety: the public methods may be called from any one thread; the
// tunnel's own thread touches only the sockets and counters.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/result.h"
#include "vmm/unique_fd.h"

namespace vmgrid {

struct MigrationKey;

class MigrationTunnel {
 public:
  static constexpr std::chrono::seconds kHandshakeTimeout{10};

  // Target side: listens on `listen_host`, port chosen by the kernel (port()).
  // `qemu_fd` receives QEMU's end of the socketpair: pass it to QEMU with
  // getfd and migrate-incoming "fd:NAME", then close it here.
  static Result<std::unique_ptr<MigrationTunnel>> Listen(const std::string& listen_host,
                                                         const MigrationKey& key,
                                                         vmm::UniqueFd* qemu_fd);
  // Source side: connects to the target's tunnel at host:port and completes
  // the TLS handshake (kTimeout, kUnauthenticated when the key is refused,
  // kUnavailable when nothing listens). `qemu_fd` as for Listen (migrate
  // "fd:NAME").
  static Result<std::unique_ptr<MigrationTunnel>> Connect(const std::string& host, int port,
                                                          const MigrationKey& key,
                                                          std::chrono::milliseconds timeout,
                                                          vmm::UniqueFd* qemu_fd);
  ~MigrationTunnel();
  MigrationTunnel(const MigrationTunnel&) = delete;
  MigrationTunnel& operator=(const MigrationTunnel&) = delete;

  int port() const { return port_; }  // Listen: the port it listens on
  // Waits until the stream has ended (QEMU closed its end and every byte was
  // sent on, or the peer ended it) or `timeout` passed. True when it ended
  // cleanly; error() says why not.
  bool WaitDone(std::chrono::milliseconds timeout);
  // Why the stream failed ("" while it runs or when it ended cleanly).
  std::string error() const;
  uint64_t bytes() const { return bytes_.load(); }  // stream bytes carried
  int rejected_handshakes() const { return rejected_.load(); }

  struct Impl;  // OpenSSL state (migration_tunnel.cc)

 private:
  MigrationTunnel();
  void RunListener();
  void RunSender();
  void RunReceiver();
  void Finish(const std::string& error);

  std::unique_ptr<Impl> impl_;
  vmm::UniqueFd listen_fd_, tcp_fd_, clear_fd_;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> bytes_{0};
  std::atomic<int> rejected_{0};
  mutable std::mutex mu_;
  bool done_ = false;
  std::string error_;
  std::condition_variable done_cv_;
  std::thread thread_;
};

// A TCP listening socket on `host`, port chosen by the kernel (*port).
Result<vmm::UniqueFd> ListenTcp(const std::string& host, int* port);

}  // namespace vmgrid
