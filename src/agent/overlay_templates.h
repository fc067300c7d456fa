#pragma once

#include <mutex>
#include <string>

#include "common/result.h"

namespace vmgrid {

// Empty qcow2 overlays in one small file copy.
//
// `qemu-img create -b BACKING` starts a process and opens the whole backing
// chain (for a checkpoint's disk, through this host's NBD export) to learn its
// size: tens of milliseconds of every clone's resume. An empty overlay of a
// given backing file is the same bytes every time (header, backing path and
// format, virtual size; no random content), so the first one made for a
// backing file is kept as a template and later ones are copies of it.
//
// Only backing files get templates: a "json:" backing (an NBD export) names
// one VM's own socket and goes to qemu-img as before.
//
// A template is keyed by the backing file's path, format, device, inode, size
// and modification time: a backing file replaced or rewritten gets a new
// template. Templates live in a directory only the agent writes (0700); at
// most kMaxTemplates are kept (the least recently made go first).
class OverlayTemplates {
 public:
  static constexpr int kMaxTemplates = 64;

  explicit OverlayTemplates(std::string dir) : dir_(std::move(dir)) {}

  // Writes an empty qcow2 overlay of `backing` to `dest`, which must not exist.
  Status Create(const std::string& backing, const std::string& backing_format,
                const std::string& dest);

  // How many overlays were copies of a template (for tests and metrics).
  int hits() const;

 private:
  Status MakeTemplate(const std::string& backing, const std::string& backing_format,
                      const std::string& path);
  void TrimLocked();

  const std::string dir_;
  mutable std::mutex mu_;  // guards hits_ and trimming
  int hits_ = 0;
};

}  // namespace vmgrid
