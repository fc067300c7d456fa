#include "nbd/nbd_protocol.h"

namespace vmgrid::nbd {

uint16_t LoadBe16(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint16_t>((u[0] << 8) | u[1]);
}

uint32_t LoadBe32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return (uint32_t{u[0]} << 24) | (uint32_t{u[1]} << 16) | (uint32_t{u[2]} << 8) | uint32_t{u[3]};
}

uint64_t LoadBe64(const char* p) { return (uint64_t{LoadBe32(p)} << 32) | LoadBe32(p + 4); }

void AppendBe16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

void AppendBe32(std::string& out, uint32_t v) {
  AppendBe16(out, static_cast<uint16_t>(v >> 16));
  AppendBe16(out, static_cast<uint16_t>(v));
}

void AppendBe64(std::string& out, uint64_t v) {
  AppendBe32(out, static_cast<uint32_t>(v >> 32));
  AppendBe32(out, static_cast<uint32_t>(v));
}

namespace {

Error Invalid(std::string message) {
  return MakeError(ErrorCode::kInvalidArgument, std::move(message));
}

}  // namespace

std::string BuildGreeting() {
  std::string out;
  out.reserve(kGreetingSize);
  AppendBe64(out, kInitMagic);
  AppendBe64(out, kOptionMagic);
  AppendBe16(out, kFlagFixedNewstyle | kFlagNoZeroes);
  return out;
}

Result<ClientFlags> ParseClientFlags(std::string_view data) {
  if (data.size() != kClientFlagsSize) return Invalid("client flags: need 4 bytes");
  uint32_t flags = LoadBe32(data.data());
  if (flags & ~(kClientFixedNewstyle | kClientNoZeroes)) {
    return Invalid("client flags: unknown bits set");
  }
  return ClientFlags{(flags & kClientFixedNewstyle) != 0, (flags & kClientNoZeroes) != 0};
}

Result<OptionHeader> ParseOptionHeader(std::string_view data) {
  if (data.size() != kOptionHeaderSize) return Invalid("option header: need 16 bytes");
  if (LoadBe64(data.data()) != kOptionMagic) return Invalid("option header: bad magic");
  return OptionHeader{LoadBe32(data.data() + 8), LoadBe32(data.data() + 12)};
}

bool IsValidExportName(std::string_view name) {
  return name.size() <= kMaxNameLength && name.find('\0') == std::string_view::npos;
}

Result<InfoRequest> ParseInfoRequest(std::string_view data) {
  if (data.size() < 6) return Invalid("info request: shorter than 6 bytes");
  uint32_t name_len = LoadBe32(data.data());
  // Compare against what remains rather than adding to name_len, so a huge
  // length cannot wrap around.
  if (name_len > data.size() - 6) return Invalid("info request: name length exceeds option");
  std::string_view name = data.substr(4, name_len);
  if (!IsValidExportName(name)) return Invalid("info request: invalid export name");
  std::string_view rest = data.substr(4 + name_len);
  uint16_t count = LoadBe16(rest.data());
  rest.remove_prefix(2);
  if (rest.size() != size_t{count} * 2) return Invalid("info request: request count mismatch");
  InfoRequest out;
  out.name.assign(name);
  out.requests.reserve(count);
  for (size_t i = 0; i < count; ++i) out.requests.push_back(LoadBe16(rest.data() + 2 * i));
  return out;
}

std::string BuildOptionReply(uint32_t option, uint32_t reply_type, std::string_view payload) {
  std::string out;
  out.reserve(kOptionReplyHeaderSize + payload.size());
  AppendBe64(out, kOptionReplyMagic);
  AppendBe32(out, option);
  AppendBe32(out, reply_type);
  AppendBe32(out, static_cast<uint32_t>(payload.size()));
  out.append(payload);
  return out;
}

std::string BuildServerPayload(std::string_view name) {
  std::string out;
  AppendBe32(out, static_cast<uint32_t>(name.size()));
  out.append(name);
  return out;
}

std::string BuildInfoExportPayload(uint64_t size, uint16_t transmission_flags) {
  std::string out;
  AppendBe16(out, kInfoExport);
  AppendBe64(out, size);
  AppendBe16(out, transmission_flags);
  return out;
}

std::string BuildInfoBlockSizePayload(uint32_t minimum, uint32_t preferred, uint32_t maximum) {
  std::string out;
  AppendBe16(out, kInfoBlockSize);
  AppendBe32(out, minimum);
  AppendBe32(out, preferred);
  AppendBe32(out, maximum);
  return out;
}

std::string BuildExportNameReply(uint64_t size, uint16_t transmission_flags, bool no_zeroes) {
  std::string out;
  AppendBe64(out, size);
  AppendBe16(out, transmission_flags);
  if (!no_zeroes) out.append(kExportNameZeroes, '\0');
  return out;
}

Result<Request> ParseRequestHeader(std::string_view data) {
  if (data.size() != kRequestHeaderSize) return Invalid("request header: need 28 bytes");
  if (LoadBe32(data.data()) != kRequestMagic) return Invalid("request header: bad magic");
  Request r;
  r.flags = LoadBe16(data.data() + 4);
  r.type = LoadBe16(data.data() + 6);
  r.cookie = LoadBe64(data.data() + 8);
  r.offset = LoadBe64(data.data() + 16);
  r.length = LoadBe32(data.data() + 24);
  return r;
}

uint32_t CheckRequest(const Request& request, uint64_t export_size, uint32_t max_payload) {
  switch (request.type) {
    case kCmdWrite:
      // A WRITE longer than the payload limit is refused as invalid rather
      // than as forbidden, so the caller knows not to swallow its payload.
      return request.length > max_payload ? kEinval : kEperm;
    case kCmdTrim:
    case kCmdWriteZeroes:
      return kEperm;
    case kCmdDisc:
    case kCmdFlush:
      // FUA is tolerated everywhere: some clients set it on commands that
      // do not write even when the server did not advertise it.
      return (request.flags & ~kCmdFlagFua) ? kEinval : 0;
    case kCmdRead:
      if (request.flags & ~kCmdFlagFua) return kEinval;
      if (request.length > max_payload) return kEinval;
      if (request.offset > export_size || request.length > export_size - request.offset) {
        return kEinval;
      }
      return 0;
    default:
      return kEinval;  // CACHE, BLOCK_STATUS (never negotiated) and unknown commands
  }
}

std::array<char, kSimpleReplySize> BuildSimpleReply(uint32_t error, uint64_t cookie) {
  std::string s;
  s.reserve(kSimpleReplySize);
  AppendBe32(s, kSimpleReplyMagic);
  AppendBe32(s, error);
  AppendBe64(s, cookie);
  std::array<char, kSimpleReplySize> out;
  s.copy(out.data(), out.size());
  return out;
}

namespace {

void AppendChunkHeader(std::string& out, uint16_t flags, uint16_t type, uint64_t cookie,
                       uint32_t length) {
  AppendBe32(out, kStructuredReplyMagic);
  AppendBe16(out, flags);
  AppendBe16(out, type);
  AppendBe64(out, cookie);
  AppendBe32(out, length);
}

}  // namespace

std::array<char, kReadChunkHeaderSize> BuildReadChunkHeader(uint64_t cookie, uint64_t offset,
                                                            uint32_t data_length, bool done) {
  std::string s;
  s.reserve(kReadChunkHeaderSize);
  // data_length <= kMaxPayload in every caller, so + 8 cannot wrap.
  AppendChunkHeader(s, done ? kReplyFlagDone : 0, kReplyTypeOffsetData, cookie, data_length + 8);
  AppendBe64(s, offset);
  std::array<char, kReadChunkHeaderSize> out;
  s.copy(out.data(), out.size());
  return out;
}

std::array<char, kHoleChunkSize> BuildHoleChunk(uint64_t cookie, uint64_t offset, uint32_t length,
                                                bool done) {
  std::string s;
  s.reserve(kHoleChunkSize);
  AppendChunkHeader(s, done ? kReplyFlagDone : 0, kReplyTypeOffsetHole, cookie, 12);
  AppendBe64(s, offset);
  AppendBe32(s, length);
  std::array<char, kHoleChunkSize> out;
  s.copy(out.data(), out.size());
  return out;
}

std::string BuildDoneChunk(uint64_t cookie) {
  std::string out;
  AppendChunkHeader(out, kReplyFlagDone, kReplyTypeNone, cookie, 0);
  return out;
}

std::string BuildErrorChunk(uint64_t cookie, uint32_t error, std::string_view message) {
  message = message.substr(0, kMaxNameLength);
  std::string out;
  AppendChunkHeader(out, kReplyFlagDone, kReplyTypeError, cookie,
                    static_cast<uint32_t>(6 + message.size()));
  AppendBe32(out, error);
  AppendBe16(out, static_cast<uint16_t>(message.size()));
  out.append(message);
  return out;
}

std::string BuildClientFlags(uint32_t flags) {
  std::string out;
  AppendBe32(out, flags);
  return out;
}

std::string BuildOption(uint32_t option, std::string_view data) {
  std::string out;
  AppendBe64(out, kOptionMagic);
  AppendBe32(out, option);
  AppendBe32(out, static_cast<uint32_t>(data.size()));
  out.append(data);
  return out;
}

std::string BuildInfoRequestData(std::string_view name, const std::vector<uint16_t>& requests) {
  std::string out;
  AppendBe32(out, static_cast<uint32_t>(name.size()));
  out.append(name);
  AppendBe16(out, static_cast<uint16_t>(requests.size()));
  for (uint16_t r : requests) AppendBe16(out, r);
  return out;
}

std::string BuildRequest(uint16_t type, uint64_t cookie, uint64_t offset, uint32_t length,
                         uint16_t flags) {
  std::string out;
  AppendBe32(out, kRequestMagic);
  AppendBe16(out, flags);
  AppendBe16(out, type);
  AppendBe64(out, cookie);
  AppendBe64(out, offset);
  AppendBe32(out, length);
  return out;
}

Result<OptionReplyHeader> ParseOptionReplyHeader(std::string_view data) {
  if (data.size() != kOptionReplyHeaderSize) return Invalid("option reply: need 20 bytes");
  if (LoadBe64(data.data()) != kOptionReplyMagic) return Invalid("option reply: bad magic");
  return OptionReplyHeader{LoadBe32(data.data() + 8), LoadBe32(data.data() + 12),
                           LoadBe32(data.data() + 16)};
}

Result<SimpleReply> ParseSimpleReply(std::string_view data) {
  if (data.size() != kSimpleReplySize) return Invalid("simple reply: need 16 bytes");
  if (LoadBe32(data.data()) != kSimpleReplyMagic) return Invalid("simple reply: bad magic");
  return SimpleReply{LoadBe32(data.data() + 4), LoadBe64(data.data() + 8)};
}

Result<StructuredReplyHeader> ParseStructuredReplyHeader(std::string_view data) {
  if (data.size() != kStructuredReplyHeaderSize) return Invalid("structured reply: need 20 bytes");
  if (LoadBe32(data.data()) != kStructuredReplyMagic) return Invalid("structured reply: bad magic");
  return StructuredReplyHeader{LoadBe16(data.data() + 4), LoadBe16(data.data() + 6),
                               LoadBe64(data.data() + 8), LoadBe32(data.data() + 16)};
}

ReadReplyAssembler::ReadReplyAssembler(uint64_t cookie, uint64_t offset, uint32_t length)
    : cookie_(cookie), offset_(offset), length_(length), data_(length, '\0') {}

Status ReadReplyAssembler::Add(const StructuredReplyHeader& h, std::string_view payload) {
  if (done_) return Invalid("structured reply: chunk after DONE");
  if (h.cookie != cookie_) return Invalid("structured reply: chunk of another request");
  if (payload.size() != h.length) return Invalid("structured reply: payload length mismatch");
  if ((h.flags & ~kReplyFlagDone) != 0) return Invalid("structured reply: unknown flags");
  const bool last = (h.flags & kReplyFlagDone) != 0;
  auto place = [&](uint64_t offset, uint64_t length) -> Result<uint64_t> {
    // Inside the request, not empty, no overlap with what came before.
    if (length == 0) return Invalid("structured reply: empty chunk");
    if (offset < offset_ || offset - offset_ > length_ || length > length_ - (offset - offset_))
      return Invalid("structured reply: chunk outside the request");
    uint64_t begin = offset - offset_, end = begin + length;
    for (const auto& [b, e] : covered_)
      if (begin < e && b < end) return Invalid("structured reply: overlapping chunks");
    covered_.emplace_back(begin, end);
    covered_bytes_ += length;
    return begin;
  };
  switch (h.type) {
    case kReplyTypeNone:
      if (!last || !payload.empty()) return Invalid("structured reply: bad NONE chunk");
      break;
    case kReplyTypeOffsetData: {
      if (payload.size() <= 8) return Invalid("structured reply: OFFSET_DATA without data");
      auto begin = place(LoadBe64(payload.data()), payload.size() - 8);
      if (!begin.ok()) return begin.error();
      payload.substr(8).copy(data_.data() + *begin, payload.size() - 8);
      break;
    }
    case kReplyTypeOffsetHole: {
      if (payload.size() != 12) return Invalid("structured reply: OFFSET_HOLE of wrong length");
      uint32_t length = LoadBe32(payload.data() + 8);
      auto begin = place(LoadBe64(payload.data()), length);
      if (!begin.ok()) return begin.error();
      hole_bytes_ += length;  // data_ is zero there already
      break;
    }
    case kReplyTypeError: {
      if (payload.size() < 6 || LoadBe16(payload.data() + 4) != payload.size() - 6)
        return Invalid("structured reply: malformed ERROR chunk");
      error_ = LoadBe32(payload.data());
      if (error_ == 0) return Invalid("structured reply: ERROR chunk with error 0");
      break;
    }
    default:
      return Invalid("structured reply: unknown chunk type " + std::to_string(h.type));
  }
  if (last) {
    if (error_ == 0 && covered_bytes_ != length_)
      return Invalid("structured reply: DONE before the whole range was sent");
    done_ = true;
  }
  return Status::Ok();
}

const char* OptionName(uint32_t option) {
  switch (option) {
    case kOptExportName:
      return "EXPORT_NAME";
    case kOptAbort:
      return "ABORT";
    case kOptList:
      return "LIST";
    case kOptStartTls:
      return "STARTTLS";
    case kOptInfo:
      return "INFO";
    case kOptGo:
      return "GO";
    case kOptStructuredReply:
      return "STRUCTURED_REPLY";
    case kOptListMetaContext:
      return "LIST_META_CONTEXT";
    case kOptSetMetaContext:
      return "SET_META_CONTEXT";
  }
  return "unknown";
}

const char* CommandName(uint16_t type) {
  switch (type) {
    case kCmdRead:
      return "READ";
    case kCmdWrite:
      return "WRITE";
    case kCmdDisc:
      return "DISC";
    case kCmdFlush:
      return "FLUSH";
    case kCmdTrim:
      return "TRIM";
    case kCmdCache:
      return "CACHE";
    case kCmdWriteZeroes:
      return "WRITE_ZEROES";
    case kCmdBlockStatus:
      return "BLOCK_STATUS";
  }
  return "unknown";
}

}  // namespace vmgrid::nbd
