#include "chunks/chunk_codec.h"

#include <zstd.h>

#include <memory>

#include "chunks/chunk_digest.h"

namespace vmgrid {

namespace {

// Level 3, zstd's default: ~4x on a kernel image at a few hundred MB/s. The
// image server compresses each chunk once and keeps the frame
// (ChunkStore::GetForTransfer), so the level costs import time, not fetches;
// decoding speed hardly depends on it.
constexpr int kLevel = 3;

struct CCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxFree {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};

Error Bad(const std::string& what) {
  return MakeError(ErrorCode::kInvalidArgument, "zstd chunk: " + what);
}

}  // namespace

std::optional<std::string> CompressChunk(std::string_view raw) {
  if (raw.empty() || raw.size() > kMaxChunkBytes) return std::nullopt;
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxFree> cctx(ZSTD_createCCtx());
  if (!cctx) return std::nullopt;
  // Anything not at least 1/16 smaller travels raw.
  size_t limit = raw.size() - raw.size() / 16;
  std::string out(ZSTD_compressBound(raw.size()), '\0');
  size_t n = ZSTD_compressCCtx(cctx.get(), out.data(), out.size(), raw.data(), raw.size(), kLevel);
  if (ZSTD_isError(n) || n >= limit) return std::nullopt;
  out.resize(n);
  return out;
}

Result<uint64_t> DeclaredChunkSize(std::string_view frame) {
  if (frame.empty()) return Bad("empty");
  unsigned long long declared = ZSTD_getFrameContentSize(frame.data(), frame.size());
  if (declared == ZSTD_CONTENTSIZE_ERROR) return Bad("not a zstd frame");
  if (declared == ZSTD_CONTENTSIZE_UNKNOWN) return Bad("the frame does not declare its size");
  if (declared == 0 || declared > kMaxChunkBytes)
    return Bad("declared size " + std::to_string(declared) + " is out of range");
  return static_cast<uint64_t>(declared);
}

Result<std::string> DecompressChunk(std::string_view frame) {
  VMG_ASSIGN_OR_RETURN(uint64_t declared, DeclaredChunkSize(frame));
  size_t frame_len = ZSTD_findFrameCompressedSize(frame.data(), frame.size());
  if (ZSTD_isError(frame_len)) return Bad(ZSTD_getErrorName(frame_len));
  if (frame_len != frame.size()) return Bad("bytes after the frame");
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxFree> dctx(ZSTD_createDCtx());
  if (!dctx) return MakeError(ErrorCode::kInternal, "zstd: no decompression context");
  std::string out(static_cast<size_t>(declared), '\0');
  size_t n = ZSTD_decompressDCtx(dctx.get(), out.data(), out.size(), frame.data(), frame.size());
  if (ZSTD_isError(n)) return Bad(ZSTD_getErrorName(n));
  if (n != out.size()) return Bad("decoded to fewer bytes than declared");
  return out;
}

}  // namespace vmgrid
