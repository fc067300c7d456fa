#include "proto/guest_file.h"

#include "common/base64.h"
#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;

namespace {

Error NotObject(const std::string& what) {
  return MakeError(ErrorCode::kInvalidArgument, what + " must be a JSON object");
}

Result<std::string> PathField(const JsonFields& f) {
  VMG_ASSIGN_OR_RETURN(std::string path, f.String("path", true));
  VMG_RETURN_IF_ERROR(CheckGuestPath(path));
  return path;
}

Result<std::string> DataField(const JsonFields& f) {
  VMG_ASSIGN_OR_RETURN(std::string b64, f.String("data", false));
  // Checked before decoding so an oversized body costs no allocation.
  if (b64.size() > static_cast<size_t>((kMaxGuestFileChunk + 2) / 3 * 4))
    return MakeError(ErrorCode::kInvalidArgument, "field 'data' holds more than " +
                                                      std::to_string(kMaxGuestFileChunk) +
                                                      " bytes; send a file in chunks");
  auto data = Base64Decode(b64);
  if (!data.ok())
    return MakeError(ErrorCode::kInvalidArgument, "field 'data' is not canonical base64");
  return std::move(data).value();
}

}  // namespace

Status CheckGuestPath(const std::string& path) {
  if (path.find('\0') != std::string::npos)
    return MakeError(ErrorCode::kInvalidArgument, "a guest path must not contain a NUL byte");
  if (path.empty() || path[0] != '/')
    return MakeError(ErrorCode::kInvalidArgument,
                     "guest path '" + path + "' is not absolute; it must start with '/'");
  if (path.size() > kMaxGuestPathLength)
    return MakeError(
        ErrorCode::kInvalidArgument,
        "a guest path is at most " + std::to_string(kMaxGuestPathLength) + " bytes long");
  return Status::Ok();
}

json ToJson(const GuestFileRead& r) {
  return {{"path", r.path}, {"offset", r.offset}, {"length", r.length}};
}

Result<GuestFileRead> GuestFileReadFromJson(const json& j) {
  if (!j.is_object()) return NotObject("a file read");
  JsonFields f(j, {"path", "offset", "length"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  GuestFileRead r;
  VMG_ASSIGN_OR_RETURN(r.path, PathField(f));
  VMG_ASSIGN_OR_RETURN(r.offset, f.Int("offset", 0, 0, kMaxGuestCopyBytes));
  VMG_ASSIGN_OR_RETURN(r.length, f.Int("length", kMaxGuestFileChunk, 1, kMaxGuestFileChunk));
  return r;
}

json ToJson(const GuestFileChunk& c) {
  return {{"path", c.path},
          {"offset", c.offset},
          {"data", Base64Encode(c.data)},
          {"size", c.size},
          {"eof", c.eof}};
}

Result<GuestFileChunk> GuestFileChunkFromJson(const json& j) {
  if (!j.is_object()) return NotObject("a file chunk");
  JsonFields f(j, {"path", "offset", "data", "size", "eof"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  GuestFileChunk c;
  VMG_ASSIGN_OR_RETURN(c.path, PathField(f));
  VMG_ASSIGN_OR_RETURN(c.offset, f.Int("offset", 0, 0, INT64_MAX));
  VMG_ASSIGN_OR_RETURN(c.data, DataField(f));
  VMG_ASSIGN_OR_RETURN(c.size, f.Int("size", 0, 0, INT64_MAX));
  VMG_ASSIGN_OR_RETURN(c.eof, f.Bool("eof", false));
  return c;
}

json ToJson(const GuestFileWrite& w) {
  return {{"path", w.path}, {"offset", w.offset}, {"data", Base64Encode(w.data)}};
}

Result<GuestFileWrite> GuestFileWriteFromJson(const json& j) {
  if (!j.is_object()) return NotObject("a file write");
  JsonFields f(j, {"path", "offset", "data"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  GuestFileWrite w;
  VMG_ASSIGN_OR_RETURN(w.path, PathField(f));
  VMG_ASSIGN_OR_RETURN(w.offset, f.Int("offset", 0, 0, kMaxGuestCopyBytes));
  VMG_ASSIGN_OR_RETURN(w.data, DataField(f));
  if (w.offset + static_cast<int64_t>(w.data.size()) > kMaxGuestCopyBytes)
    return MakeError(ErrorCode::kResourceExhausted,
                     "a copy moves at most " + std::to_string(kMaxGuestCopyBytes) + " bytes");
  return w;
}

json ToJson(const GuestFileWritten& w) { return {{"path", w.path}, {"size", w.size}}; }

Result<GuestFileWritten> GuestFileWrittenFromJson(const json& j) {
  if (!j.is_object()) return NotObject("a file write's answer");
  JsonFields f(j, {"path", "size"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  GuestFileWritten w;
  VMG_ASSIGN_OR_RETURN(w.path, PathField(f));
  VMG_ASSIGN_OR_RETURN(w.size, f.Int("size", 0, 0, INT64_MAX));
  return w;
}

}  // namespace vmgrid
