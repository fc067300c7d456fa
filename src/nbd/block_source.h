// BlockSource: the bytes behind one read-only NBD export. The server only
// ever asks for ranges inside [0, size()); where the bytes come from (a local
// file now, a chunk cache that fetches missing chunks from the image server
// later) is the source's business.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"

namespace vmgrid::nbd {

// A run of an export: data, or a hole (reads as zeros; the source keeps no
// bytes for it, so a client may be told "zeros" instead of being sent them).
struct Extent {
  uint64_t length = 0;
  bool zero = false;
};

class BlockSource {
 public:
  virtual ~BlockSource() = default;

  // Export size in bytes. Must not change for the lifetime of the object:
  // clients are told the size once, at the handshake.
  virtual uint64_t size() const = 0;

  // Fills out[0, len) with bytes [offset, offset + len). The caller
  // guarantees offset + len <= size() and len > 0. Called concurrently from
  // every connection's thread, so it must be thread-safe; it may block (e.g.
  // while a chunk is fetched). On failure the content of `out` is unspecified
  // and the client gets EIO for this request only; the connection stays up.
  virtual Status Read(uint64_t offset, size_t len, char* out) = 0;

  // Replaces *out with runs covering [offset, offset + len) in order, none
  // empty, adjacent runs of the same kind merged. Same caller guarantees as
  // Read. Must be cheap (no I/O) and thread-safe; a hole is only a hint, Read
  // of it still returns zeros. Default: one data run.
  virtual void MapExtents(uint64_t /*offset*/, uint64_t len, std::vector<Extent>* out) const {
    out->assign(1, Extent{len, false});
  }
};

// Shared, not unique: a connection keeps its export's source alive after the
// export is removed from the server, until that client disconnects.
using BlockSourcePtr = std::shared_ptr<BlockSource>;

// Serves a regular file or block device with pread(2). The size is taken once
// at Open; if the file shrinks later, reads past its new end fail with
// kInternal ("short read") instead of returning garbage.
class FileBlockSource final : public BlockSource {
 public:
  // kNotFound if `path` does not exist, kInvalidArgument if it is neither a
  // regular file nor a block device, kInternal for other open/stat failures.
  static Result<std::shared_ptr<FileBlockSource>> Open(const std::string& path);

  ~FileBlockSource() override;
  FileBlockSource(const FileBlockSource&) = delete;
  FileBlockSource& operator=(const FileBlockSource&) = delete;

  uint64_t size() const override { return size_; }
  Status Read(uint64_t offset, size_t len, char* out) override;

 private:
  FileBlockSource(int fd, uint64_t size, std::string path)
      : fd_(fd), size_(size), path_(std::move(path)) {}

  const int fd_;  // owned, read-only; pread keeps no shared file position
  uint64_t size_;
  std::string path_;
};

// Serves bytes held in memory. For tests and the fuzz target.
class MemoryBlockSource final : public BlockSource {
 public:
  explicit MemoryBlockSource(std::string data) : data_(std::move(data)) {}
  uint64_t size() const override { return data_.size(); }
  Status Read(uint64_t offset, size_t len, char* out) override;

 private:
  const std::string data_;
};

}  // namespace vmgrid::nbd
