// Chunk identity: the lowercase hex SHA-256 of a chunk's bytes, plus the
// special manifest entry "zero" for an all-zero chunk (sparse images cost
// nothing to store or move). Limits shared by every chunks component.
// Thread-safe (stateless).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace vmgrid {

// A manifest entry meaning "this chunk is all zero bytes"; never stored.
inline constexpr std::string_view kZeroChunk = "zero";
inline constexpr size_t kDigestHexLength = 64;

// Chunk sizes a manifest may use: powers of two in [4 KiB, 16 MiB]. Every
// stored chunk is at most kMaxChunkBytes long and never empty.
inline constexpr uint32_t kMinChunkSize = 4u << 10;
inline constexpr uint32_t kMaxChunkSize = 16u << 20;
inline constexpr uint64_t kMaxChunkBytes = kMaxChunkSize;

// Hex SHA-256 of a raw buffer (OpenSSL EVP; SHA-NI when the CPU has it).
std::string ChunkDigest(const void* data, size_t len);
inline std::string ChunkDigest(std::string_view data) {
  return ChunkDigest(data.data(), data.size());
}

// Exactly 64 lowercase hex characters. Digests name files, so this is the
// check that keeps untrusted input from choosing a path.
bool IsChunkDigest(std::string_view s);

// True when all `len` bytes are zero (true for len == 0).
bool IsAllZero(const void* data, size_t len);

bool IsValidChunkSize(uint64_t chunk_size);

}  // namespace vmgrid
