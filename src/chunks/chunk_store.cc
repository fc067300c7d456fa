#include "chunks/chunk_store.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cstdio>

#include "chunks/chunk_codec.h"
#include "chunks/chunk_digest.h"
#include "common/util.h"

namespace vmgrid {

double DedupRatio(uint64_t logical_bytes, uint64_t physical_bytes) {
  return physical_bytes == 0
             ? 0.0
             : static_cast<double>(logical_bytes) / static_cast<double>(physical_bytes);
}

ChunkStore::ChunkStore(std::string dir, Options options, chunkfs::DirLock lock)
    : dir_(std::move(dir)), options_(options), lock_(std::move(lock)) {}

Result<ChunkStorePtr> ChunkStore::Open(const std::string& dir, Options options) {
  uint64_t torn = 0;
  VMG_ASSIGN_OR_RETURN(chunkfs::DirLock lock, chunkfs::OpenLayout(dir, &torn));
  VMG_RETURN_IF_ERROR(MakeDirs(dir + "/zstd", 0755));
  std::vector<std::string> junk;
  VMG_ASSIGN_OR_RETURN(auto files, chunkfs::ScanChunks(dir, &junk));
  ChunkStorePtr store(new ChunkStore(dir, options, std::move(lock)));
  // Junk in the chunk tree is left for an operator; it is never served
  // because lookups go by digest and Get verifies.
  for (const auto& f : files) {
    store->stats_.chunks++;
    store->stats_.bytes += f.size;
  }
  return store;
}

Result<std::string> ChunkStore::Put(std::string_view data) {
  std::string digest = ChunkDigest(data);
  VMG_RETURN_IF_ERROR(PutChecked(digest, data));
  return digest;
}

Status ChunkStore::PutVerified(const std::string& digest, std::string_view data) {
  if (!IsChunkDigest(digest))
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + digest.substr(0, 80) + "' is not a chunk digest (64 lowercase hex)");
  std::string actual = ChunkDigest(data);
  if (actual != digest)
    return MakeError(ErrorCode::kInvalidArgument, "chunk data does not match its digest " + digest +
                                                      " (it hashes to " + actual + ")");
  return PutChecked(digest, data);
}

Status ChunkStore::PutChecked(const std::string& digest, std::string_view data) {
  if (data.empty()) return MakeError(ErrorCode::kInvalidArgument, "a chunk cannot be empty");
  if (data.size() > kMaxChunkBytes)
    return MakeError(ErrorCode::kInvalidArgument, "chunk of " + std::to_string(data.size()) +
                                                      " bytes is larger than the limit of " +
                                                      std::to_string(kMaxChunkBytes));
  std::string path = chunkfs::ChunkPath(dir_, digest);
  struct stat st;
  bool present = ::stat(path.c_str(), &st) == 0;
  // A present file of the right length is trusted here (Get verifies it);
  // one of the wrong length is damaged and is replaced.
  if (present && static_cast<uint64_t>(st.st_size) == data.size()) {
    std::lock_guard<std::mutex> l(mu_);
    stats_.puts++;
    stats_.put_bytes += data.size();
    stats_.dedup_hits++;
    return Status::Ok();
  }
  VMG_ASSIGN_OR_RETURN(bool created,
                       chunkfs::WriteChunkFile(dir_, digest, data, options_.sync, present));
  if (options_.frames_on_put && (created || present)) KeepFrame(digest, data);
  std::lock_guard<std::mutex> l(mu_);
  stats_.puts++;
  stats_.put_bytes += data.size();
  if (present) {
    stats_.bytes = stats_.bytes - static_cast<uint64_t>(st.st_size) + data.size();
  } else if (created) {
    stats_.chunks++;
    stats_.bytes += data.size();
  } else {
    stats_.dedup_hits++;  // a concurrent Put of the same chunk won the race
  }
  return Status::Ok();
}

Result<std::string> ChunkStore::Get(const std::string& digest) {
  if (!IsChunkDigest(digest))
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + digest.substr(0, 80) + "' is not a chunk digest (64 lowercase hex)");
  std::string path = chunkfs::ChunkPath(dir_, digest);
  auto data = chunkfs::ReadChunkFile(path);
  {
    std::lock_guard<std::mutex> l(mu_);
    stats_.gets++;
  }
  if (!data.ok()) {
    if (data.error().code == ErrorCode::kNotFound)
      return MakeError(ErrorCode::kNotFound, "no chunk " + digest);
    return data.error();
  }
  std::string actual = ChunkDigest(*data);
  if (actual == digest && !data->empty()) return std::move(data).value();

  // Quarantine rather than delete: the bytes may matter to an investigation,
  // and moving them away lets a re-upload repair the chunk.
  std::string qdir = dir_ + "/quarantine";
  std::string qpath = qdir + "/" + digest + "." + std::to_string(NowMs());
  bool moved = MakeDirs(qdir).ok() && std::rename(path.c_str(), qpath.c_str()) == 0;
  {
    std::lock_guard<std::mutex> l(mu_);
    stats_.corrupt_reads++;
    if (moved) {
      stats_.chunks--;
      stats_.bytes -= std::min<uint64_t>(stats_.bytes, data->size());
    }
  }
  return MakeError(ErrorCode::kInternal, "corrupt chunk " + digest + " in " + dir_ + ": its " +
                                             std::to_string(data->size()) + " bytes hash to " +
                                             actual + (moved ? "; moved to " + qpath : ""));
}

Result<std::string> ChunkStore::GetUnverified(const std::string& digest) {
  if (!IsChunkDigest(digest))
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + digest.substr(0, 80) + "' is not a chunk digest (64 lowercase hex)");
  auto data = chunkfs::ReadChunkFile(chunkfs::ChunkPath(dir_, digest));
  {
    std::lock_guard<std::mutex> l(mu_);
    stats_.gets++;
  }
  if (!data.ok() && data.error().code == ErrorCode::kNotFound)
    return MakeError(ErrorCode::kNotFound, "no chunk " + digest);
  return data;
}

std::optional<std::string> ChunkStore::KeepFrame(const std::string& digest, std::string_view data) {
  std::optional<std::string> frame = CompressChunk(data);
  // Not synced: a frame lost or torn in a crash is made again (or found bad
  // and removed) when it is next needed.
  auto w = chunkfs::WriteChunkFile(dir_, digest, frame ? std::string_view(*frame) : "", false, true,
                                   "zstd");
  if (!w.ok()) {
    spdlog::warn("chunk store: cannot keep the zstd frame of {}: {}", digest, w.error().message);
  } else {
    std::lock_guard<std::mutex> l(mu_);
    stats_.frames_made++;
  }
  return frame;
}

Result<ChunkStore::TransferChunk> ChunkStore::GetForTransfer(const std::string& digest,
                                                             bool verify) {
  if (!IsChunkDigest(digest))
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + digest.substr(0, 80) + "' is not a chunk digest (64 lowercase hex)");
  std::string frame_path = chunkfs::ChunkPath(dir_, digest, "zstd");
  auto frame = chunkfs::ReadChunkFile(frame_path);
  bool raw_mark = frame.ok() && frame->empty();
  if (frame.ok() && !raw_mark) {
    if (!verify) {
      {
        std::lock_guard<std::mutex> l(mu_);
        stats_.gets++;
      }
      // The raw size is not known without decoding; the frame declares it.
      auto declared = DeclaredChunkSize(*frame);
      if (declared.ok()) return TransferChunk{std::move(frame).value(), true, *declared};
    } else {
      auto raw = DecompressChunk(*frame);
      if (raw.ok() && ChunkDigest(*raw) == digest) {
        std::lock_guard<std::mutex> l(mu_);
        stats_.gets++;
        return TransferChunk{std::move(frame).value(), true, raw->size()};
      }
    }
    ::unlink(frame_path.c_str());
    spdlog::warn("chunk store: the kept zstd frame of {} did not give the chunk back; removed",
                 digest);
    std::lock_guard<std::mutex> l(mu_);
    stats_.bad_frames++;
  }
  VMG_ASSIGN_OR_RETURN(std::string raw, verify ? Get(digest) : GetUnverified(digest));
  TransferChunk out;
  out.raw_size = raw.size();
  if (!raw_mark) {
    if (std::optional<std::string> made = KeepFrame(digest, raw)) {
      out.data = std::move(*made);
      out.zstd = true;
      return out;
    }
  }
  out.data = std::move(raw);
  return out;
}

bool ChunkStore::Has(const std::string& digest) const {
  if (!IsChunkDigest(digest)) return false;
  struct stat st;
  return ::stat(chunkfs::ChunkPath(dir_, digest).c_str(), &st) == 0;
}

Result<uint64_t> ChunkStore::Size(const std::string& digest) const {
  if (!IsChunkDigest(digest))
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + digest.substr(0, 80) + "' is not a chunk digest (64 lowercase hex)");
  struct stat st;
  if (::stat(chunkfs::ChunkPath(dir_, digest).c_str(), &st) != 0)
    return MakeError(ErrorCode::kNotFound, "no chunk " + digest);
  return static_cast<uint64_t>(st.st_size);
}

ChunkStore::Stats ChunkStore::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
}

}  // namespace vmgrid
