// ImageService: users' images as the REST API shows them — create, list,
// show, upload a file, finalize (publish to the image server, then `ready`),
// make a post-boot checkpoint, delete — and what an agent needs to boot one
// (its files, or its image server versions).
//
// An image is `uploading` until a finalize succeeds and immutable after.
// One writer per image file: each upload of a kind, and a finalize of the
// whole image, holds a claim (in memory) while it runs; a second one is
// refused with kFailedPrecondition before its body is read. Finalizes and
// checkpoint boots run on the OpQueue; a finalize's failure is kept in
// memory and shown with the image until it is finalized or deleted.
//
// Dependencies are passed in (store, placement index, agent client,
// operation queue, clock, the admission of long operations), so the service
// runs in unit tests with a SQLite store, a fake agent and no image server.
// Thread-safe: every method.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>

#include "api/routes/route.h"
#include "api/services/failed_writes.h"
#include "common/clock.h"
#include "common/result.h"
#include "proto/blob_ref.h"
#include "proto/vm_spec.h"
#include "store/store.h"

namespace vmgrid {

class Admission;
class AgentClient;
class CapacityIndex;
class ChunkClient;
class OpQueue;

// The largest upload (and request body) the controller accepts.
inline constexpr int64_t kMaxImageUploadBytes = int64_t{64} << 30;

// Where images live.
struct ImageStorage {
  std::string dir;                      // each image's directory is made under it
  ChunkClient* image_server = nullptr;  // null without --image-server
  std::string image_server_url;         // for messages
};

// A new image's attributes (POST /v1/images), as parsed by its route.
struct NewImage {
  std::string name;
  std::string format = "raw";  // raw | qcow2
  bool has_kernel = false;
  bool has_initrd = false;
  std::string append;  // the kernel's command line
  int64_t min_memory_mb = 64;
};

class ImageService {
 public:
  // `long_ops` bounds each user's finalizes (shared with the controller's
  // other long operations); `stopping` turns true at shutdown, ending
  // publishing early.
  ImageService(Store& store, const CapacityIndex& index, AgentClient& agents, OpQueue& ops,
               const Clock& clock, Admission& long_ops, ImageStorage storage,
               const std::atomic<bool>& stopping);

  // Creates an image record (`uploading`) and its directory. kInvalidArgument
  // for a bad name, an initrd without a kernel or a command line over 4096
  // characters; nothing is left behind on failure.
  Result<nlohmann::json> Create(const Caller& c, const NewImage& request);
  // The caller's images and (for a user) the admin's public ones.
  // One page (common/paging.h), oldest first: {"images": [...], "next"}.
  Result<nlohmann::json> List(const Caller& c, const PageRequest& page);
  Result<nlohmann::json> Get(const Caller& c, const std::string& ref);

  // Stores file `kind` ("disk", "kernel" or "initrd") of image `ref` from
  // `body`: written to a private temporary file, validated through its fd,
  // renamed into place. Refused (nothing read) when the image is not
  // `uploading` or another upload of the kind or a finalize runs; a disk
  // over the owner's image_bytes quota is read to its end but not stored
  // (kPermissionDenied). On failure the image's files are as they were.
  Result<nlohmann::json> Upload(const Caller& c, const std::string& ref, const std::string& kind,
                                const BodyReader& body);
  // Starts finalizing image `ref`: answers an operation (GET
  // /v1/operations/ID) at once. What needs no more than a glance (no upload
  // running, every file there, the qcow2 header) is refused at once; the
  // publishing and the quota check run in the background while the image's
  // finalize claim is held. kTooManyRequests over the caller's long
  // operations. A failed finalize leaves the image `uploading`.
  Result<nlohmann::json> Finalize(const Caller& c, const std::string& ref);
  // Starts making image `ref`'s post-boot checkpoint with `memory_mb`
  // (default max(256, the image's minimum); at least that minimum) and
  // `vcpus`: the boot is placed and reserved like a VM (Store::PlaceAndInsertVm,
  // which checks the caller's quota), the reservation released when the
  // agent has answered. Answers the image (its checkpoint `creating`).
  Result<nlohmann::json> Checkpoint(const Caller& c, const std::string& ref,
                                    std::optional<int64_t> memory_mb, int vcpus);
  // Deletes image `ref` and its files; refused while a checkpoint is being
  // made or a finalize runs.
  Status Delete(const Caller& c, const std::string& ref);

  // Lookups honouring visibility: the caller's images and the admin's
  // public ones (another user's image is not found). OwnImage: one the
  // caller may change (kPermissionDenied for a user on a public image).
  Result<Image> VisibleImage(const Caller& c, const std::string& ref);
  Result<Image> OwnImage(const Caller& c, const std::string& ref);
  // The image as the API shows it (with a finalize running or failed).
  nlohmann::json View(const Image& image);
  // Its files on this machine, as an agent's VM spec names them.
  static ImageFiles AgentImageFiles(const Image& image);
  // The image server versions an agent needs for `image` (and its post-boot
  // checkpoint when `image_checkpoint`); empty without an image server.
  static Result<BlobSet> AgentBlobs(const Image& image, bool image_checkpoint);

  // Store writes that failed after the work was done (each is logged).
  int64_t failed_writes() const { return failed_writes_.total(); }

 private:
  // Claims `kind` ("disk", "kernel", "initrd", or "finalize" for the whole
  // image) of image `id`, or fails with kFailedPrecondition while another
  // upload or a finalize holds it.
  Status ClaimIo(const std::string& id, const std::string& kind);
  void ReleaseIo(const std::string& id, const std::string& kind);
  bool Finalizing(const std::string& id);
  // The body of a finalize, on the operation pool, while the image's
  // finalize claim is held; its result is the image.
  Result<nlohmann::json> RunFinalize(const std::string& op_id, const std::string& image_id);
  // Publishes the image's files to the image server; fills image.blobs.
  // `report` (may be empty) hears of each step and its percentage.
  Status Publish(Image& image, const std::function<void(const std::string&, int)>& report);
  // The boot that makes a checkpoint, on the operation pool.
  void RunCheckpoint(const Host& host, const Image& image, const std::string& reservation_id);

  Store& store_;
  const CapacityIndex& index_;
  AgentClient& agents_;
  OpQueue& ops_;
  const Clock& clock_;
  Admission& long_ops_;
  const ImageStorage storage_;
  const std::atomic<bool>& stopping_;
  FailedWrites failed_writes_;

  std::mutex mu_;
  std::map<std::string, std::set<std::string>> io_;  // image id -> claimed kinds; guarded by mu_
  // Why the last finalize of an image failed (image id -> operation id,
  // message), until it is finalized or deleted; guarded by mu_.
  std::map<std::string, std::pair<std::string, std::string>> finalize_failures_;
};

}  // namespace vmgrid
