// Chunk compression on the wire (docs/chunk-store.md, "Compressed
// transfer"): a chunk travels as one zstd frame when that saves enough bytes;
// its identity stays the SHA-256 of the raw bytes, checked after decoding.
// Thread-safe (each thread keeps its own zstd contexts).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace vmgrid {

// The encoding's name in the batch protocol.
inline constexpr std::string_view kZstdEncoding = "zstd";

// The zstd frame of `raw` (1..kMaxChunkBytes bytes), or nullopt when the
// frame would not be at least 1/16 smaller (random data, already compressed
// files): such a chunk travels raw.
std::optional<std::string> CompressChunk(std::string_view raw);

// Decodes untrusted input: exactly one zstd frame that declares its content
// size, 1..kMaxChunkBytes, and decodes to exactly that many bytes; no bytes
// after the frame. kInvalidArgument naming the problem otherwise. Never
// allocates more than the declared size (itself bounded), so a small frame
// cannot make it allocate much.
Result<std::string> DecompressChunk(std::string_view frame);

// The content size a zstd frame declares, checked as DecompressChunk does
// (1..kMaxChunkBytes) without decoding it.
Result<uint64_t> DeclaredChunkSize(std::string_view frame);

}  // namespace vmgrid
