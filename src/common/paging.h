// Keyset paging for list endpoints (docs/api.md, "Paging"). A list is in a
// fixed order of (key, id), where key is the listing's sort field (a name, or
// a creation time written as 20 zero-padded digits so that text order is
// number order) and id breaks ties. A page holds at most `limit` items; the
// cursor of its last item, given back as `cursor`, starts the next page just
// after it. Cursors are opaque to clients (URL-safe base64 of key and id),
// stay valid while items come and go (no item is listed twice; one created
// behind the cursor is not listed), and reveal only the item the caller has
// already seen.
// Thread-safety: stateless; safe from any thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace vmgrid {

struct PageRequest {
  int64_t limit = 0;  // 0: no limit
  // Start after (after_key, after_id); both empty: from the first item.
  std::string after_key;
  std::string after_id;
  bool has_after() const { return !after_id.empty(); }
};

template <typename T>
struct Page {
  std::vector<T> items;
  // The cursor of the next page; "" on the last page.
  std::string next;
};

// "00000000001733480000000" for a creation time: a key whose text order is
// the number order (negative numbers read as 0).
std::string NumberKey(int64_t n);

// The opaque cursor after the item (key, id).
std::string EncodeCursor(std::string_view key, std::string_view id);
// The cursor's (key, id) into `page`; kInvalidArgument for anything this
// server did not issue.
Status DecodeCursor(std::string_view cursor, PageRequest& page);

// One page of `all`, a list of every item in any order: sorted by (key, id)
// and cut after `page`. key(item) and id(item) return strings.
template <typename T, typename KeyFn, typename IdFn>
Page<T> PageOf(std::vector<T> all, const PageRequest& page, KeyFn key, IdFn id) {
  auto less = [&](const T& a, const T& b) {
    auto ka = key(a), kb = key(b);
    return ka != kb ? ka < kb : id(a) < id(b);
  };
  std::sort(all.begin(), all.end(), less);
  Page<T> out;
  auto it = all.begin();
  if (page.has_after())
    it = std::find_if(all.begin(), all.end(), [&](const T& t) {
      auto k = key(t);
      return k > page.after_key || (k == page.after_key && id(t) > page.after_id);
    });
  for (; it != all.end(); ++it) {
    if (page.limit > 0 && static_cast<int64_t>(out.items.size()) == page.limit) {
      out.next = EncodeCursor(key(out.items.back()), id(out.items.back()));
      break;
    }
    out.items.push_back(std::move(*it));
  }
  return out;
}

}  // namespace vmgrid
