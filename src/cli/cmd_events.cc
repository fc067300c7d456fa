// `vmgrid events`: the event stream (GET /v1/events; docs/operations.md,
// "Events"): VM state changes, placements with the host and why,
// migrations, hosts up/down/draining. Without --after the newest --last
// events; --follow then waits for more (long polls) until interrupted.
#include <chrono>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "cli/command.h"
#include "cli/exit_codes.h"
#include "client/api_client.h"
#include "common/result.h"

namespace vmgrid::cli {
namespace {

// How long one follow request waits on the controller (its maximum is 60 s).
constexpr int kFollowWaitS = 25;

struct EventsArgs {
  std::string vm;
  int64_t after = -1;  // -1: the newest `last`
  int64_t last = 50;
  bool follow = false;
};

std::string TimeStr(const json& e) {
  auto ms = Num(e, "time_ms");
  if (!ms) return "-";
  const std::time_t t = static_cast<std::time_t>(*ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

const std::vector<std::string> kEventHeaders = {"ID", "TIME", "KIND", "VM", "HOST", "MESSAGE"};
std::vector<std::string> EventRow(const json& e) {
  auto or_dash = [](const std::string& s) { return s.empty() ? std::string("-") : s; };
  return {NumStr(e, "id"),
          TimeStr(e),
          Str(e, "kind"),
          or_dash(Str(e, "vm_id")),
          or_dash(Str(e, "host_id")),
          Str(e, "message")};
}

std::string EventsPath(const EventsArgs& a, int64_t after, bool follow) {
  std::string path = "/v1/events?limit=1000";
  if (after >= 0)
    path += "&after=" + std::to_string(after);
  else
    path += "&last=" + std::to_string(a.last);
  if (!a.vm.empty()) path += "&vm=" + PathEscape(a.vm);
  if (follow) path += "&follow=1&wait=" + std::to_string(kFollowWaitS);
  return path;
}

int CmdEvents(Ctx& ctx, const EventsArgs& a) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  client->set_read_timeout_s(kFollowWaitS + 30);
  // The first page: the newest `last`, or everything after the cursor.
  json all = json::array();
  int64_t next = a.after;
  while (true) {
    auto res = client->Get(EventsPath(a, next, false));
    if (!res.ok()) return Fail(ctx, res.error(), "vm");
    for (const auto& e : ListOf(*res, "events")) all.push_back(e);
    const int64_t cursor = res->value("next", int64_t{0});
    const bool more = next >= 0 && ListOf(*res, "events").size() >= 1000;
    next = cursor;
    if (!more) break;
  }
  if (!a.follow) {
    if (ctx.g.json) {
      PrintJson(ctx, json{{"events", all}, {"next", next}});
      return kExitOk;
    }
    return PrintList(ctx, json{{"events", all}}, "events", kEventHeaders, EventRow);
  }
  // Following: one line per event (JSON lines with --json), as they come.
  auto print = [&](const json& e) {
    if (ctx.g.json) {
      ctx.io.out << e.dump() << '\n';
    } else {
      std::string line;
      for (const auto& cell : EventRow(e)) line += (line.empty() ? "" : "  ") + cell;
      ctx.io.out << line << '\n';
    }
  };
  for (const auto& e : all) print(e);
  ctx.io.out << std::flush;
  SigintGuard guard;
  while (!g_interrupted.load()) {
    auto res = client->Get(EventsPath(a, next, true));
    if (!res.ok()) {
      // Over the followers' bound (429) or a controller restarting: retry.
      const Error& e = res.error();
      if (e.code != ErrorCode::kTooManyRequests && e.code != ErrorCode::kUnavailable &&
          e.code != ErrorCode::kTimeout)
        return Fail(ctx, e, "vm");
      const int wait_s = std::max(1, e.retry_after_s);
      for (int i = 0; i < wait_s * 10 && !g_interrupted.load(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    for (const auto& e : ListOf(*res, "events")) print(e);
    ctx.io.out << std::flush;
    next = res->value("next", next);
  }
  return kExitOk;
}

}  // namespace

void AddEventsCommand(CommandTree& t) {
  auto& a = t.Keep<EventsArgs>();
  auto* c = t.Leaf(&t.app, "events",
                   "Show the event stream: VM state changes, placements (host and why), "
                   "migrations, hosts up/down/draining (yours; the admin sees all)",
                   [&] { return CmdEvents(t.ctx, a); });
  c->group("Client commands");
  c->add_option("--vm", a.vm, "Only this VM's events (id or name; a deleted VM by id)");
  c->add_option("--after", a.after, "Events after this cursor (an event id), all of them")
      ->check(CLI::Range(int64_t{0}, INT64_MAX));
  c->add_option("--last", a.last, "Without --after: the newest this many")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}))
      ->capture_default_str();
  c->add_flag("--follow,-f", a.follow, "Keep waiting for new events (Ctrl-C ends)");
}

}  // namespace vmgrid::cli
