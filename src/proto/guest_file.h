// Files copied into and out of a VM's guest through its guest agent
// (`vmgrid vm cp`, docs/api.md "Files in a VM"). A copy is a series of
// chunk requests, each of at most kMaxGuestFileChunk bytes, so no hop (CLI,
// controller, agent) ever holds more than one chunk of a file: the controller
// and the agent only relay a chunk to the guest agent (guest-file-open/seek/
// read/write/close). Everything happens inside the guest; no path from these
// requests is ever opened on a host.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"

namespace vmgrid {

// Raw bytes per chunk: base64-coded in a JSON body it stays under
// kMaxJsonBody (1 MiB), the body limit of the controller and the agents.
inline constexpr int64_t kMaxGuestFileChunk = 512 * 1024;
// The largest file one copy may move (and the largest offset a chunk may
// reach); an agent may be configured lower (--max-copy-mib).
inline constexpr int64_t kMaxGuestCopyBytes = int64_t{1} << 30;
inline constexpr size_t kMaxGuestPathLength = 4096;

// A guest path: absolute, no NUL, at most kMaxGuestPathLength bytes
// (kInvalidArgument naming the problem otherwise).
Status CheckGuestPath(const std::string& path);

// Read up to `length` bytes of guest file `path` from `offset`.
struct GuestFileRead {
  std::string path;
  int64_t offset = 0;
  int64_t length = kMaxGuestFileChunk;  // 1..kMaxGuestFileChunk
  bool operator==(const GuestFileRead&) const = default;
};
nlohmann::json ToJson(const GuestFileRead& r);
// Strict: known fields, a valid path, offset and length in range.
Result<GuestFileRead> GuestFileReadFromJson(const nlohmann::json& j);

// The answer: the bytes read (base64 "data" on the wire), the file's size
// when it was read, and whether the chunk reaches its end.
struct GuestFileChunk {
  std::string path;
  int64_t offset = 0;
  std::string data;
  int64_t size = 0;
  bool eof = false;
  bool operator==(const GuestFileChunk&) const = default;
};
nlohmann::json ToJson(const GuestFileChunk& c);
Result<GuestFileChunk> GuestFileChunkFromJson(const nlohmann::json& j);

// Write `data` at `offset` of guest file `path`: offset 0 creates or
// truncates the file, a later offset must be the file's current size (the
// next chunk of the same copy), so a chunk sent twice writes the same bytes.
struct GuestFileWrite {
  std::string path;
  int64_t offset = 0;
  std::string data;  // at most kMaxGuestFileChunk bytes
  bool operator==(const GuestFileWrite&) const = default;
};
nlohmann::json ToJson(const GuestFileWrite& w);
Result<GuestFileWrite> GuestFileWriteFromJson(const nlohmann::json& j);

// The answer of a write: the file's size after it.
struct GuestFileWritten {
  std::string path;
  int64_t size = 0;
  bool operator==(const GuestFileWritten&) const = default;
};
nlohmann::json ToJson(const GuestFileWritten& w);
Result<GuestFileWritten> GuestFileWrittenFromJson(const nlohmann::json& j);

}  // namespace vmgrid
