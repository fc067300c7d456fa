#include "agent/console_log.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/util.h"

namespace vmgrid {
namespace {

namespace fs = std::filesystem;

class ConsoleLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("vmgrid-console-" + NewToken().substr(0, 8));
    fs::create_directories(dir_ + "/run");
    live_ = dir_ + "/run/console.log";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  // What QEMU does with append=on.
  void Append(const std::string& s) {
    std::ofstream f(live_, std::ios::app | std::ios::binary);
    f << s;
  }
  ConsoleLogFiles Files() const { return ConsoleLogFiles(live_, dir_); }

  std::string dir_, live_;
};

TEST_F(ConsoleLogTest, NothingWrittenYetReadsEmpty) {
  auto r = Files().Read(-1, 100);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->text, "");
  EXPECT_EQ(r->size, 0);
  EXPECT_EQ(r->next_offset, 0);
}

TEST_F(ConsoleLogTest, TailAndFollowByOffset) {
  Append("line one\nline two\n");
  auto tail = Files().Read(-1, 9);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(tail->text, "line two\n");
  EXPECT_EQ(tail->offset, 9);
  EXPECT_EQ(tail->next_offset, 18);
  auto head = Files().Read(0, 5);
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->text, "line ");
  EXPECT_EQ(head->next_offset, 5);
  Append("three\n");
  auto next = Files().Read(tail->next_offset, 100);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->text, "three\n");
  EXPECT_EQ(next->size, 24);
  // Caught up: nothing more, same offset.
  auto none = Files().Read(next->next_offset, 100);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->text, "");
  EXPECT_EQ(none->next_offset, 24);
  EXPECT_FALSE(Files().Read(0, 0).ok());
  EXPECT_FALSE(Files().Read(0, kConsoleReadMaxBytes + 1).ok());
}

TEST_F(ConsoleLogTest, TrimBoundsTheFileAndKeepsOffsetsAndTheTail) {
  std::string first;
  for (int i = 0; i < 100; ++i) first += "line " + std::to_string(i) + "\n";
  Append(first);
  auto small = Files().Trim(first.size(), 20);
  ASSERT_TRUE(small.ok());
  EXPECT_FALSE(*small) << "not over the limit";
  auto trimmed = Files().Trim(100, 20);
  ASSERT_TRUE(trimmed.ok()) << trimmed.error().message;
  EXPECT_TRUE(*trimmed);
  EXPECT_EQ(fs::file_size(live_), 0u);
  Append("after\n");
  const int64_t total = static_cast<int64_t>(first.size()) + 6;
  // The tail reads across the kept part and the new file.
  auto tail = Files().Read(-1, 26);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(tail->text, first.substr(first.size() - 20) + "after\n");
  EXPECT_EQ(tail->size, total);
  EXPECT_EQ(tail->next_offset, total);
  // A follower's offset still means the same byte.
  auto from = Files().Read(static_cast<int64_t>(first.size()), 100);
  ASSERT_TRUE(from.ok());
  EXPECT_EQ(from->text, "after\n");
  // Output older than what is kept is reported dropped.
  auto old = Files().Read(0, 100);
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(old->dropped, static_cast<int64_t>(first.size()) - 20);
  EXPECT_EQ(old->offset, static_cast<int64_t>(first.size()) - 20);
  // An offset past the end (the log began again elsewhere) starts over.
  auto past = Files().Read(total + 1000, 100);
  ASSERT_TRUE(past.ok());
  EXPECT_EQ(past->offset, static_cast<int64_t>(first.size()) - 20);
}

TEST_F(ConsoleLogTest, AGuestCannotMakeTheAgentReadOrWriteOtherFiles) {
  // A compromised QEMU owns RUN/: it may replace console.log with a link or
  // a FIFO. Neither is followed or read (and reading does not block).
  const std::string secret = dir_ + "/secret";
  ASSERT_TRUE(WriteFileAtomic(secret, "host secret\n", 0600).ok());
  ASSERT_EQ(symlink(secret.c_str(), live_.c_str()), 0);
  auto r = Files().Read(-1, 100);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("not a regular file"), std::string::npos) << r.error().message;
  EXPECT_EQ(r.error().message.find(dir_), std::string::npos) << "no host path for the user";
  EXPECT_FALSE(Files().Trim(0, 0).ok());
  EXPECT_EQ(*ReadFile(secret), "host secret\n") << "the link's target is untouched";
  unlink(live_.c_str());
  ASSERT_EQ(mkfifo(live_.c_str(), 0600), 0);
  r = Files().Read(-1, 100);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("not a regular file"), std::string::npos) << r.error().message;
}

TEST(ConsoleTextTest, PrintableUtf8Only) {
  EXPECT_EQ(PrintableConsoleText("ok\tdone\r\n"), "ok\tdone\n");
  EXPECT_EQ(PrintableConsoleText("\x1b[1;32mgreen\x1b[0m \x1b"
                                 "cX"),
            "green X");
  EXPECT_EQ(PrintableConsoleText(std::string("a\0b\x07", 4)), "ab");
  EXPECT_EQ(PrintableConsoleText("caf\xc3\xa9 \xe2\x82\xac"), "caf\xc3\xa9 \xe2\x82\xac");
  EXPECT_EQ(PrintableConsoleText("\xff\xc0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(PrintableConsoleText("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd")
      << "a surrogate is not UTF-8";
  EXPECT_EQ(CompleteUtf8Prefix("ab\xe2\x82"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xe2\x82\xac"), 5u);
  EXPECT_EQ(CompleteUtf8Prefix("ab"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("\xc3"), 0u);
}

TEST_F(ConsoleLogTest, AChunkDoesNotSplitACharacter) {
  Append("x\xe2\x82\xacy");
  auto r = Files().Read(0, 2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->text, "x");
  EXPECT_EQ(r->next_offset, 1);
  r = Files().Read(1, 4);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->text, "\xe2\x82\xacy");
}

}  // namespace
}  // namespace vmgrid
