// Whole sessions over an in-memory stream: what a client sends is scripted,
// what the server sends is parsed back and checked message by message.
#include "nbd/nbd_session.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "nbd/block_source.h"
#include "nbd/test_block_sources.h"

namespace vmgrid::nbd {
namespace {

// Feeds `input` to the session in pieces of at most `chunk` bytes and records
// everything the session writes.
class MemoryStream : public ByteStream {
 public:
  explicit MemoryStream(std::string input, size_t chunk = 1 << 20)
      : input_(std::move(input)), chunk_(chunk) {}
  Result<size_t> ReadSome(char* buf, size_t cap) override {
    size_t n = std::min({cap, chunk_, input_.size() - pos_});
    std::memcpy(buf, input_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  Status WriteAll(std::span<const std::string_view> parts) override {
    for (auto p : parts) output.append(p);
    return Status::Ok();
  }
  void EnterTransmission() override { transmission = true; }

  std::string output;
  bool transmission = false;

 private:
  std::string input_;
  size_t pos_ = 0;
  size_t chunk_;
};

// Walks the server's output.
class Replies {
 public:
  explicit Replies(std::string out) : out_(std::move(out)) {}
  std::string Take(size_t n) {
    EXPECT_LE(pos_ + n, out_.size()) << "server output too short";
    std::string s = out_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  // Returns the payload; checks option and type.
  std::string Option(uint32_t option, uint32_t type) {
    auto h = ParseOptionReplyHeader(Take(kOptionReplyHeaderSize));
    EXPECT_TRUE(h.ok());
    if (!h.ok()) return "";
    EXPECT_EQ(h->option, option);
    EXPECT_EQ(h->reply_type, type) << std::hex << h->reply_type;
    return Take(h->length);
  }
  uint32_t Simple(uint64_t cookie) {
    auto r = ParseSimpleReply(Take(kSimpleReplySize));
    EXPECT_TRUE(r.ok());
    if (!r.ok()) return 0xdead;
    EXPECT_EQ(r->cookie, cookie);
    return r->error;
  }
  // A structured chunk: checks cookie, type and DONE; returns the payload.
  std::string Chunk(uint64_t cookie, uint16_t type) {
    auto h = ParseStructuredReplyHeader(Take(kStructuredReplyHeaderSize));
    EXPECT_TRUE(h.ok());
    if (!h.ok()) return "";
    EXPECT_EQ(h->cookie, cookie);
    EXPECT_EQ(h->type, type);
    EXPECT_EQ(h->flags, kReplyFlagDone);
    return Take(h->length);
  }
  bool AtEnd() const { return pos_ == out_.size(); }
  size_t remaining() const { return out_.size() - pos_; }

 private:
  std::string out_;
  size_t pos_ = 0;
};

std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7 + i / 251) & 0xff);
  return s;
}

class FailingSource : public BlockSource {
 public:
  explicit FailingSource(uint64_t size) : size_(size) {}
  uint64_t size() const override { return size_; }
  Status Read(uint64_t offset, size_t len, char* out) override {
    if (offset < 4096) return MakeError(ErrorCode::kUnavailable, "chunk fetch failed");
    std::memset(out, 'z', len);
    return Status::Ok();
  }

 private:
  uint64_t size_;
};

constexpr size_t kDiskSize = (1 << 20) + 7;  // not a multiple of anything

class NbdSessionTest : public testing::Test {
 protected:
  void SetUp() override {
    disk_ = Pattern(kDiskSize);
    ASSERT_TRUE(exports_.Add("disk", std::make_shared<MemoryBlockSource>(disk_)).ok());
  }

  // Runs a session on `input`; returns the server output after the greeting.
  Replies Run(const std::string& input, Status* status = nullptr, size_t chunk = 1 << 20) {
    MemoryStream stream(input, chunk);
    Status st = RunSession(stream, exports_, counters_);
    if (status) *status = st;
    transmission_ = stream.transmission;
    EXPECT_EQ(stream.output.substr(0, kGreetingSize), BuildGreeting());
    return Replies(stream.output.substr(std::min(stream.output.size(), kGreetingSize)));
  }

  static std::string Go(const std::string& name, std::vector<uint16_t> info = {}) {
    return BuildOption(kOptGo, BuildInfoRequestData(name, info));
  }
  // Client flags + GO "disk": the usual way into transmission.
  static std::string Open() { return BuildClientFlags(3) + Go("disk"); }
  void ExpectGoSuccess(Replies& r) {
    std::string info = r.Option(kOptGo, kRepInfo);
    EXPECT_EQ(info, BuildInfoExportPayload(kDiskSize, kReadOnlyExportFlags));
    r.Option(kOptGo, kRepAck);
  }

  std::string disk_;
  ExportTable exports_;
  NbdCounters counters_;
  bool transmission_ = false;
};

TEST_F(NbdSessionTest, GoReadDisconnect) {
  std::string in = BuildClientFlags(kClientFixedNewstyle | kClientNoZeroes) +
                   Go("disk", {kInfoBlockSize, 999}) + BuildRequest(kCmdRead, 1, 100, 50) +
                   BuildRequest(kCmdRead, 2, kDiskSize - 7, 7) + BuildRequest(kCmdDisc, 3, 0, 0);
  Status st;
  Replies r = Run(in, &st);
  EXPECT_TRUE(st.ok()) << st.error().message;
  EXPECT_TRUE(transmission_);
  EXPECT_EQ(r.Option(kOptGo, kRepInfo), BuildInfoExportPayload(kDiskSize, kReadOnlyExportFlags));
  EXPECT_EQ(r.Option(kOptGo, kRepInfo), BuildInfoBlockSizePayload(1, 4096, kMaxPayload));
  r.Option(kOptGo, kRepAck);
  EXPECT_EQ(r.Simple(1), 0u);
  EXPECT_EQ(r.Take(50), disk_.substr(100, 50));
  EXPECT_EQ(r.Simple(2), 0u);
  EXPECT_EQ(r.Take(7), disk_.substr(kDiskSize - 7));
  EXPECT_TRUE(r.AtEnd());  // no reply to DISC
  EXPECT_EQ(counters_.requests, 3u);
  EXPECT_EQ(counters_.bytes_read, 57u);
  EXPECT_EQ(counters_.errors, 0u);
}

TEST_F(NbdSessionTest, ByteAtATimeInputGivesTheSameOutput) {
  std::string in = Open() + BuildRequest(kCmdRead, 9, 4000, 300) +
                   BuildRequest(kCmdWrite, 10, 0, 5) + "hello" + BuildRequest(kCmdRead, 11, 0, 3);
  MemoryStream whole(in), bytewise(in, 1);
  ExportTable& e = exports_;
  EXPECT_TRUE(RunSession(whole, e, counters_).ok());
  EXPECT_TRUE(RunSession(bytewise, e, counters_).ok());
  EXPECT_EQ(whole.output, bytewise.output);
  EXPECT_GT(whole.output.size(), 300u);
}

TEST_F(NbdSessionTest, ExportNameHonoursNoZeroes) {
  Replies with = Run(BuildClientFlags(kClientFixedNewstyle) + BuildOption(kOptExportName, "disk"));
  EXPECT_EQ(with.Take(134), BuildExportNameReply(kDiskSize, kReadOnlyExportFlags, false));
  EXPECT_TRUE(with.AtEnd());
  Replies without = Run(BuildClientFlags(3) + BuildOption(kOptExportName, "disk") +
                        BuildRequest(kCmdRead, 5, 0, 4));
  EXPECT_EQ(without.Take(10), BuildExportNameReply(kDiskSize, kReadOnlyExportFlags, true));
  EXPECT_EQ(without.Simple(5), 0u);
  EXPECT_EQ(without.Take(4), disk_.substr(0, 4));
  EXPECT_TRUE(without.AtEnd());
}

TEST_F(NbdSessionTest, ExportNameOfUnknownExportHangsUp) {
  Status st;
  Replies r = Run(BuildClientFlags(3) + BuildOption(kOptExportName, "nope"), &st);
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(r.AtEnd());
  EXPECT_FALSE(transmission_);
}

TEST_F(NbdSessionTest, ListInfoAbort) {
  ASSERT_TRUE(exports_.Add("another", std::make_shared<MemoryBlockSource>("x")).ok());
  std::string in = BuildClientFlags(3) + BuildOption(kOptList, "") + BuildOption(kOptList, "junk") +
                   BuildOption(kOptInfo, BuildInfoRequestData("another", {})) +
                   BuildOption(kOptAbort, "ignored");
  Status st;
  Replies r = Run(in, &st);
  EXPECT_TRUE(st.ok());
  EXPECT_FALSE(transmission_);
  EXPECT_EQ(r.Option(kOptList, kRepServer), BuildServerPayload("another"));
  EXPECT_EQ(r.Option(kOptList, kRepServer), BuildServerPayload("disk"));
  r.Option(kOptList, kRepAck);
  r.Option(kOptList, kRepErrInvalid);
  EXPECT_EQ(r.Option(kOptInfo, kRepInfo), BuildInfoExportPayload(1, kReadOnlyExportFlags));
  r.Option(kOptInfo, kRepAck);
  r.Option(kOptAbort, kRepAck);
  EXPECT_TRUE(r.AtEnd());
}

TEST_F(NbdSessionTest, UnknownExportAndMalformedGoAreErrorsNotHangups) {
  std::string in = BuildClientFlags(3) + Go("nope") + BuildOption(kOptGo, "\x00\x00\x00\x09x") +
                   BuildOption(kOptInfo, "") + Go("disk") + BuildRequest(kCmdDisc, 1, 0, 0);
  Status st;
  Replies r = Run(in, &st);
  EXPECT_TRUE(st.ok());
  EXPECT_NE(r.Option(kOptGo, kRepErrUnknown).find("nope"), std::string::npos);
  r.Option(kOptGo, kRepErrInvalid);
  r.Option(kOptInfo, kRepErrInvalid);
  ExpectGoSuccess(r);
  EXPECT_TRUE(r.AtEnd());
  EXPECT_EQ(counters_.errors, 3u);
}

TEST_F(NbdSessionTest, UnsupportedOptionsAreSkipped) {
  std::string in = BuildClientFlags(3) + BuildOption(kOptListMetaContext, "") +
                   BuildOption(kOptStartTls, "") +
                   BuildOption(kOptSetMetaContext, std::string(100, 'm')) +
                   BuildOption(0xdeadbeef, std::string(3000, 'q')) + Go("disk");
  Status st;
  Replies r = Run(in, &st);
  EXPECT_TRUE(st.ok());
  r.Option(kOptListMetaContext, kRepErrUnsup);
  r.Option(kOptStartTls, kRepErrUnsup);
  r.Option(kOptSetMetaContext, kRepErrUnsup);
  r.Option(0xdeadbeef, kRepErrUnsup);
  ExpectGoSuccess(r);
  EXPECT_TRUE(r.AtEnd());
}

TEST_F(NbdSessionTest, OversizedOptionIsSkippedUpToTheDrainLimit) {
  std::string big_go = BuildOption(kOptGo, std::string(kMaxOptionLength + 1, 'g'));
  std::string big_unknown = BuildOption(77, std::string(200000, 'u'));
  Status st;
  Replies r = Run(BuildClientFlags(3) + big_go + big_unknown + Go("disk"), &st);
  EXPECT_TRUE(st.ok());
  r.Option(kOptGo, kRepErrTooBig);
  r.Option(77, kRepErrUnsup);
  ExpectGoSuccess(r);
  EXPECT_TRUE(r.AtEnd());
}

TEST_F(NbdSessionTest, AbsurdOptionLengthHangsUpAfterReplying) {
  std::string header = BuildOption(kOptInfo, "").substr(0, 12) + "\x7f\xff\xff\xff";
  Status st;
  Replies r = Run(BuildClientFlags(3) + header + std::string(1000, 'x'), &st);
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  r.Option(kOptInfo, kRepErrTooBig);
  EXPECT_TRUE(r.AtEnd());
}

TEST_F(NbdSessionTest, OversizedExportNameHangsUp) {
  Status st;
  Replies r = Run(BuildClientFlags(3) + BuildOption(kOptExportName, std::string(5000, 'n')), &st);
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(r.AtEnd());
}

TEST_F(NbdSessionTest, BadClientFlagsOrMagicHangUp) {
  Status st;
  Replies a = Run(BuildClientFlags(0x10) + Go("disk"), &st);
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(a.AtEnd());

  std::string go = Go("disk");
  go[0] = 'X';
  Replies b = Run(BuildClientFlags(3) + go, &st);
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(b.AtEnd());

  std::string req = BuildRequest(kCmdRead, 1, 0, 512);
  req[0] = 0;
  Replies c = Run(Open() + req, &st);
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  ExpectGoSuccess(c);
  EXPECT_TRUE(c.AtEnd());
}

TEST_F(NbdSessionTest, HostileRequestsGetErrorsAndTheSessionGoesOn) {
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  std::string in = Open() + BuildRequest(kCmdRead, 1, kDiskSize, 1) +  // past the end
                   BuildRequest(kCmdRead, 2, kDiskSize - 10, 11) +     // straddles the end
                   BuildRequest(kCmdRead, 3, kMax - 511, 1024) +       // offset+length wraps
                   BuildRequest(kCmdRead, 4, 0, 0xffffffff) +          // huge length
                   BuildRequest(kCmdWrite, 5, 0, 9) + "123456789" +    // read-only
                   BuildRequest(kCmdTrim, 6, 0, 4096) + BuildRequest(kCmdWriteZeroes, 7, 0, 4096) +
                   BuildRequest(kCmdCache, 8, 0, 4096) + BuildRequest(1234, 9, 0, 0) +
                   BuildRequest(kCmdRead, 10, 0, 16, 0x40) +  // unknown flag
                   BuildRequest(kCmdFlush, 11, 0, 0) +
                   BuildRequest(kCmdRead, 12, 0, 0) +  // empty read
                   BuildRequest(kCmdRead, 13, 512, 512);
  Status st;
  Replies r = Run(in, &st);
  EXPECT_TRUE(st.ok()) << st.error().message;  // stream ended between requests
  ExpectGoSuccess(r);
  EXPECT_EQ(r.Simple(1), kEinval);
  EXPECT_EQ(r.Simple(2), kEinval);
  EXPECT_EQ(r.Simple(3), kEinval);
  EXPECT_EQ(r.Simple(4), kEinval);
  EXPECT_EQ(r.Simple(5), kEperm);
  EXPECT_EQ(r.Simple(6), kEperm);
  EXPECT_EQ(r.Simple(7), kEperm);
  EXPECT_EQ(r.Simple(8), kEinval);
  EXPECT_EQ(r.Simple(9), kEinval);
  EXPECT_EQ(r.Simple(10), kEinval);
  EXPECT_EQ(r.Simple(11), 0u);
  EXPECT_EQ(r.Simple(12), 0u);
  EXPECT_EQ(r.Simple(13), 0u);
  EXPECT_EQ(r.Take(512), disk_.substr(512, 512));
  EXPECT_TRUE(r.AtEnd());
  EXPECT_EQ(counters_.errors, 10u);
  EXPECT_EQ(counters_.bytes_read, 512u);
}

TEST_F(NbdSessionTest, OversizedWritePayloadHangsUp) {
  Status st;
  Replies r = Run(Open() + BuildRequest(kCmdWrite, 1, 0, kMaxPayload + 1) + "data", &st);
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  ExpectGoSuccess(r);
  EXPECT_EQ(r.Simple(1), kEinval);
  EXPECT_TRUE(r.AtEnd());
}

TEST_F(NbdSessionTest, DisconnectInsideMessages) {
  Status st;
  Run(BuildClientFlags(3).substr(0, 2), &st);
  EXPECT_EQ(st.error().code, ErrorCode::kUnavailable);
  Run(BuildClientFlags(3) + Go("disk").substr(0, 20), &st);
  EXPECT_EQ(st.error().code, ErrorCode::kUnavailable);
  Run(Open() + BuildRequest(kCmdRead, 1, 0, 512).substr(0, 10), &st);
  EXPECT_EQ(st.error().code, ErrorCode::kUnavailable);
  Run(Open() + BuildRequest(kCmdWrite, 1, 0, 512) + "partial", &st);
  EXPECT_EQ(st.error().code, ErrorCode::kUnavailable);
  // Between messages is a clean close.
  Run(BuildClientFlags(3), &st);
  EXPECT_TRUE(st.ok());
  Run(Open(), &st);
  EXPECT_TRUE(st.ok());
}

TEST_F(NbdSessionTest, FailingSourceGivesEioAndKeepsTheConnection) {
  ASSERT_TRUE(exports_.Add("flaky", std::make_shared<FailingSource>(1 << 16)).ok());
  Status st;
  Replies r = Run(BuildClientFlags(3) + Go("flaky") + BuildRequest(kCmdRead, 1, 0, 512) +
                      BuildRequest(kCmdRead, 2, 8192, 4) + BuildRequest(kCmdRead, 3, 100, 1),
                  &st);
  EXPECT_TRUE(st.ok());
  r.Option(kOptGo, kRepInfo);
  r.Option(kOptGo, kRepAck);
  EXPECT_EQ(r.Simple(1), kEio);
  EXPECT_EQ(r.Simple(2), 0u);
  EXPECT_EQ(r.Take(4), "zzzz");
  EXPECT_EQ(r.Simple(3), kEio);
  EXPECT_TRUE(r.AtEnd());
  EXPECT_EQ(counters_.source_errors, 2u);
}

// A stream whose reads can run code between messages, to remove an export
// while a session is using it.
class HookStream : public MemoryStream {
 public:
  using MemoryStream::MemoryStream;
  Result<size_t> ReadSome(char* buf, size_t cap) override {
    if (transmission && hook) {
      hook();
      hook = nullptr;
    }
    return MemoryStream::ReadSome(buf, std::min<size_t>(cap, 28));
  }
  std::function<void()> hook;
};

TEST_F(NbdSessionTest, RemovedExportStaysReadableForConnectedClients) {
  HookStream stream(Open() + BuildRequest(kCmdRead, 1, 0, 8));
  stream.hook = [this] { ASSERT_TRUE(exports_.Remove("disk").ok()); };
  ASSERT_TRUE(RunSession(stream, exports_, counters_).ok());
  EXPECT_EQ(exports_.Find("disk"), nullptr);
  Replies r(stream.output.substr(kGreetingSize));
  ExpectGoSuccess(r);
  EXPECT_EQ(r.Simple(1), 0u);
  EXPECT_EQ(r.Take(8), disk_.substr(0, 8));
}

TEST_F(NbdSessionTest, EmptyNameIsTheDefaultExportIfOneIsRegistered) {
  Replies none = Run(BuildClientFlags(3) + Go(""));
  none.Option(kOptGo, kRepErrUnknown);
  ASSERT_TRUE(exports_.Add("", std::make_shared<MemoryBlockSource>("abc")).ok());
  Replies some = Run(BuildClientFlags(3) + Go("") + BuildRequest(kCmdRead, 1, 0, 3));
  EXPECT_EQ(some.Option(kOptGo, kRepInfo), BuildInfoExportPayload(3, kReadOnlyExportFlags));
  some.Option(kOptGo, kRepAck);
  EXPECT_EQ(some.Simple(1), 0u);
  EXPECT_EQ(some.Take(3), "abc");
}

std::string Be32(uint32_t v) {
  std::string s;
  AppendBe32(s, v);
  return s;
}
std::string Be64(uint64_t v) {
  std::string s;
  AppendBe64(s, v);
  return s;
}

TEST_F(NbdSessionTest, StructuredRepliesForReads) {
  ASSERT_TRUE(exports_.Add("flaky", std::make_shared<FailingSource>(1 << 16)).ok());
  std::string in = BuildClientFlags(3) + BuildOption(kOptStructuredReply, "x") +
                   BuildOption(kOptStructuredReply, "") + Go("disk") +
                   BuildRequest(kCmdRead, 1, 1000, 24) +
                   BuildRequest(kCmdRead, 2, kDiskSize, 1) +  // out of range
                   BuildRequest(kCmdRead, 3, 0, 0) +          // empty
                   BuildRequest(kCmdWrite, 4, 0, 2) + "ww" +  // simple reply is fine here
                   BuildRequest(kCmdFlush, 5, 0, 0);
  Status st;
  Replies r = Run(in, &st);
  EXPECT_TRUE(st.ok());
  r.Option(kOptStructuredReply, kRepErrInvalid);
  r.Option(kOptStructuredReply, kRepAck);
  ExpectGoSuccess(r);
  EXPECT_EQ(r.Chunk(1, kReplyTypeOffsetData), Be64(1000) + disk_.substr(1000, 24));
  std::string err = r.Chunk(2, kReplyTypeError);
  ASSERT_GE(err.size(), 6u);
  EXPECT_EQ(err.substr(0, 4), Be32(kEinval));
  EXPECT_EQ(LoadBe16(err.data() + 4), err.size() - 6);  // message length
  EXPECT_EQ(r.Chunk(3, kReplyTypeNone), "");
  EXPECT_EQ(r.Simple(4), kEperm);
  EXPECT_EQ(r.Simple(5), 0u);
  EXPECT_TRUE(r.AtEnd());

  Replies f = Run(BuildClientFlags(3) + BuildOption(kOptStructuredReply, "") + Go("flaky") +
                  BuildRequest(kCmdRead, 7, 0, 512));
  f.Option(kOptStructuredReply, kRepAck);
  f.Option(kOptGo, kRepInfo);
  f.Option(kOptGo, kRepAck);
  EXPECT_EQ(f.Chunk(7, kReplyTypeError).substr(0, 4), Be32(kEio));
  EXPECT_TRUE(f.AtEnd());
}

// 1 MiB: data, a 256 KiB hole at [256 KiB, 512 KiB), data, a hole from
// 768 KiB to the end. Traps a Read that touches a hole, so a test sees
// whether the server skipped the holes or read them.
class SparseSource : public StripedSource {
 public:
  static constexpr uint64_t kSize = 1 << 20, kRun = 256 << 10;
  SparseSource() : StripedSource(kSize, kRun) {}
  char DataByte(uint64_t offset) const override { return static_cast<char>(1 + offset % 251); }
  Status Read(uint64_t offset, size_t len, char* out) override {
    for (uint64_t i = 0; i < len; ++i) hole_reads += IsHole(offset + i) ? 1 : 0;
    return StripedSource::Read(offset, len, out);
  }
  int hole_reads = 0;
};

// Reads every chunk of one structured READ reply into an assembler.
Status Assemble(Replies& r, ReadReplyAssembler& a, int* chunks) {
  *chunks = 0;
  while (!a.done()) {
    auto h = ParseStructuredReplyHeader(r.Take(kStructuredReplyHeaderSize));
    if (!h.ok()) return h.error();
    VMG_RETURN_IF_ERROR(a.Add(*h, r.Take(h->length)));
    ++*chunks;
  }
  return Status::Ok();
}

TEST_F(NbdSessionTest, HolesAreSentAsHoleChunksWithStructuredReplies) {
  auto sparse = std::make_shared<SparseSource>();
  ASSERT_TRUE(exports_.Add("sparse", sparse).ok());
  struct Case {
    uint64_t offset;
    uint32_t length;
    int chunks;
    uint64_t hole_bytes;
  };
  const uint64_t k = SparseSource::kRun;
  std::vector<Case> cases = {{0, 4096, 1, 0},                     // data only
                             {k, 4096, 1, 4096},                  // hole only
                             {k - 100, 200, 2, 100},              // data, hole
                             {k - 100, 2 * k + 200, 4, k + 100},  // data, hole, data, hole
                             {0, static_cast<uint32_t>(4 * k), 4, 2 * k}};  // the whole export
  std::string in = BuildClientFlags(3) + BuildOption(kOptStructuredReply, "") + Go("sparse");
  for (size_t i = 0; i < cases.size(); ++i)
    in += BuildRequest(kCmdRead, 100 + i, cases[i].offset, cases[i].length);
  Status st;
  Replies r = Run(in, &st);
  ASSERT_TRUE(st.ok()) << st.error().message;
  r.Option(kOptStructuredReply, kRepAck);
  r.Option(kOptGo, kRepInfo);
  r.Option(kOptGo, kRepAck);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    ReadReplyAssembler a(100 + i, c.offset, c.length);
    int chunks = 0;
    Status s = Assemble(r, a, &chunks);
    ASSERT_TRUE(s.ok()) << "case " << i << ": " << s.error().message;
    EXPECT_EQ(a.error(), 0u);
    EXPECT_EQ(chunks, c.chunks) << "case " << i;
    EXPECT_EQ(a.hole_bytes(), c.hole_bytes) << "case " << i;
    EXPECT_TRUE(a.data() == sparse->Expected(c.offset, c.length)) << "case " << i;
  }
  EXPECT_TRUE(r.AtEnd());
  EXPECT_EQ(sparse->hole_reads, 0) << "holes must not be read";

  // Without structured replies the same ranges come as zeros in simple replies.
  std::string plain = BuildClientFlags(3) + Go("sparse") + BuildRequest(kCmdRead, 9, k - 100, 200);
  Replies p = Run(plain, &st);
  p.Option(kOptGo, kRepInfo);
  p.Option(kOptGo, kRepAck);
  EXPECT_EQ(p.Simple(9), 0u);
  EXPECT_TRUE(p.Take(200) == sparse->Expected(k - 100, 200));
  EXPECT_TRUE(p.AtEnd());
}

// A source whose MapExtents breaks its contract is served as all data.
class LyingSource : public SparseSource {
 public:
  void MapExtents(uint64_t, uint64_t len, std::vector<Extent>* out) const override {
    out->assign(2, Extent{len, true});  // twice the range
  }
};

TEST_F(NbdSessionTest, InvalidExtentsFallBackToOneDataChunk) {
  ASSERT_TRUE(exports_.Add("liar", std::make_shared<LyingSource>()).ok());
  Replies r = Run(BuildClientFlags(3) + BuildOption(kOptStructuredReply, "") + Go("liar") +
                  BuildRequest(kCmdRead, 1, 0, 4096));
  r.Option(kOptStructuredReply, kRepAck);
  r.Option(kOptGo, kRepInfo);
  r.Option(kOptGo, kRepAck);
  EXPECT_EQ(r.Chunk(1, kReplyTypeOffsetData).size(), 8u + 4096);
  EXPECT_TRUE(r.AtEnd());
}

StructuredReplyHeader Hdr(uint16_t type, uint32_t length, bool done, uint64_t cookie = 5) {
  return StructuredReplyHeader{static_cast<uint16_t>(done ? kReplyFlagDone : 0), type, cookie,
                               length};
}
std::string HolePayload(uint64_t offset, uint32_t length) {
  std::string s;
  AppendBe64(s, offset);
  AppendBe32(s, length);
  return s;
}

TEST(ReadReplyAssemblerTest, RejectsWhatAHostileServerMightSend) {
  auto data = [](uint64_t offset, std::string bytes) {
    std::string s;
    AppendBe64(s, offset);
    return s + bytes;
  };
  {  // good: data + hole, in any order
    ReadReplyAssembler a(5, 1000, 8);
    EXPECT_TRUE(a.Add(Hdr(kReplyTypeOffsetHole, 12, false), HolePayload(1004, 4)).ok());
    EXPECT_TRUE(a.Add(Hdr(kReplyTypeOffsetData, 12, true), data(1000, "abcd")).ok());
    EXPECT_TRUE(a.done());
    EXPECT_EQ(a.data(), std::string("abcd\0\0\0\0", 8));
    EXPECT_FALSE(a.Add(Hdr(kReplyTypeNone, 0, true), "").ok());  // after DONE
  }
  {  // overlap
    ReadReplyAssembler a(5, 1000, 8);
    EXPECT_TRUE(a.Add(Hdr(kReplyTypeOffsetHole, 12, false), HolePayload(1000, 6)).ok());
    EXPECT_FALSE(a.Add(Hdr(kReplyTypeOffsetData, 12, true), data(1004, "abcd")).ok());
  }
  {  // outside the request, before and after, and a length that wraps
    ReadReplyAssembler a(5, 1000, 8);
    EXPECT_FALSE(a.Add(Hdr(kReplyTypeOffsetHole, 12, false), HolePayload(999, 2)).ok());
    EXPECT_FALSE(a.Add(Hdr(kReplyTypeOffsetHole, 12, false), HolePayload(1006, 3)).ok());
    EXPECT_FALSE(a.Add(Hdr(kReplyTypeOffsetHole, 12, false), HolePayload(~0ull, 2)).ok());
    EXPECT_FALSE(a.Add(Hdr(kReplyTypeOffsetHole, 12, false), HolePayload(1000, 0)).ok());
  }
  {  // DONE before the range is covered; wrong cookie; bad lengths; unknown type/flags
    ReadReplyAssembler a(5, 1000, 8);
    EXPECT_FALSE(a.Add(Hdr(kReplyTypeOffsetHole, 12, true), HolePayload(1000, 4)).ok());
    ReadReplyAssembler b(5, 1000, 8);
    EXPECT_FALSE(b.Add(Hdr(kReplyTypeOffsetHole, 12, true, 6), HolePayload(1000, 8)).ok());
    EXPECT_FALSE(b.Add(Hdr(kReplyTypeOffsetHole, 13, true), HolePayload(1000, 8) + "x").ok());
    EXPECT_FALSE(b.Add(Hdr(kReplyTypeOffsetHole, 11, true), HolePayload(1000, 8).substr(1)).ok());
    EXPECT_FALSE(b.Add(Hdr(kReplyTypeOffsetData, 8, true), data(1000, "")).ok());
    EXPECT_FALSE(b.Add(Hdr(77, 0, true), "").ok());
    StructuredReplyHeader odd = Hdr(kReplyTypeOffsetHole, 12, true);
    odd.flags |= 2;
    EXPECT_FALSE(b.Add(odd, HolePayload(1000, 8)).ok());
    EXPECT_TRUE(b.Add(Hdr(kReplyTypeOffsetHole, 12, true), HolePayload(1000, 8)).ok());
  }
  {  // an ERROR chunk ends the read with its error
    ReadReplyAssembler a(5, 1000, 8);
    std::string e;
    AppendBe32(e, kEio);
    AppendBe16(e, 2);
    e += "no";
    EXPECT_TRUE(a.Add(Hdr(kReplyTypeError, static_cast<uint32_t>(e.size()), true), e).ok());
    EXPECT_EQ(a.error(), kEio);
  }
}

TEST(ExportTableTest, AddRemoveFind) {
  ExportTable t;
  auto src = std::make_shared<MemoryBlockSource>("x");
  EXPECT_TRUE(t.Add("b", src).ok());
  EXPECT_TRUE(t.Add("a", src).ok());
  EXPECT_EQ(t.Add("a", src).error().code, ErrorCode::kAlreadyExists);
  EXPECT_EQ(t.Add("n", nullptr).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(t.Add(std::string(4097, 'n'), src).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(t.Names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(t.Find("a"), src);
  EXPECT_TRUE(t.Remove("a").ok());
  EXPECT_EQ(t.Remove("a").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(t.Find("a"), nullptr);
}

}  // namespace
}  // namespace vmgrid::nbd
