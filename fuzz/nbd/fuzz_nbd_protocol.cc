// Fuzzes a whole NBD server session: the input is what a hostile client
// sends, from the first byte of the handshake to the last request, and
// RunSession runs unmodified over it (nothing but the socket is replaced).
//
// Input format: byte 0 picks how the stream is cut into reads (0x80 and up:
// as large as the session asks; below: reads of 1 + (byte0 % 64) bytes, to
// exercise messages split across reads); the rest is the client's bytes.
//
// Beyond the sanitizers, the target checks the server's central promise: a
// BlockSource is only ever asked for ranges inside the export. The "sparse"
// export reports holes, so READs after NBD_OPT_STRUCTURED_REPLY take the
// OFFSET_HOLE path.
//
// The same input bytes, read as a server's structured replies to one READ,
// also go through the client-side checker ReadReplyAssembler, whose promise
// is checked too: a completed, error-free reply covered the range exactly.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string_view>
#include <vector>

#include "nbd/block_source.h"
#include "nbd/export_table.h"
#include "nbd/nbd_protocol.h"
#include "nbd/nbd_session.h"
#include "nbd/test_block_sources.h"

namespace {

using namespace vmgrid;
using namespace vmgrid::nbd;

constexpr uint32_t kFuzzMaxPayload = 1 << 20;  // keeps iterations fast; same code paths

// Any bytes, any size (up to 2^64-1), failing on request; traps on a read
// the server should never have made.
class CheckedSource : public BlockSource {
 public:
  CheckedSource(uint64_t size, bool flaky) : size_(size), flaky_(flaky) {}
  uint64_t size() const override { return size_; }
  Status Read(uint64_t offset, size_t len, char* out) override {
    if (len == 0 || len > kFuzzMaxPayload || offset > size_ || len > size_ - offset) {
      __builtin_trap();
    }
    if (flaky_ && (offset & 1)) return MakeError(ErrorCode::kUnavailable, "flaky");
    std::memset(out, static_cast<int>(offset & 0xff), len);
    return Status::Ok();
  }

 private:
  uint64_t size_;
  bool flaky_;
};

// Holes and data alternating every 4 KiB + 1 bytes (so runs straddle any
// aligned request), reported by MapExtents; Read checks its bounds.
class SparseSource final : public StripedSource {
 public:
  SparseSource() : StripedSource(1 << 20, 4097) {}
  char DataByte(uint64_t) const override { return 's'; }
  Status Read(uint64_t offset, size_t len, char* out) override {
    if (len == 0 || len > kFuzzMaxPayload || offset > size() || len > size() - offset) {
      __builtin_trap();
    }
    return StripedSource::Read(offset, len, out);
  }
};

// Reads `in` as structured reply chunks to a READ of 64 KiB at 4096 whose
// cookie is the first chunk's; stops at the first rejected chunk.
void FuzzReplyAssembler(std::string_view in) {
  if (in.size() < kStructuredReplyHeaderSize) return;
  auto first = ParseStructuredReplyHeader(in.substr(0, kStructuredReplyHeaderSize));
  if (!first.ok()) return;
  const uint32_t length = 1 << 16;
  ReadReplyAssembler a(first->cookie, 4096, length);
  while (in.size() >= kStructuredReplyHeaderSize && !a.done()) {
    auto h = ParseStructuredReplyHeader(in.substr(0, kStructuredReplyHeaderSize));
    if (!h.ok()) return;
    in.remove_prefix(kStructuredReplyHeaderSize);
    if (h->length > in.size()) return;
    if (!a.Add(*h, in.substr(0, h->length)).ok()) return;
    in.remove_prefix(h->length);
  }
  if (a.done() && a.error() == 0 && a.data().size() != length) __builtin_trap();
}

class FuzzStream : public ByteStream {
 public:
  FuzzStream(const uint8_t* data, size_t size, size_t chunk)
      : data_(data), size_(size), chunk_(chunk) {}
  Result<size_t> ReadSome(char* buf, size_t cap) override {
    size_t n = std::min({cap, chunk_, size_ - pos_});
    std::memcpy(buf, data_ + pos_, n);
    pos_ += n;
    return n;
  }
  Status WriteAll(std::span<const std::string_view> parts) override {
    for (std::string_view p : parts) {
      // Touch every byte so ASan sees any out-of-bounds view.
      for (char c : p) checksum_ += static_cast<unsigned char>(c);
      written_ += p.size();
    }
    return Status::Ok();
  }
  size_t written() const { return written_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t chunk_;
  size_t pos_ = 0;
  size_t written_ = 0;
  uint64_t checksum_ = 0;
};

ExportTable* MakeExports() {
  spdlog::set_level(spdlog::level::off);
  auto* t = new ExportTable;
  (void)t->Add("disk", std::make_shared<MemoryBlockSource>(std::string((64 << 10) + 3, 'd')));
  (void)t->Add("", std::make_shared<CheckedSource>(3, false));
  (void)t->Add("huge",
               std::make_shared<CheckedSource>(std::numeric_limits<uint64_t>::max(), false));
  (void)t->Add("flaky", std::make_shared<CheckedSource>(1 << 20, true));
  (void)t->Add("empty", std::make_shared<CheckedSource>(0, false));
  (void)t->Add("sparse", std::make_shared<SparseSource>());
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ExportTable* exports = MakeExports();
  if (size == 0) return 0;
  size_t chunk = data[0] >= 0x80 ? SIZE_MAX : 1 + data[0] % 64;
  FuzzStream stream(data + 1, size - 1, chunk);
  NbdCounters counters;
  SessionOptions options;
  options.max_payload = kFuzzMaxPayload;
  (void)RunSession(stream, *exports, counters, options);
  if (stream.written() < kGreetingSize) __builtin_trap();  // the greeting always goes out
  FuzzReplyAssembler(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  return 0;
}
