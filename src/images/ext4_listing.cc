#include "images/ext4_listing.h"

#include <charconv>
#include <deque>
#include <filesystem>
#include <set>
#include <system_error>

#include "common/subprocess.h"

namespace vmgrid {

namespace fs = std::filesystem;

namespace {

Error Bad(const std::string& why) { return MakeError(ErrorCode::kInvalidArgument, why); }

// `text` as a number in `base`, all of it, at most `max`.
template <typename T>
bool ParseNumber(std::string_view text, int base, T max, T& out) {
  if (text.empty() || text.size() > 20) return false;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v, base);
  if (ec != std::errc() || end != text.data() + text.size() || v > max) return false;
  out = static_cast<T>(v);
  return true;
}

// A line for an error message: printable ASCII only, at most 80 bytes.
std::string Printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 80)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}

Result<Ext4DirEntry> ParseLine(std::string_view line) {
  auto bad = [&] { return Bad("unexpected debugfs listing line '" + Printable(line) + "'"); };
  // "/INODE/MODE/UID/GID/NAME/SIZE/" or, for a directory, ".../NAME//":
  // exactly seven '/'; a name holding one makes more.
  if (line.size() < 2 || line.front() != '/' || line.back() != '/') return bad();
  std::vector<std::string_view> fields;
  size_t start = 1;
  for (size_t i = 1; i < line.size(); ++i) {
    if (line[i] != '/') continue;
    fields.push_back(line.substr(start, i - start));
    start = i + 1;
  }
  if (fields.size() != 6) return bad();
  Ext4DirEntry e;
  uint32_t id = 0;
  if (!ParseNumber<uint32_t>(fields[0], 10, UINT32_MAX, e.inode) ||
      !ParseNumber<uint32_t>(fields[1], 8, 0177777, e.mode) ||
      !ParseNumber<uint32_t>(fields[2], 10, UINT32_MAX, id) ||
      !ParseNumber<uint32_t>(fields[3], 10, UINT32_MAX, id))
    return bad();
  e.name = std::string(fields[4]);
  if (e.IsDir()) {
    if (!fields[5].empty()) return bad();
  } else if (!ParseNumber<uint64_t>(fields[5], 10, UINT64_MAX, e.size)) {
    return bad();
  }
  return e;
}

// Whether following `target`, the target of a symbolic link in directory
// `dir` (relative to `base`), stays under `base`, as the kernel would
// resolve it now: links met on the way are followed (at most `budget` in
// all), a component that does not exist is taken as a directory.
bool StaysInside(const fs::path& base, const fs::path& dir, const fs::path& target, int budget) {
  if (target.is_absolute()) return false;
  std::vector<std::string> cur;
  for (const auto& c : dir)
    if (!c.empty() && c != ".") cur.push_back(c.string());
  std::deque<std::string> todo;
  for (const auto& c : target) todo.push_back(c.string());
  while (!todo.empty()) {
    std::string c = std::move(todo.front());
    todo.pop_front();
    if (c.empty() || c == ".") continue;
    if (c == "..") {
      if (cur.empty()) return false;
      cur.pop_back();
      continue;
    }
    cur.push_back(c);
    fs::path here = base;
    for (const auto& x : cur) here /= x;
    std::error_code ec;
    if (!fs::is_symlink(fs::symlink_status(here, ec))) continue;
    fs::path next = fs::read_symlink(here, ec);
    if (ec || next.is_absolute() || --budget < 0) return false;
    cur.pop_back();
    std::vector<std::string> parts;
    for (const auto& x : next) parts.push_back(x.string());
    todo.insert(todo.begin(), parts.begin(), parts.end());
  }
  return true;
}

}  // namespace

Result<std::vector<Ext4DirEntry>> ParseDebugfsListing(std::string_view text) {
  std::vector<Ext4DirEntry> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    if (line.empty()) continue;  // debugfs ends the listing with one
    if (out.size() >= kMaxExt4Entries) return Bad("a directory with too many entries");
    VMG_ASSIGN_OR_RETURN(Ext4DirEntry e, ParseLine(line));
    out.push_back(std::move(e));
  }
  return out;
}

Result<std::vector<Ext4DirEntry>> VetDirectoryEntries(const std::vector<Ext4DirEntry>& entries,
                                                      uint32_t inode, const std::string& where) {
  auto bad = [&](const std::string& why) {
    return Bad("refusing to extract: " + where + ": " + why);
  };
  // Entries of inode 0 are unused slots: listed, but never dumped.
  std::vector<const Ext4DirEntry*> used;
  for (const auto& e : entries)
    if (e.inode != 0) used.push_back(&e);
  if (used.size() < 2 || used[0]->name != "." || used[0]->inode != inode || !used[0]->IsDir() ||
      used[1]->name != ".." || !used[1]->IsDir())
    return bad("not a directory listing starting with . and ..");
  std::vector<Ext4DirEntry> out;
  std::set<std::string> names;
  for (size_t i = 2; i < used.size(); ++i) {
    const Ext4DirEntry& e = *used[i];
    const std::string shown = "'" + Printable(e.name) + "'";
    if (e.name.empty() || e.name == "." || e.name == "..")
      return bad("an entry named " + shown + " besides the first two");
    if (e.name.find_first_of(std::string("/\n\0", 3)) != std::string::npos)
      return bad("the entry name " + shown + " holds '/', a newline or NUL");
    if (!e.IsDir() && !e.IsRegular() && !e.IsSymlink())
      return bad(shown + " is a device, FIFO or socket (mode " + std::to_string(e.mode >> 12) +
                 "xxxx)");
    if (!names.insert(e.name).second) return bad("two entries are named " + shown);
    out.push_back(e);
  }
  return out;
}

Status VetExt4Tree(const Ext4Lister& list, uint64_t max_bytes) {
  struct Dir {
    uint32_t inode;
    std::string path;
    size_t depth;
  };
  std::deque<Dir> todo{{2, "/", 0}};
  std::set<uint32_t> seen{2};
  size_t entries = 0;
  uint64_t bytes = 0;
  while (!todo.empty()) {
    Dir d = std::move(todo.front());
    todo.pop_front();
    VMG_ASSIGN_OR_RETURN(std::string text, list(d.inode));
    auto listed = ParseDebugfsListing(text);
    // A name holding '/' or a newline breaks a line's shape.
    if (!listed.ok())
      return Bad("refusing to extract: " + Printable(d.path) + ": " + listed.error().message);
    VMG_ASSIGN_OR_RETURN(auto vetted, VetDirectoryEntries(*listed, d.inode, d.path));
    for (const Ext4DirEntry& e : vetted) {
      const std::string path = d.path + (d.path == "/" ? "" : "/") + e.name;
      if (++entries > kMaxExt4Entries)
        return Bad("refusing to extract: more than " + std::to_string(kMaxExt4Entries) +
                   " entries");
      if (e.IsRegular()) {
        bytes += e.size;
        if (e.size > max_bytes || bytes > max_bytes)
          return Bad("refusing to extract: its files hold more than " + std::to_string(max_bytes) +
                     " bytes");
      }
      if (!e.IsDir()) continue;
      if (!seen.insert(e.inode).second)
        return Bad("refusing to extract: directory " + Printable(path) +
                   " is reached twice (a hard-linked directory or a loop)");
      if (d.depth + 1 > kMaxExt4Depth)
        return Bad("refusing to extract: directories nested deeper than " +
                   std::to_string(kMaxExt4Depth));
      todo.push_back({e.inode, path, d.depth + 1});
    }
  }
  return Status::Ok();
}

Status CheckExtractedTree(const std::string& root) {
  std::error_code ec;
  const fs::path base = fs::canonical(root, ec);
  if (ec) return MakeError(ErrorCode::kInternal, "cannot resolve " + root + ": " + ec.message());
  const auto special = fs::perms::set_uid | fs::perms::set_gid | fs::perms::sticky_bit;
  // rdump gives each file its mode from the image: a directory may come
  // without the owner's rights, which the walk (and a removal) needs.
  fs::permissions(base, fs::perms::owner_all, fs::perm_options::add, ec);
  fs::permissions(base, special, fs::perm_options::remove, ec);
  for (auto it = fs::recursive_directory_iterator(base, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    const fs::path& p = it->path();
    fs::file_status st = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_symlink(st)) {
      fs::path target = fs::read_symlink(p, ec);
      if (ec) break;
      const fs::path rel = p.lexically_relative(base);
      if (!StaysInside(base, rel.parent_path(), target, 40))
        return Bad("refusing to extract: the symbolic link " +
                   Printable(p.lexically_relative(base).string()) + " points outside the tree (" +
                   Printable(target.string()) + ")");
      continue;
    }
    if (fs::is_directory(st)) fs::permissions(p, fs::perms::owner_all, fs::perm_options::add, ec);
    if (!ec) fs::permissions(p, special, fs::perm_options::remove, ec);
    if (ec) break;
  }
  if (ec) return MakeError(ErrorCode::kInternal, "checking the extracted tree: " + ec.message());
  return Status::Ok();
}

Status ExtractExt4Image(const std::string& image, const std::string& out, uint64_t max_bytes) {
  Ext4Lister list = [&](uint32_t inode) -> Result<std::string> {
    auto r = RunProcess({"debugfs", "-R", "ls -p <" + std::to_string(inode) + ">", image});
    if (!r.ok()) return r.error();
    // debugfs prints its banner, and what went wrong, on stderr; its exit
    // status stays 0 when a command fails.
    std::string err = r->err;
    if (err.rfind("debugfs ", 0) == 0)
      err.erase(0, err.find('\n') == std::string::npos ? err.size() : err.find('\n') + 1);
    if (r->exit_code != 0 || err.find_first_not_of(" \n") != std::string::npos)
      return Bad("debugfs cannot list inode " + std::to_string(inode) + ": " + Printable(err));
    return std::move(r->out);
  };
  VMG_RETURN_IF_ERROR(VetExt4Tree(list, max_bytes));
  if (out.find_first_of("\"\n") != std::string::npos)
    return Bad("cannot extract into a path holding '\"' or a newline");
  auto r = RunProcess({"debugfs", "-R", "rdump / \"" + out + "\"", image});
  if (!r.ok()) return r.error();
  if (r->exit_code != 0) return MakeError(ErrorCode::kInternal, "debugfs rdump failed: " + r->err);
  return CheckExtractedTree(out);
}

}  // namespace vmgrid
