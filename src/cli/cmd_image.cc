// `vmgrid image ...`: import (upload with progress), list, show, rm,
// checkpoint.
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "cli/command.h"
#include "cli/exit_codes.h"
#include "cli/format.h"
#include "client/api_client.h"
#include "common/result.h"
#include "common/util.h"
#include "common/vm_state.h"
#include "images/image_file.h"

namespace vmgrid::cli {
namespace {

const std::vector<std::string> kImageHeaders = {"ID",   "NAME",  "OWNER",      "STATE", "FORMAT",
                                                "SIZE", "VSIZE", "CHECKPOINT", "AGE"};
std::vector<std::string> ImageRow(const json& i) {
  std::string cp = "-";
  if (i.is_object() && i.contains("checkpoint") && i["checkpoint"].is_object()) {
    const json& c = i["checkpoint"];
    cp = Str(c, "state");
    if (cp == "ready" && Num(c, "memory_mb")) cp += " (" + MemStr(c, "memory_mb") + ")";
  }
  return {Str(i, "id"),
          Str(i, "name"),
          Str(i, "owner"),
          Str(i, "state"),
          Str(i, "format"),
          BytesStr(i, "size_bytes"),
          BytesStr(i, "virtual_size_bytes"),
          cp,
          AgeStr(i, "created_at")};
}

std::string CheckpointState(const json& image) {
  if (image.is_object() && image.contains("checkpoint") && image["checkpoint"].is_object()) {
    return StateOf(image["checkpoint"]);
  }
  return "";
}

// Polls GET /v1/images/ID every 0.5 s until checkpoint.state is ready or
// error. Returns the final image, or an error (kTimeout, kInternal for a
// failed checkpoint with its message).
Result<json> WaitCheckpoint(Ctx& ctx, const ApiClient& client, const std::string& id,
                            bool interruptible) {
  const std::string path = "/v1/images/" + PathEscape(id);
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(ctx.g.wait_timeout_s);
  StatusLine status(ctx.io);
  int unavailable_streak = 0;
  while (true) {
    if (interruptible && g_interrupted.load()) {
      status.Finish("");
      return MakeError(ErrorCode::kInternal, "interrupted");
    }
    auto got = client.Get(path);
    if (!got.ok()) {
      if (got.error().code == ErrorCode::kUnavailable && ++unavailable_streak < 5 &&
          Clock::now() < deadline) {
        std::this_thread::sleep_for(kImagePollInterval);
        continue;
      }
      status.Finish("");
      return got.error().Wrap("while waiting for the checkpoint of " + id);
    }
    unavailable_streak = 0;
    const json& image = *got;
    const std::string state = CheckpointState(image);
    const double elapsed = Seconds(Clock::now() - start);
    if (state == "ready") {
      status.Finish("checkpoint of " + id + " ready (" + FormatElapsed(elapsed) + ")");
      return image;
    }
    if (state == "error") {
      status.Finish("");
      std::string e = Str(image["checkpoint"], "error");
      return MakeError(ErrorCode::kInternal,
                       "checkpoint of " + id + " failed: " + (e == "-" ? "no error message" : e));
    }
    if (state.empty()) {
      status.Finish("");
      return MakeError(ErrorCode::kInternal,
                       "image " + id + " has no checkpoint in progress (was it removed?)");
    }
    if (Clock::now() >= deadline) {
      status.Finish("");
      return MakeError(ErrorCode::kTimeout,
                       "timed out after " + std::to_string(ctx.g.wait_timeout_s) +
                           "s waiting for the checkpoint of " + id + " (still " + state +
                           "); check with `vmgrid image show " + id + "`");
    }
    status.Update("checkpoint of " + id + " " + state + "\u2026 " + FormatElapsed(elapsed), true);
    std::this_thread::sleep_for(kImagePollInterval);
  }
}

struct ImportArgs {
  std::string name;
  std::string dir;
  std::string disk;
  std::string format;
  std::string kernel;
  std::string initrd;
  std::optional<std::string> append;
  std::string min_memory;
  bool checkpoint = false;
  std::string checkpoint_memory;
};

std::string JoinPath(const std::string& dir, const std::string& file) {
  if (file.empty() || file[0] == '/') return file;
  if (dir.empty() || dir.back() == '/') return dir + file;
  return dir + "/" + file;
}

struct ImportPlan {
  std::string disk, format, kernel, initrd;
  std::optional<std::string> append;
  std::optional<uint64_t> min_memory_mb;
};

// Builds the plan from DIR/manifest.json or the --disk flags. Errors are
// usage errors (kInvalidArgument).
Result<ImportPlan> PlanImport(const ImportArgs& a) {
  ImportPlan p;
  if (!a.dir.empty()) {
    if (!a.disk.empty() || !a.kernel.empty() || !a.initrd.empty() || !a.format.empty()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "give either DIR (with manifest.json) or --disk/--kernel/--initrd/--format, "
                       "not both");
    }
    if (!IsDirectory(a.dir)) {
      return MakeError(ErrorCode::kInvalidArgument,
                       a.dir +
                           " is not a directory (expected a directory with manifest.json, "
                           "as made by guest/build-tiny.sh)");
    }
    const std::string manifest_path = JoinPath(a.dir, "manifest.json");
    auto text = ReadFile(manifest_path, 1 << 20);
    if (!text.ok()) {
      return MakeError(ErrorCode::kInvalidArgument, "cannot read " + manifest_path);
    }
    json m = json::parse(*text, nullptr, false);
    if (m.is_discarded() || !m.is_object()) {
      return MakeError(ErrorCode::kInvalidArgument, manifest_path + " is not a JSON object");
    }
    auto field = [&](const char* key) -> std::string {
      if (m.contains(key) && m[key].is_string()) return m[key].get<std::string>();
      return "";
    };
    if (field("disk").empty()) {
      return MakeError(ErrorCode::kInvalidArgument, manifest_path + " has no \"disk\" file name");
    }
    p.disk = JoinPath(a.dir, field("disk"));
    p.format = field("disk_format");
    if (!field("kernel").empty()) p.kernel = JoinPath(a.dir, field("kernel"));
    if (!field("initrd").empty()) p.initrd = JoinPath(a.dir, field("initrd"));
    if (m.contains("append") && m["append"].is_string()) p.append = m["append"].get<std::string>();
    if (m.contains("min_memory_mb")) {
      auto v = Num(m, "min_memory_mb");
      if (!v) {
        return MakeError(ErrorCode::kInvalidArgument,
                         manifest_path + ": min_memory_mb must be a non-negative number");
      }
      if (*v > 0) p.min_memory_mb = *v;
    }
  } else {
    if (a.disk.empty()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "give a directory with manifest.json, or --disk FILE");
    }
    p.disk = a.disk;
    p.format = a.format;
    p.kernel = a.kernel;
    p.initrd = a.initrd;
  }
  if (a.append) p.append = a.append;
  if (!a.min_memory.empty()) {
    auto mb = ParseMemoryMb(a.min_memory);
    if (!mb.ok()) return mb.error().Wrap("--min-memory-mb");
    p.min_memory_mb = *mb;
  }
  if (!p.initrd.empty() && p.kernel.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "an initrd needs a kernel (--kernel)");
  }
  if (p.append && p.kernel.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "a kernel command line (--append) needs a kernel (--kernel)");
  }
  for (const std::string* f : {&p.disk, &p.kernel, &p.initrd}) {
    if (!f->empty() && !IsRegularFile(*f)) {
      return MakeError(ErrorCode::kInvalidArgument, *f + ": no such file");
    }
  }
  if (p.format.empty()) {
    auto sniffed = SniffDiskFormat(p.disk);  // what the controller checks it against
    if (!sniffed.ok()) return sniffed.error();
    p.format = *sniffed;
  }
  if (p.format != "raw" && p.format != "qcow2") {
    return MakeError(ErrorCode::kInvalidArgument,
                     "disk format '" + p.format + "' is not supported (raw or qcow2)");
  }
  return p;
}

std::string Mb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", bytes / 1e6);
  return buf;
}

// Uploads one file with a progress line; returns the API answer.
Result<json> UploadFile(Ctx& ctx, const ApiClient& client, const std::string& image_id,
                        const std::string& kind, const std::string& file) {
  StatusLine status(ctx.io);
  const auto start = Clock::now();
  uint64_t last_total = 0;
  auto progress = [&](uint64_t sent, uint64_t total) {
    last_total = total;
    if (g_interrupted.load()) return false;
    const double elapsed = Seconds(Clock::now() - start);
    const double rate = elapsed > 0 ? static_cast<double>(sent) / elapsed : 0;
    const int pct = total ? static_cast<int>(sent * 100 / total) : 100;
    status.Update("uploading " + kind + " " + std::to_string(pct) + "% " +
                  Mb(static_cast<double>(sent)) + "/" + Mb(static_cast<double>(total)) + " MB " +
                  Mb(rate) + " MB/s");
    return true;
  };
  auto res =
      client.PutFile("/v1/images/" + PathEscape(image_id) + "/files/" + kind, file, progress);
  if (!res.ok()) {
    status.Finish("");
    if (g_interrupted.load()) return MakeError(ErrorCode::kInternal, "interrupted");
    return res.error().Wrap("uploading " + kind + " " + file);
  }
  const double elapsed = Seconds(Clock::now() - start);
  const double rate = elapsed > 0 ? static_cast<double>(last_total) / elapsed : 0;
  status.Finish("uploaded " + kind + ": " + Mb(static_cast<double>(last_total)) + " MB in " +
                FormatElapsed(elapsed) + " (" + Mb(rate) + " MB/s)");
  return res;
}

int CmdImageImport(Ctx& ctx, const ImportArgs& a) {
  auto plan_or = PlanImport(a);
  if (!plan_or.ok()) return UsageError(ctx, plan_or.error().message, "image import");
  const ImportPlan& p = *plan_or;
  std::optional<uint64_t> cp_memory;
  if (!a.checkpoint_memory.empty()) {
    auto mb = ParseMemoryMb(a.checkpoint_memory);
    if (!mb.ok())
      return UsageError(ctx, "--checkpoint-memory-mb: " + mb.error().message, "image import");
    cp_memory = *mb;
  }
  auto client_or = MakeClient(ctx);
  if (!client_or.ok()) return Fail(ctx, client_or.error());
  const ApiClient& client = *client_or;

  SigintGuard sigint;
  json create = {{"name", a.name},
                 {"format", p.format},
                 {"has_kernel", !p.kernel.empty()},
                 {"has_initrd", !p.initrd.empty()}};
  if (p.append) create["append"] = *p.append;
  if (p.min_memory_mb) create["min_memory_mb"] = *p.min_memory_mb;
  auto created = client.Post("/v1/images", create);
  if (!created.ok())
    return Fail(ctx, created.error().Wrap("cannot create image " + a.name), "image");
  const std::string id = IdOr(*created, a.name);

  // From here on, a failure removes the half-imported image.
  auto fail_and_clean = [&](const Error& e) {
    Error err = e;
    const bool interrupted = g_interrupted.load();
    if (interrupted) err = MakeError(ErrorCode::kInternal, "interrupted");
    auto del = client.Delete("/v1/images/" + PathEscape(id));
    int code = Fail(ctx, err.Wrap("importing image " + a.name));
    if (del.ok()) {
      ctx.io.err << "  removed the half-imported image " << id << std::endl;
    } else {
      ctx.io.err << "warning: could not remove the half-imported image " << id << ": "
                 << del.error().message << "; remove it with `vmgrid image rm " << id << "`"
                 << std::endl;
    }
    return interrupted ? 130 : code;
  };

  std::vector<std::pair<std::string, std::string>> files = {{"disk", p.disk}};
  if (!p.kernel.empty()) files.emplace_back("kernel", p.kernel);
  if (!p.initrd.empty()) files.emplace_back("initrd", p.initrd);
  for (const auto& [kind, file] : files) {
    auto up = UploadFile(ctx, client, id, kind, file);
    if (!up.ok()) return fail_and_clean(up.error());
  }
  if (g_interrupted.load()) return fail_and_clean(MakeError(ErrorCode::kInternal, "interrupted"));
  if (!ctx.g.json)
    ctx.io.err << "publishing " << a.name
               << " (chunking and pushing it to the image server, if any)" << std::endl;
  // Finalize is an operation (202), polled until the image is ready.
  auto fin = RetryWhileBusy(
      ctx, [&] { return client.Post("/v1/images/" + PathEscape(id) + "/finalize"); });
  if (IsOperation(fin)) fin = WaitOperation(ctx, client, *fin, "publishing " + a.name, true);
  if (!fin.ok()) return fail_and_clean(fin.error().Wrap("finalize"));
  json image = *fin;

  if (a.checkpoint) {
    json body = json::object();
    if (cp_memory) body["memory_mb"] = *cp_memory;
    auto started = client.Post("/v1/images/" + PathEscape(id) + "/checkpoint", body);
    if (!started.ok()) return fail_and_clean(started.error().Wrap("starting the checkpoint"));
    auto done = WaitCheckpoint(ctx, client, id, /*interruptible=*/true);
    if (!done.ok()) {
      int code = fail_and_clean(done.error());
      if (!g_interrupted.load()) {
        ctx.io.err << "  hint: import again without --checkpoint to keep the image without a "
                      "checkpoint"
                   << std::endl;
      }
      return code;
    }
    image = *done;
  }
  return PrintOne(ctx, image, kImageHeaders, ImageRow);
}

int CmdImageList(Ctx& ctx) {
  return ListCommand(ctx, "/v1/images", "images", kImageHeaders, ImageRow);
}

int CmdImageShow(Ctx& ctx, const std::string& ref) {
  return ShowCommand(ctx, "/v1/images/" + PathEscape(ref), "image");
}

int CmdImageRm(Ctx& ctx, const std::string& ref) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Delete("/v1/images/" + PathEscape(ref));
  if (!res.ok()) {
    return Fail(ctx, res.error(), "image");
  }
  if (!ctx.g.json) ctx.io.out << "deleted image " << ref << std::endl;
  return kExitOk;
}

int CmdImageCheckpoint(Ctx& ctx, const std::string& ref, const std::string& memory, int vcpus,
                       bool no_wait) {
  json body = json::object();
  if (!memory.empty()) {
    auto mb = ParseMemoryMb(memory);
    if (!mb.ok()) return UsageError(ctx, "--memory-mb: " + mb.error().message, "image checkpoint");
    body["memory_mb"] = *mb;
  }
  if (vcpus > 0) body["vcpus"] = vcpus;
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto started = client->Post("/v1/images/" + PathEscape(ref) + "/checkpoint", body);
  if (!started.ok()) return Fail(ctx, started.error(), "image");
  if (no_wait) return PrintOne(ctx, *started, kImageHeaders, ImageRow);
  auto done = WaitCheckpoint(ctx, *client, IdOr(*started, ref), /*interruptible=*/false);
  if (!done.ok()) return Fail(ctx, done.error(), "image");
  return PrintOne(ctx, *done, kImageHeaders, ImageRow);
}

}  // namespace

// The flags of these commands, kept for the parse.
struct AddImageCommandsFlags {
  std::string ref;
  ImportArgs import;
  std::string cp_memory;
  int cp_vcpus = 0;
  bool no_wait = false;
};

void AddImageCommands(CommandTree& t) {
  auto& s = t.Keep<AddImageCommandsFlags>();
  auto* g = t.Group(&t.app, "image", "VM images");
  g->group("Client commands");
  auto* imp = t.Leaf(g, "import", "Upload an image (from a build directory or files); alias: push",
                     [&] { return CmdImageImport(t.ctx, s.import); });
  imp->alias("push");
  imp->add_option("NAME", s.import.name, "Image name")->required();
  imp->add_option("DIR", s.import.dir, "Directory with manifest.json (guest/build-tiny.sh)");
  imp->add_option("--disk", s.import.disk, "Disk image file");
  imp->add_option("--format", s.import.format, "Disk format (default: detected)")
      ->check(CLI::IsMember({"raw", "qcow2"}));
  imp->add_option("--kernel", s.import.kernel, "Kernel for direct boot");
  imp->add_option("--initrd", s.import.initrd, "Initrd for direct boot");
  imp->add_option_function<std::string>(
      "--append", [&](const std::string& v) { s.import.append = v; }, "Kernel command line");
  imp->add_option("--min-memory-mb", s.import.min_memory, "Minimum VM memory (MiB or 1G)")
      ->check(MemoryValidator());
  imp->add_flag("--checkpoint", s.import.checkpoint,
                "Also create a booted checkpoint (fast `vm create --resume`)");
  imp->add_option("--checkpoint-memory-mb", s.import.checkpoint_memory,
                  "Memory of the checkpoint VM (MiB or 1G)")
      ->check(MemoryValidator());
  imp->footer(
      "DIR is a directory with manifest.json {name, kernel, initrd, disk, disk_format, append,\n"
      "min_memory_mb} (file names relative to DIR). A failed or interrupted import removes the\n"
      "half-created image.");

  t.ListLeaf(g, "List images", [&] { return CmdImageList(t.ctx); });
  t.Leaf(g, "show", "Show one image", [&] { return CmdImageShow(t.ctx, s.ref); })
      ->add_option("REF", s.ref, "Image id or name")
      ->required();
  t.Leaf(g, "rm", "Delete an image", [&] { return CmdImageRm(t.ctx, s.ref); })
      ->add_option("REF", s.ref, "Image id or name")
      ->required();
  auto* cp = t.Leaf(g, "checkpoint", "Create the image's booted checkpoint", [&] {
    return CmdImageCheckpoint(t.ctx, s.ref, s.cp_memory, s.cp_vcpus, s.no_wait);
  });
  cp->add_option("REF", s.ref, "Image id or name")->required();
  cp->add_option("--memory-mb", s.cp_memory, "Memory of the checkpoint VM (MiB or 1G)")
      ->check(MemoryValidator());
  cp->add_option("--vcpus", s.cp_vcpus, "vCPUs of the checkpoint VM")->check(CLI::Range(1, 1024));
  cp->add_flag("--no-wait", s.no_wait, "Return without waiting for the checkpoint");
}

}  // namespace vmgrid::cli
