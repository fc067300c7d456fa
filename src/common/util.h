// Small helpers shared by every module: random ids and tokens, hashing,
// clocks, and crash-safe file writes.
// All functions are thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace vmgrid {

// A random id with a type prefix, e.g. NewId("vm") -> "vm-3f9a1c0b2d".
std::string NewId(const std::string& prefix);

// A bearer token: "vmg_" + 64 hex chars of cryptographic randomness.
std::string NewToken();

// Lower-case hex of `bytes`, and back: HexDecode takes upper or lower case
// and fails (saying why) on an odd length or a character that is not a
// hex digit.
std::string HexEncode(std::string_view bytes);
Result<std::string> HexDecode(std::string_view hex);

// Hex SHA-256 of `data`.
std::string Sha256Hex(const std::string& data);
// HMAC-SHA-256 of `data` under `key`, as lower-case hex.
std::string HmacSha256Hex(const std::string& key, const std::string& data);

// Random bytes from the kernel CSPRNG.
std::string RandomBytes(size_t n);

// RFC 4122 version-4 UUID string.
std::string NewUuid();
// 8-4-4-4-12 hex digits, either case (what NewUuid and QEMU's vmgenid take).
bool ValidUuid(const std::string& s);

// Milliseconds since the Unix epoch.
int64_t NowMs();
// ISO-8601 UTC string for a time in ms since the epoch.
std::string FormatTimeMs(int64_t ms);

// Writes `data` to `path` atomically (temp file + fsync + rename + fsync dir),
// so a crash leaves either the old or the new content, never a mix.
Status WriteFileAtomic(const std::string& path, const std::string& data, int mode = 0644);
Result<std::string> ReadFile(const std::string& path, size_t max_bytes = 64 << 20);
// A bearer token kept in a file: at most 4 KiB, trailing whitespace (the
// newline) removed. ReadFile's errors.
Result<std::string> ReadTokenFile(const std::string& path);

// mkdir -p with a mode for the created directories.
Status MakeDirs(const std::string& path, int mode = 0755);
// rm -rf; missing path is fine.
Status RemoveTree(const std::string& path);

bool FileExists(const std::string& path);

}  // namespace vmgrid
