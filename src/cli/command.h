// Shared by the `vmgrid` client commands (cmd_*.cc): the invocation's
// context (global flags, streams, token), output helpers (tables, details,
// JSON), waiting for long operations with progress, and the CommandTree the
// commands register themselves in. Internal to src/cli.
#pragma once

#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "cli/cli.h"
#include "client/api_client.h"
#include "common/result.h"

namespace vmgrid::cli {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

inline constexpr const char* kDefaultUrl = "https://127.0.0.1:8470";
inline constexpr const char* kDevAdminToken = "./state/dev/controller/admin.token";
inline constexpr const char* kDevCa = "./state/dev/tls/ca.pem";
inline constexpr auto kVmPollInterval = std::chrono::milliseconds(200);
inline constexpr auto kImagePollInterval = std::chrono::milliseconds(500);
inline constexpr auto kProgressInterval = std::chrono::milliseconds(100);

inline constexpr const char* kExitCodeFooter =
    "Exit codes: 0 success; 1 failure; 2 usage error (bad flags/arguments);\n"
    "  3 not found; 4 authentication/permission; 5 conflict or wrong state\n"
    "  (already exists, failed precondition, no capacity); 6 unavailable or timeout.\n"
    "  `vm exec` exits with the guest command's code (6/1 if it could not run).\n"
    "Environment: VMGRID_URL, VMGRID_TOKEN, VMGRID_TOKEN_FILE, VMGRID_WAIT_TIMEOUT.";

inline double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

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

// SIGINT during `image import` and while waiting: we cancel the upload and
// remove the half-created image instead of dying with it left behind.
extern std::atomic<bool> g_interrupted;
extern "C" void OnSigint(int);

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

// A list command's --limit and --cursor (CommandTree::ListLeaf).
struct ListPaging {
  int64_t limit = 0;  // 0: every page
  std::string cursor;
};

struct Ctx {
  Globals g;
  CliIo io;
  std::string token_source;  // where the token came from, for messages
  bool have_token = false;
  ListPaging page;
};

// ---------------------------------------------------------------------------
// Where commands register: `Leaf` adds a command whose callback becomes the
// invocation's action; `Group` a command that needs a subcommand; `Keep`
// gives a command's option storage the lifetime of the parse.
struct CommandTree {
  CLI::App& app;
  Ctx& ctx;
  std::function<int()> action;
  std::vector<CLI::App*> groups;
  std::vector<std::shared_ptr<void>> storage;

  CLI::App* Leaf(CLI::App* parent, const std::string& name, const std::string& desc,
                 std::function<int()> fn);
  CLI::App* Group(CLI::App* parent, const std::string& name, const std::string& desc);
  // A "list" leaf with --limit and --cursor (into ctx.page, which
  // ListCommand reads).
  CLI::App* ListLeaf(CLI::App* parent, const std::string& desc, std::function<int()> fn);
  template <class T>
  T& Keep() {
    auto p = std::make_shared<T>();
    storage.push_back(p);
    return *p;
  }
};

// Each command file registers its commands (in `vmgrid --help` order).
void AddRoleCommands(CommandTree& t, const RoleEntryPoints& roles);
void AddTlsCommands(CommandTree& t);
void AddHostCommands(CommandTree& t);
void AddImageCommands(CommandTree& t);
void AddDataCommands(CommandTree& t);
void AddVmCommands(CommandTree& t);
void AddJobCommands(CommandTree& t);
void AddNetCommands(CommandTree& t);
void AddUserCommands(CommandTree& t);  // user, workspace
void AddQueryCommands(CommandTree& t);
void AddEventsCommand(CommandTree& t);
void AddWhoamiCommand(CommandTree& t);

// ---------------------------------------------------------------------------
// Helpers (cli_context.cc)

// JSON answer fields as table cells ("-" when absent).
double NowEpoch();
std::string Trim(const std::string& s);
bool IsRegularFile(const std::string& path);
bool IsDirectory(const std::string& path);
std::string Str(const json& j, const char* key);
std::optional<uint64_t> Num(const json& j, const char* key);
std::string NumStr(const json& j, const char* key);
std::string MemStr(const json& j, const char* key);
std::string BytesStr(const json& j, const char* key);
std::optional<double> TimeOf(const json& v);
std::string AgeStr(const json& j, const char* key);
std::string StateOf(const json& j);
json ListOf(const json& answer, const char* key);
std::string IdOr(const json& obj, const std::string& fallback);
bool EndsWith(const std::string& s, const std::string& suffix);
void FlattenDetails(const std::string& prefix, const json& obj,
                    const std::vector<std::string>& order,
                    std::vector<std::pair<std::string, std::string>>* out);
void PrintDetails(std::ostream& out, const json& obj);

// Prints "error: ..." with a hint on what to do next; returns the exit code.
// `kind` names the object kind for not-found hints ("vm", "image", ...).
int Fail(const Ctx& ctx, const Error& e, const std::string& kind = "");
int UsageError(const Ctx& ctx, const std::string& message, const std::string& command);
// A client of the controller with the invocation's token and CA.
Result<ApiClient> MakeClient(Ctx& ctx);

void PrintJson(const Ctx& ctx, const json& j);
void PrintTable(const Ctx& ctx, const std::vector<std::string>& headers,
                const std::vector<std::vector<std::string>>& rows);
using RowFn = std::function<std::vector<std::string>(const json&)>;
// Prints a list answer as a table (or JSON).
int PrintList(const Ctx& ctx, const json& answer, const char* key,
              const std::vector<std::string>& headers, const RowFn& row);
int PrintShow(const Ctx& ctx, const json& obj);
int PrintOne(const Ctx& ctx, const json& obj, const std::vector<std::string>& headers,
             const RowFn& row);
// GET path and print it as a list / as details.
int ListCommand(Ctx& ctx, const std::string& path, const char* key,
                const std::vector<std::string>& headers, const RowFn& row);
int ShowCommand(Ctx& ctx, const std::string& path, const std::string& kind);

// Long operations (GET /v1/operations/ID).
bool IsOperation(const Result<json>& r);
Result<json> RetryWhileBusy(Ctx& ctx, const std::function<Result<json>()>& request);
// `on_update` (if set) sees the operation as each poll answers it, the
// last one included (a drain prints its VMs' progress from it).
Result<json> WaitOperation(Ctx& ctx, const ApiClient& client, json op, const std::string& what,
                           bool interruptible,
                           const std::function<void(const json&)>& on_update = nullptr);

CLI::Validator MemoryValidator();
CLI::Validator ListenValidator();

}  // namespace vmgrid::cli
