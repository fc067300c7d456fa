#include "agent/vm_runner.h"

#include <dirent.h>
#include <grp.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <set>

#include "agent/console_log.h"
#include "agent/guest_data.h"
#include "agent/guest_network.h"
#include "common/http_json.h"
#include "common/subprocess.h"
#include "common/util.h"
#include "common/vm_state.h"
#include "images/image_file.h"
#include "images/qcow2_header.h"
#include "vmm/boot_stub.h"
#include "vmm/machine_ops.h"
#include "vmm/migration.h"
#include "vmm/qemu_process.h"

namespace vmgrid {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

struct VmRunner::Vm {
  std::mutex op_mu;  // serializes lifecycle operations on this VM
  VmSpec spec;       // immutable after creation

  // Fields below are guarded by status_mu (read by List() during operations).
  mutable std::mutex status_mu;
  VmState state = VmState::kCreating;
  std::string error;
  bool has_checkpoint = false;
  bool created_workspace = false;
  int64_t ready_ms = 0;
  std::string disk_path;
  std::string disk_format;
  // The guest's generation id (QEMU's vmgenid) of the running QEMU: new at
  // each start or resume (a clone must reseed), kept by a live migration
  // (the target starts with the source's: IncomingRequest::vmgenid).
  std::string vmgenid;
  // Set at creation, then fixed (state.json): QEMU's uid/gid (-1: the
  // agent's runas user or itself) and how many backing levels below the
  // disk its NBD node sits (0: no NBD backing).
  int uid = -1, gid = -1;
  int nbd_depth = 0;
  // Its part in a live migration (state.json "migration"): "" none,
  // "incoming" (a PrepareIncoming'd target, state creating), "outgoing"
  // (MigrateOut running), "migrated-out" (source paused until confirmed).
  std::string migration;
  // The latest durable version this host pushed of a persistent workspace
  // (state.json "durable"), and why the last push failed ("" if it did not).
  DurableVersion durable;
  std::string durable_error;
  int64_t next_push_ms = 0;  // steady clock: when an interval push is due (0: not set yet)
  // The guest's disk write count (DiskWriteCount) when the copy of the last
  // successful interval push was taken, in the QEMU running now (-1: none):
  // an interval push is skipped while the count has not moved.
  int64_t pushed_writes = -1;

  // Serializes durable pushes of this VM, so versions are published in the
  // order their copies were taken. Taken before op_mu only with try_lock.
  std::mutex push_mu;

  // Guarded by op_mu.
  std::unique_ptr<QemuProcess> qemu;
  // An incoming migration's stream (PrepareIncoming until FinishIncoming or
  // the VM is discarded). Guarded by op_mu.
  std::unique_ptr<MigrationTunnel> incoming_tunnel;
  // The incoming migration is a cold one (a stopped VM's disks only): its
  // QEMU never runs the guest and goes at FinishIncoming. Guarded by op_mu.
  bool cold_incoming = false;
  // The running QEMU has the boot stub for its kernel (vmm/boot_stub.h) and
  // ends at a guest reboot (state.json "boot_stub"); guest_reset: its exit
  // was such a reboot (RebootedGuest). Guarded by op_mu.
  bool boot_stub = false;
  bool guest_reset = false;

  void Set(VmState s, const std::string& e = "") {
    std::lock_guard<std::mutex> l(status_mu);
    state = s;
    error = e;
  }
  VmState State() const {
    std::lock_guard<std::mutex> l(status_mu);
    return state;
  }
  void SetMigration(const std::string& m) {
    std::lock_guard<std::mutex> l(status_mu);
    migration = m;
  }
  std::string Migration() const {
    std::lock_guard<std::mutex> l(status_mu);
    return migration;
  }
};

// --- helpers ----------------------------------------------------------------------

VmRunner::VmRunner(VmRunnerOptions options)
    : options_(std::move(options)), overlays_(options_.state_dir + "/overlay-templates") {
  if (!options_.runas.empty()) {
    if (struct passwd* pw = getpwnam(options_.runas.c_str())) {
      qemu_uid_ = static_cast<int>(pw->pw_uid);
      qemu_gid_ = static_cast<int>(pw->pw_gid);
    }
  }
  per_vm_uids_ = geteuid() == 0 && options_.vm_uid_base > 0 && options_.vm_uid_count > 0;
  if (per_vm_uids_) {
    spdlog::info("VMs run as uids {}..{}, one per VM", options_.vm_uid_base,
                 int64_t{options_.vm_uid_base} + options_.vm_uid_count - 1);
  } else if (geteuid() != 0) {
    spdlog::warn(
        "not root: every QEMU runs as the agent's own user; VMs on this host are not separated "
        "by uid (their NBD sockets and files are, as far as one user's processes can be)");
  } else {
    spdlog::warn("per-VM uids are off: every QEMU runs as {}",
                 options_.runas.empty() ? "root" : options_.runas);
  }
  if (!options_.cgroup_root.empty()) {
    auto cg = VmCgroups::Open(options_.cgroup_root);
    if (cg.ok()) {
      cgroups_ = std::move(cg).value();
      spdlog::info("each VM gets a cgroup under {} (memory.max, cpu.max = what was placed)",
                   cgroups_->dir());
    } else {
      spdlog::warn("no per-VM cgroups, VMs run without memory/CPU limits: {}", cg.error().message);
    }
  }
}

VmRunner::~VmRunner() {
  // Waited for outside the lock: a task needs its VM's op_mu, whose holder
  // may be about to call ReseedLater.
  std::vector<std::future<void>> tasks;
  {
    std::lock_guard<std::mutex> l(background_mu_);
    tasks.swap(background_);
  }
  for (auto& f : tasks) f.wait();
}

std::string VmRunner::VmDir(const std::string& id) const {
  return options_.state_dir + "/vms/" + id;
}

std::pair<int, int> VmRunner::QemuIds(const Vm& vm) const {
  if (vm.uid >= 0) return {vm.uid, vm.gid};
  return {qemu_uid_, qemu_gid_};
}

Status VmRunner::ChownForQemu(const Vm& vm, const std::string& path) {
  auto [uid, gid] = QemuIds(vm);
  if (uid < 0) return Status::Ok();
  if (chown(path.c_str(), static_cast<uid_t>(uid), static_cast<gid_t>(gid)) != 0)
    return MakeError(ErrorCode::kInternal, "chown " + path + ": " + strerror(errno));
  return Status::Ok();
}

Result<std::vector<NicConfig>> VmRunner::AttachNics(const Vm& vm, bool wait) {
  if (vm.spec.nics.empty()) return std::vector<NicConfig>{};
  if (!options_.networks)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "this host runs no virtual networks; VM " + vm.spec.id + " has network cards");
  if (!wait && !options_.networks->Endpoint()) return std::vector<NicConfig>{};
  auto [uid, gid] = QemuIds(vm);
  VMG_ASSIGN_OR_RETURN(auto nics, options_.networks->Attach(vm.spec.id, vm.spec.name, vm.spec.nics,
                                                            VmDir(vm.spec.id) + "/run", uid, gid));
  for (const ForwardInfo& f : LoadForwards(vm.spec.id)) {
    if (f.nic < 0 || static_cast<size_t>(f.nic) >= vm.spec.nics.size()) continue;
    auto again = options_.networks->AddForward(
        vm.spec.nics[static_cast<size_t>(f.nic)],
        ForwardRequest{f.nic, f.guest_port, f.listen_ip, f.listen_port});
    if (!again.ok())
      spdlog::warn("VM {}: forward {}:{} -> guest port {} is lost: {}", vm.spec.id, f.listen_ip,
                   f.listen_port, f.guest_port, again.error().message);
  }
  return nics;
}

std::vector<ForwardInfo> VmRunner::LoadForwards(const std::string& id) const {
  std::vector<ForwardInfo> out;
  auto text = ReadFile(VmDir(id) + "/forwards.json", 1 << 20);
  if (!text.ok()) return out;
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (!j.is_array()) return out;
  for (const auto& e : j)
    if (auto f = ForwardInfoFromJson(e); f.ok()) out.push_back(*f);
  return out;
}

Status VmRunner::SaveForwards(const std::string& id, const std::vector<ForwardInfo>& forwards) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& f : forwards) j.push_back(ToJson(f));
  return WriteFileAtomic(VmDir(id) + "/forwards.json", j.dump() + "\n", 0600);
}

Result<ForwardInfo> VmRunner::AddForward(const std::string& id, const ForwardRequest& request) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  RefreshLiveness(*vm);
  // A stopped VM's forward is recorded and opened when it starts (AttachNics):
  // how a cold migration's target takes over the forwards of the VM it got.
  const bool stopped = vm->State() == VmState::kStopped && !vm->qemu && vm->Migration().empty();
  if (!stopped) VMG_RETURN_IF_ERROR(RunningAndIdle(*vm));
  if (request.nic < 0 || static_cast<size_t>(request.nic) >= vm->spec.nics.size())
    return MakeError(ErrorCode::kInvalidArgument,
                     "VM " + id + " has no NIC " + std::to_string(request.nic));
  if (!options_.networks)
    return MakeError(ErrorCode::kFailedPrecondition, "this host runs no virtual networks");
  if (stopped) {
    const NicSpec& nic = vm->spec.nics[static_cast<size_t>(request.nic)];
    VMG_ASSIGN_OR_RETURN(ForwardInfo f, options_.networks->CheckForward(nic, request));
    std::vector<ForwardInfo> all = LoadForwards(id);
    for (const ForwardInfo& other : all)
      if (other.listen_ip == f.listen_ip && other.listen_port == f.listen_port)
        return MakeError(
            ErrorCode::kAlreadyExists,
            "VM " + id + " already forwards " + f.listen_ip + ":" + std::to_string(f.listen_port));
    all.push_back(f);
    if (Status st = SaveForwards(id, all); !st.ok())
      return ForUser(st.error(), "forward of VM " + id);
    return f;
  }
  VMG_ASSIGN_OR_RETURN(
      ForwardInfo f,
      options_.networks->AddForward(vm->spec.nics[static_cast<size_t>(request.nic)], request));
  std::vector<ForwardInfo> all = LoadForwards(id);
  all.push_back(f);
  if (Status st = SaveForwards(id, all); !st.ok()) {
    // Unrecorded, it would vanish at the next resume: take it back.
    (void)options_.networks->RemoveForward(vm->spec.nics[static_cast<size_t>(request.nic)],
                                           f.listen_ip, f.listen_port);
    return ForUser(st.error(), "forward of VM " + id);
  }
  return f;
}

Status VmRunner::RemoveForward(const std::string& id, int listen_port) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  std::vector<ForwardInfo> all = LoadForwards(id), kept;
  std::optional<ForwardInfo> gone;
  for (const auto& f : all) {
    if (f.listen_port == listen_port && !gone)
      gone = f;
    else
      kept.push_back(f);
  }
  if (!gone)
    return MakeError(ErrorCode::kNotFound,
                     "VM " + id + " has no forward on port " + std::to_string(listen_port));
  VMG_RETURN_IF_ERROR(SaveForwards(id, kept));
  if (options_.networks && static_cast<size_t>(gone->nic) < vm->spec.nics.size())
    // kNotFound: not active now (a stopped VM); the record is what counted.
    (void)options_.networks->RemoveForward(vm->spec.nics[static_cast<size_t>(gone->nic)],
                                           gone->listen_ip, gone->listen_port);
  return Status::Ok();
}

void VmRunner::ReattachNics() {
  std::vector<std::shared_ptr<Vm>> vms;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [id, vm] : vms_)
      if (!vm->spec.nics.empty()) vms.push_back(vm);
  }
  for (auto& vm : vms) {
    std::lock_guard<std::mutex> op(vm->op_mu);
    if (!vm->qemu) continue;  // attached again when it next starts
    if (auto r = AttachNics(*vm, false); !r.ok())
      spdlog::warn("VM {}: its network cards have no switch ports: {}", vm->spec.id,
                   r.error().message);
  }
}

HostImages::VmNbdEndpoint VmRunner::NbdEndpoint(const Vm& vm) const {
  auto [uid, gid] = QemuIds(vm);
  return {VmDir(vm.spec.id) + "/run/nbd.sock", uid, gid};
}

Result<std::vector<std::string>> VmRunner::AcquireData(const Vm& vm) {
  const VmSpec& s = vm.spec;
  std::vector<std::string> backing(s.data.size());
  if (s.data.empty()) return backing;
  if (!options_.images)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "datasets need an image server (this agent has no --image-server)");
  auto [uid, gid] = QemuIds(vm);
  for (size_t i = 0; i < s.data.size(); ++i) {
    if (s.data[i].blob.empty()) continue;
    auto b = options_.images->AcquireDisk(s.data[i].blob, DataExportUser(s.id, i), "",
                                          {DataDiskSocket(VmDir(s.id) + "/run", i), uid, gid});
    if (!b.ok()) {
      ReleaseData(s);
      return b.error().Wrap("dataset " + s.data[i].dataset);
    }
    backing[i] = *b;
  }
  return backing;
}

void VmRunner::ReleaseData(const VmSpec& spec) {
  if (!options_.images) return;
  for (size_t i = 0; i < spec.data.size(); ++i)
    if (!spec.data[i].blob.empty()) options_.images->ReleaseDisk(DataExportUser(spec.id, i));
}

std::vector<DataDiskConfig> VmRunner::DataDisks(const Vm& vm) const {
  std::vector<DataDiskConfig> disks;
  const std::string dir = VmDir(vm.spec.id);
  for (size_t i = 0; i < vm.spec.data.size(); ++i) {
    const DataDiskSpec& d = vm.spec.data[i];
    DataDiskConfig c;
    c.path = DataDiskPath(dir, i, d);
    c.format = d.blank_mb > 0 ? "raw" : "qcow2";
    c.readonly = !d.rw;
    if (!d.blob.empty()) c.nbd_socket = DataDiskSocket(dir + "/run", i);
    c.serial = DataDiskSerial(i);
    disks.push_back(std::move(c));
  }
  return disks;
}

int VmRunner::AllocateUidLocked() const {
  if (!per_vm_uids_) return -1;
  std::set<int> used;
  for (const auto& [id, vm] : vms_)
    if (vm->uid >= 0) used.insert(vm->uid);
  for (int slot = 0; slot < options_.vm_uid_count; ++slot)
    if (!used.count(options_.vm_uid_base + slot)) return options_.vm_uid_base + slot;
  return -2;
}

// What of an error may reach a user: its reason without host detail. QEMU's
// own output (appended after these markers by vmm/ and WaitGuestReady) is
// cut, and every absolute path (or json: backing string) is replaced.
std::string RedactForUser(const std::string& message) {
  std::string m = message;
  for (const char* marker : {"; qemu stderr:", "; qemu.log:", "; see "}) {
    if (size_t at = m.find(marker); at != std::string::npos) m.erase(at);
  }
  std::string out;
  size_t i = 0;
  while (i < m.size()) {
    bool token_start = i == 0 || std::isspace(static_cast<unsigned char>(m[i - 1])) ||
                       m[i - 1] == '\'' || m[i - 1] == '"' || m[i - 1] == '(' || m[i - 1] == '=';
    if (token_start && (m[i] == '/' || m.compare(i, 5, "json:") == 0)) {
      const bool json = m[i] == 'j';  // a json: string holds quotes; it ends at a space
      size_t end = i;
      while (end < m.size() && !std::isspace(static_cast<unsigned char>(m[end])) &&
             (json || (m[end] != '\'' && m[end] != '"' && m[end] != ')')))
        ++end;
      while (end > i + 1 && (m[end - 1] == ':' || m[end - 1] == ',' || m[end - 1] == ';')) --end;
      out += "<host path>";
      i = end;
      continue;
    }
    out += m[i++];
  }
  return out;
}

Error VmRunner::ForUser(const Error& e, const std::string& what) const {
  spdlog::warn("{}: {}", what, e.message);
  return MakeError(e.code,
                   what + " failed: " + RedactForUser(e.message) + " (details in the host's log)");
}

Status VmRunner::PersistState(Vm& vm) {
  nlohmann::json j;
  {
    std::lock_guard<std::mutex> l(vm.status_mu);
    j = {{"state", ToString(vm.state)},
         {"error", vm.error},
         {"has_checkpoint", vm.has_checkpoint},
         {"created_workspace", vm.created_workspace},
         {"ready_ms", vm.ready_ms},
         {"vmgenid", vm.vmgenid},
         {"disk_path", vm.disk_path},
         {"disk_format", vm.disk_format},
         {"migration", vm.migration}};
    if (!vm.durable.empty()) j["durable"] = ToJson(vm.durable);
  }
  j["uid"] = vm.uid;
  j["gid"] = vm.gid;
  j["nbd_depth"] = vm.nbd_depth;
  j["boot_stub"] = vm.boot_stub;
  return WriteFileAtomic(VmDir(vm.spec.id) + "/state.json", j.dump(2) + "\n", 0600);
}

// state.json records what the VM's in-memory state already says. While the
// agent runs, the memory is what List() and the heartbeats report, and the
// next transition writes the file again; a stale file matters only if the
// agent restarts before then, and Recover() re-checks QEMU's liveness
// (a VM recorded running whose QEMU is gone comes back stopped). Failing the
// operation instead would set what QEMU does apart from what we report, so
// a failed write is logged and counted (state_write_failures()).
void VmRunner::PersistStateOrCount(Vm& vm) {
  Status st = PersistState(vm);
  if (st.ok()) return;
  ++state_write_failures_;
  spdlog::warn("VM {}: writing state.json: {} (the in-memory state stays authoritative)",
               vm.spec.id, st.error().message);
}

VmStatus VmRunner::StatusOf(const Vm& vm) const {
  VmStatus s;
  s.id = vm.spec.id;
  s.owner_id = vm.spec.owner_id;
  s.name = vm.spec.name;
  s.vcpus = vm.spec.vcpus;
  s.memory_mb = vm.spec.memory_mb;
  std::lock_guard<std::mutex> l(vm.status_mu);
  s.state = ToString(vm.state);
  s.error = vm.error;
  s.has_checkpoint = vm.has_checkpoint;
  s.ready_ms = vm.ready_ms;
  s.vmgenid = vm.vmgenid;
  s.restart = vm.spec.restart;
  s.durable = vm.durable;
  return s;
}

Result<std::shared_ptr<VmRunner::Vm>> VmRunner::Find(const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = vms_.find(id);
  if (it == vms_.end()) return MakeError(ErrorCode::kNotFound, "VM " + id + " is not on this host");
  return it->second;
}

static Status QemuImg(const std::vector<std::string>& args) {
  std::vector<std::string> argv{"qemu-img"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = RunProcessChecked(argv, std::chrono::minutes(30));
  if (!r.ok()) return r.error();
  return Status::Ok();
}

static Result<std::string> CheckpointKind(const std::string& dir) {
  VMG_ASSIGN_OR_RETURN(std::string meta, ReadFile(dir + "/meta.json", 1 << 20));
  auto j = nlohmann::json::parse(meta, nullptr, false);
  if (!j.is_object() || !j.contains("kind") || !j["kind"].is_string())
    return MakeError(ErrorCode::kInvalidArgument, "checkpoint " + dir + " has no valid meta.json");
  return j["kind"].get<std::string>();
}

Status VmRunner::MaterializeBootFiles(const VmSpec& s, std::string* kernel, std::string* initrd) {
  if (!options_.images) return Status::Ok();
  if (auto k = s.blobs.find("kernel"); k != s.blobs.end()) {
    VMG_ASSIGN_OR_RETURN(*kernel, options_.images->Materialize(k->second, ".kernel", 0644));
  }
  if (auto i = s.blobs.find("initrd"); i != s.blobs.end()) {
    VMG_ASSIGN_OR_RETURN(*initrd, options_.images->Materialize(i->second, ".initrd", 0644));
  }
  return Status::Ok();
}

Result<std::string> VmRunner::BootStubPath() {
  const std::string path = options_.state_dir + "/blobs/boot-stub.elf";
  std::lock_guard<std::mutex> l(stub_mu_);
  VMG_RETURN_IF_ERROR(WriteBootStub(path));
  return path;
}

Status VmRunner::ResolveBlobs(Vm& vm) {
  VmSpec& s = vm.spec;
  if (!options_.images || !s.blobs.count("disk")) return Status::Ok();
  HostImages& images = *options_.images;
  VMG_ASSIGN_OR_RETURN(std::string backing,
                       images.AcquireDisk(s.blobs.at("disk"), s.id, s.start, NbdEndpoint(vm)));
  // Checkpoint files are shared by the VMs of this host: they name the
  // agent's socket; QEMU is pointed at the VM's own at launch (nbd_depth).
  const std::string shared_backing = images.BackingFor(s.blobs.at("disk").digest);
  s.image.disk = backing;
  s.image.format = "raw";
  // A resume or an incoming migration restores a guest whose kernel is in its
  // memory: the kernel and initrd are only named here, and fetched when a
  // QEMU of this VM boots (Launch).
  if (s.start == "resume" || vm.migration == "incoming") {
    if (auto k = s.blobs.find("kernel"); k != s.blobs.end())
      s.image.kernel = images.BlobPath(k->second, ".kernel");
    if (auto i = s.blobs.find("initrd"); i != s.blobs.end())
      s.image.initrd = images.BlobPath(i->second, ".initrd");
  } else {
    VMG_RETURN_IF_ERROR(MaterializeBootFiles(s, &s.image.kernel, &s.image.initrd));
  }
  if (s.start == "resume" && s.blobs.count("vm_ckpt_memory")) {
    // Another VM's checkpoint, possibly made on another host.
    VMG_ASSIGN_OR_RETURN(s.checkpoint_dir, images.MaterializeCheckpoint(
                                               s.blobs.at("vm_ckpt_memory"),
                                               s.blobs.at("vm_ckpt_disk"), shared_backing, "vm"));
  } else if (s.start == "resume" && s.blobs.count("ckpt_memory")) {
    VMG_ASSIGN_OR_RETURN(s.checkpoint_dir, images.MaterializeCheckpoint(s.blobs.at("ckpt_memory"),
                                                                        s.blobs.at("ckpt_disk"),
                                                                        shared_backing, "image"));
  }
  return Status::Ok();
}

Status VmRunner::PrepareDisk(Vm& vm, bool* created_workspace) {
  const VmSpec& s = vm.spec;
  std::string dir = VmDir(s.id);
  std::string disk;
  if (s.disk_mode == "clone") {
    disk = dir + "/disk.qcow2";
    if (s.start == "boot") {
      VMG_RETURN_IF_ERROR(overlays_.Create(s.image.disk, s.image.format, disk));
      if (options_.images && s.blobs.count("disk")) vm.nbd_depth = 1;
    } else {
      VMG_ASSIGN_OR_RETURN(std::string kind, CheckpointKind(s.checkpoint_dir));
      std::string src = s.checkpoint_dir + "/disk.qcow2";
      // overlay -> image checkpoint disk -> export, or a copy -> export
      if (options_.images && s.blobs.count("disk")) vm.nbd_depth = kind == "image" ? 2 : 1;
      if (kind == "image") {
        // An image's post-boot checkpoint lives as long as the image: link to it.
        VMG_RETURN_IF_ERROR(overlays_.Create(src, "qcow2", disk));
      } else {
        // Another VM's checkpoint can vanish with that VM: take a copy. Its
        // backing file is the image (or the image's checkpoint), which outlives it.
        auto r = RunProcessChecked({"cp", "--sparse=always", src, disk});
        if (!r.ok()) return r.error();
      }
    }
    VMG_RETURN_IF_ERROR(ChownForQemu(vm, disk));
    chmod(disk.c_str(), 0600);
  } else {
    disk = s.workspace_path;
    if (!FileExists(disk)) {
      VMG_RETURN_IF_ERROR(MakeDirs(fs::path(disk).parent_path().string(), 0755));
      std::string tmp = disk + ".partial";
      std::string src = s.image.disk, src_format = s.image.format;
      if (s.start == "boot" && options_.images && s.blobs.count("workspace")) {
        // A restart elsewhere (docs/host-failure.md): the workspace's latest
        // durable version, fetched with this host's grant.
        src = tmp + ".raw";
        src_format = "raw";
        if (Status c = options_.images->CopyTo(s.blobs.at("workspace"), src, s.durable.grant);
            !c.ok())
          return c.error().Wrap("workspace from its durable version");
      } else if (s.start == "boot" && options_.images && s.blobs.count("disk")) {
        // A full local copy: all chunks in parallel batches (with progress),
        // then one local conversion, instead of QEMU reading the export serially.
        src = tmp + ".raw";
        if (Status c = options_.images->CopyTo(s.blobs.at("disk"), src); !c.ok())
          return c.error().Wrap("workspace");
      }
      Status st = s.start == "boot"
                      ? QemuImg({"convert", "-f", src_format, "-O", "qcow2", src, tmp})
                      : QemuImg({"convert", "-f", "qcow2", "-O", "qcow2",
                                 s.checkpoint_dir + "/disk.qcow2", tmp});
      if (src != s.image.disk) unlink(src.c_str());
      if (!st.ok()) {
        unlink(tmp.c_str());
        return st.error().Wrap("copying the image into the workspace");
      }
      if (rename(tmp.c_str(), disk.c_str()) != 0)
        return MakeError(ErrorCode::kInternal, "rename workspace: " + std::string(strerror(errno)));
      *created_workspace = true;
    } else if (s.start == "resume") {
      return MakeError(ErrorCode::kFailedPrecondition,
                       "workspace " + disk +
                           " already exists; resuming a checkpoint into it would "
                           "overwrite its contents (boot it instead, or use a new workspace)");
    }
    VMG_RETURN_IF_ERROR(ChownForQemu(vm, disk));
    chmod(disk.c_str(), 0600);
  }
  VMG_RETURN_IF_ERROR(PrepareDataDisks(vm, /*incoming=*/false));
  std::lock_guard<std::mutex> l(vm.status_mu);
  vm.disk_path = disk;
  vm.disk_format = "qcow2";
  return Status::Ok();
}

Status VmRunner::PrepareDataDisks(Vm& vm, bool incoming) {
  const VmSpec& s = vm.spec;
  if (s.data.empty()) return Status::Ok();
  // Data attachments: an overlay over each version's export, or a new
  // empty file system (agent/guest_data.h). An incoming migration's new
  // file system is an empty file of its size instead: the mirror brings
  // its content.
  const std::string dir = VmDir(s.id);
  VMG_ASSIGN_OR_RETURN(std::vector<std::string> backing, AcquireData(vm));
  for (size_t i = 0; i < s.data.size(); ++i) {
    const std::string path = DataDiskPath(dir, i, s.data[i]);
    if (incoming && s.data[i].blank_mb > 0) {
      VMG_RETURN_IF_ERROR(MakeMirrorTargetFile(s.data[i], path));
    } else {
      VMG_RETURN_IF_ERROR(MakeDataDiskFile(s.data[i], path, backing[i]));
    }
    VMG_RETURN_IF_ERROR(ChownForQemu(vm, path));
    chmod(path.c_str(), 0600);
  }
  return Status::Ok();
}

// The drives a live migration mirrors: the boot disk and every writable
// data disk (read-only ones hold the same version on both hosts). Source
// and target derive the same list from the VM's spec.
static std::vector<std::string> MirroredDevices(const VmSpec& s, bool has_disk) {
  std::vector<std::string> out;
  if (has_disk) out.push_back("disk0");
  for (size_t i = 0; i < s.data.size(); ++i)
    if (s.data[i].rw) out.push_back("data" + std::to_string(i));
  return out;
}

// How many backing steps below `top` (an overlay the agent made) the user's
// image `user_disk` is; 0 if the chain does not reach it as a local file.
static int UntrustedDepth(const std::string& top, const std::string& user_disk) {
  std::string path = top;
  for (int depth = 1; depth <= 16; ++depth) {
    auto b = Qcow2BackingFile(path);
    if (!b.ok() || b->empty()) return 0;
    std::string next = (*b)[0] == '/' ? *b : (fs::path(path).parent_path() / *b).string();
    if (*b == user_disk || next == user_disk) return depth;
    path = next;
  }
  return 0;
}

Status VmRunner::Launch(Vm& vm, bool incoming, const std::string& memory_state,
                        bool migration_target, bool paused) {
  QemuConfig c;
  c.vm_id = vm.spec.id;
  c.vcpus = vm.spec.vcpus;
  c.memory_mb = static_cast<int>(vm.spec.memory_mb);
  c.kernel = vm.spec.image.kernel;
  c.initrd = vm.spec.image.initrd;
  c.append = vm.spec.image.append;
  // The kernel and initrd from the image server: a QEMU that boots needs
  // them; one that restores a guest gets the boot stub while they are not on
  // this host (ResolveBlobs), and then ends at a guest reboot (RefreshLiveness).
  bool stub = false;
  if (options_.images && vm.spec.blobs.count("kernel")) {
    if (!incoming && !migration_target) {
      VMG_RETURN_IF_ERROR(MaterializeBootFiles(vm.spec, &c.kernel, &c.initrd));
    } else {
      stub = !FileExists(c.kernel) || (!c.initrd.empty() && !FileExists(c.initrd));
    }
  }
  if (stub) {
    VMG_ASSIGN_OR_RETURN(c.kernel, BootStubPath());
    c.initrd.clear();
    c.reboot_exits = true;
  }
  {
    std::lock_guard<std::mutex> l(vm.status_mu);
    c.disk_path = vm.disk_path;
    c.disk_format = vm.disk_format;
  }
  // The user's image is opened with no backing file, whatever its header says.
  if (c.disk_format == "qcow2" && !vm.spec.image.disk.empty())
    c.disk_untrusted_depth = UntrustedDepth(c.disk_path, vm.spec.image.disk);
  c.run_dir = VmDir(vm.spec.id) + "/run";
  c.incoming = incoming || migration_target;
  // A resume hands QEMU its saved state at exec, so the load overlaps QEMU's
  // start (a migration target waits for its stream instead).
  const bool resume = incoming && !migration_target;
  if (resume) c.incoming_file = memory_state;
  // A migration target must not run before the source has stopped for good.
  c.start_paused = migration_target || paused;
  c.runas = options_.runas;
  if (vm.uid >= 0) {
    c.uid = vm.uid;
    c.gid = vm.gid;
  }
  if (vm.nbd_depth > 0) {
    c.nbd_socket = NbdEndpoint(vm).socket_path;
    c.nbd_depth = vm.nbd_depth;
  }
  if (cgroups_) {
    auto dir =
        cgroups_->Prepare(vm.spec.id, {.vcpus = vm.spec.vcpus, .memory_mb = vm.spec.memory_mb});
    if (dir.ok()) {
      c.cgroup_dir = *dir;
    } else {
      spdlog::warn("VM {} runs without a cgroup: {}", vm.spec.id, dir.error().message);
    }
  }
  c.accel = options_.accel;
  {
    // A new generation id makes a resumed guest reseed its RNG; a live
    // migration's target continues the source's generation.
    std::lock_guard<std::mutex> l(vm.status_mu);
    if (!migration_target || vm.vmgenid.empty()) vm.vmgenid = NewUuid();
    c.vmgenid = vm.vmgenid;
  }
  c.qemu_binary = options_.qemu_binary;
  VMG_ASSIGN_OR_RETURN(c.nics, AttachNics(vm, true));
  c.data_disks = DataDisks(vm);
  // Old sockets and logs from a previous run would confuse readiness checks.
  for (const char* f : {"qmp.sock", "qga.sock", "qemu.pid"}) unlink((c.run_dir + "/" + f).c_str());
  {
    std::lock_guard<std::mutex> l(vm.status_mu);
    vm.pushed_writes = -1;  // the write count is this QEMU's
  }
  VMG_ASSIGN_OR_RETURN(vm.qemu, QemuProcess::Launch(c, seconds(30)));
  vm.boot_stub = stub;
  vm.guest_reset = false;
  if (resume) {
    Status st = FinishResumeAtStart(vm.qemu->qmp(), seconds(120));
    if (!st.ok()) {
      (void)vm.qemu->Kill();
      vm.qemu.reset();
      return st.error().Wrap("restoring checkpoint " + memory_state);
    }
  }
  return Status::Ok();
}

Status VmRunner::WaitGuestReady(Vm& vm, Clock::time_point started) {
  auto deadline = started + options_.ready_timeout;
  Status st = GuestAgentClient::WaitReady(vm.qemu->qga_socket(), deadline);
  if (!st.ok()) {
    if (!vm.qemu->Alive())
      return MakeError(ErrorCode::kInternal, "QEMU exited during boot; see " + VmDir(vm.spec.id) +
                                                 "/run/qemu.log: " + vm.qemu->LogTail());
    return st.error().Wrap("the guest agent did not answer");
  }
  std::lock_guard<std::mutex> l(vm.status_mu);
  vm.ready_ms = std::chrono::duration_cast<milliseconds>(Clock::now() - started).count();
  return Status::Ok();
}

Status VmRunner::MountData(Vm& vm) {
  VMG_ASSIGN_OR_RETURN(auto ga, GuestAgentClient::Connect(vm.qemu->qga_socket(), seconds(5)));
  return MountGuestData(*ga, vm.spec.data, seconds(60));
}

// Clones of one checkpoint start with the same RNG state. What makes them
// differ is the fresh vmgenid of each launch: the guest kernel reseeds its
// RNG when it sees the change, before its agent answers (the tiny guest's
// dmesg shows "crng reseeded due to virtual machine fork"; machine_ops_test).
// Host randomness written to /dev/urandom only enters the guest's input pool
// (Linux reseeds from it later), so it is written after the VM is reported
// running instead of delaying every resume by its guest-agent round trips.
void VmRunner::InBackground(std::function<void()> task) {
  std::lock_guard<std::mutex> l(background_mu_);
  std::erase_if(background_, [](const std::future<void>& f) {
    return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  });
  background_.push_back(std::async(std::launch::async, std::move(task)));
}

void VmRunner::ReseedLater(const std::shared_ptr<Vm>& vm) {
  InBackground([vm] {
    std::lock_guard<std::mutex> op(vm->op_mu);
    if (!vm->qemu || vm->State() != VmState::kRunning) return;
    // Short timeouts: the guest agent answered a moment ago, and a stop or
    // delete of this VM waits for the lock meanwhile.
    auto ga = GuestAgentClient::Connect(vm->qemu->qga_socket(), seconds(2));
    if (!ga.ok()) return;
    Status st = (*ga)->ReseedRandom(seconds(2));
    if (!st.ok())
      spdlog::warn("VM {}: reseeding guest RNG failed: {}", vm->spec.id, st.error().message);
  });
}

// --- lifecycle ----------------------------------------------------------------------

void VmRunner::DiscardNewVm(Vm& vm) {
  // A failed create (or incoming migration) leaves nothing behind: no
  // process, no files, no record.
  const VmSpec& spec = vm.spec;
  vm.incoming_tunnel.reset();
  if (vm.qemu) (void)vm.qemu->Kill();
  vm.qemu.reset();
  if (vm.created_workspace) unlink(spec.workspace_path.c_str());
  if (options_.images) options_.images->ReleaseDisk(spec.id);
  ReleaseData(spec);
  if (options_.networks) options_.networks->Detach(spec.id, spec.nics);
  if (cgroups_) cgroups_->Remove(spec.id);
  (void)RemoveTree(VmDir(spec.id));
  std::lock_guard<std::mutex> l(mu_);
  vms_.erase(spec.id);
}

Status VmRunner::RunningAndIdle(Vm& vm) {
  RefreshLiveness(vm);
  VMG_RETURN_IF_ERROR(NotMigrating(vm));
  if (vm.State() != VmState::kRunning)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + vm.spec.id + " is " + ToString(vm.State()) + ", not running");
  return Status::Ok();
}

Status VmRunner::NotMigrating(const Vm& vm) const {
  std::string m = vm.Migration();
  if (m.empty()) return Status::Ok();
  return MakeError(ErrorCode::kFailedPrecondition,
                   "VM " + vm.spec.id + " is in a live migration (" + m + ")");
}

Result<std::shared_ptr<VmRunner::Vm>> VmRunner::RegisterNewVm(const VmSpec& spec,
                                                              const std::string& migration,
                                                              const std::string& what) {
  auto vm = std::make_shared<Vm>();
  vm->spec = spec;
  vm->state = VmState::kCreating;
  vm->migration = migration;
  std::lock_guard<std::mutex> l(mu_);
  if (vms_.count(spec.id))
    return MakeError(ErrorCode::kAlreadyExists, "VM " + spec.id + " already exists on this host");
  if (FileExists(VmDir(spec.id)))
    return ForUser(
        MakeError(ErrorCode::kAlreadyExists, "VM directory " + VmDir(spec.id) + " already exists"),
        what);
  int uid = AllocateUidLocked();
  if (uid == -2)
    return MakeError(ErrorCode::kResourceExhausted, "all " + std::to_string(options_.vm_uid_count) +
                                                        " per-VM uids of this host are in use");
  vm->uid = vm->gid = uid;
  vms_[spec.id] = vm;
  return vm;
}

Status VmRunner::MakeVmFiles(Vm& vm) {
  const std::string dir = VmDir(vm.spec.id);
  Status st = MakeDirs(dir + "/run", 0700);
  // The VM directory stays the agent's (QEMU must not replace spec.json or
  // state.json); QEMU's own files are below it: run/, disk.qcow2, checkpoint/.
  // With a per-VM uid only that VM's group may enter it.
  if (st.ok() && vm.gid >= 0 &&
      chown(dir.c_str(), static_cast<uid_t>(-1), static_cast<gid_t>(vm.gid)) != 0)
    st = MakeError(ErrorCode::kInternal, "chown " + dir + ": " + strerror(errno));
  if (st.ok()) chmod(dir.c_str(), vm.gid >= 0 ? 0710 : QemuIds(vm).first >= 0 ? 0711 : 0700);
  if (st.ok()) st = ChownForQemu(vm, dir + "/run");
  if (st.ok()) chmod((dir + "/run").c_str(), 0700);
  if (st.ok()) st = ResolveBlobs(vm);
  if (st.ok()) st = WriteFileAtomic(dir + "/spec.json", ToJson(vm.spec).dump(2) + "\n", 0600);
  if (st.ok()) st = PersistState(vm);
  return st;
}

Result<VmStatus> VmRunner::Create(const VmSpec& spec) {
  auto started = Clock::now();
  VMG_ASSIGN_OR_RETURN(auto vm, RegisterNewVm(spec, "", "create of VM " + spec.id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  auto fail = [&](const Error& e) -> Error {
    DiscardNewVm(*vm);
    return ForUser(e, "create of VM " + spec.id);
  };
  Status st = MakeVmFiles(*vm);
  auto t_files = Clock::now();
  bool created_ws = false;
  if (st.ok()) st = PrepareDisk(*vm, &created_ws);
  vm->created_workspace = created_ws;
  if (st.ok()) st = PersistState(*vm);
  if (!st.ok()) return fail(st.error());
  auto t_disk = Clock::now();
  bool resume = spec.start == "resume";
  st = Launch(*vm, resume, vm->spec.checkpoint_dir + "/memory.state");
  if (!st.ok()) return fail(st.error());
  auto t_qemu = Clock::now();
  st = WaitGuestReady(*vm, started);
  if (!st.ok()) return fail(st.error());
  auto t_ready = Clock::now();
  if (resume && !spec.nics.empty()) {
    // Resumed from an image's or another VM's checkpoint: the guest still
    // has that one's network state (agent/guest_network.h).
    st = ReconfigureGuestNetwork(vm->qemu->qga_socket(), spec.nics, seconds(60));
    if (!st.ok()) return fail(st.error());
  }
  if (!spec.data.empty()) {
    st = MountData(*vm);
    if (!st.ok()) return fail(st.error());
  }
  if (options_.images) options_.images->RecordPrefetch(spec.id);
  vm->Set(VmState::kRunning);
  PersistStateOrCount(*vm);
  if (resume) ReseedLater(vm);
  auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration_cast<milliseconds>(b - a).count();
  };
  spdlog::info(
      "VM {} running (pid {}, {} in {} ms: files {} ms, disk {} ms, QEMU{} {} ms, guest agent {} "
      "ms, "
      "after {} ms)",
      spec.id, vm->qemu->pid(), resume ? "resumed" : "booted", vm->ready_ms, ms(started, t_files),
      ms(t_files, t_disk), resume ? " + restore" : "", ms(t_disk, t_qemu), ms(t_qemu, t_ready),
      ms(t_ready, Clock::now()));
  return StatusOf(*vm);
}

Result<VmStatus> VmRunner::Stop(const std::string& id) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  RefreshLiveness(*vm);
  VMG_RETURN_IF_ERROR(NotMigrating(*vm));
  const VmState from = vm->State();
  auto t = LookupTransition(from, VmOp::kStop);
  if (!t.ok())
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + ToString(from) + ", not running");
  vm->Set(*t->transitional);
  PersistStateOrCount(*vm);
  // Flush the guest's page cache so the disk is consistent, then power off.
  if (auto ga = GuestAgentClient::Connect(vm->qemu->qga_socket(), seconds(2)); ga.ok())
    (void)(*ga)->Exec({"/bin/sync"}, "", seconds(10));
  // A persistent workspace's final write count (vCPUs stopped, I/O drained):
  // equal to the last interval push's, the durable version is this disk.
  int64_t writes = -1;
  if (vm->spec.disk_mode == "persistent" && !vm->spec.durable.empty() &&
      vmgrid::Stop(vm->qemu->qmp()).ok())
    if (auto w = DiskWriteCount(vm->qemu->qmp(), "disk0"); w.ok()) writes = *w;
  Status st = vm->qemu->Quit(seconds(10));
  vm->qemu.reset();
  if (!st.ok()) spdlog::warn("stop of VM {}: {}", id, st.error().message);
  // Once begun a stop does not fail: a QEMU that would not quit was killed.
  vm->Set(*t->success, st.ok() ? "" : "QEMU did not quit cleanly (details in the host's log)");
  PersistStateOrCount(*vm);
  // QEMU is gone: the workspace file is consistent and nobody writes it.
  PushDurable(*vm, vm->spec.workspace_path, "stop", writes);
  return StatusOf(*vm);
}

void VmRunner::PushDurable(Vm& vm, const std::string& qcow2, const std::string& trigger,
                           int64_t writes) {
  const VmSpec& s = vm.spec;
  if (s.disk_mode != "persistent" || s.durable.empty() || !options_.images) return;
  std::lock_guard<std::mutex> push(vm.push_mu);
  {
    // After the interval push that may have run meanwhile (push_mu).
    std::lock_guard<std::mutex> l(vm.status_mu);
    if (writes >= 0 && writes == vm.pushed_writes && vm.durable_error.empty()) {
      options_.images->CountUnchangedPush();
      return;
    }
  }
  PushDurableLocked(vm, qcow2, trigger, NowMs());
}

void VmRunner::PushDueWorkspaces() {
  if (!options_.images) return;
  std::vector<std::shared_ptr<Vm>> vms;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [id, vm] : vms_) vms.push_back(vm);
  }
  const int64_t now =
      std::chrono::duration_cast<milliseconds>(Clock::now().time_since_epoch()).count();
  for (auto& vm : vms) {
    const VmSpec& s = vm->spec;
    if (s.disk_mode != "persistent" || s.durable.empty() || s.durable.push_interval_s <= 0)
      continue;
    {
      std::lock_guard<std::mutex> l(vm->status_mu);
      if (vm->next_push_ms == 0) vm->next_push_ms = now + s.durable.push_interval_s * 1000;
      if (now < vm->next_push_ms) continue;
      vm->next_push_ms = now + s.durable.push_interval_s * 1000;
    }
    std::unique_lock<std::mutex> push(vm->push_mu, std::try_to_lock);
    if (!push.owns_lock()) continue;
    const std::string dir = VmDir(s.id) + "/durable-copy";
    const int64_t at = NowMs();
    Status st = Status::Ok();
    int64_t writes = -1;
    {
      // The VM's operations wait only for the copy's start (drive-backup
      // copies before write: a point-in-time image while the guest runs).
      std::unique_lock<std::mutex> op(vm->op_mu, std::try_to_lock);
      if (!op.owns_lock()) continue;  // an operation runs: next round
      RefreshLiveness(*vm);
      if (vm->State() != VmState::kRunning || !vm->Migration().empty() || !vm->qemu) continue;
      if (auto ga = GuestAgentClient::Connect(vm->qemu->qga_socket(), seconds(2)); ga.ok())
        (void)(*ga)->Exec({"/bin/sync"}, "", seconds(10));
      // Nothing written since the last interval push's copy (after the guest's
      // sync): that version is this disk; skip the copy, read and push.
      if (auto w = DiskWriteCount(vm->qemu->qmp(), "disk0"); w.ok()) writes = *w;
      bool unchanged = false;
      {
        std::lock_guard<std::mutex> l(vm->status_mu);
        unchanged = writes >= 0 && writes == vm->pushed_writes && vm->durable_error.empty();
      }
      if (unchanged) {
        options_.images->CountUnchangedPush();
        continue;
      }
      (void)RemoveTree(dir);
      st = MakeDirs(dir, 0700);
      if (st.ok()) st = ChownForQemu(*vm, dir);
      if (st.ok())
        st = BackupDiskTop(vm->qemu->qmp(), "disk0", dir + "/disk.qcow2", /*full=*/true,
                           std::chrono::minutes(30));
    }
    if (st.ok()) {
      if (PushDurableLocked(*vm, dir + "/disk.qcow2", "interval", at)) {
        std::lock_guard<std::mutex> l(vm->status_mu);
        vm->pushed_writes = writes;
      }
    } else {
      spdlog::warn("VM {}: copying its workspace for an interval push: {}", s.id,
                   st.error().message);
    }
    (void)RemoveTree(dir);
  }
}

bool VmRunner::PushDurableLocked(Vm& vm, const std::string& qcow2, const std::string& trigger,
                                 int64_t at) {
  const VmSpec& s = vm.spec;
  // The workspace's header is the guest's to choose once it owns QEMU: read
  // as untrusted (no backing or data file, qemu-img unprivileged, via an fd).
  const std::string dir = options_.state_dir + "/durable";
  Status st = MakeDirs(dir, 0711);
  const std::string raw = dir + "/" + s.id + ".raw";
  if (st.ok()) st = ConvertUntrustedQcow2ToRaw(qcow2, raw, std::chrono::minutes(30));
  Result<DurableVersion> v = st.ok() ? options_.images->PushWorkspace(raw, s.durable, trigger, at)
                                     : Result<DurableVersion>(st.error());
  unlink(raw.c_str());
  if (!v.ok()) {
    // The previous durable version stays the latest; the operation that
    // triggered the push does not fail for it (the next push retries).
    spdlog::warn("VM {}: durable push of workspace {} ({}) failed: {}", s.id, s.durable.name,
                 trigger, v.error().message);
    std::lock_guard<std::mutex> l(vm.status_mu);
    vm.durable_error = RedactForUser(v.error().message);
    return false;
  }
  {
    std::lock_guard<std::mutex> l(vm.status_mu);
    vm.durable = *v;
    vm.durable_error.clear();
  }
  PersistStateOrCount(vm);
  return true;
}

Status VmRunner::SaveCheckpoint(Vm& vm, const std::string& target_dir, bool shared) {
  std::string tmp = target_dir + ".new";
  (void)RemoveTree(tmp);
  VMG_RETURN_IF_ERROR(MakeDirs(tmp, 0700));
  VMG_RETURN_IF_ERROR(ChownForQemu(vm, tmp));
  // Pauses, copies the disk while paused, then saves memory (a completed
  // migration inactivates the block devices, so the copy cannot come after).
  Status st =
      CheckpointToFiles(vm.qemu->qmp(), "disk0", tmp + "/disk.qcow2",
                        vm.spec.disk_mode == "persistent", tmp + "/memory.state", seconds(1800));
  if (!st.ok()) {
    (void)RemoveTree(tmp);
    return st;
  }
  chmod((tmp + "/memory.state").c_str(), 0600);  // guest memory: the agent only
  chmod((tmp + "/disk.qcow2").c_str(), 0600);
  // QEMU wrote the disk copy as the VM's uid; from now on only the agent may
  // change the checkpoint (QEMU never reads it: a resume gets fds and the
  // VM's own overlay).
  for (const std::string& p : {tmp + "/disk.qcow2", tmp}) {
    if (lchown(p.c_str(), 0, 0) != 0 && errno != ENOENT && geteuid() == 0)
      return MakeError(ErrorCode::kInternal, "chown " + p + ": " + strerror(errno));
  }
  // An image's checkpoint is the backing file of its clones' overlays, which
  // their QEMUs (other uids) open; a VM's own checkpoint is the agent's.
  chmod(tmp.c_str(), shared ? 0755 : 0700);
  if (shared) chmod((tmp + "/disk.qcow2").c_str(), 0644);
  return Status::Ok();
}

static Status SwapInDir(const std::string& tmp, const std::string& target) {
  std::string old = target + ".old";
  (void)RemoveTree(old);
  if (FileExists(target) && rename(target.c_str(), old.c_str()) != 0)
    return MakeError(ErrorCode::kInternal, "rename " + target + ": " + strerror(errno));
  if (rename(tmp.c_str(), target.c_str()) != 0)
    return MakeError(ErrorCode::kInternal, "rename " + tmp + ": " + strerror(errno));
  (void)RemoveTree(old);
  return Status::Ok();
}

Result<VmStatus> VmRunner::Checkpoint(const std::string& id, bool leave_running) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  RefreshLiveness(*vm);
  VMG_RETURN_IF_ERROR(NotMigrating(*vm));
  const VmState from = vm->State();
  auto t =
      LookupTransition(from, leave_running ? VmOp::kCheckpointLeaveRunning : VmOp::kCheckpoint);
  if (!t.ok())
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + ToString(from) + ", not running");
  vm->Set(*t->transitional);
  PersistStateOrCount(*vm);
  // Flush guest buffers so the disk snapshot holds what the guest wrote.
  if (auto ga = GuestAgentClient::Connect(vm->qemu->qga_socket(), seconds(2)); ga.ok())
    (void)(*ga)->Exec({"/bin/sync"}, "", seconds(10));
  std::string target = VmDir(id) + "/checkpoint";
  Status st = SaveCheckpoint(*vm, target, /*shared=*/false);
  if (st.ok()) {
    nlohmann::json meta = {{"kind", "vm"},
                           {"vm_id", id},
                           {"image_id", vm->spec.image.id},
                           {"vcpus", vm->spec.vcpus},
                           {"memory_mb", vm->spec.memory_mb},
                           {"created_ms", NowMs()}};
    st = WriteFileAtomic(target + ".new/meta.json", meta.dump(2) + "\n");
  }
  if (st.ok()) st = SwapInDir(target + ".new", target);
  if (!st.ok()) {
    // The VM is paused (or dead); put it back as it was.
    if (vm->qemu && vm->qemu->Alive() && Cont(vm->qemu->qmp()).ok()) {
      vm->Set(t->failure, "checkpoint failed: " + RedactForUser(st.error().message));
    } else {
      vm->qemu.reset();
      vm->Set(VmState::kError,
              "checkpoint failed and QEMU is gone: " + RedactForUser(st.error().message));
    }
    PersistStateOrCount(*vm);
    return ForUser(st.error(), "checkpoint of VM " + id);
  }
  {
    std::lock_guard<std::mutex> l(vm->status_mu);
    vm->has_checkpoint = true;
  }
  if (leave_running) {
    Status c = Cont(vm->qemu->qmp());
    vm->Set(c.ok() ? *t->success : VmState::kError, c.ok() ? "" : c.error().message);
  } else {
    (void)vm->qemu->Quit(seconds(5));
    vm->qemu.reset();
    vm->Set(*t->success);
  }
  PersistStateOrCount(*vm);
  // The checkpoint's disk is a full copy of the workspace at the checkpoint
  // (drive-backup sync=full while paused): push it, the VM runs meanwhile.
  PushDurable(*vm, target + "/disk.qcow2", "checkpoint");
  return StatusOf(*vm);
}

Result<VmStatus> VmRunner::Resume(const std::string& id) {
  auto started = Clock::now();
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  RefreshLiveness(*vm);
  VMG_RETURN_IF_ERROR(NotMigrating(*vm));
  const VmState from = vm->State();
  auto t = LookupTransition(from, VmOp::kResume);
  if (!t.ok())
    return MakeError(
        ErrorCode::kFailedPrecondition,
        "VM " + id + " is " + ToString(from) + "; only a stopped or suspended VM can be resumed");
  bool restore = from == VmState::kSuspended;
  vm->Set(*t->transitional);
  PersistStateOrCount(*vm);
  Status st = Launch(*vm, restore, VmDir(id) + "/checkpoint/memory.state");
  if (st.ok()) st = WaitGuestReady(*vm, started);
  // A guest booted again mounts its datasets again (a restored one still has them).
  if (st.ok() && !restore && !vm->spec.data.empty()) st = MountData(*vm);
  if (!st.ok()) {
    if (vm->qemu) (void)vm->qemu->Kill();
    vm->qemu.reset();
    vm->Set(t->failure, "resume failed: " + RedactForUser(st.error().message));
    PersistStateOrCount(*vm);
    return ForUser(st.error(), "resume of VM " + id);
  }
  vm->Set(*t->success);
  PersistStateOrCount(*vm);
  if (restore) ReseedLater(vm);
  return StatusOf(*vm);
}

Status VmRunner::Destroy(const std::string& id, bool purge_workspace) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  // A half-arrived incoming migration's workspace is only a partial copy.
  if (vm->Migration() == "incoming" && vm->created_workspace) purge_workspace = true;
  vm->Set(VmState::kDeleting);
  PersistStateOrCount(*vm);
  if (vm->qemu) {
    (void)vm->qemu->Kill();
    vm->qemu.reset();
  }
  if (purge_workspace && vm->spec.disk_mode == "persistent") {
    unlink(vm->spec.workspace_path.c_str());
  } else if (vm->spec.disk_mode == "persistent" && vm->uid >= 0) {
    // The uid goes back to the pool: the next VM to get it must not own
    // this user's workspace.
    if (chown(vm->spec.workspace_path.c_str(), 0, 0) != 0 && errno != ENOENT)
      spdlog::warn("VM {}: chown of its workspace back to the agent: {}", id, strerror(errno));
    chmod(vm->spec.workspace_path.c_str(), 0600);
  }
  if (options_.images) options_.images->ReleaseDisk(id);
  ReleaseData(vm->spec);
  if (options_.networks) options_.networks->Detach(id, vm->spec.nics);
  if (cgroups_) cgroups_->Remove(id);
  if (Status rm = RemoveTree(VmDir(id)); !rm.ok()) return ForUser(rm.error(), "delete of VM " + id);
  std::lock_guard<std::mutex> l(mu_);
  vms_.erase(id);
  return Status::Ok();
}

Result<ExecResult> VmRunner::Exec(const std::string& id, const std::vector<std::string>& argv,
                                  const std::string& input, milliseconds timeout) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  RefreshLiveness(*vm);
  VMG_RETURN_IF_ERROR(NotMigrating(*vm));
  if (!Allows(vm->State(), VmOp::kExec))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + ToString(vm->State()) + ", not running");
  auto ga = GuestAgentClient::Connect(vm->qemu->qga_socket(), seconds(5));
  if (!ga.ok()) return ForUser(ga.error(), "exec in VM " + id);
  return (*ga)->Exec(argv, input, timeout);
}

Result<GuestFileChunk> VmRunner::ReadGuestFile(const std::string& id,
                                               const GuestFileRead& request) {
  VMG_RETURN_IF_ERROR(CheckGuestPath(request.path));
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  RefreshLiveness(*vm);
  VMG_RETURN_IF_ERROR(NotMigrating(*vm));
  if (!Allows(vm->State(), VmOp::kExec))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + ToString(vm->State()) + ", not running");
  auto ga = GuestAgentClient::Connect(vm->qemu->qga_socket(), seconds(5));
  if (!ga.ok()) return ForUser(ga.error(), "file copy in VM " + id);
  VMG_ASSIGN_OR_RETURN(GuestFileSlice slice,
                       (*ga)->ReadFileAt(request.path, request.offset,
                                         static_cast<size_t>(request.length), seconds(60)));
  if (slice.size > options_.max_copy_bytes)
    return MakeError(ErrorCode::kResourceExhausted,
                     "guest file " + request.path + " is " + std::to_string(slice.size) +
                         " bytes; vm cp copies at most " + std::to_string(options_.max_copy_bytes) +
                         " bytes on this host");
  return GuestFileChunk{request.path, request.offset, std::move(slice.data), slice.size, slice.eof};
}

Result<GuestFileWritten> VmRunner::WriteGuestFile(const std::string& id,
                                                  const GuestFileWrite& request) {
  VMG_RETURN_IF_ERROR(CheckGuestPath(request.path));
  if (request.offset + static_cast<int64_t>(request.data.size()) > options_.max_copy_bytes)
    return MakeError(
        ErrorCode::kResourceExhausted,
        "vm cp copies at most " + std::to_string(options_.max_copy_bytes) + " bytes on this host");
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  RefreshLiveness(*vm);
  VMG_RETURN_IF_ERROR(NotMigrating(*vm));
  if (!Allows(vm->State(), VmOp::kExec))
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id + " is " + ToString(vm->State()) + ", not running");
  auto ga = GuestAgentClient::Connect(vm->qemu->qga_socket(), seconds(5));
  if (!ga.ok()) return ForUser(ga.error(), "file copy in VM " + id);
  VMG_ASSIGN_OR_RETURN(int64_t size,
                       (*ga)->WriteFileAt(request.path, request.offset, request.data, seconds(60)));
  return GuestFileWritten{request.path, size};
}

Result<VmStatus> VmRunner::Get(const std::string& id) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  return StatusOf(*vm);
}

bool VmRunner::RebootedGuest(Vm& vm) {
  if (!vm.qemu || !vm.boot_stub || vm.State() != VmState::kRunning) return false;
  if (!vm.guest_reset) {
    // QEMU sent the event before it exited; it waits, read, in our socket.
    auto ev = vm.qemu->qmp().WaitEventIf(
        [](const nlohmann::json& e) { return e.is_object() && e.value("event", "") == "SHUTDOWN"; },
        milliseconds(200));
    vm.guest_reset =
        ev.ok() && (*ev)["data"].is_object() && (*ev)["data"].value("reason", "") == "guest-reset";
  }
  return vm.guest_reset;
}

Status VmRunner::RestartAfterReboot(Vm& vm) {
  spdlog::info("VM {}: the guest rebooted; starting it again with its image's kernel", vm.spec.id);
  vm.qemu.reset();
  // Launch fetches the kernel and initrd if this host lacks them. The VM
  // stays running: its guest boots as after any reboot.
  VMG_RETURN_IF_ERROR(Launch(vm, false, ""));
  PersistStateOrCount(vm);
  return Status::Ok();
}

void VmRunner::RestartAfterRebootLater(const std::shared_ptr<Vm>& vm) {
  InBackground([this, vm] {
    std::lock_guard<std::mutex> op(vm->op_mu);
    RefreshLiveness(*vm);
  });
}

void VmRunner::RefreshLiveness(Vm& vm) {
  // Called with op_mu held. A QEMU that exited on its own (guest poweroff,
  // crash, OOM kill) turns a running VM into a stopped one; a guest restored
  // with the boot stub that rebooted is started again.
  if (vm.qemu && !vm.qemu->Alive() && RebootedGuest(vm)) {
    Status st = RestartAfterReboot(vm);
    if (st.ok()) return;
    spdlog::warn("VM {}: starting it again after a guest reboot failed: {}", vm.spec.id,
                 st.error().message);
    vm.qemu.reset();
    vm.Set(VmState::kStopped,
           "the guest rebooted and starting it again failed: " + RedactForUser(st.error().message));
    PersistStateOrCount(vm);
    return;
  }
  if (vm.qemu && !vm.qemu->Alive()) {
    spdlog::warn("VM {}: QEMU exited unexpectedly; see {}/run/qemu.log: {}", vm.spec.id,
                 VmDir(vm.spec.id), vm.qemu->LogTail());
    vm.qemu.reset();
    vm.Set(VmState::kStopped, "QEMU exited unexpectedly (details in the host's log)");
    PersistStateOrCount(vm);
  }
}

std::vector<VmStatus> VmRunner::List() {
  std::vector<std::shared_ptr<Vm>> vms;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [id, vm] : vms_) vms.push_back(vm);
  }
  std::vector<VmStatus> out;
  for (auto& vm : vms) {
    // Only check liveness when no operation is in flight on this VM.
    std::unique_lock<std::mutex> op(vm->op_mu, std::try_to_lock);
    // A reboot's restart may fetch the kernel: not on the heartbeat's time.
    if (op.owns_lock() && vm->qemu && !vm->qemu->Alive() && RebootedGuest(*vm))
      RestartAfterRebootLater(vm);
    else if (op.owns_lock())
      RefreshLiveness(*vm);
    VmStatus s = StatusOf(*vm);
    if (op.owns_lock() && vm->qemu) s.pid = vm->qemu->pid();
    out.push_back(s);
  }
  return out;
}

Result<ConsoleLog> VmRunner::ReadConsole(const std::string& id, int64_t offset, int64_t max_bytes) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> l(console_mu_);
  return ConsoleLogFiles(RunPath(VmDir(id) + "/run", kConsoleLogName), VmDir(id))
      .Read(offset, max_bytes);
}

void VmRunner::TrimConsoleLogs() {
  std::vector<std::string> ids;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [id, vm] : vms_) ids.push_back(id);
  }
  for (const auto& id : ids) {
    std::lock_guard<std::mutex> l(console_mu_);
    auto trimmed = ConsoleLogFiles(RunPath(VmDir(id) + "/run", kConsoleLogName), VmDir(id))
                       .Trim(kConsoleLogMaxBytes, kConsoleLogKeepBytes);
    if (!trimmed.ok())
      spdlog::warn("VM {}: console log: {}", id, trimmed.error().message);
    else if (*trimmed)
      spdlog::info("VM {}: console log trimmed to its last {} bytes", id, kConsoleLogKeepBytes);
  }
}

Result<std::string> VmRunner::CheckpointDir(const std::string& id) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> l(vm->status_mu);
  if (!vm->has_checkpoint)
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " has no checkpoint");
  return VmDir(id) + "/checkpoint";
}

Result<CheckpointRef> VmRunner::PublishCheckpoint(const std::string& id) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  if (!options_.images)
    return MakeError(ErrorCode::kFailedPrecondition, "this agent has no image server");
  if (!vm->spec.data.empty())
    return MakeError(ErrorCode::kFailedPrecondition,
                     "VM " + id +
                         " has datasets attached: its checkpoint holds their mounts, "
                         "so it cannot be cloned elsewhere");
  std::string dir = VmDir(id) + "/checkpoint";
  {
    std::lock_guard<std::mutex> l(vm->status_mu);
    if (!vm->has_checkpoint)
      return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " has no checkpoint");
  }
  // A new checkpoint replaces the directory, and this record with it.
  if (auto text = ReadFile(dir + "/published.json", 1 << 16); text.ok()) {
    auto ref = CheckpointRefFromJson(nlohmann::json::parse(*text, nullptr, false), true);
    if (ref.ok()) {
      ref->dir = dir;
      return *ref;
    }
  }
  std::string tmp_dir = options_.state_dir + "/tmp";
  VMG_RETURN_IF_ERROR(MakeDirs(tmp_dir, 0755));
  std::string flat = tmp_dir + "/" + NewId("flat") + ".qcow2";
  // The VM's QEMU wrote this disk: once the guest owns QEMU, its header and
  // content are the guest's. qemu-img reads it as the VM's own uid (or the
  // unprivileged tool user), never through the backing file its header
  // names; a clone's copy is backed by the image's export, as before.
  ProcessOptions tool = UntrustedToolOptions(std::chrono::minutes(30));
  if (auto [uid, gid] = QemuIds(*vm); uid >= 0 && geteuid() == 0) {
    tool.drop_privileges = true;
    tool.uid = static_cast<uid_t>(uid);
    tool.gid = static_cast<gid_t>(gid);
  }
  const bool backed = vm->spec.disk_mode == "clone" && vm->spec.blobs.count("disk");
  const std::string image_backing =
      backed ? options_.images->BackingFor(vm->spec.blobs.at("disk").digest) : "";
  // A clone resumed from its image's post-boot checkpoint lies on that
  // checkpoint's disk: the published copy must hold that layer too, since
  // whoever resumes it lays it on the image alone (MaterializeCheckpoint).
  Result<std::string> kind =
      backed && vm->spec.start == "resume" && !vm->spec.checkpoint_dir.empty()
          ? CheckpointKind(vm->spec.checkpoint_dir)
          : Result<std::string>(std::string("none"));
  Status st = !kind.ok() ? Status(kind.error())
              : *kind == "image"
                  ? CopyUntrustedQcow2TopAndMiddle(dir + "/disk.qcow2",
                                                   vm->spec.checkpoint_dir + "/disk.qcow2", flat,
                                                   image_backing, "raw", tool)
                  : CopyUntrustedQcow2Top(dir + "/disk.qcow2", flat, image_backing, "raw", tool);
  Result<BlobRef> mem =
      st.ok() ? options_.images->Push(dir + "/memory.state", CheckpointBlobStem(id) + "-memory")
              : Result<BlobRef>(st.error());
  Result<BlobRef> disk = mem.ok() ? options_.images->Push(flat, CheckpointBlobStem(id) + "-disk")
                                  : Result<BlobRef>(mem.error());
  unlink(flat.c_str());
  if (!disk.ok()) return ForUser(disk.error(), "publishing the checkpoint of VM " + id);
  CheckpointRef out{"", *mem, *disk};
  // Only a cache of the versions: without it the next publish pushes again
  // (the image server keeps the chunks, so little is sent twice).
  if (Status st = WriteFileAtomic(dir + "/published.json", ToJson(out).dump() + "\n"); !st.ok()) {
    ++state_write_failures_;
    spdlog::warn("VM {}: recording its published checkpoint: {}", id, st.error().message);
  }
  out.dir = dir;
  return out;
}

Status VmRunner::MakeImageCheckpoint(const ImageFiles& image,
                                     const std::map<std::string, BlobRef>& blobs, int vcpus,
                                     int64_t memory_mb, const std::string& target_dir) {
  VmSpec spec;
  spec.id = NewId(kImageCheckpointVmPrefix);
  spec.name = spec.id;
  spec.vcpus = vcpus;
  spec.memory_mb = memory_mb;
  spec.image = image;
  spec.blobs = blobs;
  VMG_ASSIGN_OR_RETURN(VmStatus st, Create(spec));
  (void)st;
  VMG_ASSIGN_OR_RETURN(auto vm, Find(spec.id));
  Status result;
  {
    std::lock_guard<std::mutex> op(vm->op_mu);
    if (auto ga = GuestAgentClient::Connect(vm->qemu->qga_socket(), seconds(2)); ga.ok())
      (void)(*ga)->Exec({"/bin/sync"}, "", seconds(10));
    result = SaveCheckpoint(*vm, target_dir, /*shared=*/true);
    if (result.ok()) {
      nlohmann::json meta = {{"kind", "image"},
                             {"image_id", image.id},
                             {"vcpus", vcpus},
                             {"memory_mb", memory_mb},
                             {"created_ms", NowMs()}};
      result = WriteFileAtomic(target_dir + ".new/meta.json", meta.dump(2) + "\n");
    }
    if (result.ok()) result = SwapInDir(target_dir + ".new", target_dir);
  }
  (void)Destroy(spec.id, false);
  if (!result.ok()) return ForUser(result.error(), "checkpoint of image " + image.id);
  return result;
}

Result<DurableVersion> VmRunner::CommitData(const std::string& id, size_t index,
                                            const std::string& name) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  RefreshLiveness(*vm);
  VMG_RETURN_IF_ERROR(NotMigrating(*vm));
  const VmSpec& s = vm->spec;
  if (index >= s.data.size())
    return MakeError(ErrorCode::kNotFound,
                     "VM " + id + " has no data attachment " + std::to_string(index));
  const DataDiskSpec& d = s.data[index];
  if (!d.rw)
    return MakeError(ErrorCode::kFailedPrecondition,
                     "dataset " + d.dataset + " is attached read-only to VM " + id);
  if (!options_.images)
    return MakeError(ErrorCode::kFailedPrecondition, "this agent has no image server");
  const std::string blob = d.blob.empty() ? name : d.blob.name;
  if (blob.rfind("ds-", 0) != 0 || blob.find('/') != std::string::npos)
    return MakeError(ErrorCode::kInvalidArgument, "not a dataset's name: " + blob);
  const VmState state = vm->State();
  if (state != VmState::kRunning && state != VmState::kStopped && state != VmState::kSuspended)
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " is " + ToString(state) +
                                                         "; commit needs it running or stopped");
  const std::string path = DataDiskPath(VmDir(id), index, d);
  std::unique_ptr<GuestAgentClient> ga;
  if (state == VmState::kRunning) {
    // The guest flushes and holds the file system read-only while it is copied.
    VMG_ASSIGN_OR_RETURN(ga, GuestAgentClient::Connect(vm->qemu->qga_socket(), seconds(5)));
    VMG_RETURN_IF_ERROR(RemountGuestData(*ga, d, /*ro=*/true, seconds(60)));
  }
  std::string raw = path;
  Result<DurableVersion> pushed = MakeError(ErrorCode::kInternal, "not pushed");
  Status copied = Status::Ok();
  if (d.blank_mb == 0) {
    // The overlay and the version below it, as one raw file (-U: QEMU holds
    // the overlay open; the guest is not writing it).
    raw = VmDir(id) + "/data" + std::to_string(index) + ".commit.raw";
    copied = QemuImg({"convert", "-U", "-q", "-f", "qcow2", "-O", "raw", path, raw});
  }
  if (copied.ok())
    pushed = options_.images->PushWorkspace(raw, DurableSpec{blob, "", 0}, "commit", NowMs());
  if (raw != path) unlink(raw.c_str());
  if (ga) {
    Status back = RemountGuestData(*ga, d, /*ro=*/false, seconds(60));
    if (!back.ok())
      spdlog::warn("VM {}: after a commit of {}: {}", id, d.dataset, back.error().message);
  }
  if (!copied.ok()) return ForUser(copied.error(), "commit of dataset " + d.dataset);
  if (!pushed.ok()) return ForUser(pushed.error(), "commit of dataset " + d.dataset);
  return *pushed;
}

Status VmRunner::DeleteWorkspace(const std::string& path) {
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [id, vm] : vms_)
      if (vm->spec.workspace_path == path)
        return MakeError(ErrorCode::kFailedPrecondition, "workspace is in use by VM " + id);
  }
  if (unlink(path.c_str()) != 0 && errno != ENOENT)
    return ForUser(MakeError(ErrorCode::kInternal, "delete " + path + ": " + strerror(errno)),
                   "deleting the workspace");
  return Status::Ok();
}

// --- live migration -------------------------------------------------------------------

std::string VmRunner::MigrationKeyDir(const std::string& id) const {
  return VmDir(id) + "/run/mig-key";
}

Status VmRunner::PrepareIncomingDisk(Vm& vm, bool* created_workspace) {
  const VmSpec& s = vm.spec;
  std::string disk;
  if (s.disk_mode == "clone") {
    disk = VmDir(s.id) + "/disk.qcow2";
    // The source's top layer lies over the image, or over an image's
    // checkpoint disk; a VM checkpoint's disk was copied into that top layer.
    std::string backing = s.image.disk, format = s.image.format;
    Result<std::string> kind = s.start == "resume" && !s.checkpoint_dir.empty()
                                   ? CheckpointKind(s.checkpoint_dir)
                                   : Result<std::string>(std::string("none"));
    if (!kind.ok()) return kind.error();
    const bool image_checkpoint = *kind == "image";
    if (image_checkpoint) {
      backing = s.checkpoint_dir + "/disk.qcow2";
      format = "qcow2";
    }
    if (options_.images && s.blobs.count("disk")) vm.nbd_depth = image_checkpoint ? 2 : 1;
    VMG_RETURN_IF_ERROR(
        QemuImg({"create", "-q", "-f", "qcow2", "-b", backing, "-F", format, disk}));
  } else {
    // A workspace has no backing file; it was converted from the image and
    // never resized, so the image gives its virtual size: create an overlay
    // of the image and cut the backing reference (no data is read).
    disk = s.workspace_path;
    if (FileExists(disk))
      return MakeError(ErrorCode::kAlreadyExists,
                       "workspace " + disk + " already exists on the target host");
    VMG_RETURN_IF_ERROR(MakeDirs(fs::path(disk).parent_path().string(), 0755));
    std::string tmp = disk + ".partial";
    Status st =
        QemuImg({"create", "-q", "-f", "qcow2", "-b", s.image.disk, "-F", s.image.format, tmp});
    if (st.ok()) st = QemuImg({"rebase", "-q", "-u", "-b", "", "-f", "qcow2", tmp});
    if (st.ok() && rename(tmp.c_str(), disk.c_str()) != 0)
      st = MakeError(ErrorCode::kInternal, "rename workspace: " + std::string(strerror(errno)));
    if (!st.ok()) {
      unlink(tmp.c_str());
      return st.error().Wrap("creating the workspace of an incoming migration");
    }
    *created_workspace = true;
  }
  VMG_RETURN_IF_ERROR(ChownForQemu(vm, disk));
  chmod(disk.c_str(), 0600);
  std::lock_guard<std::mutex> l(vm.status_mu);
  vm.disk_path = disk;
  vm.disk_format = "qcow2";
  return Status::Ok();
}

Result<IncomingInfo> VmRunner::PrepareIncoming(const IncomingRequest& request) {
  const VmSpec& spec = request.spec;
  const std::string what = "incoming migration of VM " + spec.id;
  // Laid out as a create; state.json says creating, so an agent restart
  // before FinishIncoming removes it all (Recover).
  VMG_ASSIGN_OR_RETURN(auto vm, RegisterNewVm(spec, "incoming", what));
  std::lock_guard<std::mutex> op(vm->op_mu);
  {
    std::lock_guard<std::mutex> l(vm->status_mu);
    vm->vmgenid = request.vmgenid;  // "" (an older controller): Launch picks a new one
  }
  auto fail = [&](const Error& e) -> Error {
    DiscardNewVm(*vm);
    return ForUser(e, what);
  };
  Status st = MakeVmFiles(*vm);
  bool created_ws = false;
  if (st.ok()) st = PrepareIncomingDisk(*vm, &created_ws);
  vm->created_workspace = created_ws;
  if (st.ok()) st = PrepareDataDisks(*vm, /*incoming=*/true);
  if (st.ok()) st = PersistState(*vm);
  if (st.ok()) st = Launch(*vm, false, "", /*migration_target=*/true);
  if (!st.ok()) return fail(st.error());
  auto [uid, gid] = QemuIds(*vm);
  IncomingParams p;
  p.devices = MirroredDevices(spec, true);
  p.stream = !request.cold;
  vm->cold_incoming = request.cold;
  p.listen_host = request.listen_host;
  p.key = {request.credential.identity, request.credential.key_hex};
  p.key_dir = MigrationKeyDir(spec.id);
  p.qemu_uid = uid;
  p.qemu_gid = gid;
  RemoveKeyDir(p.key_dir);  // a leftover of an earlier attempt
  auto ep = StartIncoming(vm->qemu->qmp(), p, seconds(30), &vm->incoming_tunnel);
  if (!ep.ok()) return fail(ep.error());
  spdlog::info("VM {}: incoming migration prepared (NBD port {}, migration port {})", spec.id,
               ep->nbd_port, ep->migration_port);
  return IncomingInfo{ep->host, ep->nbd_port, ep->migration_port, ep->nbd_exports};
}

Result<MigrationResult> VmRunner::MigrateOut(const std::string& id,
                                             const MigrateOutRequest& request) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  RefreshLiveness(*vm);
  if (vm->State() == VmState::kStopped && !vm->qemu && vm->Migration().empty())
    return MigrateOutCold(*vm, request);
  VMG_RETURN_IF_ERROR(RunningAndIdle(*vm));
  vm->SetMigration("outgoing");
  PersistStateOrCount(*vm);
  auto [uid, gid] = QemuIds(*vm);
  OutgoingParams p;
  p.target = {request.target.host, request.target.nbd_port, request.target.migration_port,
              request.target.nbd_exports};
  {
    std::lock_guard<std::mutex> l(vm->status_mu);
    p.devices = MirroredDevices(vm->spec, !vm->disk_path.empty());
  }
  p.key = {request.credential.identity, request.credential.key_hex};
  p.key_dir = MigrationKeyDir(id);
  p.qemu_uid = uid;
  p.qemu_gid = gid;
  p.max_bandwidth = request.max_bandwidth;
  p.on_phase = [&id](MigrationPhase ph) { spdlog::info("VM {}: migration {}", id, ToString(ph)); };
  RemoveKeyDir(p.key_dir);
  auto stats = vmgrid::MigrateOut(vm->qemu->qmp(), p, std::chrono::minutes(30));
  if (!stats.ok()) {
    vm->SetMigration("");
    RefreshLiveness(*vm);
    PersistStateOrCount(*vm);
    return ForUser(stats.error(), "migration of VM " + id);
  }
  vm->SetMigration("migrated-out");
  PersistStateOrCount(*vm);
  spdlog::info("VM {} migrated out in {} ms (downtime {} ms, RAM {} bytes, disk {} bytes)", id,
               stats->total_ms, stats->downtime_ms, stats->ram_bytes, stats->disk_bytes);
  MigrationResult result{stats->total_ms,
                         stats->mirror_ms,
                         stats->qemu_total_ms,
                         stats->downtime_ms,
                         stats->ram_bytes,
                         stats->disk_bytes,
                         {}};
  result.forwards = LoadForwards(id);
  if (result.forwards.size() > 64) result.forwards.resize(64);
  return result;
}

Result<MigrationResult> VmRunner::MigrateOutCold(Vm& vm, const MigrateOutRequest& request) {
  const std::string& id = vm.spec.id;
  vm.SetMigration("outgoing");  // an agent restart now kills the helper QEMU (Recover)
  PersistStateOrCount(vm);
  auto [uid, gid] = QemuIds(vm);
  OutgoingParams p;
  p.target = {request.target.host, request.target.nbd_port, request.target.migration_port,
              request.target.nbd_exports};
  {
    std::lock_guard<std::mutex> l(vm.status_mu);
    p.devices = MirroredDevices(vm.spec, !vm.disk_path.empty());
  }
  p.key = {request.credential.identity, request.credential.key_hex};
  p.key_dir = MigrationKeyDir(id);
  p.qemu_uid = uid;
  p.qemu_gid = gid;
  p.on_phase = [&id](MigrationPhase ph) {
    spdlog::info("VM {}: cold migration {}", id, ToString(ph));
  };
  RemoveKeyDir(p.key_dir);
  // QEMU serves as the mirror's source only: paused from the start (-S),
  // the guest never runs here again.
  Status st = Launch(vm, false, "", false, /*paused=*/true);
  Result<MigrationStats> stats = st.ok()
                                     ? MirrorDisksOut(vm.qemu->qmp(), p, std::chrono::minutes(30))
                                     : Result<MigrationStats>(st.error());
  if (vm.qemu) {
    if (!vm.qemu->Quit(seconds(10)).ok()) (void)vm.qemu->Kill();
    vm.qemu.reset();
  }
  vm.Set(VmState::kStopped);
  vm.SetMigration(stats.ok() ? "migrated-out" : "");
  PersistStateOrCount(vm);
  if (!stats.ok()) return ForUser(stats.error(), "cold migration of VM " + id);
  spdlog::info("VM {} (stopped) migrated out in {} ms (disk {} bytes)", id, stats->total_ms,
               stats->disk_bytes);
  MigrationResult result{stats->total_ms, stats->mirror_ms, 0, 0, 0, stats->disk_bytes, {}};
  result.forwards = LoadForwards(id);  // the target records them; they open at its start
  if (result.forwards.size() > 64) result.forwards.resize(64);
  return result;
}

// A kernel oops with its call trace and register dump is 4-6 KB.
constexpr size_t kStuckConsoleBytes = 8192;

// What the host can see of a guest that stopped answering: QEMU's run
// state, each disk's I/O status and the ends of QEMU's and the console's logs.
static void LogStuckGuest(const std::string& id, QemuProcess& q) {
  std::string blocks;
  if (auto b = q.qmp().Execute("query-block", nlohmann::json::object(), seconds(5)); b.ok()) {
    for (const auto& d : b->is_array() ? *b : nlohmann::json::array())
      blocks +=
          " " + d.value("device", std::string("?")) + "=" + d.value("io-status", std::string("-"));
  }
  auto status = q.qmp().Execute("query-status", nlohmann::json::object(), seconds(5));
  // The guest agent's virtqueues (virtio-serial: 2/3 control in/out, 4/5 the
  // agent's port in/out) and the first disk's: indices that stand still
  // while requests are queued say which side stopped consuming.
  std::string queues;
  for (auto [dev, queue] :
       {std::pair{"vser0", 2}, {"vser0", 3}, {"vser0", 4}, {"vser0", 5}, {"vda", 0}}) {
    auto r = q.qmp().Execute(
        "x-query-virtio-queue-status",
        {{"path", std::string("/machine/peripheral/") + dev + "/virtio-backend"}, {"queue", queue}},
        seconds(5));
    queues += " " + std::string(dev) + "/" + std::to_string(queue) + "=" +
              (r.ok() ? r->dump() : r.error().message);
  }
  spdlog::warn(
      "VM {}: the guest does not answer; QEMU status {}, disks:{}; virtqueues:{}; QEMU log: {}; "
      "console: {}",
      id, status.ok() ? status->dump() : status.error().message, blocks, queues, q.LogTail(),
      q.ConsoleTail(kStuckConsoleBytes));
}

Result<VmStatus> VmRunner::FinishIncoming(const std::string& id) {
  auto started = Clock::now();
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  if (vm->Migration() != "incoming")
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " is not an incoming migration");
  if (vm->cold_incoming) {
    // The disks have arrived: the VM is stopped here now.
    Status st = vm->qemu ? FinishDiskExport(vm->qemu->qmp(), MigrationKeyDir(id), seconds(30))
                         : Status(MakeError(ErrorCode::kInternal, "its QEMU is gone"));
    if (st.ok() && !vm->qemu->Quit(seconds(10)).ok())
      st = MakeError(ErrorCode::kInternal, "its QEMU did not quit");
    if (!st.ok()) {
      DiscardNewVm(*vm);
      return ForUser(st.error(), "finishing the cold migration of VM " + id);
    }
    vm->qemu.reset();
    vm->cold_incoming = false;
    vm->SetMigration("");
    vm->Set(VmState::kStopped);
    PersistStateOrCount(*vm);
    return StatusOf(*vm);
  }
  Status st = vm->qemu ? vmgrid::FinishIncoming(vm->qemu->qmp(), MigrationKeyDir(id), seconds(60))
                       : Status(MakeError(ErrorCode::kInternal, "its QEMU is gone"));
  vm->incoming_tunnel.reset();  // the stream is complete (or failed)
  if (st.ok()) st = WaitGuestReady(*vm, started);
  if (!st.ok()) {
    if (vm->qemu) LogStuckGuest(id, *vm->qemu);
    DiscardNewVm(*vm);
    return ForUser(st.error(), "finishing the incoming migration of VM " + id);
  }
  vm->SetMigration("");
  vm->Set(VmState::kRunning);
  PersistStateOrCount(*vm);
  return StatusOf(*vm);
}

Status VmRunner::AbortIncoming(const std::string& id) {
  VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
  std::lock_guard<std::mutex> op(vm->op_mu);
  if (vm->Migration() != "incoming")
    return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " is not an incoming migration");
  DiscardNewVm(*vm);
  return Status::Ok();
}

Status VmRunner::ConfirmMigrateOut(const std::string& id, bool migrated) {
  {
    VMG_ASSIGN_OR_RETURN(auto vm, Find(id));
    std::lock_guard<std::mutex> op(vm->op_mu);
    if (vm->Migration() != "migrated-out")
      return MakeError(ErrorCode::kFailedPrecondition, "VM " + id + " has not migrated out");
    if (!migrated && !vm->qemu && vm->State() == VmState::kStopped) {
      // A cold migration's source: the VM stays stopped here.
      vm->SetMigration("");
      PersistStateOrCount(*vm);
      return Status::Ok();
    }
    if (!migrated) {
      // The target could not take over: the source runs on where it stopped.
      Status st = vm->qemu ? ResumeSource(vm->qemu->qmp())
                           : Status(MakeError(ErrorCode::kInternal, "its QEMU is gone"));
      vm->SetMigration("");
      if (!st.ok()) {
        if (vm->qemu) (void)vm->qemu->Kill();
        vm->qemu.reset();
        vm->Set(VmState::kError,
                "resuming after a failed migration: " + RedactForUser(st.error().message));
      }
      PersistStateOrCount(*vm);
      if (!st.ok()) return ForUser(st.error(), "resuming VM " + id + " after a failed migration");
      return Status::Ok();
    }
    if (vm->qemu) (void)vm->qemu->Quit(seconds(5));
    vm->qemu.reset();
  }
  // The VM runs elsewhere now: its files here, a persistent workspace's
  // stale copy included, go.
  return Destroy(id, /*purge_workspace=*/true);
}

// --- recovery -------------------------------------------------------------------------

Status VmRunner::Recover() {
  std::string root = options_.state_dir + "/vms";
  VMG_RETURN_IF_ERROR(MakeDirs(root, 0755));
  std::error_code ec;
  bool legacy_nbd = false;
  // QEMUs whose VM directory is gone (removed by an agent that could not
  // stop them first) belong to no VM: nothing could ever stop them.
  for (const std::string& id : KillOrphanQemus(root, seconds(5)))
    if (cgroups_) cgroups_->Remove(id);
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    if (!entry.is_directory()) continue;
    std::string id = entry.path().filename().string();
    std::string dir = entry.path().string();
    auto spec_text = ReadFile(dir + "/spec.json", 1 << 20);
    auto state_text = ReadFile(dir + "/state.json", 1 << 20);
    auto spec_json =
        spec_text.ok() ? nlohmann::json::parse(*spec_text, nullptr, false) : nlohmann::json();
    auto state_json =
        state_text.ok() ? nlohmann::json::parse(*state_text, nullptr, false) : nlohmann::json();
    auto spec = VmSpecFromJson(spec_json);
    std::string state = state_json.is_object() ? state_json.value("state", "") : "";
    if (!spec.ok() || state.empty() || state == "creating" || state == "deleting") {
      // An interrupted create or delete: finish it. A create is only complete
      // once it is running, so nothing of value is lost. Its QEMU is found by
      // its command line, not through QMP: one still starting, or stopped by
      // the lease fence, does not answer QMP, and one whose pid file is not
      // written yet has none; either would run on unrecorded once its
      // directory is gone (docs/vm-lifecycle.md, "After a crash").
      if (int n = KillQemusForRunDir(dir + "/run", seconds(5)); n > 0)
        spdlog::info("recover: killed {} QEMU process(es) of interrupted {} of {}", n,
                     state.empty() ? "create" : state, id);
      if (cgroups_) cgroups_->Remove(id);
      if (spec.ok() && state_json.is_object() && state_json.value("created_workspace", false) &&
          state == "creating")
        unlink(spec->workspace_path.c_str());
      spdlog::info("recover: removing leftover of interrupted {} of {}",
                   state.empty() ? "create" : state, id);
      (void)RemoveTree(dir);
      continue;
    }
    auto vm = std::make_shared<Vm>();
    vm->spec = *spec;
    auto int_field = [&](const char* key, int fallback) {
      auto it = state_json.find(key);
      return it != state_json.end() && it->is_number_integer() ? it->get<int>() : fallback;
    };
    vm->uid = int_field("uid", -1);
    vm->gid = int_field("gid", -1);
    vm->nbd_depth = int_field("nbd_depth", 0);
    if (auto b = state_json.find("boot_stub"); b != state_json.end() && b->is_boolean())
      vm->boot_stub = b->get<bool>();
    if (options_.images && spec->blobs.count("disk") && spec->disk_mode == "clone" &&
        !state_json.contains("nbd_depth") && !legacy_nbd) {
      // Started by an agent before per-VM sockets: its QEMU reconnects to
      // the host-wide socket. Its next launch gets a socket of its own.
      legacy_nbd = true;
      if (Status st = options_.images->AllowLegacyClients(qemu_gid_); !st.ok())
        spdlog::error("recover: VM {} cannot reconnect to its disk: {}", id, st.error().message);
    }
    if (options_.images && spec->blobs.count("disk") && vm->nbd_depth == 0 &&
        spec->disk_mode == "clone")
      vm->nbd_depth = spec->start == "resume" && spec->blobs.count("ckpt_memory") ? 2 : 1;
    if (options_.images && spec->blobs.count("disk")) {
      // Before adopting: QEMU's NBD client is waiting to reconnect to the
      // VM's own socket.
      auto backing = options_.images->AcquireDisk(spec->blobs.at("disk"), id, "", NbdEndpoint(*vm));
      if (!backing.ok())
        spdlog::error("recover: cannot export the disk of VM {}: {}", id, backing.error().message);
    }
    if (!spec->data.empty()) {
      // The same for its datasets' exports.
      if (auto d = AcquireData(*vm); !d.ok())
        spdlog::error("recover: cannot export the datasets of VM {}: {}", id, d.error().message);
    }
    vm->error = state_json.value("error", "");
    auto parsed = ParseVmState(state);
    if (parsed.ok()) {
      vm->state = *parsed;
    } else {
      // Not written by us (state.json is the agent's): unless its QEMU runs,
      // treat it as a VM that stopped while the agent was away.
      spdlog::warn("recover: VM {}: {}", id, parsed.error().message);
      vm->state = VmState::kStopped;
      vm->error = "unknown state '" + state + "' in state.json after an agent restart";
    }
    vm->has_checkpoint =
        state_json.value("has_checkpoint", false) && FileExists(dir + "/checkpoint/meta.json");
    vm->created_workspace = state_json.value("created_workspace", false);
    if (auto d = state_json.find("durable"); d != state_json.end()) {
      if (auto v = DurableVersionFromJson(*d); v.ok()) vm->durable = *v;
    }
    if (state_json["ready_ms"].is_number_integer())
      vm->ready_ms = state_json["ready_ms"].get<int64_t>();
    vm->disk_path = state_json.value("disk_path", "");
    vm->disk_format = state_json.value("disk_format", "qcow2");
    if (state_json["vmgenid"].is_string()) vm->vmgenid = state_json["vmgenid"].get<std::string>();
    const std::string migration = state_json.value("migration", "");
    auto q = QemuProcess::Adopt(dir + "/run", seconds(5));
    // A QEMU that runs but cannot be adopted answers no QMP: a previous
    // agent's lease fence stopped it (SIGSTOP) when that agent's lease ran
    // out, or it is stuck. Nothing could manage it: left alone, it would
    // stay on with the VM recorded stopped (and, once the VM is destroyed,
    // as a process of no VM at all). It is killed, found by its command
    // line like an interrupted create's (docs/vm-lifecycle.md, "After a crash").
    int unadoptable = 0;
    if (!q.ok()) {
      unadoptable = KillQemusForRunDir(dir + "/run", seconds(5));
      if (unadoptable > 0)
        spdlog::warn("recover: killed the QEMU of VM {}: it cannot be adopted ({})", id,
                     q.error().message);
    }
    if (vm->state == VmState::kStopped &&
        (migration == "outgoing" || migration == "migrated-out")) {
      // A cold migration's source: its QEMU only served the mirror (paused
      // since launch). Done or not, it goes; the VM stays stopped here and a
      // completed copy waits for the controller's ConfirmMigrateOut.
      if (q.ok()) (void)(*q)->Kill();
      KillQemusForRunDir(dir + "/run", seconds(5));
      RemoveKeyDir(MigrationKeyDir(id));
      if (migration == "migrated-out") vm->migration = "migrated-out";
      spdlog::info("recover: VM {} was stopped and migrating out ({})", id, migration);
    } else if (q.ok() && (migration == "outgoing" || migration == "migrated-out")) {
      // A migration source: if the migration completed, the target may hold
      // the VM (paused until the controller finishes it), so this copy stays
      // paused until ConfirmMigrateOut says which one lives on; otherwise
      // what was in flight is cancelled and the VM runs on here.
      vm->qemu = std::move(q).value();
      auto completed = RecoverOutgoing(vm->qemu->qmp());
      if (completed.ok() && *completed) {
        vm->state = VmState::kRunning;
        vm->migration = "migrated-out";
      } else if (auto now = QueryStatus(vm->qemu->qmp());
                 completed.ok() && now.ok() && *now == "running") {
        vm->state = VmState::kRunning;
        vm->error = "a migration was interrupted by an agent restart";
      } else {
        (void)vm->qemu->Kill();
        vm->qemu.reset();
        vm->state = VmState::kStopped;
        vm->error = "a migration was interrupted by an agent restart and QEMU could not resume";
      }
      spdlog::info("recover: VM {} was migrating out: {}", id,
                   vm->migration.empty() ? "runs here again" : "waits for the controller");
      if (vm->qemu)
        if (auto r = AttachNics(*vm, false); !r.ok())
          spdlog::warn("recover: VM {}: its network cards have no switch ports: {}", id,
                       r.error().message);
    } else if (q.ok()) {
      vm->qemu = std::move(q).value();
      auto status = QueryStatus(vm->qemu->qmp());
      std::string qs = status.ok() ? *status : "";
      if (qs == "running") {
        vm->state = VmState::kRunning;
      } else if (qs == "paused" || qs == "postmigrate" || qs == "finish-migrate") {
        // Interrupted checkpoint: the VM was paused for it; let it run again.
        (void)Cont(vm->qemu->qmp());
        vm->state = VmState::kRunning;
        vm->error = "a checkpoint was interrupted by an agent restart";
      } else {
        // Interrupted restore or unknown state: the process is useless.
        (void)vm->qemu->Kill();
        vm->qemu.reset();
        vm->state = vm->has_checkpoint ? VmState::kSuspended : VmState::kStopped;
        vm->error = "QEMU was in state '" + qs + "' after an agent restart";
      }
      spdlog::info("recover: adopted VM {} (pid {}, {})", id, vm->qemu ? vm->qemu->pid() : 0,
                   ToString(vm->state));
      // Its QEMU still sends to its ports' paths: bind them again (now, if
      // the switches run from the saved plan, else at the first plan).
      if (vm->qemu)
        if (auto r = AttachNics(*vm, false); !r.ok())
          spdlog::warn("recover: VM {}: its network cards have no switch ports: {}", id,
                       r.error().message);
    } else if (parsed.ok() && (*parsed == VmState::kRunning || IsTransitional(*parsed))) {
      // (creating and deleting were finished above.)
      vm->state = *parsed == VmState::kCheckpointing || *parsed == VmState::kResuming
                      ? (vm->has_checkpoint ? VmState::kSuspended : VmState::kStopped)
                      : VmState::kStopped;
      if (unadoptable > 0)
        vm->error =
            "QEMU answered no monitor after an agent restart (stopped by the lease fence while "
            "the agent was down?) and was killed";
      else if (state != "stopping")
        vm->error = "QEMU exited while the agent was down";
      spdlog::warn("recover: VM {} was {} but its QEMU is gone", id, state);
    }
    PersistStateOrCount(*vm);
    std::lock_guard<std::mutex> l(mu_);
    vms_[id] = vm;
  }
  return Status::Ok();
}

}  // namespace vmgrid
