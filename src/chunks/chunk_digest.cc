#include "chunks/chunk_digest.h"

#include <openssl/evp.h>

#include <cstring>

#include "common/util.h"

namespace vmgrid {

std::string ChunkDigest(const void* data, size_t len) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_Digest(data, len, md, &md_len, EVP_sha256(), nullptr);
  return HexEncode(std::string_view(reinterpret_cast<const char*>(md), md_len));
}

bool IsChunkDigest(std::string_view s) {
  if (s.size() != kDigestHexLength) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

bool IsAllZero(const void* data, size_t len) {
  const auto* p = static_cast<const unsigned char*>(data);
  if (len == 0) return true;
  // p[0] == 0 and every byte equals its successor: memcmp runs at memory speed.
  return p[0] == 0 && std::memcmp(p, p + 1, len - 1) == 0;
}

bool IsValidChunkSize(uint64_t chunk_size) {
  return chunk_size >= kMinChunkSize && chunk_size <= kMaxChunkSize &&
         (chunk_size & (chunk_size - 1)) == 0;
}

}  // namespace vmgrid
