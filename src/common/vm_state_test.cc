#include "common/vm_state.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace vmgrid {

// Readable failures: "resume stopped -> resuming -> running | failure stopped".
void PrintTo(const VmTransition& t, std::ostream* os) {
  auto name = [](const std::optional<VmState>& s) { return s ? ToString(*s) : "-"; };
  *os << ToString(t.op) << " " << name(t.from) << " -> " << name(t.transitional) << " -> "
      << name(t.success) << " | failure " << ToString(t.failure);
}

namespace {

TEST(VmStateTest, EveryStateRoundTrips) {
  std::set<std::string> names;
  for (VmState s : AllVmStates()) {
    auto parsed = ParseVmState(ToString(s));
    ASSERT_TRUE(parsed.ok()) << ToString(s);
    EXPECT_EQ(*parsed, s);
    names.insert(ToString(s));
  }
  EXPECT_EQ(names.size(), AllVmStates().size());  // no two states share a name
  // The names the REST API has always used.
  EXPECT_EQ(names,
            (std::set<std::string>{"creating", "running", "stopping", "stopped", "checkpointing",
                                   "suspended", "resuming", "deleting", "migrating", "error"}));
}

TEST(VmStateTest, UnknownStatesAreErrorsThatSayWhy) {
  for (const char* bad : {"", "Running", "running ", "paused", "unknown", "gone"}) {
    auto r = ParseVmState(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message.find("not a VM state"), std::string::npos);
    EXPECT_NE(r.error().message.find("checkpointing"), std::string::npos);  // lists the valid ones
  }
  EXPECT_FALSE(IsTransitionalName("unknown"));
  EXPECT_FALSE(IsTransitionalName(""));
  EXPECT_TRUE(IsTransitionalName("resuming"));
}

TEST(VmStateTest, EveryOpRoundTrips) {
  for (VmOp op : AllVmOps()) {
    auto parsed = ParseVmOp(ToString(op));
    ASSERT_TRUE(parsed.ok()) << ToString(op);
    EXPECT_EQ(*parsed, op);
  }
  EXPECT_FALSE(ParseVmOp("teleport").ok());
}

TEST(VmStateTest, TransitionalAndReservation) {
  std::set<VmState> transitional;
  for (VmState s : AllVmStates())
    if (IsTransitional(s)) transitional.insert(s);
  EXPECT_EQ(transitional,
            (std::set<VmState>{VmState::kCreating, VmState::kStopping, VmState::kCheckpointing,
                               VmState::kResuming, VmState::kDeleting, VmState::kMigrating}));
  for (VmState s : AllVmStates()) EXPECT_EQ(HoldsReservation(s), s != VmState::kError);
}

TEST(VmStateTest, EveryRowLooksUpToItself) {
  std::set<std::pair<int, int>> keys;
  for (const VmTransition& t : VmTransitions()) {
    auto found = LookupTransition(t.from, t.op);
    ASSERT_TRUE(found.ok()) << ToString(t.op);
    EXPECT_EQ(*found, t);
    if (t.from) {
      EXPECT_TRUE(Allows(*t.from, t.op));
    }
    // One row per (from, op).
    EXPECT_TRUE(
        keys.insert({t.from ? static_cast<int>(*t.from) : -1, static_cast<int>(t.op)}).second)
        << ToString(t.op);
  }
}

TEST(VmStateTest, RowsAreConsistent) {
  for (const VmTransition& t : VmTransitions()) {
    SCOPED_TRACE(ToString(t.op));
    // Only create starts without a VM, and it starts nowhere else.
    EXPECT_EQ(!t.from.has_value(), t.op == VmOp::kCreate);
    // An operation runs in a transitional state, except exec, which leaves
    // the state alone.
    if (t.op == VmOp::kExec) {
      EXPECT_FALSE(t.transitional.has_value());
      EXPECT_EQ(t.success, t.from);
      EXPECT_EQ(t.failure, *t.from);
    } else {
      ASSERT_TRUE(t.transitional.has_value());
      EXPECT_TRUE(IsTransitional(*t.transitional));
    }
    // Operations end in stable states; only delete removes the VM.
    if (t.success) {
      EXPECT_FALSE(IsTransitional(*t.success));
    }
    EXPECT_EQ(!t.success.has_value(), t.op == VmOp::kDelete);
    EXPECT_FALSE(IsTransitional(t.failure));
  }
}

TEST(VmStateTest, OneTransitionalStatePerOp) {
  // Store::TransitionVm moves any allowed state to one transitional state.
  for (VmOp op : AllVmOps()) {
    std::set<int> during;
    for (const VmTransition& t : VmTransitions())
      if (t.op == op) during.insert(t.transitional ? static_cast<int>(*t.transitional) : -1);
    EXPECT_EQ(during.size(), 1u) << ToString(op);
  }
}

TEST(VmStateTest, OneSuccessStatePerOp) {
  // Clients wait for SuccessOf(op), whatever state the VM started from.
  for (const VmTransition& t : VmTransitions()) EXPECT_EQ(SuccessOf(t.op), t.success);
  EXPECT_EQ(SuccessOf(VmOp::kCheckpoint), VmState::kSuspended);
  EXPECT_EQ(SuccessOf(VmOp::kCheckpointLeaveRunning), VmState::kRunning);
  EXPECT_EQ(SuccessOf(VmOp::kDelete), std::nullopt);
}

TEST(VmStateTest, NothingLeavesATransitionalStateButARetriedDelete) {
  // While an operation runs no other may start; the one exception is a
  // delete started again on a VM stuck in `deleting`.
  for (VmState s : AllVmStates()) {
    if (!IsTransitional(s)) continue;
    for (VmOp op : AllVmOps()) {
      bool allowed = Allows(s, op);
      EXPECT_EQ(allowed, s == VmState::kDeleting && op == VmOp::kDelete)
          << ToString(s) << " " << ToString(op);
    }
  }
  // A failed VM can only be deleted.
  for (VmOp op : AllVmOps()) EXPECT_EQ(Allows(VmState::kError, op), op == VmOp::kDelete);
}

TEST(VmStateTest, RefusalsNameTheStatesThatWouldDo) {
  auto r = LookupTransition(VmState::kRunning, VmOp::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(r.error().message, "VM is running; resume needs it to be stopped or suspended");
  EXPECT_EQ(DescribeFromStates(VmOp::kDelete),
            "running or stopped or suspended or error or deleting");
  EXPECT_EQ(DescribeFromStates(VmOp::kStop), "running");
  EXPECT_FALSE(LookupTransition(VmState::kRunning, VmOp::kCreate).ok());
  EXPECT_FALSE(LookupTransition(std::nullopt, VmOp::kStop).ok());
}

// --- docs/vm-lifecycle.md holds the same tables ------------------------------------------

std::vector<std::string> Cells(const std::string& line) {
  std::vector<std::string> out;
  std::string cell;
  for (size_t i = 1; i < line.size(); ++i) {  // line[0] is the leading '|'
    if (line[i] == '|') {
      size_t b = cell.find_first_not_of(' '), e = cell.find_last_not_of(' ');
      out.push_back(b == std::string::npos ? "" : cell.substr(b, e - b + 1));
      cell.clear();
    } else {
      cell += line[i];
    }
  }
  return out;
}

// The rows of the first table after the heading that starts with `heading`.
std::vector<std::vector<std::string>> DocTable(const std::string& heading) {
  std::ifstream in(VMGRID_SOURCE_DIR "/docs/vm-lifecycle.md");
  EXPECT_TRUE(in.good()) << "cannot read docs/vm-lifecycle.md";
  std::vector<std::vector<std::string>> rows;
  std::string line;
  bool in_section = false, in_table = false;
  while (std::getline(in, line)) {
    if (line.rfind("## ", 0) == 0) {
      if (in_table) break;
      in_section = line.rfind("## " + heading, 0) == 0;
      continue;
    }
    if (!in_section) continue;
    if (line.rfind("|", 0) == 0) {
      in_table = true;
      rows.push_back(Cells(line));
    } else if (in_table) {
      break;
    }
  }
  if (rows.size() >= 2) rows.erase(rows.begin(), rows.begin() + 2);  // header and |---|
  return rows;
}

// "`running`" -> running; "–" -> nullopt. Anything else fails the test.
std::optional<VmState> DocState(const std::string& cell) {
  if (cell == "–") return std::nullopt;
  EXPECT_TRUE(cell.size() > 2 && cell.front() == '`' && cell.back() == '`') << cell;
  auto s = ParseVmState(cell.substr(1, cell.size() - 2));
  EXPECT_TRUE(s.ok()) << cell;
  return s.ok() ? std::optional<VmState>(*s) : std::nullopt;
}

TEST(VmStateDocTest, StatesTableIsTheCode) {
  auto rows = DocTable("States");
  ASSERT_EQ(rows.size(), AllVmStates().size());
  for (size_t i = 0; i < rows.size(); ++i) {
    ASSERT_EQ(rows[i].size(), 4u);
    VmState s = AllVmStates()[i];
    EXPECT_EQ(DocState(rows[i][0]), s) << rows[i][0];
    EXPECT_EQ(rows[i][2], IsTransitional(s) ? "yes" : "no") << rows[i][0];
    EXPECT_EQ(rows[i][3], HoldsReservation(s) ? "yes" : "**no**") << rows[i][0];
  }
}

TEST(VmStateDocTest, TransitionTableIsTheCode) {
  auto rows = DocTable("Transitions");
  std::vector<VmTransition> doc;
  for (const auto& row : rows) {
    ASSERT_EQ(row.size(), 6u) << row[0];
    ASSERT_TRUE(row[0].size() > 2 && row[0].front() == '`') << row[0];
    auto op = ParseVmOp(row[0].substr(1, row[0].size() - 2));
    ASSERT_TRUE(op.ok()) << row[0];
    auto failure = DocState(row[4]);
    ASSERT_TRUE(failure.has_value()) << row[0] << ": failure " << row[4];
    EXPECT_FALSE(row[5].empty()) << row[0] << ": say what a failure leaves behind";
    doc.push_back({DocState(row[1]), *op, DocState(row[2]), DocState(row[3]), *failure});
  }
  std::vector<VmTransition> code(VmTransitions().begin(), VmTransitions().end());
  ASSERT_EQ(doc.size(), code.size());
  for (size_t i = 0; i < doc.size(); ++i)
    EXPECT_EQ(doc[i], code[i]) << "row " << i + 1 << " (" << ToString(code[i].op) << ")";
}

}  // namespace
}  // namespace vmgrid
