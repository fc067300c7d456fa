// `vmgrid data ...`: datasets (docs/datasets.md) — push (a file as is, a
// directory as an ext4 image built without root by mkfs.ext4 -d), list,
// show, pull (a directory version vetted entry by entry, then extracted
// without root by debugfs rdump, on this machine only: images/ext4_listing.h),
// rm, share and unshare.
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "chunks/chunk_digest.h"
#include "chunks/manifest.h"
#include "cli/command.h"
#include "cli/exit_codes.h"
#include "cli/format.h"
#include "client/api_client.h"
#include "common/base64.h"
#include "common/result.h"
#include "common/subprocess.h"
#include "images/ext4_listing.h"
#include "proto/data_attachment.h"

namespace vmgrid::cli {
namespace {

namespace fs = std::filesystem;

// The controller's bound (api/services/dataset_service.h).
constexpr uint64_t kMaxDatasetBytesCli = uint64_t{4} << 30;
// What a pulled directory version may hold in its files' sizes (sparse
// files and hard links make it more than the image).
constexpr uint64_t kMaxExtractedBytes = uint64_t{64} << 30;

const std::vector<std::string> kDataHeaders = {"ID",     "NAME", "OWNER", "VERSIONS",
                                               "LATEST", "KIND", "SIZE",  "AGE"};
std::vector<std::string> DataRow(const json& d) {
  const json& l = d.contains("latest") && d["latest"].is_object() ? d["latest"] : json::object();
  // A dataset shared with the caller is named OWNER/NAME.
  std::string name = d.contains("ref") ? Str(d, "ref") : Str(d, "name");
  return {
      Str(d, "id"),         name,           Str(d, "owner"),           NumStr(d, "version_count"),
      NumStr(l, "version"), Str(l, "kind"), BytesStr(l, "size_bytes"), AgeStr(d, "created_at")};
}

// /v1/datasets/REF: NAME, an id, or OWNER/NAME (each part escaped).
Result<std::string> DatasetPath(const std::string& ref) {
  if (ref.find('/') == std::string::npos) return "/v1/datasets/" + PathEscape(ref);
  VMG_ASSIGN_OR_RETURN(DatasetRef r, ParseDatasetRef(ref));
  return "/v1/datasets/" + PathEscape(r.owner) + "/" + PathEscape(r.name);
}

// A private temporary directory, removed with everything in it.
class TempDir {
 public:
  static Result<TempDir> Make(const std::string& parent, const std::string& prefix) {
    std::string tmpl = parent + "/" + prefix + "XXXXXX";
    if (!::mkdtemp(tmpl.data()))
      return MakeError(ErrorCode::kInternal, "cannot make a directory in " + parent);
    return TempDir(tmpl);
  }
  TempDir(TempDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  void Release() { path_.clear(); }

 private:
  explicit TempDir(std::string p) : path_(std::move(p)) {}
  std::string path_;
};

std::string TmpRoot() {
  const char* t = ::getenv("TMPDIR");
  return t && *t ? t : "/tmp";
}

// A UUID derived from the dataset's name: the same for every version, so
// that unchanged files keep their blocks (and chunks).
std::string StableUuid(const std::string& name) {
  std::string h = ChunkDigest("vmgrid-dataset:" + name);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-4" + h.substr(13, 3) + "-8" + h.substr(17, 3) +
         "-" + h.substr(20, 12);
}

// Builds an ext4 image of `dir` without root. Its size is the tree's with
// headroom, rounded up to 64 MiB so that versions of a similar size share a
// layout.
Status BuildExt4(const std::string& dir, const std::string& name, const std::string& image) {
  uint64_t bytes = 0, entries = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    ++entries;
    auto st = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_regular_file(st)) bytes += (it->file_size(ec) + 4095) / 4096 * 4096;
    if (!fs::is_regular_file(st) && !fs::is_directory(st) && !fs::is_symlink(st))
      return MakeError(ErrorCode::kInvalidArgument,
                       it->path().string() + " is not a regular file, directory or link");
  }
  if (ec) return MakeError(ErrorCode::kInvalidArgument, "cannot read " + dir + ": " + ec.message());
  uint64_t want = bytes + bytes / 4 + entries * 8192 + (16ull << 20);
  uint64_t step = 64ull << 20;
  uint64_t size = (want + step - 1) / step * step;
  if (size > kMaxDatasetBytesCli)
    return MakeError(ErrorCode::kInvalidArgument, dir + " is too large for a dataset (4 GiB)");
  std::string uuid = StableUuid(name);
  auto r = RunProcess({"env", "E2FSPROGS_FAKE_TIME=1700000000", "mkfs.ext4", "-q", "-F", "-b",
                       "4096", "-O", "^has_journal", "-U", uuid, "-E",
                       "root_owner=0:0,hash_seed=" + uuid + ",nodiscard", "-d", dir, image,
                       std::to_string(size / 1024) + "k"});
  if (!r.ok()) return r.error();
  if (r->exit_code != 0)
    return MakeError(ErrorCode::kInternal, "mkfs.ext4 -d failed: " + r->err.substr(0, 2000));
  return Status::Ok();
}

int CmdDataPush(Ctx& ctx, const std::string& name, const std::string& path) {
  if (name.find('/') != std::string::npos || name.find(':') != std::string::npos)
    return UsageError(ctx, "a dataset name is 1-63 of [A-Za-z0-9._-]", "data push");
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return UsageError(ctx, path + ": no such file or directory", "data push");
  bool dir = S_ISDIR(st.st_mode);
  if (!dir && !S_ISREG(st.st_mode))
    return UsageError(ctx, path + " is not a regular file or a directory", "data push");
  if (!dir && st.st_size == 0) return UsageError(ctx, path + " is empty", "data push");
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());

  auto tmp = TempDir::Make(TmpRoot(), ".vmgrid-data-");
  if (!tmp.ok()) return Fail(ctx, tmp.error());
  std::string blob = path;
  if (dir) {
    blob = tmp->path() + "/fs.ext4";
    Status b = BuildExt4(path, name, blob);
    if (!b.ok()) return Fail(ctx, b.error());
  }
  // What the latest version already has need not travel.
  std::set<std::string> have;
  auto prev = client->Get("/v1/datasets/" + PathEscape(name) + "/versions/0/manifest");
  if (prev.ok() && prev->contains("chunks") && (*prev)["chunks"].is_array()) {
    for (const auto& c : (*prev)["chunks"])
      if (c.is_string()) have.insert(c.get<std::string>());
  } else if (!prev.ok() && prev.error().code != ErrorCode::kNotFound) {
    return Fail(ctx, prev.error(), "dataset");
  }
  StatusLine status(ctx.io);
  uint64_t total = 0, sent = 0, sent_bytes = 0;
  std::vector<std::string> chunks;
  uint64_t size = static_cast<uint64_t>(dir ? fs::file_size(blob) : st.st_size);
  Status walk = ForEachFileChunk(
      blob, kDefaultChunkSize, [&](size_t index, std::string_view data, bool all_zero) -> Status {
        if (chunks.size() <= index) chunks.resize(index + 1, std::string(kZeroChunk));
        if (all_zero) return Status::Ok();
        std::string digest = ChunkDigest(data);
        chunks[index] = digest;
        ++total;
        if (have.count(digest)) return Status::Ok();
        auto put = client->Post("/v1/datasets/" + PathEscape(name) + "/chunks",
                                json{{"data", Base64Encode(data)}});
        if (!put.ok()) return put.error();
        have.insert(digest);
        ++sent;
        sent_bytes += data.size();
        status.Update("pushing " + name + ": " + std::to_string(index + 1) + " chunks read, " +
                      std::to_string(sent) + " sent");
        return Status::Ok();
      });
  if (!walk.ok()) return Fail(ctx, walk.error(), "dataset");
  chunks.resize(ChunkCountFor(size, kDefaultChunkSize), std::string(kZeroChunk));
  json body = {{"kind", dir ? "dir" : "file"},
               {"size", size},
               {"chunk_size", kDefaultChunkSize},
               {"chunks", chunks}};
  auto done = client->Post("/v1/datasets/" + PathEscape(name) + "/versions", body);
  status.Finish("");
  if (!done.ok()) return Fail(ctx, done.error(), "dataset");
  if (ctx.g.json) {
    PrintJson(ctx, *done);
  } else {
    const json& l = (*done)["latest"];
    ctx.io.out << "pushed " << name << " version " << NumStr(l, "version") << " ("
               << (dir ? "dir" : "file") << ", " << size << " bytes): " << total << " chunks, "
               << sent << " sent (" << sent_bytes << " bytes), " << (total - sent) << " reused"
               << std::endl;
  }
  return kExitOk;
}

int CmdDataList(Ctx& ctx) {
  return ListCommand(ctx, "/v1/datasets", "datasets", kDataHeaders, DataRow);
}

int CmdDataShow(Ctx& ctx, const std::string& ref) {
  auto path = DatasetPath(ref);
  if (!path.ok()) return UsageError(ctx, path.error().message, "data show");
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto d = client->Get(*path);
  if (!d.ok()) return Fail(ctx, d.error(), "dataset");
  if (ctx.g.json) {
    PrintJson(ctx, *d);
    return kExitOk;
  }
  ctx.io.out << "dataset " << Str(*d, "ref") << " (" << Str(*d, "id") << ")\n";
  if (d->value("shared", false)) {
    ctx.io.out << "owner " << Str(*d, "owner") << ", shared with you read-only\n";
  } else {
    std::string with;
    for (const auto& u : ListOf(*d, "shared_with"))
      with += (with.empty() ? "" : ", ") + (u.is_string() ? u.get<std::string>() : "");
    ctx.io.out << "owner " << Str(*d, "owner") << "; shared with "
               << (with.empty() ? "no one" : with) << "\n";
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& v : ListOf(*d, "versions"))
    rows.push_back({NumStr(v, "version"), Str(v, "kind"), BytesStr(v, "size_bytes"),
                    NumStr(v, "chunks"), NumStr(v, "sent_chunks"), BytesStr(v, "sent_bytes"),
                    NumStr(v, "reused_chunks"), AgeStr(v, "created_at")});
  PrintTable(ctx, {"VERSION", "KIND", "SIZE", "CHUNKS", "SENT", "SENT_BYTES", "REUSED", "AGE"},
             rows);
  return kExitOk;
}

// NAME or NAME:VERSION (0 = the latest).
Result<std::pair<std::string, int64_t>> ParseRef(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos) return std::make_pair(s, int64_t{0});
  std::string v = s.substr(colon + 1);
  if (v.empty() || v.size() > 15 || v.find_first_not_of("0123456789") != std::string::npos ||
      std::stoll(v) < 1)
    return MakeError(ErrorCode::kInvalidArgument, "bad version in '" + s + "'");
  return std::make_pair(s.substr(0, colon), static_cast<int64_t>(std::stoll(v)));
}

int CmdDataPull(Ctx& ctx, const std::string& ref, const std::string& target) {
  auto parsed = ParseRef(ref);
  if (!parsed.ok()) return UsageError(ctx, parsed.error().message, "data pull");
  auto [name, version] = *parsed;
  std::error_code ec;
  auto tst = fs::symlink_status(target, ec);
  bool exists = !ec && fs::exists(tst);
  if (exists && !(fs::is_directory(tst) && fs::is_empty(target, ec)))
    return UsageError(ctx, target + " exists (and is not an empty directory)", "data pull");
  fs::path abs = fs::absolute(target);
  std::string parent = abs.parent_path().string();
  auto dpath = DatasetPath(name);
  if (!dpath.ok()) return UsageError(ctx, dpath.error().message, "data pull");
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  std::string base = *dpath + "/versions/" + std::to_string(version);
  auto mj = client->Get(base + "/manifest");
  if (!mj.ok()) return Fail(ctx, mj.error(), "dataset");
  std::string kind = mj->is_object() ? Str(*mj, "kind") : "";
  if (kind != "file" && kind != "dir")
    return Fail(ctx, MakeError(ErrorCode::kInternal, "the controller sent a bad manifest"));
  mj->erase("kind");
  auto m = ParseManifestJson(mj->dump());
  if (!m.ok()) return Fail(ctx, m.error());
  // Later chunk requests name this exact version.
  base = *dpath + "/versions/" + std::to_string(m->version);
  // Staging beside the target: renamed into place at the end, removed on failure.
  auto stage = TempDir::Make(parent, "." + abs.filename().string() + ".partial-");
  if (!stage.ok()) return Fail(ctx, stage.error());
  StatusLine status(ctx.io);
  std::string image = stage->path() + "/blob";
  Status w = WriteImageFile(
      *m,
      [&](const std::string& digest) -> Result<std::string> {
        VMG_ASSIGN_OR_RETURN(json c, client->Get(base + "/chunks/" + digest));
        if (!c.is_object() || !c.contains("data") || !c["data"].is_string())
          return MakeError(ErrorCode::kInternal, "bad chunk answer");
        return Base64Decode(c["data"].get<std::string>());
      },
      image,
      [&](uint64_t done, uint64_t total) {
        status.Update("pulling " + name + ": " + std::to_string(done * 100 / (total ? total : 1)) +
                      "%");
        return true;
      });
  status.Finish("");
  if (!w.ok()) return Fail(ctx, w.error());
  std::string result = image;
  if (kind == "dir") {
    // The image came from a user, perhaps another one: only debugfs (a
    // user-space reader, no mount) opens it, here, as the pulling user, and
    // every entry is vetted before anything is written (a crafted name
    // would otherwise lead rdump out of the staging directory).
    std::string out = stage->path() + "/tree";
    if (::mkdir(out.c_str(), 0700) != 0)
      return Fail(ctx, MakeError(ErrorCode::kInternal, "cannot make " + out));
    Status x = ExtractExt4Image(image, out, kMaxExtractedBytes);
    if (!x.ok()) return Fail(ctx, x.error());
    fs::remove_all(out + "/lost+found", ec);
    result = out;
  }
  if (exists) fs::remove(target, ec);  // an empty directory
  if (::rename(result.c_str(), abs.c_str()) != 0)
    return Fail(ctx, MakeError(ErrorCode::kInternal, "cannot rename into " + target));
  if (!ctx.g.json)
    ctx.io.out << "pulled " << name << " version " << m->version << " (" << kind << ") into "
               << target << std::endl;
  return kExitOk;
}

int CmdDataRm(Ctx& ctx, const std::string& ref) {
  auto parsed = ParseRef(ref);
  if (!parsed.ok()) return UsageError(ctx, parsed.error().message, "data rm");
  auto dpath = DatasetPath(parsed->first);
  if (!dpath.ok()) return UsageError(ctx, dpath.error().message, "data rm");
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  std::string path = *dpath;
  if (parsed->second) path += "/versions/" + std::to_string(parsed->second);
  auto res = client->Delete(path);
  if (!res.ok()) return Fail(ctx, res.error(), "dataset");
  if (!ctx.g.json) ctx.io.out << "deleted dataset " << ref << std::endl;
  return kExitOk;
}

// `data share NAME USER` and `data unshare NAME USER`.
int CmdDataShare(Ctx& ctx, const std::string& name, const std::string& user, bool share) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Post("/v1/datasets/" + PathEscape(name) + (share ? "/share" : "/unshare"),
                          {{"user", user}});
  if (!res.ok()) return Fail(ctx, res.error(), "dataset");
  if (ctx.g.json) {
    PrintJson(ctx, *res);
  } else if (share) {
    ctx.io.out << "shared dataset " << name << " read-only with " << user << " (as "
               << Str(*res, "owner") << "/" << Str(*res, "name") << ")" << std::endl;
  } else {
    ctx.io.out << "stopped sharing dataset " << name << " with " << user << std::endl;
  }
  return kExitOk;
}

}  // namespace

int CmdDataCommit(Ctx& ctx, const std::string& vm, const std::string& name) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = RetryWhileBusy(ctx, [&] {
    return client->Post("/v1/vms/" + PathEscape(vm) + "/data/" + PathEscape(name) + "/commit",
                        json::object());
  });
  if (IsOperation(res))
    res = WaitOperation(ctx, *client, *res, "committing dataset " + name + " of VM " + vm, false);
  if (!res.ok()) return Fail(ctx, res.error(), "vm");
  if (ctx.g.json) {
    PrintJson(ctx, *res);
  } else {
    ctx.io.out << "dataset " << name << " version " << res->value("version", 0) << ": sent "
               << res->value("sent_chunks", 0) << " of " << res->value("chunks", 0) << " chunks ("
               << FormatBytes(res->value("sent_bytes", uint64_t{0})) << ")" << std::endl;
  }
  return kExitOk;
}

struct AddDataCommandsFlags {
  std::string name, path, ref;
};

void AddDataCommands(CommandTree& t) {
  auto& s = t.Keep<AddDataCommandsFlags>();
  auto* g = t.Group(&t.app, "data", "Datasets: versioned, deduplicated files and directories");
  g->group("Client commands");
  auto* push = t.Leaf(g, "push", "Store a new version of a dataset (a file, or a directory)",
                      [&] { return CmdDataPush(t.ctx, s.name, s.path); });
  push->add_option("NAME", s.name, "Dataset name")->required();
  push->add_option("PATH", s.path, "A file or a directory")->required();
  t.ListLeaf(g, "List datasets", [&] { return CmdDataList(t.ctx); });
  t.Leaf(g, "show", "Show a dataset's versions and whom it is shared with",
         [&] { return CmdDataShow(t.ctx, s.ref); })
      ->add_option("NAME", s.ref, "Dataset name or id, or OWNER/NAME when shared with you")
      ->required();
  auto* pull = t.Leaf(g, "pull", "Write a version into DIR (which must not exist or be empty)",
                      [&] { return CmdDataPull(t.ctx, s.ref, s.path); });
  pull->add_option("NAME[:VERSION]", s.ref,
                   "Dataset (latest version by default); OWNER/NAME when shared with you")
      ->required();
  pull->add_option("DIR", s.path, "Target: a directory, or the file of a file version")->required();
  t.Leaf(g, "rm", "Delete a dataset, or one version", [&] { return CmdDataRm(t.ctx, s.ref); })
      ->add_option("NAME[:VERSION]", s.ref, "Dataset (all versions) or one version")
      ->required();
  for (bool share : {true, false}) {
    auto* sh = t.Leaf(g, share ? "share" : "unshare",
                      share ? "Let another user list, pull and attach a dataset read-only"
                            : "Stop sharing a dataset (VMs attached already keep it)",
                      [&, share] { return CmdDataShare(t.ctx, s.ref, s.name, share); });
    sh->add_option("NAME", s.ref, "Your dataset")->required();
    sh->add_option("USER", s.name, "The user's name")->required();
  }
  auto* commit =
      t.Leaf(g, "commit", "Store a VM's read-write attachment of a dataset as its next version",
             [&] { return CmdDataCommit(t.ctx, s.ref, s.name); });
  commit->add_option("VM", s.ref, "VM name or id")->required();
  commit->add_option("NAME", s.name, "Dataset attached to it (vm create --data NAME:rw)")
      ->required();
}

}  // namespace vmgrid::cli
