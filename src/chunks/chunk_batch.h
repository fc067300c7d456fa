// The framing of a POST /v1/chunks:batch answer (docs/chunk-store.md): one
// line of JSON {"digests":[...],"lengths":[...]} ending in '\n', then the
// chunks' bytes concatenated in that order. When the request said
// "encodings":["zstd"], the header also has "encodings":[...] with "zstd"
// (the entry is a zstd frame of the chunk, chunks/chunk_codec.h) or
// "identity" per entry, and the lengths are those on the wire. The server may answer with a
// prefix of the digests asked for (at least one); the client asks again for
// the rest. Shared by ImageServer (encode) and ChunkClient (decode).
// Thread-safe (stateless).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace vmgrid {

// Most digests one batch request may name.
inline constexpr size_t kMaxBatchChunks = 1024;

// The header line, '\n' included. `zstd` (one flag per entry) adds the
// "encodings" array; null leaves it out (a client that did not ask).
std::string EncodeBatchHeader(const std::vector<std::string>& digests,
                              const std::vector<uint64_t>& lengths,
                              const std::vector<bool>* zstd = nullptr);

struct BatchEntry {
  std::string digest;
  size_t offset = 0;  // into the answer body
  size_t length = 0;
  bool zstd = false;  // the bytes are a zstd frame of the chunk
};

// Checks an untrusted answer to a request for `asked` completely before any
// byte is used: header well-formed and bounded, 1..asked.size() entries that
// are a prefix of `asked` in order, lengths in 1..kMaxChunkBytes, and the
// body exactly as long as the header says; "encodings" (one "zstd" or
// "identity" per entry) only when `asked_zstd`, where leaving it out means
// every entry is raw. kInvalidArgument naming
// the problem otherwise. Does not decode or hash (the caller verifies each
// chunk).
Result<std::vector<BatchEntry>> DecodeBatchAnswer(std::string_view body,
                                                  const std::vector<std::string>& asked,
                                                  bool asked_zstd = false);

}  // namespace vmgrid
