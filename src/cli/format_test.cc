#include "cli/format.h"

#include <gtest/gtest.h>

#include <sstream>

#include "cli/exit_codes.h"

namespace vmgrid {
namespace {

uint64_t Mb(const std::string& s) {
  auto r = ParseMemoryMb(s);
  EXPECT_TRUE(r.ok()) << s << ": " << (r.ok() ? "" : r.error().message);
  return r.ok() ? *r : 0;
}

TEST(ParseMemoryMb, AcceptsPlainAndSuffixed) {
  EXPECT_EQ(Mb("256"), 256u);
  EXPECT_EQ(Mb("256M"), 256u);
  EXPECT_EQ(Mb("256m"), 256u);
  EXPECT_EQ(Mb("256MiB"), 256u);
  EXPECT_EQ(Mb("256MB"), 256u);
  EXPECT_EQ(Mb("1G"), 1024u);
  EXPECT_EQ(Mb("1g"), 1024u);
  EXPECT_EQ(Mb("1GiB"), 1024u);
  EXPECT_EQ(Mb("1.5G"), 1536u);
  EXPECT_EQ(Mb("0.5G"), 512u);
  EXPECT_EQ(Mb(".5G"), 512u);
  EXPECT_EQ(Mb("2048K"), 2u);
  EXPECT_EQ(Mb("1T"), 1024u * 1024u);
  EXPECT_EQ(Mb(" 64 M "), 64u);
  EXPECT_EQ(Mb("16T"), kMaxMemoryMb);
}

TEST(ParseMemoryMb, RejectsZeroGarbageAndFractions) {
  for (const char* bad :
       {"",    "0",  "0M", "0G",  "0.0G",  "abc",  "12x",     "M",   "1..5G",
        "1.",  "-1", "+5", "1.5", "1000K", "0.3M", "1.0001G", "17T", "99999999999999",
        "1e3", "1GG"}) {
    auto r = ParseMemoryMb(bad);
    EXPECT_FALSE(r.ok()) << "accepted '" << bad << "'";
    if (!r.ok()) {
      EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
      EXPECT_FALSE(r.error().message.empty());
    }
  }
  auto zero = ParseMemoryMb("0");
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.error().message.find("greater than 0"), std::string::npos);
}

TEST(FormatMemoryMb, Formats) {
  EXPECT_EQ(FormatMemoryMb(256), "256M");
  EXPECT_EQ(FormatMemoryMb(1024), "1G");
  EXPECT_EQ(FormatMemoryMb(1536), "1.5G");
  EXPECT_EQ(FormatMemoryMb(4096), "4G");
  EXPECT_EQ(FormatMemoryMb(1024 * 1024), "1T");
  EXPECT_EQ(FormatMemoryMb(0), "0");
  // Round trip.
  for (uint64_t mb : {1u, 255u, 1024u, 1536u, 8192u}) EXPECT_EQ(Mb(FormatMemoryMb(mb)), mb);
}

TEST(FormatBytes, Formats) {
  EXPECT_EQ(FormatBytes(0), "0B");
  EXPECT_EQ(FormatBytes(1023), "1023B");
  EXPECT_EQ(FormatBytes(1536), "1.5K");
  EXPECT_EQ(FormatBytes(uint64_t{3} << 30), "3.0G");
  EXPECT_EQ(FormatBytes((uint64_t{1} << 20) - 1), "1.0M");
}

TEST(Timestamps, ParsesRfc3339AndEpoch) {
  EXPECT_DOUBLE_EQ(*ParseTimestamp("1970-01-01T00:01:00Z"), 60.0);
  EXPECT_DOUBLE_EQ(*ParseTimestamp("2024-05-01T12:00:00Z"), 1714564800.0);
  EXPECT_DOUBLE_EQ(*ParseTimestamp("2024-05-01T12:00:00.5Z"), 1714564800.5);
  EXPECT_DOUBLE_EQ(*ParseTimestamp("2024-05-01T14:00:00+02:00"), 1714564800.0);
  EXPECT_DOUBLE_EQ(*ParseTimestamp("1714564800"), 1714564800.0);
  EXPECT_DOUBLE_EQ(*ParseTimestamp("1714564800000"), 1714564800.0);
  EXPECT_FALSE(ParseTimestamp("yesterday").has_value());
  EXPECT_FALSE(ParseTimestamp("").has_value());
  EXPECT_FALSE(ParseTimestamp("2024-13-01T00:00:00Z").has_value());
}

TEST(FormatAge, Units) {
  EXPECT_EQ(FormatAge(5), "5s");
  EXPECT_EQ(FormatAge(-3), "0s");
  EXPECT_EQ(FormatAge(125), "2m");
  EXPECT_EQ(FormatAge(7200), "2h");
  EXPECT_EQ(FormatAge(86400 * 3), "3d");
  EXPECT_EQ(FormatElapsed(4.14), "4.1s");
  EXPECT_EQ(FormatElapsed(125), "2m05s");
}

TEST(Table, AlignsColumns) {
  Table t({"ID", "NAME", "STATE"});
  t.AddRow({"vm-1", "web", "running"});
  t.AddRow({"vm-1234", "a", ""});
  t.AddRow({"vm-2"});  // short rows are padded
  std::ostringstream out;
  t.Print(out);
  EXPECT_EQ(out.str(),
            "ID       NAME  STATE\n"
            "vm-1     web   running\n"
            "vm-1234  a\n"
            "vm-2\n");
  EXPECT_EQ(t.row_count(), 3u);
}

TEST(Table, CountsUtf8AsOneColumn) {
  Table t({"A", "B"});
  t.AddRow({"\u00e9t\u00e9", "x"});
  std::ostringstream out;
  t.Print(out);
  EXPECT_EQ(out.str(), "A    B\n\u00e9t\u00e9  x\n");
  EXPECT_EQ(DisplayWidth("\u2026"), 1u);
}

TEST(PrintKeyValues, Aligns) {
  std::ostringstream out;
  PrintKeyValues(out, {{"id", "vm-1"}, {"memory_mb", "256M"}, {"error", ""}});
  EXPECT_EQ(out.str(), "id:        vm-1\nmemory_mb: 256M\nerror:\n");
}

TEST(ExitCodes, MapErrorCodes) {
  EXPECT_EQ(ExitCodeForError(ErrorCode::kInvalidArgument), 2);
  EXPECT_EQ(ExitCodeForError(ErrorCode::kNotFound), 3);
  EXPECT_EQ(ExitCodeForError(ErrorCode::kUnauthenticated), 4);
  EXPECT_EQ(ExitCodeForError(ErrorCode::kPermissionDenied), 4);
  EXPECT_EQ(ExitCodeForError(ErrorCode::kAlreadyExists), 5);
  EXPECT_EQ(ExitCodeForError(ErrorCode::kFailedPrecondition), 5);
  EXPECT_EQ(ExitCodeForError(ErrorCode::kResourceExhausted), 5);
  EXPECT_EQ(ExitCodeForError(ErrorCode::kUnavailable), 6);
  EXPECT_EQ(ExitCodeForError(ErrorCode::kTimeout), 6);
  EXPECT_EQ(ExitCodeForError(ErrorCode::kInternal), 1);
  EXPECT_EQ(ExecTransportExitCode(ErrorCode::kUnavailable), 6);
  EXPECT_EQ(ExecTransportExitCode(ErrorCode::kTimeout), 6);
  EXPECT_EQ(ExecTransportExitCode(ErrorCode::kNotFound), 1);
  EXPECT_EQ(ExecTransportExitCode(ErrorCode::kInternal), 1);
}

}  // namespace
}  // namespace vmgrid
