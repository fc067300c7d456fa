#include "vmm/unix_stream.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

namespace vmgrid::vmm {
namespace {

using std::chrono::milliseconds;

struct Pair {
  UnixStream client;
  UniqueFd peer;
};

Pair MakePair() {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds), 0);
  return Pair{UnixStream(UniqueFd(fds[0])), UniqueFd(fds[1])};
}

void Send(const UniqueFd& fd, const std::string& s) {
  ASSERT_EQ(::send(fd.get(), s.data(), s.size(), MSG_NOSIGNAL), static_cast<ssize_t>(s.size()));
}

TEST(UnixStreamTest, SplitsLinesAndStripsCr) {
  Pair p = MakePair();
  Send(p.peer, "one\r\ntwo\nthr");
  EXPECT_EQ(*p.client.ReadLine(DeadlineAfter(milliseconds(500)), 100), "one");
  EXPECT_EQ(*p.client.ReadLine(DeadlineAfter(milliseconds(500)), 100), "two");
  // A partial line times out but stays buffered.
  Result<std::string> partial = p.client.ReadLine(DeadlineAfter(milliseconds(50)), 100);
  ASSERT_FALSE(partial.ok());
  EXPECT_EQ(partial.error().code, ErrorCode::kTimeout);
  Send(p.peer, "ee\n");
  EXPECT_EQ(*p.client.ReadLine(DeadlineAfter(milliseconds(500)), 100), "three");
}

TEST(UnixStreamTest, OversizedLineClosesStream) {
  Pair p = MakePair();
  Send(p.peer, std::string(101, 'x'));
  Result<std::string> r = p.client.ReadLine(DeadlineAfter(milliseconds(500)), 100);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kResourceExhausted);
  EXPECT_FALSE(p.client.is_open());
}

TEST(UnixStreamTest, LineExactlyAtLimitIsAccepted) {
  Pair p = MakePair();
  Send(p.peer, std::string(100, 'x') + "\n" + std::string(101, 'y') + "\n");
  EXPECT_EQ(p.client.ReadLine(DeadlineAfter(milliseconds(500)), 100)->size(), 100u);
  EXPECT_FALSE(p.client.ReadLine(DeadlineAfter(milliseconds(500)), 100).ok());
}

TEST(UnixStreamTest, EofIsUnavailable) {
  Pair p = MakePair();
  Send(p.peer, "partial");
  p.peer.Reset();
  Result<std::string> r = p.client.ReadLine(DeadlineAfter(milliseconds(500)), 100);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
}

TEST(UnixStreamTest, SkipPastDiscardsUpToDelimiter) {
  Pair p = MakePair();
  Send(p.peer, "garbage\n{x}\xff{\"ok\"}\n");
  ASSERT_TRUE(p.client.SkipPast('\xff', DeadlineAfter(milliseconds(500))).ok());
  EXPECT_EQ(*p.client.ReadLine(DeadlineAfter(milliseconds(500)), 100), "{\"ok\"}");
}

TEST(UnixStreamTest, WriteTimesOutWhenPeerDoesNotRead) {
  Pair p = MakePair();
  std::string big(8 * 1024 * 1024, 'z');
  auto start = Clock::now();
  Status st = p.client.WriteAll(big, DeadlineAfter(milliseconds(200)));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kTimeout);
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
}

TEST(UnixStreamTest, ConnectFailsFastForMissingAndTooLongPaths) {
  Result<UnixStream> r = UnixStream::Connect("/nonexistent/dir/sock");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
  r = UnixStream::Connect("/" + std::string(200, 'a'));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  auto start = Clock::now();
  r = UnixStream::ConnectWithRetry("/nonexistent/sock", DeadlineAfter(milliseconds(300)));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_LT(Clock::now() - start, milliseconds(1500));
}

}  // namespace
}  // namespace vmgrid::vmm
