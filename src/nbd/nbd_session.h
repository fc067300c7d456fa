// One client's NBD session from greeting to disconnect: fixed newstyle
// handshake, option haggling, then the transmission phase serving READs from
// the chosen export. It runs over an abstract ByteStream, so the server drives
// it on a socket and the fuzz target drives it on hostile bytes in memory.
// With SessionOptions::workers == 0 requests are served in order, one at a
// time; with N > 0, READs run on up to N threads of the session and their
// replies go out as they complete (the protocol identifies replies by
// cookie; QEMU keeps up to 16 requests in flight per connection).
// Structured replies are offered (one DONE chunk per READ); metadata contexts
// (block status), TLS and extended headers are not.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "common/result.h"
#include "nbd/export_table.h"
#include "nbd/nbd_protocol.h"

namespace vmgrid::nbd {

// The transport under a session. Not shared between sessions.
class ByteStream {
 public:
  virtual ~ByteStream() = default;

  // Blocks until at least one byte arrives; stores at most `cap` bytes in
  // `buf` and returns how many, or 0 at end of stream. Errors: kTimeout when
  // a transport deadline passes, kUnavailable for a broken connection.
  virtual Result<size_t> ReadSome(char* buf, size_t cap) = 0;

  // Writes every part, in order, completely (kUnavailable if the peer left).
  virtual Status WriteAll(std::span<const std::string_view> parts) = 0;

  // The handshake is over; a transport may lift a handshake deadline here
  // (a QEMU process can legitimately stay idle for days).
  virtual void EnterTransmission() {}
};

// Counters shared by all sessions of a server. Monotonic; relaxed atomics.
struct NbdCounters {
  std::atomic<uint64_t> connections{0};    // accepted (maintained by the server)
  std::atomic<uint64_t> requests{0};       // transmission requests received
  std::atomic<uint64_t> bytes_read{0};     // READ payload bytes sent
  std::atomic<uint64_t> errors{0};         // error replies, unknown exports, protocol violations
  std::atomic<uint64_t> source_errors{0};  // failed BlockSource::Read calls (also in errors)
};

struct SessionOptions {
  uint32_t max_payload = kMaxPayload;  // largest READ/WRITE length accepted
  std::string peer = "client";         // names the client in logs
  // READs served in parallel per session (0 = inline, in order). The
  // stream's ReadSome and WriteAll are then called from different threads
  // (never two WriteAll at once).
  int workers = 0;
  // Bound on the payload bytes of READs queued or in progress (at least one
  // request is always admitted).
  uint64_t max_inflight_bytes = 64ull << 20;
};

// Runs a session to its end. Returns Ok when the client ended it as the
// protocol allows (NBD_OPT_ABORT, NBD_CMD_DISC, or closing the stream between
// two messages); kInvalidArgument when the client broke the protocol in a way
// that leaves no choice but to hang up (bad magic, unknown flags, unknown
// export with NBD_OPT_EXPORT_NAME, oversized option or write payload); the
// stream's error (kUnavailable, kTimeout) when the transport failed, including
// a client that disconnects in the middle of a message. Errors a client can
// recover from (bad ranges, writes, unknown options, failed source reads) are
// answered with an error reply and the session goes on.
Status RunSession(ByteStream& stream, const ExportTable& exports, NbdCounters& counters,
                  const SessionOptions& options = {});

}  // namespace vmgrid::nbd
