#include "chunks/chunk_digest.h"

#include <openssl/evp.h>

#include <cstring>

namespace vmgrid {

std::string ChunkDigest(const void* data, size_t len) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_Digest(data, len, md, &md_len, EVP_sha256(), nullptr);
  static const char kHex[] = "0123456789abcdef";
  std::string out(md_len * 2, '\0');
  for (unsigned int i = 0; i < md_len; ++i) {
    out[2 * i] = kHex[md[i] >> 4];
    out[2 * i + 1] = kHex[md[i] & 15];
  }
  return out;
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
