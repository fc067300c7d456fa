// TxBatch: the datagrams one pass of the switch loop decided to send,
// flushed with one sendmmsg per socket. Items only point at their bytes (in
// the loop's receive or scratch buffers), which must live until Flush.
// Order is kept per socket, so frames to one destination stay in order.
// Thread-safety: none; owned by the loop thread.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace vmgrid::vnet {

class TxBatch {
 public:
  TxBatch();
  // `ok`/`failed` are counters bumped after the send (may be null).
  void Add(int fd, const sockaddr* addr, socklen_t addr_len, const uint8_t* data, size_t len,
           uint64_t* ok, uint64_t* failed);
  size_t size() const { return items_.size(); }
  // Sends everything, non-blocking. A datagram the kernel refuses (the
  // receiver's queue is full, nobody has bound the path, the peer is
  // unreachable) is dropped and counted; after EAGAIN, the rest of that
  // socket's datagrams to the same address are dropped without trying.
  void Flush();

 private:
  struct Item {
    int fd;
    const sockaddr* addr;
    socklen_t addr_len;
    const uint8_t* data;
    size_t len;
    uint64_t* ok;
    uint64_t* failed;
  };
  std::vector<Item> items_;
  std::vector<mmsghdr> msgs_;
  std::vector<iovec> iovs_;
};

// A ring of fixed-size buffers for frames the loop builds (replies, sealed
// and opened tunnel packets); Reset after each Flush.
class ScratchBuffers {
 public:
  static constexpr size_t kSlotSize = 2048;
  explicit ScratchBuffers(size_t slots) : data_(slots * kSlotSize), slots_(slots) {}
  // A free slot, or nullptr when all are in use (the caller drops the frame).
  uint8_t* Take() { return used_ < slots_ ? &data_[kSlotSize * used_++] : nullptr; }
  size_t free_slots() const { return slots_ - used_; }
  void Reset() { used_ = 0; }

 private:
  std::vector<uint8_t> data_;
  size_t slots_;
  size_t used_ = 0;
};

}  // namespace vmgrid::vnet
