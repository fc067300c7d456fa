#include "nbd/nbd_session.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace vmgrid::nbd {
namespace {

// Incoming bytes are buffered so that one read(2) picks up several pipelined
// request headers.
constexpr size_t kInputBufferSize = 64 << 10;

Error ProtocolError(std::string message) {
  return MakeError(ErrorCode::kInvalidArgument, std::move(message));
}

bool IsKnownOption(uint32_t option) {
  return option == kOptExportName || option == kOptAbort || option == kOptList ||
         option == kOptInfo || option == kOptGo || option == kOptStructuredReply;
}

// Human-readable text for structured error chunks (clients show it to users).
const char* ErrorText(uint32_t error) {
  switch (error) {
    case kEperm:
      return "the export is read-only";
    case kEio:
      return "I/O error reading the export";
    case kEinval:
      return "invalid request (range, length, flags or command)";
  }
  return "request failed";
}

// What MapExtents promises, checked because a source is not the server's
// code: runs that are not empty and add up to the request exactly.
bool ValidExtents(const std::vector<Extent>& extents, uint32_t length) {
  uint64_t total = 0;
  for (const Extent& e : extents) {
    if (e.length == 0 || e.length > length) return false;
    total += e.length;
  }
  return total == length;
}

class Session {
 public:
  Session(ByteStream& stream, const ExportTable& exports, NbdCounters& counters,
          const SessionOptions& options)
      : stream_(stream),
        exports_(exports),
        counters_(counters),
        options_(options),
        in_(new char[kInputBufferSize]) {}

  Status Run() {
    std::string greeting = BuildGreeting();
    VMG_RETURN_IF_ERROR(Send(greeting));
    char flags[kClientFlagsSize];
    VMG_RETURN_IF_ERROR(ReadExact(flags, sizeof flags));
    auto client = ParseClientFlags(std::string_view(flags, sizeof flags));
    if (!client.ok()) return Violation(client.error().message);
    no_zeroes_ = client->no_zeroes;

    VMG_ASSIGN_OR_RETURN(bool transmit, Haggle());
    if (!transmit) return Status::Ok();
    stream_.EnterTransmission();
    return Transmit();
  }

 private:
  // ----- Handshake phase -----

  // Answers options until one selects an export (true) or the client leaves (false).
  Result<bool> Haggle() {
    for (;;) {
      char raw[kOptionHeaderSize];
      VMG_ASSIGN_OR_RETURN(bool got, ReadMessageStart(raw, sizeof raw));
      if (!got) return false;  // closed between options
      auto header = ParseOptionHeader(std::string_view(raw, sizeof raw));
      if (!header.ok()) return Violation(header.error().message);
      const uint32_t option = header->option;
      const uint32_t length = header->length;

      if (length > kMaxOptionLength) {
        // EXPORT_NAME has no error reply; anything else is told and, if the
        // data is not absurdly long, skipped so the session can go on.
        if (option == kOptExportName) return Violation("oversized NBD_OPT_EXPORT_NAME");
        std::string reply = BuildOptionReply(
            option, IsKnownOption(option) ? kRepErrTooBig : kRepErrUnsup, "option too long");
        if (length > kMaxOptionDrain) {
          (void)Send(reply);
          return Violation("option of " + std::to_string(length) + " bytes");
        }
        counters_.errors.fetch_add(1, std::memory_order_relaxed);
        VMG_RETURN_IF_ERROR(Skip(length));
        VMG_RETURN_IF_ERROR(Send(reply));
        continue;
      }
      std::string data(length, '\0');
      VMG_RETURN_IF_ERROR(ReadExact(data.data(), length));

      switch (option) {
        case kOptExportName: {
          BlockSourcePtr source = IsValidExportName(data) ? exports_.Find(data) : nullptr;
          if (!source) return Violation("NBD_OPT_EXPORT_NAME of an unknown export");
          Select(std::move(source));
          VMG_RETURN_IF_ERROR(Send(BuildExportNameReply(size_, kReadOnlyExportFlags, no_zeroes_)));
          return true;
        }
        case kOptAbort:
          // The client may already have closed; either way the session is over.
          (void)Send(BuildOptionReply(option, kRepAck));
          return false;
        case kOptList:
          VMG_RETURN_IF_ERROR(AnswerList(length));
          break;
        case kOptInfo:
        case kOptGo: {
          VMG_ASSIGN_OR_RETURN(bool selected, AnswerInfo(option, data));
          if (selected && option == kOptGo) return true;
          break;
        }
        case kOptStructuredReply:
          if (length != 0) {
            counters_.errors.fetch_add(1, std::memory_order_relaxed);
            VMG_RETURN_IF_ERROR(Send(BuildOptionReply(option, kRepErrInvalid, "takes no data")));
          } else {
            structured_ = true;
            VMG_RETURN_IF_ERROR(Send(BuildOptionReply(option, kRepAck)));
          }
          break;
        default:
          // STARTTLS, META_CONTEXT and options we do not know: the client
          // falls back to what the baseline protocol offers.
          VMG_RETURN_IF_ERROR(Send(BuildOptionReply(option, kRepErrUnsup)));
          break;
      }
    }
  }

  Status AnswerList(uint32_t length) {
    if (length != 0) {
      counters_.errors.fetch_add(1, std::memory_order_relaxed);
      return Send(BuildOptionReply(kOptList, kRepErrInvalid, "NBD_OPT_LIST takes no data"));
    }
    std::string replies;
    for (const std::string& name : exports_.Names()) {
      replies += BuildOptionReply(kOptList, kRepServer, BuildServerPayload(name));
    }
    replies += BuildOptionReply(kOptList, kRepAck);
    return Send(replies);
  }

  // Returns whether the export exists (and, for GO, was selected).
  Result<bool> AnswerInfo(uint32_t option, const std::string& data) {
    auto request = ParseInfoRequest(data);
    if (!request.ok()) {
      counters_.errors.fetch_add(1, std::memory_order_relaxed);
      VMG_RETURN_IF_ERROR(Send(BuildOptionReply(option, kRepErrInvalid, request.error().message)));
      return false;
    }
    BlockSourcePtr source = exports_.Find(request->name);
    if (!source) {
      counters_.errors.fetch_add(1, std::memory_order_relaxed);
      VMG_RETURN_IF_ERROR(
          Send(BuildOptionReply(option, kRepErrUnknown, "unknown export '" + request->name + "'")));
      return false;
    }
    const uint64_t size = source->size();
    std::string replies =
        BuildOptionReply(option, kRepInfo, BuildInfoExportPayload(size, kReadOnlyExportFlags));
    if (std::find(request->requests.begin(), request->requests.end(), kInfoBlockSize) !=
        request->requests.end()) {
      replies += BuildOptionReply(
          option, kRepInfo,
          BuildInfoBlockSizePayload(kMinBlockSize, kPreferredBlockSize, options_.max_payload));
    }
    replies += BuildOptionReply(option, kRepAck);
    VMG_RETURN_IF_ERROR(Send(replies));
    if (option == kOptGo) Select(std::move(source));
    return true;
  }

  void Select(BlockSourcePtr source) {
    size_ = source->size();
    source_ = std::move(source);
  }

  // ----- Transmission phase -----

  Status Transmit() {
    Status st = TransmitLoop();
    Status pool = StopWorkers();  // every admitted request is answered before we return
    if (st.ok() && !pool.ok()) return pool;
    return st;
  }

  Status TransmitLoop() {
    for (;;) {
      if (Status w = WorkerError(); !w.ok()) return w;
      char raw[kRequestHeaderSize];
      VMG_ASSIGN_OR_RETURN(bool got, ReadMessageStart(raw, sizeof raw));
      if (!got) return Status::Ok();  // closed between requests (no NBD_CMD_DISC)
      auto request = ParseRequestHeader(std::string_view(raw, sizeof raw));
      if (!request.ok()) return Violation(request.error().message);
      counters_.requests.fetch_add(1, std::memory_order_relaxed);
      const Request& r = *request;
      if (r.type == kCmdDisc) return Status::Ok();

      uint32_t error = CheckRequest(r, size_, options_.max_payload);
      if (uint32_t payload = RequestPayloadLength(r); payload > 0) {
        if (payload > options_.max_payload) {
          // Swallowing gigabytes to stay in sync is not worth it.
          (void)Reply(kEinval, r);
          return Violation("write payload of " + std::to_string(payload) + " bytes");
        }
        VMG_RETURN_IF_ERROR(Skip(payload));
      }
      if (error != 0) {
        spdlog::debug("nbd {}: {} offset={} length={} flags={:#x} -> error {}", options_.peer,
                      CommandName(r.type), r.offset, r.length, r.flags, error);
        VMG_RETURN_IF_ERROR(Reply(error, r));
        continue;
      }
      if (r.type == kCmdRead && options_.workers > 0 && r.length > 0) {
        Submit(r);
      } else if (r.type == kCmdRead) {
        VMG_RETURN_IF_ERROR(ServeRead(r, data_, data_capacity_));
      } else {
        VMG_RETURN_IF_ERROR(Reply(0, r));  // FLUSH: nothing is ever dirty
      }
    }
  }

  // ----- Parallel READs (options_.workers > 0) -----

  // Queues a READ, waiting while too many bytes are in flight.
  void Submit(const Request& r) {
    std::unique_lock<std::mutex> l(pool_mu_);
    pool_cv_.wait(l, [&] {
      return inflight_ == 0 || inflight_bytes_ + r.length <= options_.max_inflight_bytes ||
             !worker_error_.ok();
    });
    queue_.push_back(r);
    inflight_++;
    inflight_bytes_ += r.length;
    if (workers_.size() < static_cast<size_t>(options_.workers) && idle_ == 0)
      workers_.emplace_back([this] { Work(); });
    pool_cv_.notify_all();
  }

  void Work() {
    std::unique_ptr<char[]> buffer;
    size_t capacity = 0;
    std::unique_lock<std::mutex> l(pool_mu_);
    for (;;) {
      idle_++;
      pool_cv_.wait(l, [&] { return !queue_.empty() || stopping_; });
      idle_--;
      if (queue_.empty()) return;  // stopping
      Request r = queue_.front();
      queue_.pop_front();
      const bool broken = !worker_error_.ok();  // the stream broke: drop what is left
      l.unlock();
      Status st = broken ? Status::Ok() : ServeRead(r, buffer, capacity);
      l.lock();
      if (!st.ok() && worker_error_.ok()) worker_error_ = st;
      inflight_--;
      inflight_bytes_ -= r.length;
      pool_cv_.notify_all();
    }
  }

  Status WorkerError() {
    std::lock_guard<std::mutex> l(pool_mu_);
    return worker_error_;
  }

  // Waits until every queued READ is answered, then ends the workers.
  Status StopWorkers() {
    std::vector<std::thread> threads;
    {
      std::unique_lock<std::mutex> l(pool_mu_);
      pool_cv_.wait(l, [&] { return inflight_ == 0; });
      stopping_ = true;
      pool_cv_.notify_all();
      threads.swap(workers_);
    }
    for (auto& t : threads) t.join();
    return WorkerError();
  }

  Status ServeRead(const Request& r, std::unique_ptr<char[]>& buffer, size_t& capacity) {
    if (r.length == 0) {
      if (structured_) return Send(BuildDoneChunk(r.cookie));
      return Reply(0, r);
    }
    if (r.length > capacity) {
      // Grow to the largest request seen; no value-initialisation (up to 32 MiB).
      buffer.reset(new char[r.length]);
      capacity = r.length;
    }
    // With structured replies, holes are sent as OFFSET_HOLE chunks and not
    // read at all; otherwise the source fills them with zeros.
    std::vector<Extent> extents;
    if (structured_) {
      source_->MapExtents(r.offset, r.length, &extents);
      if (!ValidExtents(extents, r.length)) extents.assign(1, Extent{r.length, false});
    }
    // The whole range is read before any header goes out, so a failure can
    // still be reported cleanly (a simple reply cannot fail half-way).
    const bool sparse = structured_ && (extents.size() > 1 || extents[0].zero);
    Status read = Status::Ok();
    if (sparse) {
      uint64_t at = 0;
      for (const Extent& e : extents) {
        if (!e.zero && read.ok())
          read = source_->Read(r.offset + at, static_cast<size_t>(e.length), buffer.get() + at);
        at += e.length;
      }
    } else {
      read = source_->Read(r.offset, r.length, buffer.get());
    }
    if (!read.ok()) {
      counters_.source_errors.fetch_add(1, std::memory_order_relaxed);
      // One warning per session: a failing source would otherwise flood the log.
      if (source_errors_++ == 0) {
        spdlog::warn("nbd {}: read offset={} length={} failed: {}", options_.peer, r.offset,
                     r.length, read.error().message);
      }
      return Reply(kEio, r);
    }
    std::string_view data(buffer.get(), r.length);
    if (sparse) {
      VMG_RETURN_IF_ERROR(SendSparse(r, extents, data));
    } else if (structured_) {
      auto header = BuildReadChunkHeader(r.cookie, r.offset, r.length);
      std::string_view parts[] = {std::string_view(header.data(), header.size()), data};
      VMG_RETURN_IF_ERROR(Write(parts));
    } else {
      auto header = BuildSimpleReply(0, r.cookie);
      std::string_view parts[] = {std::string_view(header.data(), header.size()), data};
      VMG_RETURN_IF_ERROR(Write(parts));
    }
    counters_.bytes_read.fetch_add(r.length, std::memory_order_relaxed);
    return Status::Ok();
  }

  // One READ as OFFSET_DATA and OFFSET_HOLE chunks in order, the last DONE,
  // in one write (chunks of one reply need not be contiguous on the wire,
  // but keeping them so costs nothing).
  Status SendSparse(const Request& r, const std::vector<Extent>& extents, std::string_view data) {
    std::vector<std::array<char, kHoleChunkSize>> headers(extents.size());
    std::vector<std::string_view> parts;
    parts.reserve(extents.size() * 2);
    uint64_t at = 0;
    for (size_t i = 0; i < extents.size(); ++i) {
      const Extent& e = extents[i];
      const bool last = i + 1 == extents.size();
      const uint32_t n = static_cast<uint32_t>(e.length);  // <= r.length
      if (e.zero) {
        headers[i] = BuildHoleChunk(r.cookie, r.offset + at, n, last);
        parts.emplace_back(headers[i].data(), kHoleChunkSize);
      } else {
        auto h = BuildReadChunkHeader(r.cookie, r.offset + at, n, last);
        std::copy(h.begin(), h.end(), headers[i].begin());
        parts.emplace_back(headers[i].data(), kReadChunkHeaderSize);
        parts.push_back(data.substr(at, n));
      }
      at += n;
    }
    return Write(parts);
  }

  // Replies without payload. Once structured replies are negotiated a READ
  // must be answered with chunks, even its errors; other commands keep
  // simple replies, which the spec allows.
  Status Reply(uint32_t error, const Request& r) {
    if (error != 0) counters_.errors.fetch_add(1, std::memory_order_relaxed);
    if (structured_ && r.type == kCmdRead) {
      return Send(error ? BuildErrorChunk(r.cookie, error, ErrorText(error))
                        : BuildDoneChunk(r.cookie));
    }
    auto reply = BuildSimpleReply(error, r.cookie);
    return Send(std::string_view(reply.data(), reply.size()));
  }

  // ----- Stream helpers -----

  Error Violation(const std::string& what) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    spdlog::debug("nbd {}: protocol violation, hanging up: {}", options_.peer, what);
    return ProtocolError(what);
  }

  Status Send(std::string_view bytes) {
    std::string_view parts[] = {bytes};
    return Write(parts);
  }

  // Every reply goes through here: one message at a time on the stream.
  Status Write(std::span<const std::string_view> parts) {
    std::lock_guard<std::mutex> l(write_mu_);
    return stream_.WriteAll(parts);
  }

  // Reads the first `n` bytes of a message: false if the stream ends before
  // its first byte (a clean close), an error if it ends inside it.
  Result<bool> ReadMessageStart(char* out, size_t n) {
    if (in_begin_ == in_end_) {
      VMG_ASSIGN_OR_RETURN(size_t got, stream_.ReadSome(in_.get(), kInputBufferSize));
      if (got == 0) return false;
      in_begin_ = 0;
      in_end_ = got;
    }
    VMG_RETURN_IF_ERROR(ReadExact(out, n));
    return true;
  }

  Status ReadExact(char* out, size_t n) {
    while (n > 0) {
      if (in_begin_ == in_end_) {
        if (n >= kInputBufferSize) {  // large: straight into the destination
          VMG_ASSIGN_OR_RETURN(size_t got, stream_.ReadSome(out, n));
          if (got == 0) return Truncated();
          out += got;
          n -= got;
          continue;
        }
        VMG_RETURN_IF_ERROR(Refill());
      }
      size_t take = std::min(n, in_end_ - in_begin_);
      std::memcpy(out, in_.get() + in_begin_, take);
      in_begin_ += take;
      out += take;
      n -= take;
    }
    return Status::Ok();
  }

  Status Skip(uint64_t n) {
    while (n > 0) {
      if (in_begin_ == in_end_) VMG_RETURN_IF_ERROR(Refill());
      size_t take = static_cast<size_t>(std::min<uint64_t>(n, in_end_ - in_begin_));
      in_begin_ += take;
      n -= take;
    }
    return Status::Ok();
  }

  Status Refill() {
    VMG_ASSIGN_OR_RETURN(size_t got, stream_.ReadSome(in_.get(), kInputBufferSize));
    if (got == 0) return Truncated();
    in_begin_ = 0;
    in_end_ = got;
    return Status::Ok();
  }

  Error Truncated() {
    spdlog::debug("nbd {}: stream ended inside a message", options_.peer);
    return MakeError(ErrorCode::kUnavailable, "client closed the connection mid-message");
  }

  ByteStream& stream_;
  const ExportTable& exports_;
  NbdCounters& counters_;
  const SessionOptions& options_;

  std::unique_ptr<char[]> in_;
  size_t in_begin_ = 0;
  size_t in_end_ = 0;

  bool no_zeroes_ = false;
  bool structured_ = false;  // NBD_OPT_STRUCTURED_REPLY negotiated
  BlockSourcePtr source_;    // the selected export, kept even if it is removed meanwhile
  uint64_t size_ = 0;
  std::unique_ptr<char[]> data_;  // READ buffer of inline serving, reused across requests
  size_t data_capacity_ = 0;
  std::atomic<uint64_t> source_errors_{0};

  std::mutex write_mu_;  // serializes replies

  std::mutex pool_mu_;  // guards the members below
  std::condition_variable pool_cv_;
  std::deque<Request> queue_;
  std::vector<std::thread> workers_;
  size_t idle_ = 0;      // workers waiting for a request
  size_t inflight_ = 0;  // queued or being served
  uint64_t inflight_bytes_ = 0;
  bool stopping_ = false;
  Status worker_error_;  // the first failed reply (the stream broke)
};

}  // namespace

Status RunSession(ByteStream& stream, const ExportTable& exports, NbdCounters& counters,
                  const SessionOptions& options) {
  return Session(stream, exports, counters, options).Run();
}

}  // namespace vmgrid::nbd
