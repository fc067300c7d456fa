// Live migration of a running VM with non-shared storage, at the QMP level:
// the target QEMU serves an NBD export of its new disk, the source mirrors
// its disk's top layer into it while the guest runs, then migrates RAM and
// device state; both connections are authenticated and encrypted with a
// one-time TLS pre-shared key. The agent (agent/vm_runner.h) wraps these steps
// into its driver operations; docs/migration.md shows the whole sequence.
//
// The sequence (libvirt's for non-shared storage, with pause-before-switchover):
//   target: StartIncoming  (-incoming defer -S QEMU, same device layout, its
//                           disk a fresh qcow2 on the same base)
//   source: MigrateOut     (mirror sync=top -> ready -> migrate -> at
//                           pre-switchover block-job-cancel the ready mirror ->
//                           migrate-continue -> completed; source postmigrate)
//   target: FinishIncoming (incoming completed -> nbd-server-stop -> cont)
//   source: quit its QEMU, or ResumeSource if FinishIncoming failed
//
// Facts this relies on (QEMU 7.2, verified by migration_test.cc and by hand):
// * tls-creds-psk takes DIR/keys.psk ("identity:hexkey" lines), readable by
//   QEMU's own (unprivileged) uid. A client reads its key when the object is
//   created, so the source's file exists only during object-add; a server
//   hands the file name to gnutls, which reads it at every handshake, so the
//   target's file must stay until the source has connected (FinishIncoming
//   removes it; an aborted target's goes with its directory).
// * TLS PSK works for both the NBD server (nbd-server-start tls-creds) and the
//   migration stream (migrate-set-parameters tls-creds); neither needs x509.
//   A peer with another key fails the handshake: the source's blockdev-add of
//   the NBD client node fails at once.
// * nbd-server-start accepts a listening socket passed with getfd
//   (SocketAddress type "fd"); migrate-incoming "tcp:HOST:0" binds a free
//   port and query-migrate's "socket-address" names it.
// * block-export-add wants the disk's node name (query-block), not the drive id.
// * A target started without -S runs as soon as the incoming migration
//   completes (the source's run state travels in the stream). With -S it stays
//   paused until FinishIncoming's `cont`, so the guest never runs twice.
// * With pause-before-switchover the source stops its vCPUs and waits in
//   "pre-switchover" with its disks still active: cancelling the READY mirror
//   then completes it (the target holds every write) without pivoting.
//   After "completed" the disks are inactivated; `cont` re-activates them.
// * If the migration fails or is cancelled QEMU restarts the source's vCPUs
//   itself when they ran before; ResumeSource/the failure path check anyway.
// * Under TCG (query-kvm "enabled": false) QEMU 7.2's live RAM migration can
//   lose guest stores (fixed in QEMU 9.0 by 03bfc2188f); MigrateOut then
//   stops the guest before RAM moves (the disk mirror still runs live), so
//   the downtime is the whole RAM transfer. With KVM it stays live.
//
// Thread-safety: free functions over a QmpClient (itself locked); two
// migration or lifecycle operations on one QEMU must not run concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "vmm/migration_tunnel.h"
#include "vmm/qmp_client.h"

namespace vmgrid {

// The one-time credential of one migration: a TLS PSK identity and key.
struct MigrationKey {
  std::string identity;  // [A-Za-z0-9._-]{1,64}
  std::string key_hex;   // 64 lowercase hex digits (32 random bytes)
};
// A fresh random key (OpenSSL's RAND_bytes) with `identity`.
Result<MigrationKey> NewMigrationKey(const std::string& identity);
Status ValidateMigrationKey(const MigrationKey& key);

// Where the source reaches the target's listeners.
struct IncomingEndpoint {
  std::string host;  // IPv4/IPv6 literal or host name
  int nbd_port = 0;  // 0: no disk is mirrored
  int migration_port = 0;
  // The writable exports of the target's disks, one per device mirrored,
  // each named after its drive id ("disk0", "data1", ...); empty with
  // nbd_port 0.
  std::vector<std::string> nbd_exports;
};

struct IncomingParams {
  // The drives to export (each a fresh overlay of its source's base, or an
  // empty file of the same size): the boot disk and every writable data
  // disk. Empty = nothing is mirrored (a diskless VM). Read-only disks are
  // not listed: both sides open the same content.
  std::vector<std::string> devices = {"disk0"};
  std::string listen_host = "127.0.0.1";  // address both listeners bind
  // false: a cold migration (MirrorDisksOut): the disks only, no RAM stream
  // and no migration listener (migration_port 0). QEMU is started as for a
  // live migration (incoming, paused); it never gets a stream and is quit
  // after FinishDiskExport.
  bool stream = true;
  MigrationKey key;
  // Created (must not exist) 0700 for QEMU's uid/gid to hold keys.psk (0600)
  // while QEMU needs it: until FinishIncoming, or RemoveKeyDir on failure.
  std::string key_dir;
  int qemu_uid = -1, qemu_gid = -1;  // -1: QEMU runs as ourselves
};

// For a QEMU started with incoming=true, start_paused=true and the source's
// device layout, each disk in `devices` a fresh overlay of the source's top
// layer's base (same virtual size): creates the TLS server credentials, an
// NBD server on a fresh TCP port with each of those disks exported writable
// under its drive id, and a migration listener.
// The returned endpoint's host is params.listen_host. On failure QEMU is in an
// unknown state: the caller kills it (AbortIncoming's job in the agent).
// The RAM stream comes through a MigrationTunnel (TLS 1.3 with the same key;
// migration_tunnel.h), returned in `tunnel`: keep it until FinishIncoming
// has returned (destroying it earlier cuts the stream).
Result<IncomingEndpoint> StartIncoming(QmpClient& target, const IncomingParams& params,
                                       std::chrono::milliseconds timeout,
                                       std::unique_ptr<MigrationTunnel>* tunnel);

// Progress points of MigrateOut, for logs and for tests that break things at
// a chosen moment.
enum class MigrationPhase {
  kMirrorStarted,  // the block mirror to the target's export runs
  kMirrorReady,    // the target's disk has caught up; RAM migration starts next
  kMigrating,      // migrate started (RAM pre-copy)
  kSwitchover,     // source paused at pre-switchover; mirror being completed
};
const char* ToString(MigrationPhase phase);

struct OutgoingParams {
  IncomingEndpoint target;
  // The drives to mirror, each into the target's export of the same name
  // (which must be in target.nbd_exports). Empty = no mirror.
  std::vector<std::string> devices = {"disk0"};
  MigrationKey key;
  // As IncomingParams::key_dir, on the source's side; removed before
  // MigrateOut returns (right after QEMU read the key).
  std::string key_dir;
  int qemu_uid = -1, qemu_gid = -1;
  int64_t max_bandwidth = 0;                     // bytes/s for RAM; 0 = unthrottled
  std::function<void(MigrationPhase)> on_phase;  // may be empty; runs on the caller's thread
};

struct MigrationStats {
  int64_t total_ms = 0;       // MigrateOut's wall time: mirror + migration
  int64_t mirror_ms = 0;      // until the mirror was ready
  int64_t qemu_total_ms = 0;  // QEMU's "total-time" of the RAM migration
  int64_t downtime_ms = 0;    // vCPUs stopped, incl. mirror completion (QEMU's "downtime";
                              // under TCG from the pause before RAM moves)
  int64_t ram_bytes = 0;      // QEMU's ram "transferred"
  int64_t disk_bytes = 0;     // bytes the mirrors wrote (their jobs' offsets, summed)
};

// Runs the source side. On success the source is paused ("postmigrate", disks
// inactivated) with no mirror job; its NBD client node, TLS object and
// migration capabilities stay (tidying them would keep the guest stopped
// longer): quit it once the target has taken over, or ResumeSource it if the
// target could not, which tidies them. On failure (the target died or
// refused the key, a timeout, ...) the source runs as before: the mirror is
// cancelled, the migration cancelled, the NBD client node and credentials
// removed, and `cont` issued if the vCPUs were left stopped; migration
// parameters and capabilities are put back (no TLS, no
// pause-before-switchover, no events) so later checkpoints work.
Result<MigrationStats> MigrateOut(QmpClient& source, const OutgoingParams& params,
                                  std::chrono::milliseconds timeout);

// Target side once MigrateOut succeeded: removes the key directory, waits for
// the incoming migration to complete, stops the NBD server, drops the
// credentials and runs the guest. On failure the caller kills the target
// (and resumes the source).
Status FinishIncoming(QmpClient& target, const std::string& key_dir,
                      std::chrono::milliseconds timeout);

// After an agent restart interrupted MigrateOut: if the migration had
// completed (source paused in postmigrate) it stays so, as after a MigrateOut
// that succeeded (true: quit it or ResumeSource once the controller decides);
// otherwise whatever is still in flight is cancelled as on failure and the
// source runs again (false).
Result<bool> RecoverOutgoing(QmpClient& source);

// A cold migration of a stopped VM's disks, source side: QEMU was started
// paused (-S) for the purpose and its guest never runs. Mirrors each device
// into the target's export (StartIncoming with stream=false) and completes
// the mirrors at once; no RAM moves. On success and on failure the source's
// migration objects are gone; quit its QEMU afterwards either way. Stats:
// total_ms, mirror_ms and disk_bytes only.
Result<MigrationStats> MirrorDisksOut(QmpClient& source, const OutgoingParams& params,
                                      std::chrono::milliseconds timeout);

// The target of a cold migration once MirrorDisksOut succeeded: removes the
// key directory, stops the NBD server and drops the credentials; quit its
// QEMU afterwards (the VM stays stopped).
Status FinishDiskExport(QmpClient& target, const std::string& key_dir,
                        std::chrono::milliseconds timeout);

// Removes a key directory StartIncoming made (when the target is abandoned).
void RemoveKeyDir(const std::string& key_dir);

// Source side when the target could not take over after MigrateOut succeeded:
// removes what MigrateOut left (NBD node, TLS object, capabilities) and
// `cont`s (re-activates the disks; the guest runs on where it stopped).
Status ResumeSource(QmpClient& source);

}  // namespace vmgrid
