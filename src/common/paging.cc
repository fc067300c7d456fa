#include "common/paging.h"

#include <cstdio>

#include "common/base64.h"

namespace vmgrid {

namespace {

// Key and id are joined by a byte neither contains.
constexpr char kSeparator = '\n';
constexpr size_t kMaxCursor = 512;

}  // namespace

std::string NumberKey(int64_t n) {
  char b[24];
  std::snprintf(b, sizeof b, "%020lld", static_cast<long long>(std::max<int64_t>(n, 0)));
  return b;
}

std::string EncodeCursor(std::string_view key, std::string_view id) {
  std::string raw(key);
  raw += kSeparator;
  raw += id;
  std::string s = Base64Encode(raw);
  while (!s.empty() && s.back() == '=') s.pop_back();
  for (char& c : s) c = c == '+' ? '-' : c == '/' ? '_' : c;
  return s;
}

Status DecodeCursor(std::string_view cursor, PageRequest& page) {
  auto bad = [] {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cursor is not one this server issued; give the 'next' of the previous "
                     "page, or no cursor for the first page");
  };
  if (cursor.empty() || cursor.size() > kMaxCursor) return bad();
  std::string s(cursor);
  for (char& c : s) {
    if (c == '-')
      c = '+';
    else if (c == '_')
      c = '/';
    else if (c == '+' || c == '/' || c == '=')
      return bad();
  }
  while (s.size() % 4 != 0) s += '=';
  auto raw = Base64Decode(s);
  if (!raw.ok()) return bad();
  size_t sep = raw->find(kSeparator);
  if (sep == std::string::npos || raw->find(kSeparator, sep + 1) != std::string::npos) return bad();
  std::string key = raw->substr(0, sep), id = raw->substr(sep + 1);
  if (id.empty()) return bad();
  for (unsigned char c : *raw)
    if (c != static_cast<unsigned char>(kSeparator) && (c < 0x20 || c == 0x7f)) return bad();
  // One spelling per cursor: base64 ignores the unused low bits of a last
  // partial character ("wwrkrk" decodes like "wwrkrg"), so a cursor must be
  // exactly what EncodeCursor makes of what it decodes to.
  if (EncodeCursor(key, id) != cursor) return bad();
  page.after_key = std::move(key);
  page.after_id = std::move(id);
  return Status::Ok();
}

}  // namespace vmgrid
