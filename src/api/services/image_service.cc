#include "api/services/image_service.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <vector>

#include "api/admission.h"
#include "api/agent_client.h"
#include "api/op_queue.h"
#include "api/placement.h"
#include "chunks/chunk_client.h"
#include "common/http_json.h"
#include "common/util.h"
#include "images/image_file.h"
#include "images/qcow2_header.h"
#include "proto/checkpoint_ref.h"

namespace vmgrid {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string FileNameFor(const std::string& kind, const std::string& format) {
  if (kind == "disk") return "disk." + format;
  if (kind == "kernel") return "vmlinuz";
  return "initrd.img";
}

// An upload's private temporary file: created O_EXCL under a fresh name in
// the image's directory, unlinked unless Commit() renamed it into place.
class UploadTempFile {
 public:
  UploadTempFile(const UploadTempFile&) = delete;
  UploadTempFile& operator=(const UploadTempFile&) = delete;
  ~UploadTempFile() {
    if (fd_ >= 0) close(fd_);
    if (!path_.empty()) unlink(path_.c_str());
  }
  static Result<std::unique_ptr<UploadTempFile>> Create(const std::string& dir,
                                                        const std::string& kind) {
    std::string path = dir + "/." + kind + "." + NewId("upload") + ".tmp";
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
      return MakeError(ErrorCode::kInternal, "cannot create a temporary file for the upload");
    auto t = std::unique_ptr<UploadTempFile>(new UploadTempFile(fd, path));
    // Readable by the unprivileged user that validates it (and by QEMU later).
    if (fchmod(fd, 0644) != 0) return MakeError(ErrorCode::kInternal, "cannot chmod the upload");
    return t;
  }
  int fd() const { return fd_; }
  bool Write(const char* data, size_t len) {
    while (len > 0) {
      ssize_t n = write(fd_, data, len);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data += n;
      len -= static_cast<size_t>(n);
    }
    return true;
  }
  // Renames the file validated through fd() to `final_path`, after checking
  // that its name still refers to that very file.
  Status Commit(const std::string& final_path) {
    struct stat by_fd, by_name;
    if (fsync(fd_) != 0 || fstat(fd_, &by_fd) != 0 || lstat(path_.c_str(), &by_name) != 0 ||
        by_fd.st_dev != by_name.st_dev || by_fd.st_ino != by_name.st_ino)
      return MakeError(ErrorCode::kInternal, "the uploaded file changed before it was stored");
    if (rename(path_.c_str(), final_path.c_str()) != 0)
      return MakeError(ErrorCode::kInternal, "cannot store the uploaded file");
    path_.clear();
    return Status::Ok();
  }

 private:
  UploadTempFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
};

}  // namespace

ImageService::ImageService(Store& store, const CapacityIndex& index, AgentClient& agents,
                           OpQueue& ops, const Clock& clock, Admission& long_ops,
                           ImageStorage storage, const std::atomic<bool>& stopping)
    : store_(store),
      index_(index),
      agents_(agents),
      ops_(ops),
      clock_(clock),
      long_ops_(long_ops),
      storage_(std::move(storage)),
      stopping_(stopping) {}

// --- views and lookups -------------------------------------------------------------

json ImageService::View(const Image& i) {
  json ckpt = nullptr;
  if (!i.ckpt_state.empty())
    ckpt = {{"state", i.ckpt_state},
            {"memory_mb", i.ckpt_memory_mb},
            {"vcpus", i.ckpt_vcpus},
            {"size_bytes", i.ckpt_size_bytes},
            {"error", i.ckpt_error}};
  auto owner = store_.GetUserById(i.owner_id);
  // A finalize in progress or the last one's failure (kept in memory: the
  // store says `uploading` until a finalize has succeeded).
  std::string state = i.state;
  json finalize = nullptr;
  if (state == "uploading") {
    std::lock_guard<std::mutex> l(mu_);
    if (auto it = io_.find(i.id); it != io_.end() && it->second.count("finalize"))
      state = "finalizing";
    if (auto it = finalize_failures_.find(i.id);
        it != finalize_failures_.end() && state != "finalizing")
      finalize = {
          {"state", "failed"}, {"operation", it->second.first}, {"error", it->second.second}};
  }
  return {{"id", i.id},
          {"name", i.name},
          {"owner", owner.ok() ? owner->name : i.owner_id},
          {"public", owner.ok() && owner->role == "admin"},
          {"state", state},
          {"finalize", finalize},
          {"format", i.format},
          {"size_bytes", i.size_bytes},
          {"virtual_size_bytes", i.virtual_size_bytes},
          {"expanded_size_bytes", i.expanded_size_bytes},
          {"max_clone_bytes", i.max_clone_bytes},
          {"has_kernel", i.has_kernel},
          {"has_initrd", i.has_initrd},
          {"append", i.append},
          {"min_memory_mb", i.min_memory_mb},
          {"checkpoint", ckpt},
          // Image server versions of its files (kind -> name, version, digest, size).
          {"versions",
           [&] {
             json b = json::parse(i.blobs, nullptr, false);
             return b.is_object() ? b : json::object();
           }()},
          {"created_at", FormatTimeMs(i.created_ms)}};
}

Result<Image> ImageService::VisibleImage(const Caller& c, const std::string& ref) {
  auto own = store_.GetImage(ref, c.owner());
  if (own.ok() || own.error().code != ErrorCode::kNotFound) return own;
  VMG_ASSIGN_OR_RETURN(auto pub, store_.ListPublicImages());
  for (const auto& i : pub)
    if (i.id == ref || i.name == ref) return i;
  return MakeError(ErrorCode::kNotFound, "image '" + ref + "' not found");
}

Result<Image> ImageService::OwnImage(const Caller& c, const std::string& ref) {
  VMG_ASSIGN_OR_RETURN(Image image, VisibleImage(c, ref));
  if (!c.admin() && image.owner_id != c.user.id)
    return MakeError(ErrorCode::kPermissionDenied, "image '" + ref +
                                                       "' is a public image of the admin; "
                                                       "only the admin may change it");
  return image;
}

ImageFiles ImageService::AgentImageFiles(const Image& i) {
  return {i.id,
          i.dir + "/" + FileNameFor("disk", i.format),
          i.format,
          i.has_kernel ? i.dir + "/vmlinuz" : "",
          i.has_initrd ? i.dir + "/initrd.img" : "",
          i.append};
}

Result<BlobSet> ImageService::AgentBlobs(const Image& i, bool image_checkpoint) {
  json all = json::parse(i.blobs, nullptr, false);
  json out = json::object();
  if (!all.is_object()) return BlobSet{};
  for (const char* kind : {"disk", "kernel", "initrd"})
    if (all.contains(kind)) out[kind] = all[kind];
  if (image_checkpoint)
    for (const char* kind : {"ckpt_memory", "ckpt_disk"})
      if (all.contains(kind)) out[kind] = all[kind];
  // A clone of a VM's checkpoint (set by CreateVm on its copy of the image).
  for (const char* kind : {"vm_ckpt_memory", "vm_ckpt_disk"})
    if (all.contains(kind)) out[kind] = all[kind];
  auto blobs = BlobsFromJson(out);
  if (!blobs.ok()) return blobs.error().Wrap("image " + i.id + ": its recorded versions");
  return blobs;
}

// --- create, list, show, delete ----------------------------------------------------

Result<json> ImageService::Create(const Caller& c, const NewImage& r) {
  VMG_RETURN_IF_ERROR(ValidateName("image", r.name));
  if (r.format != "raw" && r.format != "qcow2")
    return MakeError(ErrorCode::kInvalidArgument,
                     "field 'format' is '" + r.format + "'; it must be one of: raw, qcow2");
  if (r.has_initrd && !r.has_kernel)
    return MakeError(ErrorCode::kInvalidArgument, "an initrd needs a kernel");
  if (r.append.size() > 4096)
    return MakeError(ErrorCode::kInvalidArgument, "append is longer than 4096 characters");
  Image i;
  i.id = NewId("img");
  i.name = r.name;
  i.owner_id = c.user.id;
  i.state = "uploading";
  i.format = r.format;
  i.dir = storage_.dir + "/" + i.id;
  i.has_kernel = r.has_kernel;
  i.has_initrd = r.has_initrd;
  i.append = r.append;
  i.min_memory_mb = r.min_memory_mb;
  i.created_ms = clock_.NowMs();
  VMG_RETURN_IF_ERROR(MakeDirs(i.dir, 0755));
  if (auto st = store_.InsertImage(i); !st.ok()) {
    // Nothing else names the directory yet.
    (void)RemoveTree(i.dir);
    return st.error();
  }
  return View(i);
}

Result<json> ImageService::List(const Caller& c, const PageRequest& page) {
  VMG_ASSIGN_OR_RETURN(std::vector<Image> all, store_.ListImages(c.owner()));
  if (!c.admin()) {
    auto pub = store_.ListPublicImages();
    if (pub.ok()) all.insert(all.end(), pub->begin(), pub->end());
  }
  auto list = PageOf(
      std::move(all), page, [](const Image& i) { return NumberKey(i.created_ms); },
      [](const Image& i) { return i.id; });
  json out = json::array();
  for (const auto& i : list.items) out.push_back(View(i));
  json answer{{"images", std::move(out)}};
  AddNext(answer, list.next);
  return answer;
}

Result<json> ImageService::Get(const Caller& c, const std::string& ref) {
  VMG_ASSIGN_OR_RETURN(Image i, VisibleImage(c, ref));
  return View(i);
}

Status ImageService::Delete(const Caller& c, const std::string& ref) {
  VMG_ASSIGN_OR_RETURN(Image image, OwnImage(c, ref));
  if (image.ckpt_state == "creating")
    return MakeError(ErrorCode::kFailedPrecondition,
                     "a checkpoint of this image is being made; try again when it is done");
  // Its finalize operation reads the files: it ends first.
  if (Finalizing(image.id))
    return MakeError(
        ErrorCode::kFailedPrecondition,
        "image " + image.name + " is being finalized; try again when its operation has ended");
  VMG_RETURN_IF_ERROR(store_.DeleteImage(image.id));
  // The record is gone; a directory left behind only costs disk.
  if (Status st = RemoveTree(image.dir); !st.ok())
    spdlog::warn("image {}: cannot remove {}: {}", image.id, image.dir, st.error().message);
  std::lock_guard<std::mutex> l(mu_);
  finalize_failures_.erase(image.id);
  return Status::Ok();
}

// --- uploads -----------------------------------------------------------------------

Status ImageService::ClaimIo(const std::string& id, const std::string& kind) {
  std::lock_guard<std::mutex> l(mu_);
  auto& busy = io_[id];
  if (busy.count("finalize"))
    return MakeError(ErrorCode::kFailedPrecondition, "the image is being finalized");
  if (kind == "finalize" && !busy.empty())
    return MakeError(ErrorCode::kFailedPrecondition,
                     "an upload to this image is in progress; finalize it when done");
  if (!busy.insert(kind).second)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "another upload of the " + kind + " of this image is in progress");
  return Status::Ok();
}

void ImageService::ReleaseIo(const std::string& id, const std::string& kind) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = io_.find(id);
  if (it == io_.end()) return;
  it->second.erase(kind);
  if (it->second.empty()) io_.erase(it);
}

bool ImageService::Finalizing(const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = io_.find(id);
  return it != io_.end() && it->second.count("finalize");
}

// Each upload writes its own O_EXCL temporary file, validates that file
// through its fd (qemu-img reads the fd, unprivileged), and renames that
// same file into place, while it holds the image file's claim; a finalize
// cannot start meanwhile, and a ready image is never written again.
Result<json> ImageService::Upload(const Caller& c, const std::string& ref, const std::string& kind,
                                  const BodyReader& body) {
  if (kind != "disk" && kind != "kernel" && kind != "initrd")
    return MakeError(ErrorCode::kInvalidArgument, "an image file is disk, kernel or initrd");
  VMG_ASSIGN_OR_RETURN(Image image, OwnImage(c, ref));
  if (image.state != "uploading")
    return MakeError(ErrorCode::kFailedPrecondition, "image " + image.name + " is " + image.state +
                                                         "; published images are immutable");
  VMG_RETURN_IF_ERROR(ClaimIo(image.id, kind));
  struct Release {
    ImageService* self;
    std::string id, kind;
    ~Release() { self->ReleaseIo(id, kind); }
  } release{this, image.id, kind};
  // The owner's image_bytes quota bounds what a disk upload may write;
  // finalize checks it again, atomically with the image becoming ready.
  int64_t room = kMaxImageUploadBytes;
  std::optional<Error> over_quota;
  if (kind == "disk") {
    VMG_ASSIGN_OR_RETURN(User owner, store_.GetUserById(image.owner_id));
    if (owner.quota.image_bytes > 0) {
      VMG_ASSIGN_OR_RETURN(UserUsage use, store_.GetUserUsage(owner.id));
      room = std::min(room, owner.quota.image_bytes - use.image_bytes);
      over_quota = MakeError(ErrorCode::kPermissionDenied,
                             "quota: " + owner.name + " may keep " +
                                 std::to_string(owner.quota.image_bytes) + " bytes of images (" +
                                 std::to_string(use.image_bytes) +
                                 " in ready images); this disk is larger than the rest");
    }
  }
  VMG_ASSIGN_OR_RETURN(auto tmp, UploadTempFile::Create(image.dir, kind));
  int64_t received = 0;
  bool wrote = true;
  bool ok = body([&](const char* data, size_t len) {
    received += static_cast<int64_t>(len);
    // Over the quota: read the rest without writing it, so that the client
    // gets the 403 rather than a connection closed while it sends.
    if (received > room) return over_quota.has_value() && received <= kMaxImageUploadBytes;
    wrote = wrote && tmp->Write(data, len);
    return wrote;
  });
  if (received > room && over_quota) return *over_quota;
  if (!ok || !wrote)
    return MakeError(ErrorCode::kInvalidArgument, "upload of " + kind + " was interrupted");
  Status valid = Status::Ok();
  if (kind == "disk") {
    auto info = InspectDiskFd(tmp->fd(), image.format, !image.has_kernel);
    if (info.ok()) {
      image.size_bytes = received;
      image.virtual_size_bytes = info->virtual_size;
      image.expanded_size_bytes = info->expanded_size;
      image.max_clone_bytes = info->max_clone_size;
    } else {
      valid = info.error();
    }
  } else if (kind == "kernel") {
    valid = CheckKernelFd(tmp->fd());
  } else {
    valid = CheckInitrdFd(tmp->fd());
  }
  if (!valid.ok()) return valid.error().Wrap(kind + " rejected");
  // Our claim excludes a finalize, but the image may have been deleted.
  auto fresh = store_.GetImage(image.id, "");
  if (!fresh.ok() || fresh->state != "uploading")
    return MakeError(ErrorCode::kFailedPrecondition,
                     "image " + image.name + " is no longer uploading");
  if (kind == "disk") {
    fresh->size_bytes = image.size_bytes;
    fresh->virtual_size_bytes = image.virtual_size_bytes;
    fresh->expanded_size_bytes = image.expanded_size_bytes;
    fresh->max_clone_bytes = image.max_clone_bytes;
  }
  VMG_RETURN_IF_ERROR(tmp->Commit(image.dir + "/" + FileNameFor(kind, image.format)));
  VMG_RETURN_IF_ERROR(store_.UpdateImage(*fresh));
  return View(*fresh);
}

// --- finalize ----------------------------------------------------------------------

Result<json> ImageService::Finalize(const Caller& c, const std::string& ref) {
  VMG_ASSIGN_OR_RETURN(Image image, OwnImage(c, ref));
  OpQueue::Operation op;
  op.kind = "image_finalize";
  op.owner_id = c.user.id;
  op.image_id = image.id;
  if (image.state == "ready") {  // nothing to do: an operation that has succeeded
    ops_.Start(op);
    return ops_.Finish(op.id, View(image));
  }
  VMG_RETURN_IF_ERROR(ClaimIo(image.id, "finalize"));
  // Released when the operation ends (or here, on an early refusal).
  auto claim =
      std::shared_ptr<void>(nullptr, [this, id = image.id](void*) { ReleaseIo(id, "finalize"); });
  VMG_ASSIGN_OR_RETURN(image, store_.GetImage(image.id, ""));  // as it is now that no upload runs
  if (image.state == "ready")
    return MakeError(ErrorCode::kFailedPrecondition, "image " + image.name + " is ready");
  std::vector<std::string> missing;
  if (!FileExists(image.dir + "/" + FileNameFor("disk", image.format))) missing.push_back("disk");
  if (image.has_kernel && !FileExists(image.dir + "/vmlinuz")) missing.push_back("kernel");
  if (image.has_initrd && !FileExists(image.dir + "/initrd.img")) missing.push_back("initrd");
  if (!missing.empty()) {
    std::string list;
    for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
    return MakeError(ErrorCode::kFailedPrecondition,
                     "image " + image.name + " is missing: " + list +
                         " (upload with PUT /v1/images/ID/files/KIND)");
  }
  if (image.format == "qcow2") {
    // Again before anything opens it to publish or boot it.
    auto h = CheckUntrustedQcow2File(image.dir + "/" + FileNameFor("disk", image.format),
                                     kMaxVirtualDiskBytes);
    if (!h.ok()) return h.error().Wrap("disk rejected");
  }
  VMG_ASSIGN_OR_RETURN(auto slot, long_ops_.Acquire(c.user.id, 1, c.admin()));
  json answer = ops_.Start(op);
  {
    std::lock_guard<std::mutex> l(mu_);
    finalize_failures_.erase(image.id);
  }
  ops_.Run("", [this, id = op.id, image_id = image.id, claim = std::move(claim),
                slot = std::move(slot)]() mutable {
    auto outcome = RunFinalize(id, image_id);
    if (!outcome.ok()) {
      spdlog::warn("image {}: finalize failed: {}", image_id, outcome.error().message);
      std::lock_guard<std::mutex> l(mu_);
      finalize_failures_[image_id] = {id, outcome.error().message};
    }
    // Whoever sees the operation ended may upload, delete or finalize again.
    claim.reset();
    slot.reset();
    ops_.Finish(id, outcome);
  });
  return answer;
}

Result<json> ImageService::RunFinalize(const std::string& op_id, const std::string& image_id) {
  VMG_ASSIGN_OR_RETURN(Image image, store_.GetImage(image_id, ""));
  if (storage_.image_server) {
    // Publishing stores the disk expanded: refuse an image over the quota
    // before that work (store_.FinalizeImage below is the atomic check).
    if (auto owner = store_.GetUserById(image.owner_id);
        owner.ok() && owner->quota.image_bytes > 0) {
      auto use = store_.GetUserUsage(owner->id);
      if (use.ok() && use->image_bytes + image.QuotaBytes() > owner->quota.image_bytes)
        return MakeError(ErrorCode::kPermissionDenied,
                         "quota: " + owner->name + " may keep " +
                             std::to_string(owner->quota.image_bytes) + " bytes of images (" +
                             std::to_string(use->image_bytes) + " in ready images, this one has " +
                             std::to_string(image.QuotaBytes()) +
                             " once expanded); ask the admin to raise it (`vmgrid user quota`)");
    }
    VMG_RETURN_IF_ERROR(Publish(image, [this, &op_id](const std::string& step, int pct) {
      ops_.SetProgress(op_id, step, pct);
    }));
    if (stopping_) return MakeError(ErrorCode::kUnavailable, "the controller is shutting down");
  }
  image.state = "ready";
  // The owner's image_bytes quota is checked with the write.
  VMG_RETURN_IF_ERROR(store_.FinalizeImage(image));
  ops_.SetProgress(op_id, "ready", 100);
  return View(image);
}

Status ImageService::Publish(Image& image,
                             const std::function<void(const std::string&, int)>& report) {
  json blobs = json::object();
  const std::string disk = image.dir + "/" + FileNameFor("disk", image.format);
  std::string raw = disk;
  if (image.format == "qcow2") {
    // Chunks are guest-visible bytes, so that NBD serves reads straight from them.
    // qemu-img reads the user's file unprivileged, through an fd.
    if (report) report("converting the disk", 0);
    raw = image.dir + "/disk.publish.raw";
    Status r = ConvertUntrustedQcow2ToRaw(disk, raw, std::chrono::minutes(30));
    if (!r.ok()) return r.error().Wrap("converting the disk to raw for the image server");
  }
  std::vector<std::pair<std::string, std::string>> files = {{"disk", raw}};
  if (image.has_kernel) files.emplace_back("kernel", image.dir + "/vmlinuz");
  if (image.has_initrd) files.emplace_back("initrd", image.dir + "/initrd.img");
  Status st;
  for (const auto& [kind, path] : files) {
    auto started = std::chrono::steady_clock::now();
    int last = -1;
    auto progress = [&, kind = kind](uint64_t done, uint64_t total) {
      int pct = total ? static_cast<int>(done * 100 / total) : 100;
      if (pct / 25 != last / 25)
        spdlog::info("image {}: publishing {}: {}%", image.name, kind, pct);
      if (report && pct != last) report("publishing the " + kind, pct);
      last = pct;
      return !stopping_.load();
    };
    auto m = storage_.image_server->UploadImageFile(path, image.id + "-" + kind, kDefaultChunkSize,
                                                    progress);
    if (!m.ok()) {
      st = m.error().Wrap("publishing the " + kind + " of image " + image.name + " to " +
                          storage_.image_server_url);
      break;
    }
    blobs[kind] = {
        {"name", m->name}, {"version", m->version}, {"digest", m->Digest()}, {"size", m->size}};
    spdlog::info("image {}: {} published as {} v{} ({} MiB, {} non-zero chunks) in {:.1f} s",
                 image.name, kind, m->name, m->version, m->size >> 20, m->NonZeroChunks(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  }
  if (raw != disk) unlink(raw.c_str());
  if (!st.ok()) return st;
  image.blobs = blobs.dump();
  return Status::Ok();
}

// --- post-boot checkpoints ---------------------------------------------------------

Result<json> ImageService::Checkpoint(const Caller& c, const std::string& ref,
                                      std::optional<int64_t> memory_mb, int vcpus) {
  VMG_ASSIGN_OR_RETURN(Image image, OwnImage(c, ref));
  const int64_t mem = memory_mb.value_or(std::max<int64_t>(256, image.min_memory_mb));
  constexpr int64_t kMaxMemoryMb = 1 << 20;
  if (mem < image.min_memory_mb || mem > kMaxMemoryMb)
    return MakeError(ErrorCode::kInvalidArgument, "field 'memory_mb' is " + std::to_string(mem) +
                                                      "; it must be between " +
                                                      std::to_string(image.min_memory_mb) +
                                                      " and " + std::to_string(kMaxMemoryMb));
  if (vcpus < 1 || vcpus > 64)
    return MakeError(ErrorCode::kInvalidArgument,
                     "field 'vcpus' is " + std::to_string(vcpus) + "; it must be between 1 and 64");
  if (image.state != "ready")
    return MakeError(ErrorCode::kFailedPrecondition, "image " + image.name + " is not ready");
  if (image.ckpt_state == "creating")
    return MakeError(ErrorCode::kFailedPrecondition, "a checkpoint is already being made");
  // The boot that makes the checkpoint holds its host's vCPUs, memory and
  // disk like any VM's: it is ranked by the same placement and reserved in
  // the same transaction (Store::PlaceAndInsertVm, which also checks the
  // caller's quota) as a VM record of its own — an image-checkpoint VM
  // (proto/checkpoint_ref.h), in flight while the agent works, deleted when
  // it is done. Concurrent creates therefore cannot take its room.
  Vm reservation;
  reservation.id = NewId(kImageCheckpointVmPrefix);
  reservation.name = reservation.id;
  reservation.owner_id = c.user.id;
  reservation.image_id = image.id;
  reservation.state = "creating";
  reservation.vcpus = vcpus;
  reservation.memory_mb = mem;
  reservation.disk = "clone";
  reservation.start = "boot";
  reservation.disk_bytes = image.CloneBoundBytes() + (mem << 20);
  reservation.created_ms = reservation.updated_ms = clock_.NowMs();
  auto candidates = index_.Rank({image.id,
                                 reservation.vcpus,
                                 reservation.memory_mb,
                                 reservation.disk_bytes,
                                 "spread",
                                 "",
                                 "",
                                 {}});
  if (candidates.empty())
    return MakeError(ErrorCode::kResourceExhausted, "no host is up with room to boot the image");
  VMG_ASSIGN_OR_RETURN(Vm placed, store_.PlaceAndInsertVm(reservation, candidates));
  auto host = store_.GetHost(placed.host_id);
  image.ckpt_state = "creating";
  image.ckpt_error.clear();
  image.ckpt_memory_mb = mem;
  image.ckpt_vcpus = vcpus;
  Status recorded = host.ok() ? store_.UpdateImage(image) : Status(host.error());
  if (!recorded.ok()) {
    // Nothing was started: give the room back.
    failed_writes_.Count(store_.DeleteVm(placed.id), "releasing the reservation " + placed.id);
    return recorded.error();
  }
  ops_.Run(placed.id, [this, h = *host, image, id = placed.id] { RunCheckpoint(h, image, id); });
  return View(image);
}

void ImageService::RunCheckpoint(const Host& h, const Image& img,
                                 const std::string& reservation_id) {
  std::string target = img.dir + "/checkpoint";
  ImageCheckpointRequest request;
  request.image = AgentImageFiles(img);
  request.vcpus = img.ckpt_vcpus;
  request.memory_mb = img.ckpt_memory_mb;
  Result<ImageCheckpointResult> r = ImageCheckpointResult{};
  if (storage_.image_server) {
    // Made on the host, published to the image server (memory and disk
    // delta), fetched by any host that resumes it.
    auto blobs = AgentBlobs(img, false);
    if (blobs.ok())
      request.blobs = std::move(*blobs);
    else
      r = blobs.error();
    request.push_as = CheckpointBlobStem(img.id);
  } else {
    request.target_dir = target;
  }
  if (r.ok()) r = agents_.MakeImageCheckpoint(h, request);
  // The boot is over: its room is free again. A record left behind holds
  // it until reconciliation marks it failed (the host reports no such VM).
  failed_writes_.Count(store_.DeleteVm(reservation_id),
                       "releasing the reservation " + reservation_id);
  auto fresh = store_.GetImage(img.id, "");
  if (!fresh.ok()) return;  // deleted meanwhile
  json blobs = json::parse(fresh->blobs, nullptr, false);
  if (r.ok() && storage_.image_server && !blobs.is_object())
    r = MakeError(ErrorCode::kInternal, "image " + img.id + " has no published versions");
  if (r.ok()) {
    std::error_code ec;
    fresh->ckpt_state = "ready";
    if (storage_.image_server) {
      blobs["ckpt_memory"] = ToJson(r->memory);
      blobs["ckpt_disk"] = ToJson(r->disk);
      fresh->blobs = blobs.dump();
      fresh->ckpt_size_bytes = static_cast<int64_t>(r->memory.size + r->disk.size);
    } else {
      fresh->ckpt_size_bytes = static_cast<int64_t>(fs::file_size(target + "/memory.state", ec)) +
                               static_cast<int64_t>(fs::file_size(target + "/disk.qcow2", ec));
    }
    spdlog::info("image {}: post-boot checkpoint ready", img.name);
  } else {
    fresh->ckpt_state = "error";
    fresh->ckpt_error = r.error().message;
    spdlog::warn("image {}: checkpoint failed: {}", img.name, r.error().message);
  }
  // Left behind, the image shows its checkpoint as still being made (and
  // refuses another) until the controller restarts; say so in the log.
  failed_writes_.Count(store_.UpdateImage(*fresh), "recording the checkpoint of image " + img.id);
}

}  // namespace vmgrid
