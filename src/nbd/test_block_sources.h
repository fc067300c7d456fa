// Test doubles of BlockSource shared by the NBD unit and integration tests
// and the NBD fuzz target (fuzz/nbd): a sparse source whose holes MapExtents
// reports, so a test sees whether the server sends holes as holes.
// Header-only: the fuzz target compiles its sources apart from the build.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "nbd/block_source.h"

namespace vmgrid::nbd {

// `size` bytes of data and holes alternating every `run` bytes, data first.
// A hole reads as zeros; a data byte at offset o is DataByte(o). A test
// derives to choose the data bytes, and overrides Read to watch the reads
// (calling StripedSource::Read for the bytes).
class StripedSource : public BlockSource {
 public:
  StripedSource(uint64_t size, uint64_t run) : size_(size), run_(run) {}

  virtual char DataByte(uint64_t offset) const = 0;

  bool IsHole(uint64_t offset) const { return (offset / run_) % 2 == 1; }

  uint64_t size() const override { return size_; }

  Status Read(uint64_t offset, size_t len, char* out) override {
    for (size_t i = 0; i < len; ++i) out[i] = ByteAt(offset + i);
    return Status::Ok();
  }

  void MapExtents(uint64_t offset, uint64_t len, std::vector<Extent>* out) const override {
    out->clear();
    for (uint64_t end = offset + len; offset < end;) {
      uint64_t run_end = std::min(end, (offset / run_ + 1) * run_);
      out->push_back(Extent{run_end - offset, IsHole(offset)});
      offset = run_end;
    }
  }

  // What a read of [offset, offset + len) returns.
  std::string Expected(uint64_t offset, size_t len) const {
    std::string s(len, '\0');
    for (size_t i = 0; i < len; ++i) s[i] = ByteAt(offset + i);
    return s;
  }

 private:
  char ByteAt(uint64_t offset) const { return IsHole(offset) ? '\0' : DataByte(offset); }

  const uint64_t size_, run_;
};

}  // namespace vmgrid::nbd
