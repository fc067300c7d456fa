#include "vnet/tx_batch.h"

#include <algorithm>
#include <cerrno>

namespace vmgrid::vnet {

TxBatch::TxBatch() {
  items_.reserve(1024);
  msgs_.reserve(1024);
  iovs_.reserve(1024);
}

void TxBatch::Add(int fd, const sockaddr* addr, socklen_t addr_len, const uint8_t* data, size_t len,
                  uint64_t* ok, uint64_t* failed) {
  items_.push_back(Item{fd, addr, addr_len, data, len, ok, failed});
}

void TxBatch::Flush() {
  if (items_.empty()) return;
  // Usually every item goes to one socket (unicast between two ports):
  // already grouped, no sort (stable_sort would allocate).
  auto by_fd = [](const Item& a, const Item& b) { return a.fd < b.fd; };
  if (!std::is_sorted(items_.begin(), items_.end(), by_fd))
    std::stable_sort(items_.begin(), items_.end(), by_fd);
  size_t start = 0;
  while (start < items_.size()) {
    size_t end = start;
    while (end < items_.size() && items_[end].fd == items_[start].fd) ++end;
    const size_t n = end - start;
    msgs_.assign(n, mmsghdr{});
    iovs_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const Item& it = items_[start + i];
      iovs_[i] = iovec{const_cast<uint8_t*>(it.data), it.len};
      msghdr& h = msgs_[i].msg_hdr;
      h.msg_name = const_cast<sockaddr*>(it.addr);
      h.msg_namelen = it.addr_len;
      h.msg_iov = &iovs_[i];
      h.msg_iovlen = 1;
    }
    size_t i = 0;
    while (i < n) {
      int sent = sendmmsg(items_[start].fd, &msgs_[i], static_cast<unsigned>(n - i), MSG_DONTWAIT);
      if (sent > 0) {
        for (int k = 0; k < sent; ++k)
          if (uint64_t* c = items_[start + i + static_cast<size_t>(k)].ok) ++*c;
        i += static_cast<size_t>(sent);
        continue;
      }
      if (sent < 0 && errno == EINTR) continue;
      // Item i was refused.
      const int err = sent < 0 ? errno : EAGAIN;
      const Item& bad = items_[start + i];
      if (bad.failed) ++*bad.failed;
      ++i;
      if (err == EAGAIN || err == EWOULDBLOCK || err == ECONNREFUSED || err == ENOENT) {
        // The same receiver will refuse the rest too: drop them without a syscall each.
        while (i < n && items_[start + i].addr == bad.addr) {
          if (uint64_t* c = items_[start + i].failed) ++*c;
          ++i;
        }
      }
    }
    start = end;
  }
  items_.clear();
}

}  // namespace vmgrid::vnet
