// The tunnel between the switches of one network on different hosts: each
// Ethernet frame travels in one UDP datagram, encrypted and authenticated
// with AES-256-GCM under the network's key (keys come from the controller).
//
// Wire format (all integers big-endian), 24-byte header + ciphertext + 16-byte tag:
//   0  u8  version (1)        1  u8  type (0: Ethernet frame)   2  u16 reserved (0)
//   4  u32 network id         8  u32 key epoch                  12 u32 sender host id
//   16 u64 sequence number
//   24 ciphertext of the frame (same length)                    then the 16-byte GCM tag
// The whole header is the AEAD's associated data, so no field can be changed
// or moved to another network. Nonce (96 bits) = sender host id || sequence:
// every host of a network shares the key, and each sender's sequence only
// grows, so a (key, nonce) pair is never used twice (see InstallKey).
//
// Keys: the codec seals with the current epoch and opens with the current
// and the previous one; installing epoch N+1 for sealing forgets N-1, so
// packets sealed with a key older than the previous one are refused
// (kUnknownEpoch). For rotation without loss, a key can first be installed
// for opening only (the "next" epoch) on every host, then for sealing.
// Replay: a sliding window of 1024 sequence numbers per (sender, epoch);
// a number seen before is kReplayed, one left of the window kTooOld. The
// window moves only for packets whose tag verified.
//
// Thread-safety: none; one TunnelCodec belongs to one switch and is used
// under its lock.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>

#include "common/result.h"
#include "vnet/counters.h"

namespace vmgrid::vnet {

using HostId = uint32_t;
using TunnelKey = std::array<uint8_t, 32>;

inline constexpr size_t kTunnelHeaderLen = 24;
inline constexpr size_t kTunnelTagLen = 16;
inline constexpr size_t kTunnelOverhead = kTunnelHeaderLen + kTunnelTagLen;
inline constexpr uint8_t kTunnelVersion = 1;

struct TunnelHeader {
  uint32_t network_id = 0;
  uint32_t epoch = 0;
  HostId sender = 0;
  uint64_t seq = 0;
};

struct TunnelHeaderParse {
  TunnelDrop error = TunnelDrop::kNone;  // kTruncated or kBadHeader
  TunnelHeader header;
  bool ok() const { return error == TunnelDrop::kNone; }
};
// Reads the header without authenticating it (to find the network and the
// sender); nothing in it may be trusted before Open succeeds.
TunnelHeaderParse ParseTunnelHeader(std::span<const uint8_t> packet);

// 1024-bit sliding window of seen sequence numbers.
class ReplayWindow {
 public:
  static constexpr uint64_t kSize = 1024;
  TunnelDrop Check(uint64_t seq) const;  // kNone, kReplayed or kTooOld
  void Accept(uint64_t seq);             // only after Check returned kNone

 private:
  bool any_ = false;
  uint64_t highest_ = 0;
  std::array<uint64_t, kSize / 64> bits_{};
};

enum class KeyUse : uint8_t {
  kSealAndOpen,  // becomes the current key; the current one becomes the previous one
  kOpenOnly,     // accepted from peers from now on; sealing stays with the current key
};

class TunnelCodec {
 public:
  TunnelCodec(uint32_t network_id, HostId local_host);
  ~TunnelCodec();
  TunnelCodec(const TunnelCodec&) = delete;
  TunnelCodec& operator=(const TunnelCodec&) = delete;

  // Installs the key of `epoch`, which must be newer than the current epoch
  // (kFailedPrecondition otherwise) and 32 bytes long.
  // kSealAndOpen: it becomes the sealing key; the previous one stays
  // accepted; older ones and an open-only key of another epoch are forgotten
  // (an open-only key of the same epoch is promoted, keeping its replay
  // windows). kOpenOnly: it is accepted besides the current and previous
  // keys (replacing an earlier open-only key); nothing else changes.
  // The sealing sequence of a new key starts at the wall clock in nanoseconds,
  // so a restarted switch given the same key does not reuse a nonce as long
  // as the clock has not gone back (the controller should still rotate the
  // key when a host restarts; docs/vnet.md). On failure nothing changes.
  Status InstallKey(uint32_t epoch, std::span<const uint8_t> key,
                    KeyUse use = KeyUse::kSealAndOpen);
  bool has_key() const { return current_ != nullptr; }
  uint32_t current_epoch() const;

  // Seals `frame` into `out` (needs frame.size() + kTunnelOverhead bytes).
  // Returns the packet's length, or 0 without a key or with `out` too small.
  size_t Seal(std::span<const uint8_t> frame, std::span<uint8_t> out);

  struct Opened {
    TunnelDrop error = TunnelDrop::kNone;
    TunnelHeader header;
    size_t frame_len = 0;  // the plaintext frame is out[0, frame_len)
    bool ok() const { return error == TunnelDrop::kNone; }
  };
  // Authenticates and decrypts `packet` into `out` (needs the ciphertext's
  // length). Refuses another network's packets (kUnknownNetwork), unknown
  // epochs, failed tags and replays; the caller decides beforehand whether
  // the sender is a peer at all. `out` may hold garbage after a failure.
  Opened Open(std::span<const uint8_t> packet, std::span<uint8_t> out);

 private:
  struct KeySlot;
  using KeySlotPtr = std::unique_ptr<KeySlot>;

  uint32_t network_id_;
  HostId local_host_;
  KeySlotPtr current_;
  KeySlotPtr previous_;
  KeySlotPtr next_;  // open-only
};

}  // namespace vmgrid::vnet
