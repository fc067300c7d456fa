#include "common/paging.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <utility>
#include <vector>

namespace vmgrid {
namespace {

using Item = std::pair<std::string, std::string>;  // key, id

Page<Item> PageAfter(const std::vector<Item>& all, int64_t limit, const std::string& cursor) {
  PageRequest p;
  p.limit = limit;
  if (!cursor.empty()) {
    EXPECT_TRUE(DecodeCursor(cursor, p).ok());
  }
  return PageOf(
      all, p, [](const Item& i) { return i.first; }, [](const Item& i) { return i.second; });
}

TEST(PagingTest, CursorRoundTripsKeyAndId) {
  PageRequest p;
  std::string c = EncodeCursor(NumberKey(1733480000123), "vm-0a1b");
  ASSERT_TRUE(DecodeCursor(c, p).ok());
  EXPECT_EQ(p.after_key, "00000001733480000123");
  EXPECT_EQ(p.after_id, "vm-0a1b");
  EXPECT_EQ(c.find_first_of("+/=&?# "), std::string::npos) << c;
  // A name with bytes base64 writes as '+' and '/' stays URL-safe.
  std::string odd = EncodeCursor("\xfb\xff~name", "id");
  EXPECT_EQ(odd.find_first_of("+/="), std::string::npos) << odd;
  ASSERT_TRUE(DecodeCursor(odd, p).ok());
  EXPECT_EQ(p.after_key, "\xfb\xff~name");
}

TEST(PagingTest, RefusesCursorsItDidNotIssue) {
  PageRequest p;
  for (std::string bad :
       {std::string(""), std::string("!!!!"), std::string("a"),
        std::string("YWJj"),  // "abc": no separator
        EncodeCursor("a\nb", "c"), EncodeCursor("key", ""), EncodeCursor("k\x01", "id"),
        std::string(600, 'A'), std::string("YWJj+/8="), std::string("a b"),
        // Non-zero unused bits in the last character: decodes, but is not
        // what EncodeCursor writes (found by fuzz_http_json).
        std::string("wwrkrk")}) {
    auto st = DecodeCursor(bad, p);
    EXPECT_FALSE(st.ok()) << bad;
    if (!st.ok()) {
      EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
    }
  }
  EXPECT_FALSE(p.has_after());
}

TEST(PagingTest, NumberKeysSortAsNumbers) {
  EXPECT_LT(NumberKey(9), NumberKey(10));
  EXPECT_LT(NumberKey(999999999999), NumberKey(1000000000000));
  EXPECT_EQ(NumberKey(-5), NumberKey(0));
}

TEST(PagingTest, PagesCoverEveryItemOnceInKeyThenIdOrder) {
  std::vector<Item> all;
  for (int i = 0; i < 23; ++i)  // ties on the key, broken by the id
    all.push_back({NumberKey(100 + i / 3), "id-" + std::to_string(50 - i)});
  for (int64_t limit : {1, 2, 5, 22, 23, 24, 1000}) {
    std::vector<Item> seen;
    std::string cursor;
    int pages = 0;
    do {
      auto page = PageAfter(all, limit, cursor);
      ASSERT_LE(static_cast<int64_t>(page.items.size()), limit);
      if (!page.next.empty()) {
        ASSERT_EQ(static_cast<int64_t>(page.items.size()), limit);
      }
      seen.insert(seen.end(), page.items.begin(), page.items.end());
      cursor = page.next;
      ASSERT_LT(++pages, 100);
    } while (!cursor.empty());
    auto sorted = all;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(seen, sorted) << "limit " << limit;
  }
}

TEST(PagingTest, NoLimitIsOnePage) {
  std::vector<Item> all{{"b", "1"}, {"a", "2"}};
  auto page = PageAfter(all, 0, "");
  ASSERT_EQ(page.items.size(), 2u);
  EXPECT_EQ(page.items[0].first, "a");
  EXPECT_TRUE(page.next.empty());
}

TEST(PagingTest, ItemsRemovedOrAddedWhilePagingNeitherRepeatNorSkipOthers) {
  std::vector<Item> all;
  for (int i = 0; i < 10; ++i) all.push_back({NumberKey(i), "id" + std::to_string(i)});
  auto first = PageAfter(all, 4, "");
  ASSERT_EQ(first.items.back().second, "id3");
  // The last listed item and an unlisted one go away; one is added at the end.
  all.erase(all.begin() + 3);
  all.erase(all.begin() + 4);  // id5
  all.push_back({NumberKey(10), "id10"});
  auto second = PageAfter(all, 100, first.next);
  std::vector<std::string> ids;
  for (const auto& i : second.items) ids.push_back(i.second);
  EXPECT_EQ(ids, (std::vector<std::string>{"id4", "id6", "id7", "id8", "id9", "id10"}));
}

}  // namespace
}  // namespace vmgrid
