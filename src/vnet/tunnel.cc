#include "vnet/tunnel.h"

#include <openssl/evp.h>
#include <time.h>

#include <cstring>

#include "vnet/frame.h"

namespace vmgrid::vnet {

TunnelHeaderParse ParseTunnelHeader(std::span<const uint8_t> p) {
  TunnelHeaderParse r;
  if (p.size() < kTunnelOverhead) {
    r.error = TunnelDrop::kTruncated;
    return r;
  }
  if (p[0] != kTunnelVersion || p[1] != 0 || p[2] != 0 || p[3] != 0) {
    r.error = TunnelDrop::kBadHeader;
    return r;
  }
  r.header.network_id = Load32(&p[4]);
  r.header.epoch = Load32(&p[8]);
  r.header.sender = Load32(&p[12]);
  r.header.seq = Load64(&p[16]);
  return r;
}

TunnelDrop ReplayWindow::Check(uint64_t seq) const {
  if (!any_ || seq > highest_) return TunnelDrop::kNone;
  const uint64_t behind = highest_ - seq;
  if (behind >= kSize) return TunnelDrop::kTooOld;
  const uint64_t bit = seq % kSize;
  return (bits_[bit / 64] >> (bit % 64)) & 1 ? TunnelDrop::kReplayed : TunnelDrop::kNone;
}

void ReplayWindow::Accept(uint64_t seq) {
  if (!any_) {
    any_ = true;
    highest_ = seq;
    bits_.fill(0);
  } else if (seq > highest_) {
    const uint64_t ahead = seq - highest_;
    if (ahead >= kSize) {
      bits_.fill(0);
    } else {
      // Clear the slots of the numbers the window slides past.
      for (uint64_t s = highest_ + 1; s <= seq; ++s) {
        const uint64_t b = s % kSize;
        bits_[b / 64] &= ~(uint64_t{1} << (b % 64));
      }
    }
    highest_ = seq;
  }
  const uint64_t bit = seq % kSize;
  bits_[bit / 64] |= uint64_t{1} << (bit % 64);
}

namespace {
struct CtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CtxDeleter>;

uint64_t WallClockNanos() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

void MakeNonce(uint8_t nonce[12], HostId sender, uint64_t seq) {
  Store32(nonce, sender);
  Store64(nonce + 4, seq);
}
}  // namespace

struct TunnelCodec::KeySlot {
  uint32_t epoch = 0;
  CtxPtr enc;
  CtxPtr dec;
  uint64_t next_seq = 0;
  std::unordered_map<HostId, ReplayWindow> windows;
};

TunnelCodec::TunnelCodec(uint32_t network_id, HostId local_host)
    : network_id_(network_id), local_host_(local_host) {}

TunnelCodec::~TunnelCodec() = default;

uint32_t TunnelCodec::current_epoch() const { return current_ ? current_->epoch : 0; }

Status TunnelCodec::InstallKey(uint32_t epoch, std::span<const uint8_t> key, KeyUse use) {
  if (key.size() != 32)
    return MakeError(ErrorCode::kInvalidArgument, "tunnel key must be 32 bytes");
  if (current_ && epoch <= current_->epoch)
    return MakeError(ErrorCode::kFailedPrecondition, "key epoch " + std::to_string(epoch) +
                                                         " is not newer than " +
                                                         std::to_string(current_->epoch));
  auto slot = std::make_unique<KeySlot>();
  slot->epoch = epoch;
  slot->enc.reset(EVP_CIPHER_CTX_new());
  slot->dec.reset(EVP_CIPHER_CTX_new());
  if (!slot->enc || !slot->dec ||
      EVP_EncryptInit_ex(slot->enc.get(), EVP_aes_256_gcm(), nullptr, key.data(), nullptr) != 1 ||
      EVP_DecryptInit_ex(slot->dec.get(), EVP_aes_256_gcm(), nullptr, key.data(), nullptr) != 1)
    return MakeError(ErrorCode::kInternal, "OpenSSL: cannot set up AES-256-GCM");
  slot->next_seq = WallClockNanos();
  if (next_ && next_->epoch == epoch) slot->windows = std::move(next_->windows);
  if (use == KeyUse::kOpenOnly) {
    next_ = std::move(slot);
    return Status::Ok();
  }
  next_.reset();
  previous_ = std::move(current_);
  current_ = std::move(slot);
  return Status::Ok();
}

size_t TunnelCodec::Seal(std::span<const uint8_t> frame, std::span<uint8_t> out) {
  if (!current_ || frame.size() > 0x7fffffff || out.size() < frame.size() + kTunnelOverhead)
    return 0;
  KeySlot& k = *current_;
  const uint64_t seq = k.next_seq++;
  uint8_t* h = out.data();
  h[0] = kTunnelVersion;
  h[1] = 0;
  Store16(h + 2, 0);
  Store32(h + 4, network_id_);
  Store32(h + 8, k.epoch);
  Store32(h + 12, local_host_);
  Store64(h + 16, seq);
  uint8_t nonce[12];
  MakeNonce(nonce, local_host_, seq);
  EVP_CIPHER_CTX* c = k.enc.get();
  int len = 0;
  uint8_t* ct = h + kTunnelHeaderLen;
  if (EVP_EncryptInit_ex(c, nullptr, nullptr, nullptr, nonce) != 1 ||
      EVP_EncryptUpdate(c, nullptr, &len, h, kTunnelHeaderLen) != 1 ||
      EVP_EncryptUpdate(c, ct, &len, frame.data(), static_cast<int>(frame.size())) != 1 ||
      EVP_EncryptFinal_ex(c, ct + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, kTunnelTagLen, ct + frame.size()) != 1)
    return 0;
  return frame.size() + kTunnelOverhead;
}

TunnelCodec::Opened TunnelCodec::Open(std::span<const uint8_t> packet, std::span<uint8_t> out) {
  Opened r;
  TunnelHeaderParse hp = ParseTunnelHeader(packet);
  if (!hp.ok()) {
    r.error = hp.error;
    return r;
  }
  r.header = hp.header;
  if (hp.header.network_id != network_id_) {
    r.error = TunnelDrop::kUnknownNetwork;
    return r;
  }
  KeySlot* k = nullptr;
  if (current_ && current_->epoch == hp.header.epoch)
    k = current_.get();
  else if (previous_ && previous_->epoch == hp.header.epoch)
    k = previous_.get();
  else if (next_ && next_->epoch == hp.header.epoch)
    k = next_.get();
  if (k == nullptr) {
    r.error = TunnelDrop::kUnknownEpoch;
    return r;
  }
  const size_t ct_len = packet.size() - kTunnelOverhead;
  if (out.size() < ct_len) {
    r.error = TunnelDrop::kTruncated;
    return r;
  }
  // Cheap refusal of replays before spending a decryption on them; the
  // window itself only moves after the tag verified.
  auto wit = k->windows.find(hp.header.sender);
  if (wit != k->windows.end()) {
    TunnelDrop d = wit->second.Check(hp.header.seq);
    if (d != TunnelDrop::kNone) {
      r.error = d;
      return r;
    }
  }
  uint8_t nonce[12];
  MakeNonce(nonce, hp.header.sender, hp.header.seq);
  EVP_CIPHER_CTX* c = k->dec.get();
  int len = 0;
  const uint8_t* ct = packet.data() + kTunnelHeaderLen;
  uint8_t tag[kTunnelTagLen];
  std::memcpy(tag, ct + ct_len, kTunnelTagLen);
  if (EVP_DecryptInit_ex(c, nullptr, nullptr, nullptr, nonce) != 1 ||
      EVP_DecryptUpdate(c, nullptr, &len, packet.data(), kTunnelHeaderLen) != 1 ||
      EVP_DecryptUpdate(c, out.data(), &len, ct, static_cast<int>(ct_len)) != 1 ||
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, kTunnelTagLen, tag) != 1 ||
      EVP_DecryptFinal_ex(c, out.data() + len, &len) != 1) {
    r.error = TunnelDrop::kAuthFailed;
    return r;
  }
  k->windows[hp.header.sender].Accept(hp.header.seq);
  r.frame_len = ct_len;
  return r;
}

}  // namespace vmgrid::vnet
