// The NBD wire protocol (fixed newstyle handshake, simple replies) as pure
// functions over bytes: parsing what a client sends and building what a server
// sends, plus the client-side builders tests and the fuzz corpus need. No I/O
// here, so everything is unit-testable and fuzzable. Every parser treats its
// input as hostile: lengths are checked before use and nothing is trusted.
// Spec: NetworkBlockDevice/nbd doc/proto.md. All integers are big-endian.
// Thread-safe (stateless).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace vmgrid::nbd {

// --- Magic numbers ---------------------------------------------------------
inline constexpr uint64_t kInitMagic = 0x4e42444d41474943;    // "NBDMAGIC"
inline constexpr uint64_t kOptionMagic = 0x49484156454f5054;  // "IHAVEOPT"
inline constexpr uint64_t kOptionReplyMagic = 0x0003e889045565a9;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

// --- Handshake flags (server, 16 bits) and client flags (32 bits) ------------
inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientNoZeroes = 1 << 1;

// --- Transmission flags (16 bits) ----------------------------------------------
inline constexpr uint16_t kFlagHasFlags = 1 << 0;
inline constexpr uint16_t kFlagReadOnly = 1 << 1;
inline constexpr uint16_t kFlagSendFlush = 1 << 2;
inline constexpr uint16_t kFlagSendFua = 1 << 3;
inline constexpr uint16_t kFlagSendTrim = 1 << 5;
inline constexpr uint16_t kFlagSendWriteZeroes = 1 << 6;
inline constexpr uint16_t kFlagCanMultiConn = 1 << 8;
// What every export of ours advertises: read-only, flush accepted (a no-op on
// a read-only export), and safe to use from several connections at once
// because there is no per-connection cache.
inline constexpr uint16_t kReadOnlyExportFlags =
    kFlagHasFlags | kFlagReadOnly | kFlagSendFlush | kFlagCanMultiConn;

// --- Options -------------------------------------------------------------------
inline constexpr uint32_t kOptExportName = 1;
inline constexpr uint32_t kOptAbort = 2;
inline constexpr uint32_t kOptList = 3;
inline constexpr uint32_t kOptStartTls = 5;
inline constexpr uint32_t kOptInfo = 6;
inline constexpr uint32_t kOptGo = 7;
inline constexpr uint32_t kOptStructuredReply = 8;
inline constexpr uint32_t kOptListMetaContext = 9;
inline constexpr uint32_t kOptSetMetaContext = 10;

// --- Option reply types ----------------------------------------------------------
inline constexpr uint32_t kRepAck = 1;
inline constexpr uint32_t kRepServer = 2;
inline constexpr uint32_t kRepInfo = 3;
inline constexpr uint32_t kRepErrorBit = 1u << 31;
inline constexpr uint32_t kRepErrUnsup = kRepErrorBit | 1;
inline constexpr uint32_t kRepErrPolicy = kRepErrorBit | 2;
inline constexpr uint32_t kRepErrInvalid = kRepErrorBit | 3;
inline constexpr uint32_t kRepErrPlatform = kRepErrorBit | 4;
inline constexpr uint32_t kRepErrTlsReqd = kRepErrorBit | 5;
inline constexpr uint32_t kRepErrUnknown = kRepErrorBit | 6;
inline constexpr uint32_t kRepErrShutdown = kRepErrorBit | 7;
inline constexpr uint32_t kRepErrBlockSizeReqd = kRepErrorBit | 8;
inline constexpr uint32_t kRepErrTooBig = kRepErrorBit | 9;

// --- NBD_INFO types (in NBD_REP_INFO replies and INFO/GO requests) ----------------
inline constexpr uint16_t kInfoExport = 0;
inline constexpr uint16_t kInfoName = 1;
inline constexpr uint16_t kInfoDescription = 2;
inline constexpr uint16_t kInfoBlockSize = 3;

// --- Commands and command flags ----------------------------------------------------
inline constexpr uint16_t kCmdRead = 0;
inline constexpr uint16_t kCmdWrite = 1;
inline constexpr uint16_t kCmdDisc = 2;
inline constexpr uint16_t kCmdFlush = 3;
inline constexpr uint16_t kCmdTrim = 4;
inline constexpr uint16_t kCmdCache = 5;
inline constexpr uint16_t kCmdWriteZeroes = 6;
inline constexpr uint16_t kCmdBlockStatus = 7;
inline constexpr uint16_t kCmdFlagFua = 1 << 0;

// --- Structured reply chunks (after NBD_OPT_STRUCTURED_REPLY) ---------------------
inline constexpr uint16_t kReplyFlagDone = 1 << 0;
inline constexpr uint16_t kReplyTypeNone = 0;
inline constexpr uint16_t kReplyTypeOffsetData = 1;
inline constexpr uint16_t kReplyTypeOffsetHole = 2;
inline constexpr uint16_t kReplyTypeError = (1 << 15) + 1;

// --- Error values in replies ---------------------------------------------------
inline constexpr uint32_t kEperm = 1;
inline constexpr uint32_t kEio = 5;
inline constexpr uint32_t kEnomem = 12;
inline constexpr uint32_t kEinval = 22;
inline constexpr uint32_t kEnospc = 28;
inline constexpr uint32_t kEoverflow = 75;
inline constexpr uint32_t kEnotsup = 95;
inline constexpr uint32_t kEshutdown = 108;

// --- Message sizes -----------------------------------------------------------------------
inline constexpr size_t kGreetingSize = 18;  // NBDMAGIC, IHAVEOPT, handshake flags
inline constexpr size_t kClientFlagsSize = 4;
inline constexpr size_t kOptionHeaderSize = 16;  // magic, option, length
inline constexpr size_t kOptionReplyHeaderSize = 20;
inline constexpr size_t kRequestHeaderSize = 28;
inline constexpr size_t kSimpleReplySize = 16;
inline constexpr size_t kStructuredReplyHeaderSize = 20;  // magic, flags, type, cookie, length
inline constexpr size_t kReadChunkHeaderSize = kStructuredReplyHeaderSize + 8;  // + offset
inline constexpr size_t kHoleChunkSize = kStructuredReplyHeaderSize + 12;       // + offset, length
inline constexpr size_t kExportNameZeroes = 124;

// --- Limits we enforce ---------------------------------------------------------------------
// Strings (export names) MUST NOT exceed 4096 bytes per the spec. The data of
// every option we understand is a name plus a few bytes, so anything longer
// is answered NBD_REP_ERR_TOO_BIG without being buffered: up to
// kMaxOptionDrain it is read and discarded (the session goes on), beyond that
// the connection is dropped (a client that sends megabytes of option data is
// not a real client).
inline constexpr size_t kMaxNameLength = 4096;
inline constexpr uint32_t kMaxOptionLength = kMaxNameLength + 256;
inline constexpr uint32_t kMaxOptionDrain = 1u << 20;
// The spec's interoperable maximum payload (2^25); advertised in
// NBD_INFO_BLOCK_SIZE and enforced on every request.
inline constexpr uint32_t kMaxPayload = 32u << 20;
inline constexpr uint32_t kMinBlockSize = 1;
inline constexpr uint32_t kPreferredBlockSize = 4096;

// --- Big-endian helpers --------------------------------------------------------------------
uint16_t LoadBe16(const char* p);
uint32_t LoadBe32(const char* p);
uint64_t LoadBe64(const char* p);
void AppendBe16(std::string& out, uint16_t v);
void AppendBe32(std::string& out, uint32_t v);
void AppendBe64(std::string& out, uint64_t v);

// ===== Handshake (server side) ================================================================

// The 18-byte server greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES.
std::string BuildGreeting();

struct ClientFlags {
  bool fixed_newstyle = false;
  bool no_zeroes = false;
};
// Parses the client's 32-bit flags (`data` must hold 4 bytes). kInvalidArgument
// for any bit we did not advertise: the spec says the server MUST then drop
// the connection.
Result<ClientFlags> ParseClientFlags(std::string_view data);

struct OptionHeader {
  uint32_t option = 0;
  uint32_t length = 0;  // bytes of option data that follow; not yet bounded
};
// Parses a 16-byte option header. kInvalidArgument on a wrong magic, after
// which the stream cannot be resynchronised.
Result<OptionHeader> ParseOptionHeader(std::string_view data);

// The data of NBD_OPT_INFO / NBD_OPT_GO.
struct InfoRequest {
  std::string name;
  std::vector<uint16_t> requests;  // NBD_INFO_* types the client asked for
};
// kInvalidArgument unless `data` is exactly: name length, name (at most
// kMaxNameLength, no NUL), request count, that many 16-bit requests.
Result<InfoRequest> ParseInfoRequest(std::string_view data);

// Checks an export name as sent with NBD_OPT_EXPORT_NAME or registered with a
// server: at most kMaxNameLength bytes and no NUL.
bool IsValidExportName(std::string_view name);

// One option reply: magic, option, reply type, length, payload.
std::string BuildOptionReply(uint32_t option, uint32_t reply_type, std::string_view payload = {});
// NBD_REP_SERVER payload for NBD_OPT_LIST: name length + name.
std::string BuildServerPayload(std::string_view name);
// NBD_REP_INFO payloads.
std::string BuildInfoExportPayload(uint64_t size, uint16_t transmission_flags);
std::string BuildInfoBlockSizePayload(uint32_t minimum, uint32_t preferred, uint32_t maximum);
// The reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless the
// client negotiated NO_ZEROES.
std::string BuildExportNameReply(uint64_t size, uint16_t transmission_flags, bool no_zeroes);

// ===== Transmission (server side) ===============================================================

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};
// Parses a 28-byte request header. kInvalidArgument on a wrong magic (the
// stream cannot be resynchronised after that).
Result<Request> ParseRequestHeader(std::string_view data);

// Bytes of payload that follow the request header on the wire (only WRITE has any).
inline uint32_t RequestPayloadLength(const Request& r) {
  return r.type == kCmdWrite ? r.length : 0;
}

// Decides a request against a read-only export of `export_size` bytes:
// 0 if it may be served (READ in bounds, FLUSH, DISC), else the NBD error to
// reply with: EPERM for WRITE/TRIM/WRITE_ZEROES, EINVAL for unknown commands,
// unknown flags, lengths over `max_payload` and ranges that overflow or end
// past the export. Guarantees: for a READ returning 0,
// offset + length <= export_size and length <= max_payload.
uint32_t CheckRequest(const Request& request, uint64_t export_size, uint32_t max_payload);

// The 16-byte simple reply header (data follows for a successful READ).
std::array<char, kSimpleReplySize> BuildSimpleReply(uint32_t error, uint64_t cookie);

// Structured replies. A READ is answered with one OFFSET_DATA chunk for the
// whole range (its header and offset built here, the data follows), or,
// when the range has holes, with OFFSET_DATA and OFFSET_HOLE chunks that
// cover it in order without overlap, the last one flagged DONE; NONE for an
// empty read; ERROR when the read failed.
std::array<char, kReadChunkHeaderSize> BuildReadChunkHeader(uint64_t cookie, uint64_t offset,
                                                            uint32_t data_length, bool done = true);
// NBD_REPLY_TYPE_OFFSET_HOLE: `length` (> 0) zero bytes at `offset`.
std::array<char, kHoleChunkSize> BuildHoleChunk(uint64_t cookie, uint64_t offset, uint32_t length,
                                                bool done);
std::string BuildDoneChunk(uint64_t cookie);  // NBD_REPLY_TYPE_NONE
// `message` is cut to kMaxNameLength bytes (the spec's string limit).
std::string BuildErrorChunk(uint64_t cookie, uint32_t error, std::string_view message);

// ===== Client side (tests, fuzz corpus, health checks)
// ============================================

std::string BuildClientFlags(uint32_t flags);
std::string BuildOption(uint32_t option, std::string_view data);
std::string BuildInfoRequestData(std::string_view name, const std::vector<uint16_t>& requests);
std::string BuildRequest(uint16_t type, uint64_t cookie, uint64_t offset, uint32_t length,
                         uint16_t flags = 0);

struct OptionReplyHeader {
  uint32_t option = 0;
  uint32_t reply_type = 0;
  uint32_t length = 0;
};
Result<OptionReplyHeader> ParseOptionReplyHeader(std::string_view data);  // 20 bytes

struct SimpleReply {
  uint32_t error = 0;
  uint64_t cookie = 0;
};
Result<SimpleReply> ParseSimpleReply(std::string_view data);  // 16 bytes

struct StructuredReplyHeader {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;
  uint32_t length = 0;
};
Result<StructuredReplyHeader> ParseStructuredReplyHeader(std::string_view data);  // 20 bytes

// Client side of a READ answered with structured replies: checks each chunk
// against the request and assembles the data. Chunks come from the server,
// so they are untrusted: kInvalidArgument for a chunk of another cookie, an
// unknown or wrong-length chunk, a range outside the request, overlapping
// chunks, a chunk after DONE, or DONE before the whole range was covered.
// An ERROR chunk makes the read fail (error() holds the NBD error).
class ReadReplyAssembler {
 public:
  ReadReplyAssembler(uint64_t cookie, uint64_t offset, uint32_t length);
  // One chunk: its 20-byte header, already parsed, and its payload.
  Status Add(const StructuredReplyHeader& header, std::string_view payload);
  bool done() const { return done_; }
  uint32_t error() const { return error_; }          // 0 unless an ERROR chunk came
  const std::string& data() const { return data_; }  // holes read as zeros
  uint64_t hole_bytes() const { return hole_bytes_; }

 private:
  uint64_t cookie_, offset_;
  uint32_t length_;
  std::string data_;
  std::vector<std::pair<uint64_t, uint64_t>> covered_;  // [begin, end) within the request
  uint64_t covered_bytes_ = 0;
  uint64_t hole_bytes_ = 0;
  uint32_t error_ = 0;
  bool done_ = false;
};

// Names for logs.
const char* OptionName(uint32_t option);
const char* CommandName(uint16_t type);

}  // namespace vmgrid::nbd
