// fuzz_vnet_tunnel: TunnelCodec::Open on packets from the network (src/vnet/
// tunnel.h). The first input byte picks a mode:
//   even: the rest is a packet from a stranger: it must never open (a forged
//         GCM tag would be a catastrophe, not a fuzzer find) and never crash;
//   odd:  the rest is a frame, sealed by a member host, then opened once
//         (must give the frame back), opened again (must be refused as a
//         replay), and opened after the fuzzer's bytes are XORed into a copy
//         (must be refused unless nothing changed).
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_common.h"
#include "vnet/tunnel.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmgrid::vnet;
  if (size == 0) return 0;
  static TunnelCodec* sender = [] {
    auto* c = new TunnelCodec(7, 1);
    TunnelKey k;
    k.fill(0x42);
    FUZZ_CHECK(c->InstallKey(1, k).ok(), "install");
    return c;
  }();
  // A fresh receiver per input keeps runs independent of each other.
  TunnelCodec receiver(7, 2);
  TunnelKey k;
  k.fill(0x42);
  FUZZ_CHECK(receiver.InstallKey(1, k).ok(), "install");
  const std::span<const uint8_t> rest(data + 1, size - 1);
  std::vector<uint8_t> out(size + kTunnelOverhead);
  if ((data[0] & 1) == 0) {
    auto o = receiver.Open(rest, out);
    vmgrid::fuzz::Trace("open", o.ok(), TunnelDropName(o.error));
    FUZZ_CHECK(!o.ok(), "a packet nobody sealed was accepted");
    return 0;
  }
  const size_t half = rest.size() / 2;
  const std::span<const uint8_t> frame = rest.first(half), noise = rest.subspan(half);
  std::vector<uint8_t> sealed(frame.size() + kTunnelOverhead);
  const size_t n = sender->Seal(frame, sealed);
  FUZZ_CHECK(n == sealed.size(), "seal length");
  std::vector<uint8_t> tampered = sealed;
  bool changed = false;
  for (size_t i = 0; i < noise.size() && i < tampered.size(); ++i) {
    tampered[i] ^= noise[i];
    changed |= noise[i] != 0;
  }
  if (changed) {
    auto t = receiver.Open(tampered, out);
    FUZZ_CHECK(!t.ok(), "a tampered packet was accepted");
  }
  auto o = receiver.Open(sealed, out);
  FUZZ_CHECK(o.ok(), TunnelDropName(o.error));
  FUZZ_CHECK(o.frame_len == frame.size() &&
                 (frame.empty() || std::memcmp(out.data(), frame.data(), frame.size()) == 0),
             "round trip changed the frame");
  FUZZ_CHECK(receiver.Open(sealed, out).error == TunnelDrop::kReplayed, "replay accepted");
  return 0;
}
