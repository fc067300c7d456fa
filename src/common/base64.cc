#include "common/base64.h"

#include <openssl/evp.h>

#include <algorithm>

namespace vmgrid {

namespace {
// EVP_*Block take int lengths; chunking keeps arbitrarily large inputs safe.
constexpr size_t kEncodeChunk = 3 * 1024 * 1024;  // multiple of 3: no inner padding
constexpr size_t kDecodeChunk = 4 * 1024 * 1024;  // multiple of 4
}  // namespace

std::string Base64Encode(std::string_view data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  for (size_t pos = 0; pos < data.size(); pos += kEncodeChunk) {
    size_t n = std::min(kEncodeChunk, data.size() - pos);
    size_t old = out.size();
    out.resize(old + (n + 2) / 3 * 4 + 1);  // +1: EVP_EncodeBlock writes a NUL
    int written = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data() + old),
                                  reinterpret_cast<const unsigned char*>(data.data() + pos),
                                  static_cast<int>(n));
    out.resize(old + static_cast<size_t>(written));
  }
  return out;
}

Result<std::string> Base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) {
    return MakeError(ErrorCode::kInternal, "base64 length is not a multiple of 4");
  }
  // EVP_DecodeBlock tolerates surrounding whitespace and decodes padding as
  // zero bytes, so padding is validated and trimmed here.
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (alnum || c == '+' || c == '/') continue;
    bool padding_ok = c == '=' && (i == text.size() - 1 ||
                                   (i == text.size() - 2 && text[text.size() - 1] == '='));
    if (!padding_ok) return MakeError(ErrorCode::kInternal, "invalid base64 character");
  }
  size_t pad = 0;
  if (!text.empty() && text.back() == '=') pad = (text[text.size() - 2] == '=') ? 2 : 1;

  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t pos = 0; pos < text.size(); pos += kDecodeChunk) {
    size_t n = std::min(kDecodeChunk, text.size() - pos);
    size_t old = out.size();
    out.resize(old + n / 4 * 3);
    int written = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data() + old),
                                  reinterpret_cast<const unsigned char*>(text.data() + pos),
                                  static_cast<int>(n));
    if (written < 0) return MakeError(ErrorCode::kInternal, "invalid base64");
    out.resize(old + static_cast<size_t>(written));
  }
  out.resize(out.size() - pad);
  return out;
}

}  // namespace vmgrid
