// Extracting a `dir` dataset version (an ext4 image another user may have
// crafted, docs/datasets.md "Pull") without root and without letting the
// image write outside the target: debugfs's `rdump` takes entry names from
// the image as they are, so a name such as "../../x" is written above the
// dump's target (tried with e2fsprogs 1.47.0). Before the dump every
// directory is listed (`debugfs -R "ls -p <INODE>"`, by inode number, so no
// name from the image is ever parsed as a path) and the whole tree is
// refused unless every entry is safe; after the dump every symbolic link
// must resolve inside the tree.
//
// The rules (VetDirectoryEntries): a listing starts with "." and ".." and
// holds neither again; a name is not empty and holds no '/' or newline
// (either breaks the listing's shape, which is then refused) nor NUL (the
// listing ends the name there; the rules then hold for what debugfs will
// use); names are unique within a directory (a second entry through a
// symbolic link of the same name would write where the link points); only
// regular files, directories and symbolic links (no devices, FIFOs or
// sockets); a directory is reached once (no hard-linked directories, no
// loops). Bounds: kMaxExt4Entries entries, kMaxExt4Depth levels and
// `max_bytes` of regular file sizes in all (hard links count each time:
// rdump writes each).
// Thread-safe (pure functions; ExtractExt4Image runs debugfs).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace vmgrid {

inline constexpr size_t kMaxExt4Entries = 1'000'000;
inline constexpr size_t kMaxExt4Depth = 64;

// One line of `debugfs -R "ls -p <INODE>"`:
// "/INODE/MODE/UID/GID/NAME/SIZE/", a directory "/INODE/MODE/UID/GID/NAME//".
struct Ext4DirEntry {
  uint32_t inode = 0;
  uint32_t mode = 0;  // st_mode bits as stored (type and permissions)
  std::string name;
  uint64_t size = 0;  // 0 for a directory
  bool IsDir() const { return (mode & 0170000) == 0040000; }
  bool IsRegular() const { return (mode & 0170000) == 0100000; }
  bool IsSymlink() const { return (mode & 0170000) == 0120000; }
};

// Strict: every non-empty line has that shape exactly (decimal inode, octal
// mode, numeric ids, a size unless the mode is a directory's), else
// kInvalidArgument naming the line. Untrusted input (fuzz/fuzz_ext4_listing.cc).
Result<std::vector<Ext4DirEntry>> ParseDebugfsListing(std::string_view text);

// The entries of directory `where` (a path for messages), as listed, checked
// by the rules above; answers them without "." and "..".
Result<std::vector<Ext4DirEntry>> VetDirectoryEntries(const std::vector<Ext4DirEntry>& entries,
                                                      uint32_t inode, const std::string& where);

// Lists directory `inode` of the image: the text `ls -p` printed.
using Ext4Lister = std::function<Result<std::string>(uint32_t inode)>;
// Walks the tree from the root (inode 2) through `list`, vetting every
// directory; kInvalidArgument naming the first bad entry's path.
Status VetExt4Tree(const Ext4Lister& list, uint64_t max_bytes);

// Every symbolic link under `root` (an extracted tree) resolves inside it
// (relative, through other links too; absolute links are refused), and no
// file keeps a setuid, setgid or sticky bit (cleared). kInvalidArgument
// naming the first link that does not.
Status CheckExtractedTree(const std::string& root);

// Extracts `image` into `out` (an existing empty directory) with debugfs,
// after VetExt4Tree, then CheckExtractedTree. On failure `out` may hold part
// of the tree (the caller stages it and removes it); nothing is written
// outside `out`.
Status ExtractExt4Image(const std::string& image, const std::string& out, uint64_t max_bytes);

}  // namespace vmgrid
