#include "cli/cli.h"

#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>
#include <utility>

#include "cli/exit_codes.h"
#include "cli/format.h"
#include "cli/options.h"
#include "client/api_client.h"
#include "common/result.h"
#include "common/tls.h"
#include "common/util.h"
#include "common/version.h"
#include "common/vm_state.h"
#include "images/image_file.h"
#include "sim/sim_hosts.h"

namespace vmgrid {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kDefaultUrl = "https://127.0.0.1:8470";
constexpr const char* kDevAdminToken = "./state/dev/controller/admin.token";
constexpr const char* kDevCa = "./state/dev/tls/ca.pem";
constexpr auto kVmPollInterval = std::chrono::milliseconds(200);
constexpr auto kImagePollInterval = std::chrono::milliseconds(500);
constexpr auto kProgressInterval = std::chrono::milliseconds(100);

constexpr const char* kExitCodeFooter =
    "Exit codes: 0 success; 1 failure; 2 usage error (bad flags/arguments);\n"
    "  3 not found; 4 authentication/permission; 5 conflict or wrong state\n"
    "  (already exists, failed precondition, no capacity); 6 unavailable or timeout.\n"
    "  `vm exec` exits with the guest command's code (6/1 if it could not run).\n"
    "Environment: VMGRID_URL, VMGRID_TOKEN, VMGRID_TOKEN_FILE, VMGRID_WAIT_TIMEOUT.";

// ---------------------------------------------------------------------------
// Small helpers

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double NowEpoch() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

bool IsRegularFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Field accessors tolerant of missing/null fields and of numbers-as-strings.
std::string Str(const json& j, const char* key) {
  if (!j.is_object()) return "-";
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "-";
  if (it->is_string()) {
    const auto& s = it->get_ref<const std::string&>();
    return s.empty() ? "-" : s;
  }
  if (it->is_boolean()) return it->get<bool>() ? "yes" : "no";
  return it->dump();
}

std::optional<uint64_t> Num(const json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer()) {
    int64_t v = it->get<int64_t>();
    return v < 0 ? std::nullopt : std::optional<uint64_t>(static_cast<uint64_t>(v));
  }
  if (it->is_number_float()) {
    double v = it->get<double>();
    return v < 0 ? std::nullopt : std::optional<uint64_t>(static_cast<uint64_t>(v));
  }
  return std::nullopt;
}

std::string NumStr(const json& j, const char* key) {
  auto v = Num(j, key);
  return v ? std::to_string(*v) : "-";
}

std::string MemStr(const json& j, const char* key) {
  auto v = Num(j, key);
  return v ? FormatMemoryMb(*v) : "-";
}

std::string BytesStr(const json& j, const char* key) {
  auto v = Num(j, key);
  return v ? FormatBytes(*v) : "-";
}

std::optional<double> TimeOf(const json& v) {
  if (v.is_string()) return ParseTimestamp(v.get<std::string>());
  if (v.is_number()) return ParseTimestampNumber(v.get<double>());
  return std::nullopt;
}

std::string AgeStr(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key)) return "-";
  auto t = TimeOf(j[key]);
  return t ? FormatAge(NowEpoch() - *t) : "-";
}

std::string StateOf(const json& j) {
  if (j.is_object() && j.contains("state") && j["state"].is_string()) {
    return j["state"].get<std::string>();
  }
  return "";
}

// The array under `key` of a list answer ({"vms":[...]}), or empty.
json ListOf(const json& answer, const char* key) {
  if (answer.is_object() && answer.contains(key) && answer[key].is_array()) return answer[key];
  if (answer.is_array()) return answer;
  return json::array();
}

std::string IdOr(const json& obj, const std::string& fallback) {
  std::string id = Str(obj, "id");
  return id == "-" ? fallback : id;
}

// ---------------------------------------------------------------------------
// Row and detail rendering per object kind

const std::vector<std::string> kVmHeaders = {"ID",    "NAME", "STATE", "HOST",  "IMAGE",
                                             "VCPUS", "MEM",  "DISK",  "START", "AGE"};
std::vector<std::string> VmRow(const json& v) {
  std::string host = Str(v, "host");
  if (host == "-") host = Str(v, "host_id");
  std::string image = Str(v, "image");
  if (image == "-") image = Str(v, "image_id");
  return {Str(v, "id"),    Str(v, "name"),         Str(v, "state"),        host,
          image,           NumStr(v, "vcpus"),     MemStr(v, "memory_mb"), Str(v, "disk"),
          Str(v, "start"), AgeStr(v, "created_at")};
}

const std::vector<std::string> kHostHeaders = {"ID",    "NAME", "STATE", "KVM",       "VMS",
                                               "VCPUS", "MEM",  "DISK",  "HEARTBEAT", "URL"};
std::vector<std::string> HostRow(const json& h) {
  auto free_of = [&](const char* free_key, const char* total_key, bool mem) {
    auto f = Num(h, free_key);
    auto t = Num(h, total_key);
    auto fmt = [&](uint64_t v) { return mem ? FormatMemoryMb(v) : std::to_string(v); };
    if (f && t) return fmt(*f) + "/" + fmt(*t) + " free";
    if (t) return fmt(*t);
    return std::string("-");
  };
  std::string heartbeat = AgeStr(h, "last_heartbeat");
  if (heartbeat != "-") heartbeat += " ago";
  std::string kvm = "-";
  if (h.is_object() && h.contains("kvm") && h["kvm"].is_boolean()) {
    kvm = h["kvm"].get<bool>() ? "yes" : "no";
  }
  return {Str(h, "id"),
          Str(h, "name"),
          Str(h, "state"),
          kvm,
          NumStr(h, "vm_count"),
          free_of("free_vcpus", "vcpus", false),
          free_of("free_memory_mb", "memory_mb", true),
          MemStr(h, "disk_mb"),
          heartbeat,
          Str(h, "url")};
}

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

const std::vector<std::string> kWorkspaceHeaders = {"ID",   "NAME", "OWNER", "IMAGE",
                                                    "HOST", "SIZE", "VM",    "AGE"};
std::vector<std::string> WorkspaceRow(const json& w) {
  return {Str(w, "id"),       Str(w, "name"),         Str(w, "owner"),
          Str(w, "image_id"), Str(w, "host_id"),      BytesStr(w, "size_bytes"),
          Str(w, "vm_id"),    AgeStr(w, "created_at")};
}

const std::vector<std::string> kUserHeaders = {"ID", "NAME", "ROLE", "AGE"};
std::vector<std::string> UserRow(const json& u) {
  return {Str(u, "id"), Str(u, "name"), Str(u, "role"), AgeStr(u, "created_at")};
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Human rendering of one scalar field for `show`.
std::string DetailValue(const std::string& key, const json& v) {
  if (v.is_null()) return "-";
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_number() && EndsWith(key, "_bytes") && v.get<double>() >= 0) {
    auto b = v.get<uint64_t>();
    return FormatBytes(b) + " (" + std::to_string(b) + ")";
  }
  if (v.is_number() && EndsWith(key, "memory_mb") && v.get<double>() >= 0) {
    return FormatMemoryMb(v.get<uint64_t>());
  }
  if (v.is_number() && key == "disk_mb" && v.get<double>() >= 0) {
    return FormatMemoryMb(v.get<uint64_t>());
  }
  if (v.is_number() && key == "create_ms") return FormatElapsed(v.get<double>() / 1000.0);
  if (EndsWith(key, "_at") || key == "last_heartbeat") {
    auto t = TimeOf(v);
    std::string text = v.is_string() ? v.get<std::string>() : v.dump();
    if (t) text += " (" + FormatAge(NowEpoch() - *t) + " ago)";
    return text;
  }
  if (v.is_string()) {
    const auto& s = v.get_ref<const std::string&>();
    return s.empty() ? "-" : s;
  }
  return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

void FlattenDetails(const std::string& prefix, const json& obj,
                    const std::vector<std::string>& order,
                    std::vector<std::pair<std::string, std::string>>* out) {
  std::vector<std::string> keys;
  std::set<std::string> seen;
  for (const auto& k : order) {
    if (obj.contains(k)) {
      keys.push_back(k);
      seen.insert(k);
    }
  }
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (!seen.count(it.key())) keys.push_back(it.key());
  }
  for (const auto& k : keys) {
    const json& v = obj[k];
    if (v.is_object() && !v.empty()) {
      FlattenDetails(prefix + k + ".", v, {"state"}, out);
    } else if (v.is_array()) {
      std::string joined;
      for (const auto& e : v) {
        if (!joined.empty()) joined += ", ";
        joined += e.is_string() ? e.get<std::string>() : e.dump();
      }
      out->emplace_back(prefix + k, joined.empty() ? "-" : joined);
    } else {
      out->emplace_back(prefix + k, DetailValue(k, v));
    }
  }
}

void PrintDetails(std::ostream& out, const json& obj) {
  std::vector<std::pair<std::string, std::string>> pairs;
  if (obj.is_object()) {
    FlattenDetails("", obj, {"id", "name", "owner", "role", "state", "error"}, &pairs);
  }
  PrintKeyValues(out, pairs);
}

// ---------------------------------------------------------------------------
// Progress line on stderr: rewritten in place on a TTY; elsewhere only the
// final line (if any) is printed.

class StatusLine {
 public:
  explicit StatusLine(const CliIo& io) : io_(io) {}
  ~StatusLine() {
    if (shown_) Finish("");
  }

  // Rate-limited unless force.
  void Update(const std::string& text, bool force = false) {
    if (!io_.err_is_tty) return;
    auto now = Clock::now();
    if (!force && shown_ && now - last_ < kProgressInterval) return;
    last_ = now;
    io_.err << "\r\033[K" << text << std::flush;
    shown_ = true;
  }

  void Finish(const std::string& final_text) {
    if (io_.err_is_tty && shown_) io_.err << "\r\033[K";
    shown_ = false;
    if (!final_text.empty()) io_.err << final_text << '\n';
    io_.err << std::flush;
  }

 private:
  const CliIo& io_;
  bool shown_ = false;
  Clock::time_point last_{};
};

// ---------------------------------------------------------------------------
// SIGINT during `image import`: we cancel the upload and remove the
// half-created image instead of dying with it left behind.

std::atomic<bool> g_interrupted{false};

extern "C" void OnSigint(int) { g_interrupted.store(true); }

class SigintGuard {
 public:
  SigintGuard() {
    g_interrupted.store(false);
    struct sigaction sa {};
    sa.sa_handler = OnSigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    installed_ = ::sigaction(SIGINT, &sa, &old_) == 0;
  }
  ~SigintGuard() {
    if (installed_) ::sigaction(SIGINT, &old_, nullptr);
  }
  SigintGuard(const SigintGuard&) = delete;
  SigintGuard& operator=(const SigintGuard&) = delete;

 private:
  struct sigaction old_ {};
  bool installed_ = false;
};

// ---------------------------------------------------------------------------
// Global options and the per-invocation context

struct Globals {
  std::string url = kDefaultUrl;
  std::string token;
  std::string token_file;
  std::string ca;  // CA file to trust for https:// (default: kDevCa, ~/.config/vmgrid/ca.pem)
  bool json = false;
  int wait_timeout_s = 600;
};

struct Ctx {
  Globals g;
  CliIo io;
  std::string token_source;  // where the token came from, for messages
  bool have_token = false;
};

// Finds the token: --token/VMGRID_TOKEN, else --token-file/VMGRID_TOKEN_FILE,
// else the first existing default file. No token at all is not an error
// here (the controller will answer 401 and we explain).
Result<std::string> ResolveToken(Ctx& ctx) {
  if (!ctx.g.token.empty()) {
    ctx.token_source = "--token/VMGRID_TOKEN";
    ctx.have_token = true;
    return Trim(ctx.g.token);
  }
  std::vector<std::string> candidates;
  bool explicit_file = !ctx.g.token_file.empty();
  if (explicit_file) {
    candidates.push_back(ctx.g.token_file);
  } else {
    candidates.push_back(kDevAdminToken);
    const char* home = std::getenv("HOME");
    if (home && *home) candidates.push_back(std::string(home) + "/.config/vmgrid/token");
  }
  for (const auto& path : candidates) {
    if (!explicit_file && !IsRegularFile(path)) continue;
    auto data = ReadFile(path, 1 << 20);
    if (!data.ok()) {
      return MakeError(ErrorCode::kInvalidArgument, "cannot read the token file " + path +
                                                        " (from --token-file/VMGRID_TOKEN_FILE)");
    }
    std::string token = Trim(*data);
    if (token.empty()) {
      return MakeError(ErrorCode::kInvalidArgument, "the token file " + path + " is empty");
    }
    ctx.token_source = path;
    ctx.have_token = true;
    return token;
  }
  return std::string();
}

// Prints "error: ..." with a hint on what to do next; returns the exit code.
// `kind` names the object kind for not-found hints ("vm", "image", ...).
int Fail(const Ctx& ctx, const Error& e, const std::string& kind = "") {
  std::string msg = "error: " + e.message;
  switch (e.code) {
    case ErrorCode::kUnauthenticated:
      if (!ctx.have_token) {
        msg =
            "error: no token: pass --token, set VMGRID_TOKEN or VMGRID_TOKEN_FILE, or store it in "
            "~/.config/vmgrid/token (admin token of `vmgrid dev`: " +
            std::string(kDevAdminToken) + ")";
      } else {
        msg = "error: the controller rejected the token (from " + ctx.token_source +
              "); pass --token or set VMGRID_TOKEN (admin token: STATE/controller/admin.token)";
        if (!e.message.empty()) msg += "\n  controller said: " + e.message;
      }
      break;
    case ErrorCode::kPermissionDenied:
      msg += "\n  hint: the token (from " +
             (ctx.token_source.empty() ? std::string("nowhere") : ctx.token_source) +
             ") may not do this; admin operations need the admin token";
      break;
    case ErrorCode::kNotFound:
      if (!kind.empty()) msg += "\n  hint: see `vmgrid " + kind + " list`";
      break;
    case ErrorCode::kResourceExhausted:
      msg +=
          "\n  hint: see `vmgrid host list`; free capacity with "
          "`vmgrid vm stop`/`vm rm`, or ask for less (--vcpus, --memory-mb)";
      break;
    default:
      break;
  }
  ctx.io.err << msg << std::endl;
  return ExitCodeForError(e.code);
}

int UsageError(const Ctx& ctx, const std::string& message, const std::string& command) {
  ctx.io.err << "error: " << message << "\n  see `vmgrid " << command << " --help`" << std::endl;
  return kExitUsage;
}

// The CA that an https:// controller's certificate must chain to:
// --ca/VMGRID_CA, else the first existing of kDevCa and ~/.config/vmgrid/ca.pem
// (none: the system's trust store).
Status ResolveCa(const Ctx& ctx) {
  std::string ca = ctx.g.ca;
  if (ca.empty()) {
    std::vector<std::string> candidates = {kDevCa};
    if (const char* home = std::getenv("HOME"); home && *home)
      candidates.push_back(std::string(home) + "/.config/vmgrid/ca.pem");
    for (const auto& c : candidates)
      if (IsRegularFile(c)) {
        ca = c;
        break;
      }
  } else if (!IsRegularFile(ca)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the CA file " + ca + " (from --ca/VMGRID_CA) does not exist");
  }
  return SetClientTls({"", "", ca});
}

Result<ApiClient> MakeClient(Ctx& ctx) {
  auto token = ResolveToken(ctx);
  if (!token.ok()) return token.error();
  VMG_RETURN_IF_ERROR(ResolveCa(ctx));
  ApiClient::Options opts;
  opts.user_agent = std::string("vmgrid-cli/") + kVersion;
  return ApiClient(ctx.g.url, *token, opts);
}

void PrintJson(const Ctx& ctx, const json& j) {
  ctx.io.out << j.dump(2, ' ', false, json::error_handler_t::replace) << std::endl;
}

void PrintTable(const Ctx& ctx, const std::vector<std::string>& headers,
                const std::vector<std::vector<std::string>>& rows) {
  Table t(headers);
  for (const auto& r : rows) t.AddRow(r);
  t.Print(ctx.io.out);
  ctx.io.out << std::flush;
}

// Prints a list answer as a table (or JSON).
int PrintList(const Ctx& ctx, const json& answer, const char* key,
              const std::vector<std::string>& headers,
              const std::function<std::vector<std::string>(const json&)>& row) {
  if (ctx.g.json) {
    PrintJson(ctx, answer);
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& item : ListOf(answer, key)) rows.push_back(row(item));
  PrintTable(ctx, headers, rows);
  return kExitOk;
}

int PrintShow(const Ctx& ctx, const json& obj) {
  if (ctx.g.json) {
    PrintJson(ctx, obj);
  } else {
    PrintDetails(ctx.io.out, obj);
    ctx.io.out << std::flush;
  }
  return kExitOk;
}

int PrintOne(const Ctx& ctx, const json& obj, const std::vector<std::string>& headers,
             const std::function<std::vector<std::string>(const json&)>& row) {
  if (ctx.g.json) {
    PrintJson(ctx, obj);
  } else {
    PrintTable(ctx, headers, {row(obj)});
  }
  return kExitOk;
}

// GET path and print it as a list / as details.
int ListCommand(Ctx& ctx, const std::string& path, const char* key,
                const std::vector<std::string>& headers,
                const std::function<std::vector<std::string>(const json&)>& row) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto answer = client->Get(path);
  if (!answer.ok()) return Fail(ctx, answer.error());
  return PrintList(ctx, *answer, key, headers, row);
}

int ShowCommand(Ctx& ctx, const std::string& path, const std::string& kind) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto answer = client->Get(path);
  if (!answer.ok()) return Fail(ctx, answer.error(), kind);
  return PrintShow(ctx, *answer);
}

// ---------------------------------------------------------------------------
// Waiting for VM operations

// What a VM is waiting for after `op` succeeds (common/vm_state.h).
std::string SuccessStateOf(VmOp op) {
  auto s = SuccessOf(op);
  return s ? ToString(*s) : "";
}

std::string VmErrorText(const json& vm) {
  std::string e = Str(vm, "error");
  return e == "-" ? "no error message recorded" : e;
}

// Polls GET /v1/vms/ID until the VM leaves the transitional states (or, for
// rm, disappears). expected: the state that means success ("" = gone).
// Returns the exit code and prints the outcome.
int WaitVm(Ctx& ctx, const ApiClient& client, json vm, const std::string& ref,
           const std::string& expected) {
  const std::string id = IdOr(vm, ref);
  const std::string path = "/v1/vms/" + PathEscape(id);
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(ctx.g.wait_timeout_s);
  StatusLine status(ctx.io);
  int unavailable_streak = 0;
  bool first = true;
  std::string state = StateOf(vm);
  while (true) {
    if (!first || state.empty() || IsTransitionalName(state)) {
      if (!first) std::this_thread::sleep_for(kVmPollInterval);
      auto got = client.Get(path);
      if (!got.ok()) {
        if (got.error().code == ErrorCode::kNotFound && expected.empty()) {
          status.Finish(ctx.io.err_is_tty
                            ? id + " deleted (" + FormatElapsed(Seconds(Clock::now() - start)) + ")"
                            : "");
          if (!ctx.g.json) ctx.io.out << "deleted " << id << std::endl;
          return kExitOk;
        }
        if (got.error().code == ErrorCode::kUnavailable && ++unavailable_streak < 10 &&
            Clock::now() < deadline) {
          first = false;
          continue;  // controller restarting? retry for ~2 s
        }
        status.Finish("");
        return Fail(ctx, got.error().Wrap("while waiting for " + id), "vm");
      }
      unavailable_streak = 0;
      vm = std::move(got).value();
      state = StateOf(vm);
    }
    first = false;
    const double elapsed = Seconds(Clock::now() - start);
    if (!IsTransitionalName(state) && !state.empty()) break;
    if (Clock::now() >= deadline) {
      status.Finish("");
      ctx.io.err << "error: timed out after " << ctx.g.wait_timeout_s << "s waiting for " << id
                 << " (still " << (state.empty() ? "?" : state)
                 << "); it may still finish: check with `vmgrid vm show " << id
                 << "` (raise the limit with --wait-timeout)" << std::endl;
      return kExitUnavailable;
    }
    status.Update(id + " " + (state.empty() ? "waiting" : state) + "\u2026 " +
                  FormatElapsed(elapsed));
  }
  const double elapsed = Seconds(Clock::now() - start);
  if (state == ToString(VmState::kError)) {
    status.Finish("");
    ctx.io.err << "error: " << id << " failed: " << VmErrorText(vm) << std::endl;
    if (ctx.g.json) PrintJson(ctx, vm);
    return kExitFailure;
  }
  if (!expected.empty() && state != expected) {
    status.Finish("");
    ctx.io.err << "error: " << id << " ended in state " << state << ", expected " << expected;
    std::string e = Str(vm, "error");
    if (e != "-") ctx.io.err << ": " << e;
    if (state == "unknown")
      ctx.io.err << "\n  hint: its host is not answering; see `vmgrid host list`";
    ctx.io.err << std::endl;
    if (ctx.g.json) PrintJson(ctx, vm);
    return kExitFailure;
  }
  if (expected.empty()) {
    // rm: the VM is still there in a non-transitional state.
    status.Finish("");
    ctx.io.err << "error: " << id << " was not deleted (state " << state << ")" << std::endl;
    return kExitFailure;
  }
  status.Finish(ctx.io.err_is_tty ? id + " " + state + " (" + FormatElapsed(elapsed) + ")" : "");
  return PrintOne(ctx, vm, kVmHeaders, VmRow);
}

// ---------------------------------------------------------------------------
// Image checkpoint waiting

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

// ---------------------------------------------------------------------------
// Operations (GET /v1/operations/ID)

bool IsOperation(const Result<json>& r) {
  return r.ok() && r->is_object() && Str(*r, "id").rfind("op-", 0) == 0 && r->contains("kind") &&
         r->contains("state");
}

// Sends `request` again while the controller answers 429 (the user's limit
// on long operations is reached), as a queue would have waited, until the
// wait timeout.
Result<json> RetryWhileBusy(Ctx& ctx, const std::function<Result<json>()>& request) {
  const auto give_up = Clock::now() + std::chrono::seconds(ctx.g.wait_timeout_s);
  auto res = request();
  while (!res.ok() && res.error().code == ErrorCode::kTooManyRequests && Clock::now() < give_up &&
         !g_interrupted.load()) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    res = request();
  }
  return res;
}

// Polls the operation `op` (as POST/DELETE answered it) until it has ended;
// returns its result, or its error (with the operation's error code). Shows
// `what`, its step and progress on a TTY.
Result<json> WaitOperation(Ctx& ctx, const ApiClient& client, json op, const std::string& what,
                           bool interruptible) {
  const std::string id = Str(op, "id");
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(ctx.g.wait_timeout_s);
  StatusLine status(ctx.io);
  auto wait = std::chrono::milliseconds(50);
  int unavailable_streak = 0;
  while (true) {
    const std::string state = Str(op, "state");
    if (state == "succeeded") {
      status.Finish("");
      return op.contains("result") ? op["result"] : json(nullptr);
    }
    if (state == "failed") {
      status.Finish("");
      const json e = op.value("error", json::object());
      return MakeError(
          e.is_object() ? ErrorCodeFromApiString(e.value("code", "")) : ErrorCode::kInternal,
          e.is_object() ? e.value("message", what + " failed") : what + " failed");
    }
    if (interruptible && g_interrupted.load()) {
      status.Finish("");
      return MakeError(ErrorCode::kInternal, "interrupted");
    }
    if (Clock::now() >= deadline) {
      status.Finish("");
      return MakeError(ErrorCode::kTimeout,
                       "timed out after " + std::to_string(ctx.g.wait_timeout_s) +
                           "s waiting for " + what + " (operation " + id +
                           " still running; check with GET /v1/operations/" + id + ")");
    }
    std::string line = what;
    if (const json p = op.value("progress", json()); p.is_object()) {
      line += ": " + Str(p, "step");
      if (auto pct = Num(p, "percent")) line += " " + std::to_string(*pct) + "%";
    }
    status.Update(line + "\u2026 " + FormatElapsed(Seconds(Clock::now() - start)));
    std::this_thread::sleep_for(wait);
    wait = std::min(wait * 2, std::chrono::milliseconds(500));
    auto got = client.Get("/v1/operations/" + PathEscape(id));
    if (!got.ok()) {
      if (got.error().code == ErrorCode::kUnavailable && ++unavailable_streak < 10) continue;
      status.Finish("");
      // A restarted controller forgets its operations.
      if (got.error().code == ErrorCode::kNotFound)
        return MakeError(ErrorCode::kUnavailable,
                         "operation " + id + " of " + what +
                             " is gone (the controller restarted?); check the object and retry");
      return got.error().Wrap("while waiting for " + what);
    }
    unavailable_streak = 0;
    op = std::move(got).value();
  }
}

// ---------------------------------------------------------------------------
// Commands: host

int CmdHostList(Ctx& ctx) { return ListCommand(ctx, "/v1/hosts", "hosts", kHostHeaders, HostRow); }

int CmdHostShow(Ctx& ctx, const std::string& ref) {
  return ShowCommand(ctx, "/v1/hosts/" + PathEscape(ref), "host");
}

// ---------------------------------------------------------------------------
// Commands: image

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

// ---------------------------------------------------------------------------
// Commands: vm

struct VmCreateArgs {
  std::string image;
  std::string name;
  int vcpus = 0;
  std::string memory;
  bool persistent = false;
  std::string workspace;
  bool resume = false;
  std::string from_checkpoint;
  std::string from_future;
  int count = 0;
  std::string same;
  std::string total_mem;  // "512M..1G"
  std::string policy;
  std::string site;
  std::string host_network;
  std::string network;
  bool no_wait = false;
};

int CmdVmCreate(Ctx& ctx, const VmCreateArgs& a) {
  if ((!a.image.empty()) + (!a.from_checkpoint.empty()) + (!a.from_future.empty()) != 1)
    return UsageError(ctx, "give exactly one of --image, --from-checkpoint and --from-future",
                      "vm create");
  json body = json::object();
  if (!a.from_future.empty()) body["from_future"] = a.from_future;
  if (!a.image.empty()) body["image"] = a.image;
  if (!a.from_checkpoint.empty()) body["from_checkpoint"] = a.from_checkpoint;
  if (!a.name.empty()) body["name"] = a.name;
  if (a.vcpus > 0) body["vcpus"] = a.vcpus;
  if (!a.memory.empty()) {
    auto mb = ParseMemoryMb(a.memory);
    if (!mb.ok()) return UsageError(ctx, "--memory-mb: " + mb.error().message, "vm create");
    body["memory_mb"] = *mb;
  }
  if (a.persistent) body["disk"] = "persistent";
  if (!a.workspace.empty()) body["workspace"] = a.workspace;
  if (a.resume) body["start"] = "resume";
  if (!a.policy.empty()) body["policy"] = a.policy;
  if (!a.site.empty()) body["site"] = a.site;
  if (!a.host_network.empty()) body["host_network"] = a.host_network;
  if (!a.network.empty()) body["network"] = a.network;
  if (a.count > 0) body["count"] = a.count;
  if (!a.same.empty()) body["same"] = a.same;
  if (!a.total_mem.empty()) {
    auto dots = a.total_mem.find("..");
    if (dots == std::string::npos)
      return UsageError(ctx, "--total-mem wants MIN..MAX, e.g. 512M..1G", "vm create");
    auto mn = ParseMemoryMb(a.total_mem.substr(0, dots));
    auto mx = ParseMemoryMb(a.total_mem.substr(dots + 2));
    if (!mn.ok() || !mx.ok())
      return UsageError(ctx, "--total-mem wants MIN..MAX, e.g. 512M..1G", "vm create");
    body["total_memory_mb"] = {{"min", *mn}, {"max", *mx}};
  }
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto vm = client->Post("/v1/vms", body);
  if (vm.ok() && vm->contains("vms")) {
    // A gang: all placed (or none, which is an error above). Wait for each.
    int rc = kExitOk;
    for (const auto& one : (*vm)["vms"]) {
      if (a.no_wait) {
        PrintOne(ctx, one, kVmHeaders, VmRow);
        continue;
      }
      int r = WaitVm(ctx, *client, one, IdOr(one, ""), SuccessStateOf(VmOp::kCreate));
      if (r != kExitOk) rc = r;
    }
    return rc;
  }
  if (!vm.ok()) {
    int code = Fail(ctx, vm.error().Wrap("cannot create the VM"), "image");
    return code;
  }
  if (a.no_wait) return PrintOne(ctx, *vm, kVmHeaders, VmRow);
  return WaitVm(ctx, *client, *vm, a.name.empty() ? IdOr(*vm, "") : a.name,
                SuccessStateOf(VmOp::kCreate));
}

int CmdVmList(Ctx& ctx) { return ListCommand(ctx, "/v1/vms", "vms", kVmHeaders, VmRow); }

int CmdVmShow(Ctx& ctx, const std::string& ref) {
  return ShowCommand(ctx, "/v1/vms/" + PathEscape(ref), "vm");
}

// POST /v1/vms/REF/ACTION then wait for `expected`.
int VmAction(Ctx& ctx, const std::string& ref, const std::string& action, const json& body,
             const std::string& expected, bool no_wait) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto vm = client->Post("/v1/vms/" + PathEscape(ref) + "/" + action, body);
  if (!vm.ok()) return Fail(ctx, vm.error(), "vm");
  if (no_wait) return PrintOne(ctx, *vm, kVmHeaders, VmRow);
  return WaitVm(ctx, *client, *vm, ref, expected);
}

int CmdVmRm(Ctx& ctx, const std::string& ref, bool purge_workspace, bool no_wait) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  std::string path = "/v1/vms/" + PathEscape(ref);
  if (purge_workspace) path += "?purge_workspace=true";
  auto res = client->Delete(path);
  if (!res.ok()) return Fail(ctx, res.error(), "vm");
  json vm = res->is_object() ? *res : json::object();
  if (no_wait) {
    if (ctx.g.json) {
      PrintJson(ctx, vm);
    } else {
      ctx.io.out << "deleting " << IdOr(vm, ref) << std::endl;
    }
    return kExitOk;
  }
  if (StateOf(vm).empty()) vm["state"] = ToString(VmState::kDeleting);
  return WaitVm(ctx, *client, vm, ref, SuccessStateOf(VmOp::kDelete));
}

struct ExecArgs {
  std::string ref;
  std::vector<std::string> argv;
  int timeout_s = 0;
  std::optional<std::string> input;
};

int CmdVmExec(Ctx& ctx, const ExecArgs& a) {
  if (a.argv.empty()) {
    ctx.io.err << "error: no command given; usage: vmgrid vm exec REF -- CMD [ARGS...]"
               << std::endl;
    return kExitUsage;
  }
  json body = {{"argv", a.argv}};
  if (a.input) {
    if (*a.input == "-") {
      std::string data((std::istreambuf_iterator<char>(std::cin)),
                       std::istreambuf_iterator<char>());
      body["input"] = data;
    } else {
      body["input"] = *a.input;
    }
  }
  if (a.timeout_s > 0) body["timeout_s"] = a.timeout_s;
  auto client = MakeClient(ctx);
  if (!client.ok()) {
    Fail(ctx, client.error());
    return kExitFailure;
  }
  // The controller answers at once with an exec operation (202), polled
  // here until the guest command has ended. While the user's exec limit is
  // reached (429) the command waits its turn, as it did when execs queued.
  const int guest_timeout = a.timeout_s > 0 ? a.timeout_s : 60;
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::seconds(std::max(300, guest_timeout + 60));
  auto res = client->Post("/v1/vms/" + PathEscape(a.ref) + "/exec", body);
  while (!res.ok() && res.error().code == ErrorCode::kTooManyRequests &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    res = client->Post("/v1/vms/" + PathEscape(a.ref) + "/exec", body);
  }
  auto wait = std::chrono::milliseconds(50);
  while (res.ok() && res->is_object() && !res->contains("exit_code") &&
         res->value("kind", "") == "exec") {
    const std::string state = res->value("state", "");
    if (state == "succeeded" && (*res)["result"].is_object()) {
      res = json((*res)["result"]);
      break;
    }
    if (state == "failed") {
      const json& e = (*res)["error"];
      res = MakeError(
          e.is_object() ? ErrorCodeFromApiString(e.value("code", "")) : ErrorCode::kInternal,
          e.is_object() ? e.value("message", "exec failed") : "exec failed");
      break;
    }
    if (std::chrono::steady_clock::now() >= give_up) {
      res = MakeError(ErrorCode::kTimeout,
                      "exec operation " + res->value("id", "") + " has not ended");
      break;
    }
    std::this_thread::sleep_for(wait);
    wait = std::min(wait * 2, std::chrono::milliseconds(500));
    res = client->Get("/v1/operations/" + PathEscape(res->value("id", "")));
  }
  if (!res.ok()) {
    Fail(ctx, res.error(), "vm");
    return ExecTransportExitCode(res.error().code);
  }
  const json& r = *res;
  auto text = [&](const char* key) -> std::string {
    if (r.is_object() && r.contains(key) && r[key].is_string()) return r[key].get<std::string>();
    return "";
  };
  ctx.io.out << text("stdout") << std::flush;
  ctx.io.err << text("stderr") << std::flush;
  if (!r.is_object() || !r.contains("exit_code") || !r["exit_code"].is_number_integer()) {
    ctx.io.err << "error: the controller's exec answer has no exit_code" << std::endl;
    return kExitFailure;
  }
  const int64_t code = r["exit_code"].get<int64_t>();
  if (code < 0 || code > 255) {
    ctx.io.err << "error: the guest command ended abnormally (exit code " << code << ")"
               << std::endl;
    return kExitFailure;
  }
  return static_cast<int>(code);
}

// ---------------------------------------------------------------------------
// Commands: user, workspace, whoami

int CmdUserCreate(Ctx& ctx, const std::string& name, bool admin) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Post("/v1/users", {{"name", name}, {"role", admin ? "admin" : "user"}});
  if (!res.ok()) return Fail(ctx, res.error().Wrap("cannot create user " + name), "user");
  if (ctx.g.json) {
    PrintJson(ctx, *res);
    return kExitOk;
  }
  const json& user = res->contains("user") ? (*res)["user"] : json::object();
  const std::string token = Str(*res, "token");
  ctx.io.out << "created user " << Str(user, "name") << " (" << Str(user, "id") << ", role "
             << Str(user, "role") << ")\n"
             << "token: " << token << std::endl;
  ctx.io.err << "The token is shown only this once. Store it, e.g.:\n"
             << "  mkdir -p ~/.config/vmgrid && (umask 077 && echo '" << token
             << "' > ~/.config/vmgrid/token)\n"
             << "or: export VMGRID_TOKEN='" << token << "'" << std::endl;
  return kExitOk;
}

int CmdUserList(Ctx& ctx) { return ListCommand(ctx, "/v1/users", "users", kUserHeaders, UserRow); }

// The quota fields, as the API and --flags name them.
const std::vector<std::pair<const char*, const char*>> kQuotaFields = {
    {"vms", "VMs"},
    {"vcpus", "vCPUs"},
    {"memory_mb", "memory MB"},
    {"image_bytes", "image bytes"},
    {"workspace_bytes", "workspace bytes"}};

// Shows a user's quota (and usage); with flags, changes the given fields and
// keeps the others (the API's PUT replaces the whole quota).
int CmdUserQuota(Ctx& ctx, const std::string& name, const std::map<std::string, int64_t>& set) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto users = client->Get("/v1/users");
  if (!users.ok()) return Fail(ctx, users.error().Wrap("cannot read users"), "user quota");
  json user;
  for (const auto& u : users->value("users", json::array()))
    if (Str(u, "name") == name) user = u;
  if (user.is_null())
    return Fail(ctx, MakeError(ErrorCode::kNotFound, "user '" + name + "' not found"),
                "user quota");
  if (!set.empty()) {
    json quota = user.value("quota", json::object());
    for (const auto& [field, value] : set) quota[field] = value;
    auto res = client->Put("/v1/users/" + PathEscape(name) + "/quota", quota);
    if (!res.ok())
      return Fail(ctx, res.error().Wrap("cannot set the quota of " + name), "user quota");
    user = *res;
  }
  if (ctx.g.json) {
    PrintJson(ctx, user);
    return kExitOk;
  }
  const json quota = user.value("quota", json::object()),
             usage = user.value("usage", json::object());
  std::vector<std::vector<std::string>> rows;
  for (const auto& [field, label] : kQuotaFields) {
    const int64_t limit = quota.value(field, int64_t{0});
    rows.push_back({label, limit > 0 ? std::to_string(limit) : "unlimited",
                    std::to_string(usage.value(field, int64_t{0}))});
  }
  ctx.io.out << "quota of " << name << ":\n";
  PrintTable(ctx, {"RESOURCE", "QUOTA", "USED"}, rows);
  return kExitOk;
}

int CmdWorkspaceList(Ctx& ctx) {
  return ListCommand(ctx, "/v1/workspaces", "workspaces", kWorkspaceHeaders, WorkspaceRow);
}

int CmdWorkspaceRm(Ctx& ctx, const std::string& ref) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  // Deletion is an operation (202), polled until the file is gone.
  auto res =
      RetryWhileBusy(ctx, [&] { return client->Delete("/v1/workspaces/" + PathEscape(ref)); });
  if (IsOperation(res)) res = WaitOperation(ctx, *client, *res, "deleting workspace " + ref, false);
  if (!res.ok()) {
    return Fail(ctx, res.error(), "workspace");
  }
  if (!ctx.g.json) ctx.io.out << "deleted workspace " << ref << std::endl;
  return kExitOk;
}

struct QueryArgs {
  std::string sql;
  bool set = false;
  std::string from = "vms";
  int size = 2;
  std::string same;
  std::string sum = "memory_mb";
  std::string min, max;
  std::string where;
  int max_rows = 0;
};

std::string CellText(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "NULL";
  return v.dump();
}

int CmdQuery(Ctx& ctx, const QueryArgs& a) {
  json body = json::object();
  if (a.set) {
    if (!a.sql.empty()) return UsageError(ctx, "give SQL or --set, not both", "query");
    json set = {{"from", a.from}, {"size", a.size}, {"sum", a.sum}};
    if (!a.same.empty()) set["same"] = a.same;
    if (!a.where.empty()) set["where"] = a.where;
    // Bounds accept sizes (512M, 1G) for memory columns, else plain integers.
    for (auto [flag, text, key] : {std::tuple{"--min", &a.min, "min"}, {"--max", &a.max, "max"}}) {
      if (text->empty()) continue;
      auto v = ParseMemoryMb(*text);
      if (!v.ok()) return UsageError(ctx, std::string(flag) + ": " + v.error().message, "query");
      set[key] = *v;
    }
    body["set"] = set;
  } else {
    if (a.sql.empty()) return UsageError(ctx, "give a SQL query or --set", "query");
    body["sql"] = a.sql;
  }
  if (a.max_rows > 0) body["max_rows"] = a.max_rows;
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Post("/v1/query", body);
  if (!res.ok()) return Fail(ctx, res.error().Wrap("query failed"));
  if (ctx.g.json) {
    PrintJson(ctx, *res);
    return kExitOk;
  }
  if (a.set) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& st : res->value("sets", json::array())) {
      std::string ids;
      for (const auto& id : st["ids"]) ids += (ids.empty() ? "" : ",") + CellText(id);
      rows.push_back({CellText(st["group"]), ids, CellText(st["total"])});
    }
    PrintTable(ctx, {a.same.empty() ? "GROUP" : a.same, "IDS", "TOTAL " + a.sum}, rows);
    ctx.io.err << res->value("sets", json::array()).size() << " set(s) from "
               << res->value("candidates", 0) << " candidates in " << res->value("groups", 0)
               << " group(s), " << res->value("elapsed_ms", 0.0) << " ms" << std::endl;
    return kExitOk;
  }
  std::vector<std::string> headers;
  for (const auto& c : res->value("columns", json::array())) headers.push_back(CellText(c));
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : res->value("rows", json::array())) {
    std::vector<std::string> row;
    for (const auto& v : r) row.push_back(CellText(v));
    rows.push_back(row);
  }
  PrintTable(ctx, headers, rows);
  ctx.io.err << rows.size() << " row(s), " << res->value("elapsed_ms", 0.0) << " ms" << std::endl;
  return kExitOk;
}

int CmdWhoami(Ctx& ctx) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Get("/v1/whoami");
  if (!res.ok()) return Fail(ctx, res.error());
  if (ctx.g.json) {
    PrintJson(ctx, *res);
    return kExitOk;
  }
  std::vector<std::pair<std::string, std::string>> pairs;
  FlattenDetails("", *res, {"id", "name", "role"}, &pairs);
  pairs.emplace_back("controller", client->base_url());
  pairs.emplace_back("token from", ctx.token_source);
  PrintKeyValues(ctx.io.out, pairs);
  return kExitOk;
}

// ---------------------------------------------------------------------------
// CLI11 wiring

CLI::Validator MemoryValidator() {
  return CLI::Validator(
      [](std::string& s) {
        auto r = ParseMemoryMb(s);
        return r.ok() ? std::string() : r.error().message;
      },
      "SIZE");
}

CLI::Validator ListenValidator() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        size_t colon = s.rfind(':');
        if (colon == std::string::npos || colon == 0) {
          return "expected HOST:PORT (e.g. 127.0.0.1:8470), got '" + s + "'";
        }
        std::string port = s.substr(colon + 1);
        if (port.empty() || port.size() > 5 ||
            port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) > 65535) {
          return "bad port in '" + s + "' (0-65535)";
        }
        return "";
      },
      "HOST:PORT");
}

// All option storage for one invocation; lambdas capture it by reference.
struct Storage {
  ControllerOptions controller;
  ImageServerOptions image_server;
  AgentOptions agent;
  bool no_prefetch = false;
  std::string agent_memory;
  DevOptions dev;
  std::string ref;
  ImportArgs import;
  VmCreateArgs create;
  QueryArgs query;
  SimHostsOptions sim;
  std::string sim_memory;
  bool leave_running = false;
  bool purge_workspace = false;
  bool no_wait = false;
  ExecArgs exec;
  std::string user_name;
  bool user_admin = false;
  std::map<std::string, int64_t> quota;  // user quota: the fields to set
  std::string cp_memory;
  int cp_vcpus = 0;
  std::string tls_dir;
  CertificateRequest tls_request;
  std::string tls_out;
};

// `vmgrid tls init`: a CA for the grid's roles.
int CmdTlsInit(const Ctx& ctx, const std::string& dir) {
  const bool existed = IsRegularFile(dir + "/ca.pem");
  if (Status st = CreateCa(dir); !st.ok()) return Fail(ctx, st.error());
  ctx.io.out << (existed ? "kept the existing CA in " : "created a CA: ") << dir
             << "/ca.pem (certificate, give it to every role and user as --ca) and " << dir
             << "/ca.key (private key, 0600: keep it off the hosts)" << std::endl;
  return 0;
}

// `vmgrid tls issue NAME`: a certificate of DIR's CA for one role.
int CmdTlsIssue(const Ctx& ctx, const std::string& dir, CertificateRequest req, std::string out) {
  if (out.empty()) out = dir + "/" + req.common_name;
  if (req.dns_names.empty() && req.ip_addresses.empty())
    return UsageError(ctx, "give the names clients reach it by: --dns NAME and/or --ip ADDRESS",
                      "tls issue");
  if (Status st = IssueCertificate(dir, req, out + ".pem", out + ".key"); !st.ok())
    return Fail(ctx, st.error());
  ctx.io.out << "issued " << out << ".pem and " << out << ".key (0600) for " << req.common_name
             << "; serve with --tls-cert " << out << ".pem --tls-key " << out << ".key --ca " << dir
             << "/ca.pem" << std::endl;
  return 0;
}

int Run(const std::vector<std::string>& args, const CliIo& io) {
  Ctx ctx{Globals{}, io, "", false};
  Storage s;
  std::function<int()> action;

  CLI::App app{"vmgrid: run QEMU VMs on a grid of hosts.", "vmgrid"};
  app.footer(kExitCodeFooter);
  app.fallthrough();
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("vmgrid ") + kVersion);
  app.add_option("--url", ctx.g.url, "Controller base URL")
      ->envname("VMGRID_URL")
      ->capture_default_str();
  app.add_option("--token", ctx.g.token, "Bearer token")->envname("VMGRID_TOKEN");
  app.add_option("--token-file", ctx.g.token_file,
                 "File holding the token (default: first existing of " +
                     std::string(kDevAdminToken) + ", ~/.config/vmgrid/token)")
      ->envname("VMGRID_TOKEN_FILE");
  app.add_option("--ca", ctx.g.ca,
                 "CA certificate the controller's must chain to (default: first existing of " +
                     std::string(kDevCa) + ", ~/.config/vmgrid/ca.pem; else the system's)")
      ->envname("VMGRID_CA");
  app.add_flag("--json", ctx.g.json, "Print the API's JSON instead of tables");
  app.add_option("--wait-timeout", ctx.g.wait_timeout_s,
                 "Seconds to wait for long operations before giving up")
      ->envname("VMGRID_WAIT_TIMEOUT")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();

  auto leaf = [&action](CLI::App* parent, const std::string& name, const std::string& desc,
                        std::function<int()> fn) {
    CLI::App* sub = parent->add_subcommand(name, desc);
    sub->callback([&action, fn] { action = fn; });
    return sub;
  };
  // A missing subcommand of a group is reported after parsing (below), so
  // that a typo ("vm lst") is reported as such by CLI11.
  std::vector<CLI::App*> groups;
  auto group = [&groups](CLI::App* parent, const std::string& name, const std::string& desc) {
    CLI::App* sub = parent->add_subcommand(name, desc);
    groups.push_back(sub);
    return sub;
  };

  // TLS flags of a server role (common/tls.h).
  auto tls_flags = [](CLI::App* role, ServerTlsOptions& tls, const std::string& who) {
    role->add_option("--tls-cert", tls.files.cert,
                     "PEM certificate " + who + " serves with and presents as a client")
        ->check(CLI::ExistingFile);
    role->add_option("--tls-key", tls.files.key, "Its PEM private key")->check(CLI::ExistingFile);
    role->add_option("--ca", tls.files.ca,
                     "PEM CA certificate of the grid (peers' certificates must chain to it)")
        ->check(CLI::ExistingFile);
    role->add_flag("--plain-http", tls.plain_http,
                   "Serve plain HTTP instead of TLS (loopback addresses only)");
  };

  // --- server roles
  {
    auto* c = leaf(&app, "controller", "Run the controller (REST API server)",
                   [&] { return RunController(s.controller); });
    c->group("Server roles");
    c->add_option("--listen", s.controller.listen, "Address to listen on")
        ->check(ListenValidator())
        ->capture_default_str();
    c->add_option("--state-dir", s.controller.state_dir, "State directory")->capture_default_str();
    tls_flags(c, s.controller.tls, "the controller");
    c->add_option("--database", s.controller.database,
                  "PostgreSQL URI, e.g. postgresql://vmgrid:PW@127.0.0.1/vmgrid "
                  "(default: SQLite STATE_DIR/vmgrid.db)");
    c->add_option("--image-dir", s.controller.image_dir, "Image store (default: STATE_DIR/images)");
    c->add_option(
        "--image-server", s.controller.image_server,
        "Image server URL to publish images and checkpoints to, e.g. http://127.0.0.1:8471 "
        "(default: none; agents read image files by path)");
    c->add_option("--image-server-token-file", s.controller.image_server_token_file,
                  "File with the image server's token");
    c->add_option("--agent-listen", s.controller.agent_listen,
                  "Separate address for agents' heartbeats (and health), with threads of its own; "
                  "give agents this URL as --controller (default: none, the main listener)")
        ->check(ListenValidator());
    // Admission limits (docs/api.md#limits); over a limit: 429 with Retry-After.
    for (auto [flag, dst, what] :
         {std::tuple{"--max-requests-per-user", &s.controller.max_requests_per_user,
                     "Requests of one user handled at once"},
          {"--max-user-requests", &s.controller.max_user_requests,
           "Requests of all users handled at once (the other HTTP threads stay free for agents and "
           "health)"},
          {"--max-execs-per-user", &s.controller.max_execs_per_user,
           "Exec operations of one user running at once"},
          {"--max-long-ops-per-user", &s.controller.max_long_ops_per_user,
           "Image finalizes, checkpoint publishes and workspace deletions of one user running at "
           "once"},
          {"--max-creates-per-user", &s.controller.max_creates_per_user,
           "VM creates of one user in flight"},
          {"--max-queries-per-user", &s.controller.max_queries_per_user,
           "Queries of one user running at once"},
          {"--http-threads", &s.controller.http_threads,
           "Connection threads of the REST API server"},
          {"--header-timeout-ms", &s.controller.header_timeout_ms,
           "Time a client has to send a request's line and headers"}})
      c->add_option(flag, *dst, what)->check(CLI::Range(1, 1'000'000))->capture_default_str();

    auto* is = leaf(&app, "image-server",
                    "Run an image server (content-addressed image and checkpoint chunks)",
                    [&] { return RunImageServer(s.image_server); });
    is->group("Server roles");
    is->add_option("--listen", s.image_server.listen, "Address to listen on")
        ->check(ListenValidator())
        ->capture_default_str();
    is->add_option("--dir", s.image_server.dir, "Chunk store and manifests")->capture_default_str();
    tls_flags(is, s.image_server.tls, "the image server");
    is->add_option(
        "--token-file", s.image_server.token_file,
        "File with the bearer token clients must send (default: DIR/server.token, created 0600)");

    auto* a = leaf(&app, "agent", "Run a host agent", [&] {
      if (!s.agent_memory.empty()) s.agent.memory_mb = ParseMemoryMb(s.agent_memory).value();
      s.agent.prefetch = !s.no_prefetch;
      return RunAgent(s.agent);
    });
    a->group("Server roles");
    a->add_option("--listen", s.agent.listen, "Address to listen on (port 0: any)")
        ->check(ListenValidator())
        ->capture_default_str();
    a->add_option("--controller", s.agent.controller_url, "Controller base URL")
        ->capture_default_str();
    a->add_option("--token-file", s.agent.token_file,
                  "File with the join token (controller STATE/agent.token); read only until this "
                  "host has credentials (STATE/host-credentials.json)");
    a->add_option("--state-dir", s.agent.state_dir, "State directory")->capture_default_str();
    tls_flags(a, s.agent.tls, "the agent");
    a->add_option("--name", s.agent.name, "Host name to report (default: hostname)");
    a->add_option("--runas", s.agent.runas, "Run QEMU as this user (when per-VM uids are off)");
    a->add_option(
         "--vm-uid-base", s.agent.vm_uid_base,
         "As root, run each VM's QEMU as uid/gid BASE+slot, a range the agent owns (0: off)")
        ->check(CLI::Range(0, 2100000000))
        ->capture_default_str();
    a->add_option("--vm-uid-count", s.agent.vm_uid_count, "Size of the per-VM uid range")
        ->check(CLI::Range(1, 1 << 24))
        ->capture_default_str();
    a->add_option("--cgroup-root", s.agent.cgroup_root,
                  "cgroup v2 hierarchy for per-VM cgroups, used when usable (\"\": off)")
        ->capture_default_str();
    a->add_option("--site", s.agent.site, "Site (administrative domain) of this host")
        ->capture_default_str();
    a->add_option("--network", s.agent.network, "Network segment of this host")
        ->capture_default_str();
    a->add_option("--vcpus", s.agent.vcpus, "vCPUs to offer (0: all)")->check(CLI::Range(0, 4096));
    a->add_option("--memory-mb", s.agent_memory, "Memory to offer, MiB or 4G (default: auto)")
        ->check(MemoryValidator());
    a->add_option(
        "--image-server", s.agent.image_server,
        "Image server URL to fetch image chunks from (default: read image files by path)");
    a->add_option("--image-server-token-file", s.agent.image_server_token_file,
                  "File with the image server's token");
    a->add_option("--image-dir", s.agent.image_dirs,
                  "Directory of image files the controller may name by path (repeatable; "
                  "single-machine setups)");
    a->add_option("--cache-mb", s.agent.cache_mb, "Bound of the host chunk cache, MiB")
        ->check(CLI::Range(64, 1 << 24))
        ->capture_default_str();
    a->add_flag("--no-prefetch", s.no_prefetch,
                "Do not stream recorded first-read orders on cold starts");

    auto* sh = leaf(&app, "sim-hosts", "Simulate N hosts for the controller (scale tests)", [&] {
      if (!s.sim_memory.empty())
        s.sim.memory_mb = static_cast<int64_t>(ParseMemoryMb(s.sim_memory).value());
      return RunSimHosts(s.sim);
    });
    sh->add_option("--count", s.sim.count, "Number of simulated hosts")
        ->check(CLI::Range(1, 1000000))
        ->capture_default_str();
    sh->add_option("--controller", s.sim.controller_url, "Controller base URL")
        ->capture_default_str();
    sh->add_option("--token-file", s.sim.token_file,
                   "File with the join token (controller STATE/agent.token)")
        ->required();
    sh->add_option("--listen", s.sim.listen, "Address to serve the agent API on")
        ->check(ListenValidator())
        ->capture_default_str();
    sh->add_option("--name-prefix", s.sim.name_prefix, "Host name prefix")->capture_default_str();
    sh->add_option("--vcpus", s.sim.vcpus, "vCPUs per host")
        ->check(CLI::Range(1, 4096))
        ->capture_default_str();
    sh->add_option("--memory-mb", s.sim_memory, "Memory per host, MiB or 16G")
        ->check(MemoryValidator());
    sh->add_option("--sites", s.sim.sites, "Sites, assigned round-robin")
        ->check(CLI::Range(1, 100000));
    sh->add_option("--networks", s.sim.networks, "Network segments, round-robin")
        ->check(CLI::Range(1, 100000));
    sh->add_option("--heartbeat-interval", s.sim.heartbeat_interval_s, "Seconds between heartbeats")
        ->check(CLI::Range(0.1, 9.0));
    sh->add_option("--latency-ms", s.sim.op_latency_ms, "Fake latency of VM operations")
        ->check(CLI::Range(0, 600000));

    auto* d = leaf(&app, "dev", "Run a controller and N agents on this machine (development)", [&] {
      if (s.dev.exit_after_demo) s.dev.demo = true;
      return RunDev(s.dev);
    });
    d->group("Server roles");
    d->add_option("--hosts", s.dev.hosts, "Number of simulated hosts")
        ->check(CLI::Range(1, 64))
        ->capture_default_str();
    d->add_option("--port", s.dev.port, "Controller port on 127.0.0.1")
        ->check(CLI::Range(0, 65535))
        ->capture_default_str();
    d->add_option("--state-dir", s.dev.state_dir, "State directory")->capture_default_str();
    d->add_flag("--demo", s.dev.demo, "Run the demo once up");
    d->add_flag("--exit-after-demo", s.dev.exit_after_demo,
                "Exit when the demo is done (implies --demo)");
    d->add_flag("--keep-vms", s.dev.keep_vms, "Keep the demo's VMs at exit");
  }

  // --- tls
  {
    auto* g = group(&app, "tls", "Certificates for TLS between the grid's roles and users");
    g->group("Server roles");
    leaf(g, "init", "Create the grid's CA (DIR/ca.pem, DIR/ca.key); keeps an existing one",
         [&] { return CmdTlsInit(ctx, s.tls_dir); })
        ->add_option("--dir", s.tls_dir, "Directory of the CA")
        ->required();
    auto* issue = leaf(g, "issue", "Issue a certificate (NAME.pem, NAME.key) signed by DIR's CA",
                       [&] { return CmdTlsIssue(ctx, s.tls_dir, s.tls_request, s.tls_out); });
    issue
        ->add_option("NAME", s.tls_request.common_name, "Name of the role or host (certificate CN)")
        ->required();
    issue->add_option("--dir", s.tls_dir, "Directory of the CA")->required();
    issue->add_option("--dns", s.tls_request.dns_names, "DNS name clients use (repeatable)");
    issue->add_option("--ip", s.tls_request.ip_addresses, "IP address clients use (repeatable)");
    issue->add_option("--days", s.tls_request.days, "Validity in days")
        ->check(CLI::Range(1, 3650))
        ->capture_default_str();
    issue->add_option("--out", s.tls_out, "Path prefix of the files (default: DIR/NAME)");
  }

  // --- host
  {
    auto* g = group(&app, "host", "Hosts of the grid");
    g->group("Client commands");
    leaf(g, "list", "List hosts", [&] { return CmdHostList(ctx); });
    leaf(g, "show", "Show one host", [&] { return CmdHostShow(ctx, s.ref); })
        ->add_option("REF", s.ref, "Host id or name")
        ->required();
  }

  // --- image
  {
    auto* g = group(&app, "image", "VM images");
    g->group("Client commands");
    auto* imp = leaf(g, "import", "Upload an image (from a build directory or files); alias: push",
                     [&] { return CmdImageImport(ctx, s.import); });
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

    leaf(g, "list", "List images", [&] { return CmdImageList(ctx); });
    leaf(g, "show", "Show one image", [&] { return CmdImageShow(ctx, s.ref); })
        ->add_option("REF", s.ref, "Image id or name")
        ->required();
    leaf(g, "rm", "Delete an image", [&] { return CmdImageRm(ctx, s.ref); })
        ->add_option("REF", s.ref, "Image id or name")
        ->required();
    auto* cp = leaf(g, "checkpoint", "Create the image's booted checkpoint", [&] {
      return CmdImageCheckpoint(ctx, s.ref, s.cp_memory, s.cp_vcpus, s.no_wait);
    });
    cp->add_option("REF", s.ref, "Image id or name")->required();
    cp->add_option("--memory-mb", s.cp_memory, "Memory of the checkpoint VM (MiB or 1G)")
        ->check(MemoryValidator());
    cp->add_option("--vcpus", s.cp_vcpus, "vCPUs of the checkpoint VM")->check(CLI::Range(1, 1024));
    cp->add_flag("--no-wait", s.no_wait, "Return without waiting for the checkpoint");
  }

  // --- vm
  {
    auto* g = group(&app, "vm", "Virtual machines");
    g->group("Client commands");
    auto* c =
        leaf(g, "create", "Create and start a VM", [&] { return CmdVmCreate(ctx, s.create); });
    c->add_option("--image", s.create.image, "Image id or name");
    c->add_option("--from-checkpoint", s.create.from_checkpoint,
                  "Resume a new clone from this VM's latest checkpoint (instead of --image)");
    c->add_option("--count", s.create.count, "Create a gang of N VMs, all placed or none")
        ->check(CLI::Range(1, 64));
    c->add_option("--same", s.create.same,
                  "Gang members share this host attribute: site or network")
        ->check(CLI::IsMember({"site", "network"}));
    c->add_option("--total-mem", s.create.total_mem, "Gang's total memory range, e.g. 512M..1G");
    c->add_option("--policy", s.create.policy, "Placement: spread (default) or pack")
        ->check(CLI::IsMember({"spread", "pack"}));
    c->add_option("--site", s.create.site, "Only hosts of this site");
    c->add_option("--host-network", s.create.host_network, "Only hosts on this network segment");
    c->add_option("--network", s.create.network, "The VM's virtual network (default: default)");
    c->add_option("--from-future", s.create.from_future,
                  "Realize a future from `vmgrid query` (its image, host and start mode)");
    c->add_option("--name", s.create.name, "VM name");
    c->add_option("--vcpus", s.create.vcpus, "vCPUs (default 1)")->check(CLI::Range(1, 1024));
    c->add_option("--memory-mb", s.create.memory, "Memory, MiB or 256M/1G (default 256M)")
        ->check(MemoryValidator());
    auto* persistent =
        c->add_flag("--persistent", s.create.persistent, "Keep the disk in a workspace");
    c->add_option("--workspace", s.create.workspace, "Workspace name (with --persistent)")
        ->needs(persistent);
    c->add_flag("--resume", s.create.resume, "Start from the image's checkpoint");
    c->add_flag("--no-wait", s.create.no_wait, "Return right after the request is accepted");

    leaf(g, "list", "List VMs", [&] { return CmdVmList(ctx); });
    leaf(g, "show", "Show one VM", [&] { return CmdVmShow(ctx, s.ref); })
        ->add_option("REF", s.ref, "VM id or name")
        ->required();
    auto* stop = leaf(g, "stop", "Stop a VM", [&] {
      return VmAction(ctx, s.ref, "stop", nullptr, SuccessStateOf(VmOp::kStop), s.no_wait);
    });
    stop->add_option("REF", s.ref, "VM id or name")->required();
    stop->add_flag("--no-wait", s.no_wait, "Do not wait");
    auto* cp = leaf(g, "checkpoint", "Checkpoint a VM (suspends it unless --leave-running)", [&] {
      return VmAction(
          ctx, s.ref, "checkpoint", {{"leave_running", s.leave_running}},
          SuccessStateOf(s.leave_running ? VmOp::kCheckpointLeaveRunning : VmOp::kCheckpoint),
          s.no_wait);
    });
    cp->add_option("REF", s.ref, "VM id or name")->required();
    cp->add_flag("--leave-running", s.leave_running, "Keep the VM running");
    cp->add_flag("--no-wait", s.no_wait, "Do not wait");
    auto* resume = leaf(g, "resume", "Resume a suspended VM", [&] {
      return VmAction(ctx, s.ref, "resume", nullptr, SuccessStateOf(VmOp::kResume), s.no_wait);
    });
    resume->add_option("REF", s.ref, "VM id or name")->required();
    resume->add_flag("--no-wait", s.no_wait, "Do not wait");
    auto* rm = leaf(g, "rm", "Delete a VM",
                    [&] { return CmdVmRm(ctx, s.ref, s.purge_workspace, s.no_wait); });
    rm->add_option("REF", s.ref, "VM id or name")->required();
    rm->add_flag("--purge-workspace", s.purge_workspace, "Also delete its workspace");
    rm->add_flag("--no-wait", s.no_wait, "Do not wait");
    auto* ex = leaf(g, "exec", "Run a command in a VM: vm exec REF [--timeout S] -- CMD ARGS...",
                    [&] { return CmdVmExec(ctx, s.exec); });
    ex->add_option("REF", s.exec.ref, "VM id or name")->required();
    ex->add_option("CMD", s.exec.argv, "Command and arguments (after --)");
    ex->add_option("--timeout", s.exec.timeout_s, "Seconds before the guest command is killed")
        ->check(CLI::Range(1, 86400));
    ex->add_option_function<std::string>(
        "--input", [&](const std::string& v) { s.exec.input = v; },
        "Standard input for the command ('-' reads this process's stdin)");
  }

  // --- user
  {
    auto* g = group(&app, "user", "Users (admin)");
    g->group("Client commands");
    auto* c = leaf(g, "create", "Create a user and print its token",
                   [&] { return CmdUserCreate(ctx, s.user_name, s.user_admin); });
    c->add_option("NAME", s.user_name, "User name")->required();
    c->add_flag("--admin", s.user_admin, "Give the admin role");
    leaf(g, "list", "List users", [&] { return CmdUserList(ctx); });
    auto* q = leaf(g, "quota", "Show a user's quota and usage, or set parts of it (0 = unlimited)",
                   [&] { return CmdUserQuota(ctx, s.user_name, s.quota); });
    q->add_option("NAME", s.user_name, "User name")->required();
    for (const auto& [field, label] : kQuotaFields) {
      std::string flag = std::string("--") + field;
      std::replace(flag.begin(), flag.end(), '_', '-');
      q->add_option_function<int64_t>(
           flag, [&s, f = std::string(field)](const int64_t& v) { s.quota[f] = v; },
           std::string("Most ") + label + " at once (0: unlimited)")
          ->check(CLI::NonNegativeNumber);
    }
  }

  // --- workspace
  {
    auto* g = group(&app, "workspace", "Persistent VM disks");
    g->group("Client commands");
    leaf(g, "list", "List workspaces", [&] { return CmdWorkspaceList(ctx); });
    leaf(g, "rm", "Delete a workspace", [&] { return CmdWorkspaceRm(ctx, s.ref); })
        ->add_option("REF", s.ref, "Workspace id or name")
        ->required();
  }

  {
    auto* q = leaf(&app, "query", "Query the grid information service (read-only SQL or --set)",
                   [&] { return CmdQuery(ctx, s.query); });
    q->group("Client commands");
    q->add_option("SQL", s.query.sql,
                  "SELECT over the views hosts, vms, images, image_cache, vdisks, "
                  "virtualization, futures, machines, machines_ext");
    q->add_flag("--set", s.query.set,
                "Find sets of --size rows with the same --same value "
                "whose --sum totals between --min and --max");
    q->add_option("--from", s.query.from, "View to draw set members from")->capture_default_str();
    q->add_option("--size", s.query.size, "Members per set")
        ->check(CLI::Range(1, 64))
        ->capture_default_str();
    q->add_option("--same", s.query.same, "Column all members share (e.g. network)");
    q->add_option("--sum", s.query.sum, "Integer column to total")->capture_default_str();
    q->add_option("--min", s.query.min, "Lowest total (number, or size like 512M)");
    q->add_option("--max", s.query.max, "Highest total (number, or size like 1G)");
    q->add_option("--where", s.query.where, "SQL condition on the members");
    q->add_option("--max-rows", s.query.max_rows, "Refuse results longer than this")
        ->check(CLI::Range(1, 10000));
  }

  leaf(&app, "whoami", "Show the user of the token", [&] {
    return CmdWhoami(ctx);
  })->group("Client commands");

  std::vector<char*> argv;
  std::vector<std::string> owned = args;
  if (owned.empty()) owned.push_back("vmgrid");
  for (auto& a : owned) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (owned.size() == 1) {
    io.out << app.help() << std::flush;
    return kExitUsage;
  }
  try {
    app.parse(static_cast<int>(owned.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e, io.out, io.err);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  if (!action) {
    for (CLI::App* g : groups) {
      if (!g->parsed()) continue;
      std::string names;
      for (const CLI::App* sub : g->get_subcommands({})) {
        names += (names.empty() ? "" : ", ") + sub->get_name();
      }
      io.err << "error: `vmgrid " << g->get_name() << "` needs a subcommand: " << names
             << "\n  see `vmgrid " << g->get_name() << " --help`" << std::endl;
      return kExitUsage;
    }
    io.err << "error: no command given; see `vmgrid --help`" << std::endl;
    return kExitUsage;
  }
  return action();
}

}  // namespace

int RunCliArgs(const std::vector<std::string>& args, CliIo io) {
  try {
    return Run(args, io);
  } catch (const std::exception& e) {
    io.err << "error: internal error: " << e.what() << std::endl;
    return kExitFailure;
  } catch (...) {
    io.err << "error: internal error" << std::endl;
    return kExitFailure;
  }
}

int RunCli(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  return RunCliArgs(args, CliIo{std::cout, std::cerr, ::isatty(STDERR_FILENO) == 1});
}

}  // namespace vmgrid
