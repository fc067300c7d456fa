// The framing of a POST /v1/chunks:batch answer (docs/chunk-store.md): one
// line of JSON {"digests":[...],"lengths":[...]} ending in '\n', then the
// chunks' bytes concatenated in that order. The server may answer with a
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

// The header line, '\n' included.
std::string EncodeBatchHeader(const std::vector<std::string>& digests,
                              const std::vector<uint64_t>& lengths);

struct BatchEntry {
  std::string digest;
  size_t offset = 0;  // into the answer body
  size_t length = 0;
};

// Checks an untrusted answer to a request for `asked` completely before any
// byte is used: header well-formed and bounded, 1..asked.size() entries that
// are a prefix of `asked` in order, lengths in 1..kMaxChunkBytes, and the
// body exactly as long as the header says. kInvalidArgument naming the
// problem otherwise. Does not hash (the caller verifies each chunk).
Result<std::vector<BatchEntry>> DecodeBatchAnswer(std::string_view body,
                                                  const std::vector<std::string>& asked);

}  // namespace vmgrid
