#include "chunks/chunk_files.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "chunks/chunk_digest.h"
#include "common/util.h"

namespace vmgrid::chunkfs {

namespace {

Error Errno(const std::string& what) {
  return MakeError(ErrorCode::kInternal, what + ": " + std::strerror(errno));
}

const char kHex[] = "0123456789abcdef";

std::string ShardName(int i) { return std::string{kHex[i >> 4], kHex[i & 15]}; }

void FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

Status WriteAll(int fd, std::string_view data, const std::string& path) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t w = ::write(fd, data.data() + off, data.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno("write " + path);
    }
    off += static_cast<size_t>(w);
  }
  return Status::Ok();
}

// Moves tmp to path unless path exists. Returns false (and removes tmp) when
// it existed. Uses renameat2(RENAME_NOREPLACE), falling back to link+unlink on
// file systems without it.
Result<bool> RenameNoReplace(const std::string& tmp, const std::string& path) {
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) == 0)
    return true;
  if (errno == EEXIST) {
    ::unlink(tmp.c_str());
    return false;
  }
  if (errno != EINVAL && errno != ENOSYS) {
    Error e = Errno("rename " + tmp + " to " + path);
    ::unlink(tmp.c_str());
    return e;
  }
  int rc = ::link(tmp.c_str(), path.c_str());
  int saved = errno;
  ::unlink(tmp.c_str());
  if (rc == 0) return true;
  if (saved == EEXIST) return false;
  errno = saved;
  return Errno("link " + tmp + " to " + path);
}

}  // namespace

DirLock& DirLock::operator=(DirLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

Result<DirLock> OpenLayout(const std::string& root, uint64_t* torn_files) {
  VMG_RETURN_IF_ERROR(MakeDirs(root + "/tmp", 0755));
  VMG_RETURN_IF_ERROR(MakeDirs(root + "/chunks", 0755));  // shard directories are made on first use
  std::string lock_path = root + "/LOCK";
  int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("open " + lock_path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return MakeError(ErrorCode::kFailedPrecondition,
                     root + " is in use by another process (cannot lock " + lock_path + ")");
  }
  DirLock lock(fd);
  uint64_t torn = 0;
  std::string tmp_dir = root + "/tmp";
  if (DIR* d = ::opendir(tmp_dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
      std::string p = tmp_dir + "/" + e->d_name;
      if (::unlink(p.c_str()) == 0) ++torn;
    }
    ::closedir(d);
  }
  if (torn_files) *torn_files = torn;
  return lock;
}

std::string ChunkPath(const std::string& root, std::string_view digest, std::string_view tree) {
  std::string p = root;
  p += '/';
  p += tree;
  p += '/';
  p += digest.substr(0, 2);
  p += '/';
  p += digest;
  return p;
}

Result<bool> WriteChunkFile(const std::string& root, std::string_view digest, std::string_view data,
                            bool sync, bool replace, std::string_view tree) {
  static std::atomic<uint64_t> counter{0};
  std::string tmp = root + "/tmp/" + std::string(digest.substr(0, 16)) + "." +
                    std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("create " + tmp);
  Status st = WriteAll(fd, data, tmp);
  if (st.ok() && sync && ::fsync(fd) != 0) st = Errno("fsync " + tmp);
  ::close(fd);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st.error();
  }
  std::string path = ChunkPath(root, digest, tree);
  std::string shard = path.substr(0, path.rfind('/'));
  if (::mkdir(shard.c_str(), 0755) != 0 && errno != EEXIST) {
    Error e = Errno("mkdir " + shard);
    ::unlink(tmp.c_str());
    return e;
  }
  bool created = true;
  if (replace) {
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      Error e = Errno("rename " + tmp + " to " + path);
      ::unlink(tmp.c_str());
      return e;
    }
  } else {
    VMG_ASSIGN_OR_RETURN(created, RenameNoReplace(tmp, path));
  }
  if (sync && created) FsyncDir(shard);
  return created;
}

Result<std::string> ReadChunkFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return MakeError(ErrorCode::kNotFound, "no chunk file " + path);
    return Errno("open " + path);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    Error e = Errno("stat " + path);
    ::close(fd);
    return e;
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxChunkBytes) {
    ::close(fd);
    return MakeError(ErrorCode::kInternal, path + " is larger than the largest chunk");
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t off = 0;
  while (off < out.size()) {
    ssize_t r = ::pread(fd, out.data() + off, out.size() - off, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      Error e = Errno("read " + path);
      ::close(fd);
      return e;
    }
    if (r == 0) break;  // shrank under us: the hash check will reject it
    off += static_cast<size_t>(r);
  }
  out.resize(off);
  ::close(fd);
  return out;
}

Result<std::vector<ChunkFileInfo>> ScanChunks(const std::string& root,
                                              std::vector<std::string>* junk) {
  std::vector<ChunkFileInfo> out;
  for (int i = 0; i < 256; ++i) {
    std::string shard = ShardName(i);
    std::string dir = root + "/chunks/" + shard;
    DIR* d = ::opendir(dir.c_str());
    if (!d) {
      if (errno == ENOENT) continue;  // no chunk in this shard yet
      return Errno("opendir " + dir);
    }
    while (dirent* e = ::readdir(d)) {
      std::string_view name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string p = dir + "/" + e->d_name;
      struct stat st;
      bool ok = IsChunkDigest(name) && name.substr(0, 2) == shard && ::lstat(p.c_str(), &st) == 0 &&
                S_ISREG(st.st_mode) && st.st_size > 0 &&
                static_cast<uint64_t>(st.st_size) <= kMaxChunkBytes;
      if (!ok) {
        if (junk) junk->push_back(p);
        continue;
      }
      out.push_back({std::string(name), static_cast<uint64_t>(st.st_size),
                     static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec});
    }
    ::closedir(d);
  }
  return out;
}

}  // namespace vmgrid::chunkfs
