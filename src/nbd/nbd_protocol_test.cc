#include "nbd/nbd_protocol.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

namespace vmgrid::nbd {
namespace {

std::string Bytes(std::initializer_list<int> bytes) {
  std::string out;
  for (int b : bytes) out.push_back(static_cast<char>(b));
  return out;
}

TEST(NbdProtocolTest, ConstantsMatchTheSpec) {
  EXPECT_EQ(kOptionReplyMagic, 0x3e889045565a9u);
  EXPECT_EQ(kRepErrUnsup, 0x80000001u);
  EXPECT_EQ(kRepErrUnknown, 0x80000006u);
  EXPECT_EQ(kRepErrTooBig, 0x80000009u);
  EXPECT_EQ(kReadOnlyExportFlags, 0x0107);  // HAS_FLAGS|READ_ONLY|SEND_FLUSH|CAN_MULTI_CONN
}

TEST(NbdProtocolTest, GreetingLayout) {
  EXPECT_EQ(BuildGreeting(), std::string("NBDMAGICIHAVEOPT") + Bytes({0x00, 0x03}));
}

TEST(NbdProtocolTest, ClientFlags) {
  auto both = ParseClientFlags(Bytes({0, 0, 0, 3}));
  ASSERT_TRUE(both.ok());
  EXPECT_TRUE(both->fixed_newstyle);
  EXPECT_TRUE(both->no_zeroes);
  auto none = ParseClientFlags(Bytes({0, 0, 0, 0}));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->fixed_newstyle);
  EXPECT_FALSE(ParseClientFlags(Bytes({0, 0, 0, 4})).ok());     // unknown bit
  EXPECT_FALSE(ParseClientFlags(Bytes({0x80, 0, 0, 1})).ok());  // unknown high bit
  EXPECT_FALSE(ParseClientFlags(Bytes({0, 0, 1})).ok());        // short
}

TEST(NbdProtocolTest, OptionHeader) {
  std::string wire = BuildOption(kOptGo, "abc");
  EXPECT_EQ(wire, std::string("IHAVEOPT") + Bytes({0, 0, 0, 7, 0, 0, 0, 3}) + "abc");
  auto h = ParseOptionHeader(std::string_view(wire).substr(0, 16));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->option, kOptGo);
  EXPECT_EQ(h->length, 3u);

  std::string bad = wire.substr(0, 16);
  bad[0] = 'X';
  EXPECT_FALSE(ParseOptionHeader(bad).ok());
  EXPECT_FALSE(ParseOptionHeader(wire.substr(0, 15)).ok());
  // The length is reported as sent; bounding it is the caller's job.
  auto huge =
      ParseOptionHeader(std::string("IHAVEOPT") + Bytes({0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff}));
  ASSERT_TRUE(huge.ok());
  EXPECT_EQ(huge->length, 0xffffffffu);
}

TEST(NbdProtocolTest, InfoRequestRoundTrip) {
  std::string data = BuildInfoRequestData("base", {kInfoBlockSize, kInfoName});
  EXPECT_EQ(data, Bytes({0, 0, 0, 4}) + "base" + Bytes({0, 2, 0, 3, 0, 1}));
  auto r = ParseInfoRequest(data);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->name, "base");
  EXPECT_EQ(r->requests, (std::vector<uint16_t>{kInfoBlockSize, kInfoName}));

  auto empty = ParseInfoRequest(BuildInfoRequestData("", {}));
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->name, "");
  EXPECT_TRUE(empty->requests.empty());
}

TEST(NbdProtocolTest, InfoRequestRejectsMalformedData) {
  EXPECT_FALSE(ParseInfoRequest("").ok());
  EXPECT_FALSE(ParseInfoRequest(Bytes({0, 0, 0, 0, 0})).ok());  // 5 bytes
  // Name length past the end, including one that would wrap 32-bit arithmetic.
  EXPECT_FALSE(ParseInfoRequest(Bytes({0, 0, 0, 5}) + "base" + Bytes({0, 0})).ok());
  EXPECT_FALSE(ParseInfoRequest(Bytes({0xff, 0xff, 0xff, 0xfe}) + "base" + Bytes({0, 0})).ok());
  EXPECT_FALSE(ParseInfoRequest(Bytes({0xff, 0xff, 0xff, 0xff, 0, 0})).ok());
  // Request count disagrees with the remaining bytes.
  EXPECT_FALSE(ParseInfoRequest(Bytes({0, 0, 0, 1}) + "a" + Bytes({0, 2, 0, 3})).ok());
  EXPECT_FALSE(ParseInfoRequest(Bytes({0, 0, 0, 1}) + "a" + Bytes({0, 0, 0, 3})).ok());
  EXPECT_FALSE(ParseInfoRequest(Bytes({0, 0, 0, 1}) + "a" + Bytes({0, 1, 0, 3, 0})).ok());
  // NUL in the name.
  EXPECT_FALSE(ParseInfoRequest(Bytes({0, 0, 0, 2, 'a', 0, 0, 0})).ok());
  // Name over 4096 bytes.
  EXPECT_FALSE(ParseInfoRequest(BuildInfoRequestData(std::string(4097, 'n'), {})).ok());
  EXPECT_TRUE(ParseInfoRequest(BuildInfoRequestData(std::string(4096, 'n'), {})).ok());
}

TEST(NbdProtocolTest, OptionReplyLayouts) {
  std::string ack = BuildOptionReply(kOptAbort, kRepAck);
  EXPECT_EQ(ack, Bytes({0, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0,
                        0, 2,    0,    0,    0,    1,    0,    0,    0, 0}));
  auto h = ParseOptionReplyHeader(ack);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->option, kOptAbort);
  EXPECT_EQ(h->reply_type, kRepAck);
  EXPECT_EQ(h->length, 0u);

  std::string server = BuildOptionReply(kOptList, kRepServer, BuildServerPayload("ab"));
  EXPECT_EQ(server.substr(16), Bytes({0, 0, 0, 6, 0, 0, 0, 2}) + "ab");

  EXPECT_EQ(BuildInfoExportPayload(0x0102030405060708, kReadOnlyExportFlags),
            Bytes({0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x01, 0x07}));
  EXPECT_EQ(BuildInfoBlockSizePayload(1, 4096, 32 << 20),
            Bytes({0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0}));
}

TEST(NbdProtocolTest, ExportNameReplyHonoursNoZeroes) {
  std::string with = BuildExportNameReply(1 << 20, kReadOnlyExportFlags, false);
  ASSERT_EQ(with.size(), 8u + 2 + 124);
  EXPECT_EQ(with.substr(0, 10), Bytes({0, 0, 0, 0, 0, 0x10, 0, 0, 0x01, 0x07}));
  EXPECT_EQ(with.substr(10), std::string(124, '\0'));
  EXPECT_EQ(BuildExportNameReply(1 << 20, kReadOnlyExportFlags, true), with.substr(0, 10));
}

TEST(NbdProtocolTest, RequestHeaderRoundTrip) {
  std::string wire = BuildRequest(kCmdRead, 0x1122334455667788, 0x10000, 512, kCmdFlagFua);
  EXPECT_EQ(wire, Bytes({0x25, 0x60, 0x95, 0x13, 0, 1, 0, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
                         0x77, 0x88, 0,    0,    0, 0, 0, 1, 0,    0,    0,    0,    2,    0}));
  auto r = ParseRequestHeader(wire);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->type, kCmdRead);
  EXPECT_EQ(r->flags, kCmdFlagFua);
  EXPECT_EQ(r->cookie, 0x1122334455667788u);
  EXPECT_EQ(r->offset, 0x10000u);
  EXPECT_EQ(r->length, 512u);

  std::string bad = wire;
  bad[3] = 0x14;
  EXPECT_FALSE(ParseRequestHeader(bad).ok());
  EXPECT_FALSE(ParseRequestHeader(wire.substr(0, 27)).ok());
}

TEST(NbdProtocolTest, SimpleReplyLayout) {
  auto reply = BuildSimpleReply(kEinval, 42);
  std::string s(reply.data(), reply.size());
  EXPECT_EQ(s, Bytes({0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 42}));
  auto parsed = ParseSimpleReply(s);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->error, kEinval);
  EXPECT_EQ(parsed->cookie, 42u);
}

TEST(NbdProtocolTest, StructuredChunkLayouts) {
  auto read = BuildReadChunkHeader(7, 0x1000, 512);
  EXPECT_EQ(std::string(read.data(), read.size()),
            Bytes({0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0,    0,
                   0,    7,    0,    0,    2, 8, 0, 0, 0, 0, 0, 0, 0x10, 0}));
  EXPECT_EQ(BuildDoneChunk(9),
            Bytes({0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0}));
  EXPECT_EQ(BuildErrorChunk(5, kEio, "bad"),
            Bytes({0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 1, 0, 0, 0, 0, 0,
                   0,    0,    5,    0,    0, 0, 9,    0, 0, 0, 5, 0, 3}) +
                "bad");
  EXPECT_EQ(BuildErrorChunk(5, kEio, std::string(5000, 'm')).size(), 20u + 6 + 4096);
  auto h = ParseStructuredReplyHeader(std::string(read.data(), 20));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->flags, kReplyFlagDone);
  EXPECT_EQ(h->type, kReplyTypeOffsetData);
  EXPECT_EQ(h->cookie, 7u);
  EXPECT_EQ(h->length, 520u);
}

Request Req(uint16_t type, uint64_t offset, uint32_t length, uint16_t flags = 0) {
  Request r;
  r.type = type;
  r.offset = offset;
  r.length = length;
  r.flags = flags;
  return r;
}

TEST(NbdProtocolTest, CheckRequestBounds) {
  constexpr uint64_t kSize = 1 << 20;
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, 4096), kSize, kMaxPayload), 0u);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, kSize - 1, 1), kSize, kMaxPayload), 0u);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, kSize), kSize, kMaxPayload), 0u);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, kSize, 0), kSize, kMaxPayload), 0u);  // empty at the end
  EXPECT_EQ(CheckRequest(Req(kCmdRead, kSize, 1), kSize, kMaxPayload), kEinval);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, kSize - 1, 2), kSize, kMaxPayload), kEinval);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, kSize + 1, 0), kSize, kMaxPayload), kEinval);
  // offset + length wraps around 2^64.
  EXPECT_EQ(CheckRequest(Req(kCmdRead, kMax - 100, 4096), kSize, kMaxPayload), kEinval);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, kMax - 100, 4096), kMax, kMaxPayload), kEinval);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, kMax, 1), kMax, kMaxPayload), kEinval);
  // Length caps, even on a huge export.
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, kMaxPayload), kMax, kMaxPayload), 0u);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, kMaxPayload + 1), kMax, kMaxPayload), kEinval);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, 0xffffffff), kMax, kMaxPayload), kEinval);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, 8192), kSize, 4096), kEinval);
  // Empty export.
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, 0), 0, kMaxPayload), 0u);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, 1), 0, kMaxPayload), kEinval);
}

TEST(NbdProtocolTest, CheckRequestCommandsAndFlags) {
  constexpr uint64_t kSize = 1 << 20;
  EXPECT_EQ(CheckRequest(Req(kCmdWrite, 0, 512), kSize, kMaxPayload), kEperm);
  EXPECT_EQ(CheckRequest(Req(kCmdWrite, kSize * 4, 512), kSize, kMaxPayload), kEperm);
  EXPECT_EQ(CheckRequest(Req(kCmdWrite, 0, kMaxPayload + 1), kSize, kMaxPayload), kEinval);
  EXPECT_EQ(CheckRequest(Req(kCmdTrim, 0, 512), kSize, kMaxPayload), kEperm);
  EXPECT_EQ(CheckRequest(Req(kCmdWriteZeroes, 0, 0xffffffff), kSize, kMaxPayload), kEperm);
  EXPECT_EQ(CheckRequest(Req(kCmdFlush, 0, 0), kSize, kMaxPayload), 0u);
  EXPECT_EQ(CheckRequest(Req(kCmdFlush, 0, 0, kCmdFlagFua), kSize, kMaxPayload), 0u);
  EXPECT_EQ(CheckRequest(Req(kCmdDisc, 0, 0), kSize, kMaxPayload), 0u);
  EXPECT_EQ(CheckRequest(Req(kCmdCache, 0, 512), kSize, kMaxPayload), kEinval);
  EXPECT_EQ(CheckRequest(Req(kCmdBlockStatus, 0, 512), kSize, kMaxPayload), kEinval);
  EXPECT_EQ(CheckRequest(Req(99, 0, 0), kSize, kMaxPayload), kEinval);
  EXPECT_EQ(CheckRequest(Req(0xffff, 0, 0), kSize, kMaxPayload), kEinval);
  // Unknown or unnegotiated flags on a READ (DF needs structured replies).
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, 512, kCmdFlagFua), kSize, kMaxPayload), 0u);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, 512, 1 << 2), kSize, kMaxPayload), kEinval);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, 512, 0x8000), kSize, kMaxPayload), kEinval);
}

TEST(NbdProtocolTest, PayloadLengthOnlyForWrites) {
  EXPECT_EQ(RequestPayloadLength(Req(kCmdWrite, 0, 777)), 777u);
  EXPECT_EQ(RequestPayloadLength(Req(kCmdRead, 0, 777)), 0u);
  EXPECT_EQ(RequestPayloadLength(Req(kCmdWriteZeroes, 0, 777)), 0u);
  EXPECT_EQ(RequestPayloadLength(Req(kCmdTrim, 0, 777)), 0u);
}

TEST(NbdProtocolTest, ExportNames) {
  EXPECT_TRUE(IsValidExportName(""));
  EXPECT_TRUE(IsValidExportName("base/ubuntu-22.04"));
  EXPECT_FALSE(IsValidExportName(std::string("a\0b", 3)));
  EXPECT_FALSE(IsValidExportName(std::string(4097, 'x')));
}

}  // namespace
}  // namespace vmgrid::nbd
