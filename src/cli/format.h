// Text helpers of the CLI: memory-size parsing, human-readable sizes and
// ages, and an aligned table printer.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "common/result.h"

namespace vmgrid {

// Largest memory size accepted anywhere in the CLI: 16 TiB.
inline constexpr uint64_t kMaxMemoryMb = uint64_t{16} * 1024 * 1024;

// Parses a memory size into MiB. A bare number means MiB ("256"); suffixes
// K, M, G, T (case-insensitive, optionally followed by "i" and/or "B":
// "1G", "1GiB", "512mb") are binary units. Decimals are allowed with a unit
// ("1.5G"). The result must be a whole number of MiB, > 0 and <= 16 TiB.
// Errors are kInvalidArgument with a message meant for the user.
Result<uint64_t> ParseMemoryMb(const std::string& text);

// 256 -> "256M", 1024 -> "1G", 1536 -> "1.5G", 0 -> "0".
std::string FormatMemoryMb(uint64_t mb);

// 512 -> "512B", 1536 -> "1.5K", 3*2^30 -> "3.0G".
std::string FormatBytes(uint64_t bytes);

// Parses an API timestamp: RFC 3339 text ("2024-05-01T12:00:00Z",
// fractional seconds and +hh:mm offsets accepted) or a number of seconds
// (or milliseconds, if > 1e11) since the epoch. Returns seconds since epoch.
std::optional<double> ParseTimestamp(const std::string& text);
std::optional<double> ParseTimestampNumber(double value);

// Compact age of a duration in seconds: "42s", "5m", "3h", "12d".
std::string FormatAge(double seconds);

// Duration for progress lines: "4.1s", "2m05s".
std::string FormatElapsed(double seconds);

// Number of terminal columns text occupies (UTF-8 code points).
size_t DisplayWidth(const std::string& text);

// Prints rows with columns aligned, separated by two spaces, the last
// column unpadded, no trailing whitespace.
class Table {
 public:
  explicit Table(std::vector<std::string> headers);

  // Rows shorter than the header are padded with empty cells; longer rows
  // are truncated.
  void AddRow(std::vector<std::string> cells);
  size_t row_count() const { return rows_.size(); }

  void Print(std::ostream& out) const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

// Prints "key: value" pairs with the values aligned.
void PrintKeyValues(std::ostream& out,
                    const std::vector<std::pair<std::string, std::string>>& pairs);

}  // namespace vmgrid
