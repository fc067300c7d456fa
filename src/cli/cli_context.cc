#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "cli/command.h"
#include "cli/exit_codes.h"
#include "cli/format.h"
#include "common/host_port.h"
#include "common/http_json.h"
#include "common/tls.h"
#include "common/util.h"
#include "common/version.h"
#include "images/image_file.h"

namespace vmgrid::cli {

// ---------------------------------------------------------------------------
// Small helpers

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

// ---------------------------------------------------------------------------
// SIGINT during `image import`: we cancel the upload and remove the
// half-created image instead of dying with it left behind.

std::atomic<bool> g_interrupted{false};

extern "C" void OnSigint(int) { g_interrupted.store(true); }

// ---------------------------------------------------------------------------
// Global options and the per-invocation context

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
int Fail(const Ctx& ctx, const Error& e, const std::string& kind) {
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
  const std::string first = path + (path.find('?') == std::string::npos ? "?" : "&") + "limit=";
  const ListPaging& p = ctx.page;
  if (p.limit > 0 || !p.cursor.empty()) {  // one page, as asked
    std::string q = first + std::to_string(p.limit > 0 ? p.limit : kMaxPageLimit);
    if (!p.cursor.empty()) q += "&cursor=" + PathEscape(p.cursor);
    auto answer = client->Get(q);
    if (!answer.ok()) return Fail(ctx, answer.error());
    int rc = PrintList(ctx, *answer, key, headers, row);
    if (!ctx.g.json && answer->contains("next") && (*answer)["next"].is_string())
      ctx.io.err << "more: --cursor " << (*answer)["next"].get<std::string>() << "\n";
    return rc;
  }
  // Every page, printed as one list.
  json items = json::array();
  std::string cursor;
  for (;;) {
    std::string q = first + std::to_string(kMaxPageLimit);
    if (!cursor.empty()) q += "&cursor=" + PathEscape(cursor);
    auto answer = client->Get(q);
    if (!answer.ok()) return Fail(ctx, answer.error());
    for (auto& item : ListOf(*answer, key)) items.push_back(std::move(item));
    if (!answer->contains("next")) break;
    const json& next = (*answer)["next"];
    if (!next.is_string() || next.get<std::string>().empty() || next.get<std::string>() == cursor)
      return Fail(ctx, Error{ErrorCode::kInternal,
                             "the controller answered a page with a bad 'next': " + next.dump()});
    cursor = next.get<std::string>();
  }
  return PrintList(ctx, json{{key, std::move(items)}}, key, headers, row);
}

int ShowCommand(Ctx& ctx, const std::string& path, const std::string& kind) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto answer = client->Get(path);
  if (!answer.ok()) return Fail(ctx, answer.error(), kind);
  return PrintShow(ctx, *answer);
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
                           bool interruptible, const std::function<void(const json&)>& on_update) {
  const std::string id = Str(op, "id");
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(ctx.g.wait_timeout_s);
  StatusLine status(ctx.io);
  auto wait = std::chrono::milliseconds(50);
  int unavailable_streak = 0;
  while (true) {
    if (on_update) on_update(op);
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
        auto parsed = ParseHostPort(s);
        return parsed.ok() ? std::string() : parsed.error().message;
      },
      "HOST:PORT");
}

CLI::App* CommandTree::Leaf(CLI::App* parent, const std::string& name, const std::string& desc,
                            std::function<int()> fn) {
  CLI::App* sub = parent->add_subcommand(name, desc);
  sub->callback([this, fn = std::move(fn)] { action = fn; });
  return sub;
}

CLI::App* CommandTree::ListLeaf(CLI::App* parent, const std::string& desc,
                                std::function<int()> fn) {
  CLI::App* sub = Leaf(parent, "list", desc, std::move(fn));
  sub->add_option("--limit", ctx.page.limit,
                  "Print one page of at most N items (the answer's next page: --cursor); "
                  "without it, every page")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}));
  sub->add_option("--cursor", ctx.page.cursor, "Start after this cursor (a page's 'next')");
  return sub;
}

// A missing subcommand of a group is reported after parsing (cli.cc), so
// that a typo ("vm lst") is reported as such by CLI11.
CLI::App* CommandTree::Group(CLI::App* parent, const std::string& name, const std::string& desc) {
  CLI::App* sub = parent->add_subcommand(name, desc);
  groups.push_back(sub);
  return sub;
}

}  // namespace vmgrid::cli
