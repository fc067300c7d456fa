#include "chunks/manifest.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "chunks/chunk_store.h"
#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;

namespace {

Error Invalid(const std::string& msg) { return MakeError(ErrorCode::kInvalidArgument, msg); }
Error Errno(const std::string& what) {
  return MakeError(ErrorCode::kInternal, what + ": " + std::strerror(errno));
}

// Thrown from the parser callback to stop at the first structural problem.
struct ShapeError {
  std::string message;
};

// Parses a JSON object of depth <= 2 (an object whose values are scalars or
// arrays of scalars) and rejects duplicate top-level keys, which nlohmann
// would otherwise resolve silently (last wins).
Result<json> ParseFlatObject(std::string_view text) {
  if (text.size() > kMaxManifestJsonBytes)
    return Invalid("manifest is larger than " + std::to_string(kMaxManifestJsonBytes) + " bytes");
  std::set<std::string> keys;
  auto cb = [&keys](int depth, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= 2) throw ShapeError{"manifest JSON is nested too deeply"};
        break;
      case json::parse_event_t::key:
        if (depth == 1 && !keys.insert(parsed.get<std::string>()).second)
          throw ShapeError{"duplicate field '" + parsed.get<std::string>() + "'"};
        break;
      default:
        break;
    }
    return true;
  };
  try {
    json j = json::parse(text.begin(), text.end(), cb);
    if (!j.is_object())
      return Invalid(std::string("manifest must be a JSON object, not ") + j.type_name());
    return j;
  } catch (const ShapeError& e) {
    return Invalid(e.message);
  } catch (const json::parse_error& e) {
    return Invalid("malformed manifest JSON at byte " + std::to_string(e.byte));
  } catch (const json::exception& e) {
    return Invalid(std::string("unusable manifest JSON: ") + e.what());
  }
}

Result<uint64_t> Uint(const json& obj, const char* name, uint64_t min, uint64_t max) {
  auto it = obj.find(name);
  if (it == obj.end()) return Invalid(std::string("field '") + name + "' is required");
  if (!it->is_number_integer())
    return Invalid(std::string("field '") + name + "' must be an integer");
  if (it->is_number_integer() && !it->is_number_unsigned() && it->get<int64_t>() < 0)
    return Invalid(std::string("field '") + name + "' must not be negative");
  uint64_t v = it->get<uint64_t>();
  if (v < min || v > max)
    return Invalid(std::string("field '") + name + "' is " + std::to_string(v) +
                   "; it must be between " + std::to_string(min) + " and " + std::to_string(max));
  return v;
}

// Fills size, chunk_size and chunks from `obj` and validates them.
Status ReadBody(const json& obj, Manifest& m) {
  if (obj.contains("format")) {
    VMG_ASSIGN_OR_RETURN(uint64_t format, Uint(obj, "format", 1, 1000));
    if (format != Manifest::kFormat)
      return Invalid("manifest format " + std::to_string(format) + " is not supported (only " +
                     std::to_string(Manifest::kFormat) + ")");
  }
  VMG_ASSIGN_OR_RETURN(uint64_t chunk_size, Uint(obj, "chunk_size", kMinChunkSize, kMaxChunkSize));
  if (!IsValidChunkSize(chunk_size))
    return Invalid("chunk_size " + std::to_string(chunk_size) + " is not a power of two");
  m.chunk_size = static_cast<uint32_t>(chunk_size);
  VMG_ASSIGN_OR_RETURN(m.size, Uint(obj, "size", 1, chunk_size * kMaxManifestChunks));
  auto it = obj.find("chunks");
  if (it == obj.end()) return Invalid("field 'chunks' is required");
  if (!it->is_array()) return Invalid("field 'chunks' must be an array of strings");
  uint64_t want = ChunkCountFor(m.size, m.chunk_size);
  if (it->size() != want)
    return Invalid("field 'chunks' has " + std::to_string(it->size()) + " entries but size " +
                   std::to_string(m.size) + " at chunk_size " + std::to_string(m.chunk_size) +
                   " needs " + std::to_string(want));
  m.chunks.clear();
  m.chunks.reserve(it->size());
  for (const auto& e : *it) {
    if (!e.is_string()) return Invalid("field 'chunks' must contain only strings");
    const auto& s = e.get_ref<const std::string&>();
    if (s != kZeroChunk && !IsChunkDigest(s))
      return Invalid("chunk entry " + std::to_string(m.chunks.size()) +
                     " is neither \"zero\" nor a digest (64 lowercase hex)");
    m.chunks.push_back(s);
  }
  return Status::Ok();
}

Status CheckAllowed(const json& obj, std::initializer_list<const char*> allowed) {
  return JsonFields(obj, allowed).CheckUnknown();
}

}  // namespace

uint64_t ChunkCountFor(uint64_t size, uint32_t chunk_size) {
  return chunk_size == 0 ? 0 : size / chunk_size + (size % chunk_size != 0);
}

uint32_t Manifest::ChunkLength(size_t i) const {
  uint64_t off = ChunkOffset(i);
  return static_cast<uint32_t>(std::min<uint64_t>(chunk_size, size - off));
}

uint64_t Manifest::NonZeroChunks() const {
  uint64_t n = 0;
  for (const auto& c : chunks) n += c != kZeroChunk;
  return n;
}

uint64_t Manifest::NonZeroBytes() const {
  uint64_t n = 0;
  for (size_t i = 0; i < chunks.size(); ++i)
    if (!IsZero(i)) n += ChunkLength(i);
  return n;
}

std::string Manifest::CanonicalJson() const {
  // nlohmann::json objects keep keys sorted, and every value is ASCII
  // without characters that need escaping, so dump() is canonical.
  json j = {{"format", kFormat},        {"name", name},    {"version", version}, {"size", size},
            {"chunk_size", chunk_size}, {"chunks", chunks}};
  return j.dump();
}

std::string Manifest::Digest() const { return ChunkDigest(CanonicalJson()); }

json Manifest::ToJson() const {
  json j = {{"format", kFormat},        {"name", name},    {"version", version}, {"size", size},
            {"chunk_size", chunk_size}, {"chunks", chunks}};
  j["digest"] = Digest();
  return j;
}

Status ValidateManifest(const Manifest& m, bool published) {
  if (published) {
    VMG_RETURN_IF_ERROR(ValidateName("image", m.name));
    if (m.version < 1 || m.version > kMaxManifestVersion)
      return Invalid("manifest version must be between 1 and " +
                     std::to_string(kMaxManifestVersion));
  }
  if (!IsValidChunkSize(m.chunk_size))
    return Invalid("chunk_size " + std::to_string(m.chunk_size) +
                   " is not a power of two between " + std::to_string(kMinChunkSize) + " and " +
                   std::to_string(kMaxChunkSize));
  if (m.size < 1) return Invalid("an image must be at least one byte long");
  uint64_t want = ChunkCountFor(m.size, m.chunk_size);
  if (want > kMaxManifestChunks)
    return Invalid("an image of " + std::to_string(m.size) + " bytes needs " +
                   std::to_string(want) + " chunks of " + std::to_string(m.chunk_size) +
                   " bytes; the limit is " + std::to_string(kMaxManifestChunks) +
                   " (use larger chunks)");
  if (m.chunks.size() != want)
    return Invalid("manifest has " + std::to_string(m.chunks.size()) + " chunks but size " +
                   std::to_string(m.size) + " needs " + std::to_string(want));
  for (size_t i = 0; i < m.chunks.size(); ++i)
    if (m.chunks[i] != kZeroChunk && !IsChunkDigest(m.chunks[i]))
      return Invalid("chunk entry " + std::to_string(i) + " is neither \"zero\" nor a digest");
  return Status::Ok();
}

Result<Manifest> ParseManifestJson(std::string_view text) {
  VMG_ASSIGN_OR_RETURN(json obj, ParseFlatObject(text));
  VMG_RETURN_IF_ERROR(
      CheckAllowed(obj, {"format", "name", "version", "size", "chunk_size", "chunks", "digest"}));
  if (!obj.contains("format")) return Invalid("field 'format' is required");
  Manifest m;
  auto name = obj.find("name");
  if (name == obj.end() || !name->is_string()) return Invalid("field 'name' must be a string");
  m.name = name->get<std::string>();
  VMG_RETURN_IF_ERROR(ValidateName("image", m.name));
  VMG_ASSIGN_OR_RETURN(m.version, Uint(obj, "version", 1, kMaxManifestVersion));
  VMG_RETURN_IF_ERROR(ReadBody(obj, m));
  auto digest = obj.find("digest");
  if (digest == obj.end() || !digest->is_string() || !IsChunkDigest(digest->get<std::string>()))
    return Invalid("field 'digest' must be a digest (64 lowercase hex)");
  std::string actual = m.Digest();
  if (digest->get<std::string>() != actual)
    return Invalid("manifest digest " + digest->get<std::string>() +
                   " does not match its content (" + actual + ")");
  return m;
}

Result<Manifest> ParseManifestDraftJson(std::string_view text) {
  VMG_ASSIGN_OR_RETURN(json obj, ParseFlatObject(text));
  VMG_RETURN_IF_ERROR(CheckAllowed(obj, {"format", "size", "chunk_size", "chunks"}));
  Manifest m;
  VMG_RETURN_IF_ERROR(ReadBody(obj, m));
  return m;
}

Status ForEachFileChunk(const std::string& path, uint32_t chunk_size, const FileChunkVisitor& visit,
                        const ChunkProgressFn& progress) {
  if (!IsValidChunkSize(chunk_size))
    return Invalid("chunk size " + std::to_string(chunk_size) + " is not a power of two between " +
                   std::to_string(kMinChunkSize) + " and " + std::to_string(kMaxChunkSize));
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return MakeError(ErrorCode::kNotFound, "no such file: " + path);
    return Errno("open " + path);
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) return Errno("stat " + path);
  if (!S_ISREG(st.st_mode)) return Invalid(path + " is not a regular file");
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size == 0) return Invalid(path + " is empty");
  uint64_t count = ChunkCountFor(size, chunk_size);
  if (count > kMaxManifestChunks)
    return Invalid(path + " needs " + std::to_string(count) + " chunks of " +
                   std::to_string(chunk_size) + " bytes; the limit is " +
                   std::to_string(kMaxManifestChunks) + " (use larger chunks)");
  std::string buf(chunk_size, '\0');
  const std::string zeros(chunk_size, '\0');  // what a hole reads as
  // Next offset holding data, from SEEK_DATA; everything before it is a hole.
  uint64_t next_data = 0;
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t off = i * chunk_size;
    size_t len = static_cast<size_t>(std::min<uint64_t>(chunk_size, size - off));
    if (next_data < off) {
      off_t d = ::lseek(fd, static_cast<off_t>(off), SEEK_DATA);
      next_data = d < 0 ? size : static_cast<uint64_t>(d);  // ENXIO: no data up to EOF
    }
    if (next_data >= off + len) {
      VMG_RETURN_IF_ERROR(visit(i, std::string_view(zeros.data(), len), true));
    } else {
      size_t got = 0;
      while (got < len) {
        ssize_t r = ::pread(fd, buf.data() + got, len - got, static_cast<off_t>(off + got));
        if (r < 0) {
          if (errno == EINTR) continue;
          return Errno("read " + path);
        }
        if (r == 0) return MakeError(ErrorCode::kInternal, path + " shrank while it was read");
        got += static_cast<size_t>(r);
      }
      std::string_view data(buf.data(), len);
      VMG_RETURN_IF_ERROR(visit(i, data, IsAllZero(data.data(), data.size())));
    }
    if (progress && !progress(off + len, size)) return MakeError(ErrorCode::kInternal, "canceled");
  }
  return Status::Ok();
}

Result<Manifest> ChunkImageFile(const std::string& path, uint32_t chunk_size, ChunkStore& store,
                                const ChunkProgressFn& progress) {
  Manifest m;
  m.chunk_size = chunk_size;
  VMG_RETURN_IF_ERROR(ForEachFileChunk(
      path, chunk_size,
      [&](size_t, std::string_view data, bool zero) -> Status {
        m.size += data.size();
        if (zero) {
          m.chunks.emplace_back(kZeroChunk);
          return Status::Ok();
        }
        VMG_ASSIGN_OR_RETURN(std::string digest, store.Put(data));
        m.chunks.push_back(std::move(digest));
        return Status::Ok();
      },
      progress));
  VMG_RETURN_IF_ERROR(ValidateManifest(m, false));
  return m;
}

Status WriteImageFile(const Manifest& m, const ChunkGetFn& get, const std::string& out_path,
                      const ChunkProgressFn& progress) {
  VMG_RETURN_IF_ERROR(ValidateManifest(m, false));
  VMG_ASSIGN_OR_RETURN(auto out, ImageFileWriter::Open(m, out_path));
  std::set<std::string> done;
  for (size_t i = 0; i < m.chunks.size(); ++i) {
    const uint64_t off = m.ChunkOffset(i);
    const uint32_t len = m.ChunkLength(i);
    if (!m.IsZero(i) && done.insert(m.chunks[i]).second) {
      auto data = get(m.chunks[i]);
      if (!data.ok()) return data.error().Wrap("chunk " + std::to_string(i));
      if (data->size() != len || ChunkDigest(*data) != m.chunks[i])
        return MakeError(ErrorCode::kInternal, "chunk " + std::to_string(i) + " (" + m.chunks[i] +
                                                   ") has the wrong length or content");
      VMG_RETURN_IF_ERROR(out->Put(m.chunks[i], *data));
    }
    if (progress && !progress(off + len, m.size))
      return MakeError(ErrorCode::kInternal, "canceled");
  }
  return out->Commit();
}

Result<std::unique_ptr<ImageFileWriter>> ImageFileWriter::Open(const Manifest& m,
                                                               const std::string& out_path) {
  VMG_RETURN_IF_ERROR(ValidateManifest(m, false));
  const std::string tmp = out_path + ".partial";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("create " + tmp);
  std::unique_ptr<ImageFileWriter> w(new ImageFileWriter(m, out_path, fd));
  if (::ftruncate(fd, static_cast<off_t>(m.size)) != 0) return Errno("truncate " + tmp);
  for (size_t i = 0; i < m.chunks.size(); ++i)
    if (!m.IsZero(i)) w->places_[m.chunks[i]].push_back(i);
  return w;
}

ImageFileWriter::ImageFileWriter(const Manifest& m, std::string out_path, int fd)
    : manifest_(m), out_path_(std::move(out_path)), tmp_path_(out_path_ + ".partial"), fd_(fd) {}

ImageFileWriter::~ImageFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_path_.c_str());
}

Status ImageFileWriter::Put(const std::string& digest, std::string_view data) {
  auto it = places_.find(digest);
  if (it == places_.end())
    return MakeError(ErrorCode::kInvalidArgument, "chunk " + digest + " is not in the manifest");
  for (size_t i : it->second) {
    if (data.size() != manifest_.ChunkLength(i))
      return MakeError(ErrorCode::kInternal,
                       "chunk " + std::to_string(i) + " (" + digest + ") has the wrong length");
    const uint64_t off = manifest_.ChunkOffset(i);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t w =
          ::pwrite(fd_, data.data() + done, data.size() - done, static_cast<off_t>(off + done));
      if (w < 0) {
        if (errno == EINTR) continue;
        return Errno("write " + tmp_path_);
      }
      done += static_cast<size_t>(w);
    }
  }
  std::lock_guard<std::mutex> l(mu_);
  written_.insert(digest);
  return Status::Ok();
}

std::vector<std::string> ImageFileWriter::Missing() const {
  std::vector<std::string> out;
  std::set<std::string> seen;
  std::lock_guard<std::mutex> l(mu_);
  for (size_t i = 0; i < manifest_.chunks.size(); ++i) {
    const std::string& d = manifest_.chunks[i];
    if (!manifest_.IsZero(i) && !written_.count(d) && seen.insert(d).second) out.push_back(d);
  }
  return out;
}

Status ImageFileWriter::Commit() {
  if (auto missing = Missing(); !missing.empty())
    return MakeError(ErrorCode::kFailedPrecondition,
                     std::to_string(missing.size()) + " chunk(s) of " + out_path_ +
                         " were not written, the first " + missing.front());
  if (::fsync(fd_) != 0) return Errno("fsync " + tmp_path_);
  ::close(fd_);
  fd_ = -1;
  if (::rename(tmp_path_.c_str(), out_path_.c_str()) != 0) return Errno("rename " + tmp_path_);
  committed_ = true;
  return Status::Ok();
}

}  // namespace vmgrid
