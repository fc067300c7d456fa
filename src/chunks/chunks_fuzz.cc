// libFuzzer target for the chunk module's parsers of untrusted input: image
// manifests (from an image server or a client's upload), batch answer
// framing and zstd chunk frames (from an image server). The first input byte picks the parser.
// Built by fuzz/CMakeLists.txt (target fuzz_chunks, run by
// scripts/fuzz-smoke.sh); seeds in fuzz/corpus/fuzz_chunks/.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "chunks/chunk_batch.h"
#include "chunks/chunk_codec.h"
#include "chunks/chunk_digest.h"
#include "chunks/manifest.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmgrid;
  if (size == 0) return 0;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 5) {
    case 0: {
      auto m = ParseManifestJson(in);
      if (!m.ok()) break;
      // Anything accepted is a valid manifest whose canonical form round-trips.
      Check(ValidateManifest(*m, true).ok());
      auto again = ParseManifestJson(m->ToJson().dump());
      Check(again.ok() && again->Digest() == m->Digest());
      uint64_t total = 0;
      for (size_t i = 0; i < m->chunks.size(); ++i) total += m->ChunkLength(i);
      Check(total == m->size);
      break;
    }
    case 1: {
      auto m = ParseManifestDraftJson(in);
      if (m.ok()) Check(ValidateManifest(*m, false).ok());
      break;
    }
    case 2: {
      static const std::vector<std::string> asked = {ChunkDigest(std::string_view("a")),
                                                     ChunkDigest(std::string_view("b")),
                                                     ChunkDigest(std::string_view("c"))};
      auto entries = DecodeBatchAnswer(in, asked);
      if (!entries.ok()) break;
      Check(!entries->empty() && entries->size() <= asked.size());
      size_t end = entries->back().offset + entries->back().length;
      Check(end == in.size());
      for (size_t i = 0; i < entries->size(); ++i) Check((*entries)[i].digest == asked[i]);
      for (const auto& e : *entries) Check(!e.zstd);
      break;
    }
    case 3: {  // the same framing from a client that asked for zstd
      static const std::vector<std::string> asked = {ChunkDigest(std::string_view("a")),
                                                     ChunkDigest(std::string_view("b"))};
      auto entries = DecodeBatchAnswer(in, asked, true);
      if (!entries.ok()) break;
      Check(!entries->empty() && entries->size() <= asked.size());
      Check(entries->back().offset + entries->back().length == in.size());
      break;
    }
    case 4: {  // a zstd chunk frame
      auto raw = DecompressChunk(in);
      if (!raw.ok()) break;
      // Anything accepted is a chunk of the declared size, whose own frame
      // (when compressing pays) decodes back to it.
      Check(!raw->empty() && raw->size() <= kMaxChunkBytes);
      Check(DeclaredChunkSize(in).ok() && *DeclaredChunkSize(in) == raw->size());
      if (auto again = CompressChunk(*raw)) {
        auto back = DecompressChunk(*again);
        Check(back.ok() && *back == *raw);
      }
      break;
    }
  }
  return 0;
}
