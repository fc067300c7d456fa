// `vmgrid job ...`: grid jobs (docs/jobs.md) — run (queue a job of
// COUNT tasks, each an unmodified program in a fresh clone VM), list, show,
// logs, wait (exits with the job's exit code) and cancel.
#include <CLI/CLI.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli/command.h"
#include "cli/exit_codes.h"
#include "client/api_client.h"
#include "common/result.h"

namespace vmgrid::cli {
namespace {

// What `job wait` exits with when interrupted (as a cancelled job: 128 + SIGINT).
constexpr int kJobExitCancelled = 130;

struct RunArgs {
  std::string image;
  bool resume = false;
  int64_t vcpus = 0, memory_mb = 0, count = 1, retries = 2, timeout_s = 3600;
  std::vector<std::string> data;
  std::string output;
  bool wait = false;
  std::vector<std::string> argv;
};

// `--data LABEL=DATASET[:VERSION]:/MOUNT`.
Result<json> ParseDataFlag(const std::string& s) {
  auto bad = [&] {
    return MakeError(ErrorCode::kInvalidArgument,
                     "--data '" + s + "': expected LABEL=DATASET[:VERSION]:/MOUNT");
  };
  const auto eq = s.find('=');
  const auto colon = s.rfind(":/");
  if (eq == std::string::npos || eq == 0 || colon == std::string::npos || colon < eq) return bad();
  std::string ds = s.substr(eq + 1, colon - eq - 1);
  int64_t version = 0;
  if (auto c = ds.find(':'); c != std::string::npos) {
    std::string v = ds.substr(c + 1);
    if (v.empty() || v.size() > 15 || v.find_first_not_of("0123456789") != std::string::npos)
      return bad();
    version = std::stoll(v);
    ds = ds.substr(0, c);
  }
  if (ds.empty()) return bad();
  return json{{"name", s.substr(0, eq)},
              {"dataset", ds},
              {"version", version},
              {"mount", s.substr(colon + 1)}};
}

// `--output DATASET:/MOUNT` (`{i}` in DATASET: the task's index).
Result<json> ParseOutputFlag(const std::string& s) {
  const auto colon = s.rfind(":/");
  if (colon == std::string::npos || colon == 0)
    return MakeError(ErrorCode::kInvalidArgument,
                     "--output '" + s + "': expected DATASET:/MOUNT (with {i} for the task index)");
  return json{{"dataset", s.substr(0, colon)}, {"mount", s.substr(colon + 1)}};
}

int WaitJob(Ctx& ctx, const std::string& id, bool quiet);

int CmdJobRun(Ctx& ctx, const RunArgs& a) {
  if (a.argv.empty())
    return UsageError(ctx, "no command given; usage: vmgrid job run --image IMG -- CMD [ARGS...]",
                      "job run");
  json body = {{"image", a.image},   {"argv", a.argv},       {"count", a.count},
               {"resume", a.resume}, {"retries", a.retries}, {"timeout_s", a.timeout_s}};
  if (a.vcpus > 0) body["vcpus"] = a.vcpus;
  if (a.memory_mb > 0) body["memory_mb"] = a.memory_mb;
  if (!a.data.empty()) {
    body["data"] = json::array();
    for (const auto& d : a.data) {
      auto j = ParseDataFlag(d);
      if (!j.ok()) return UsageError(ctx, j.error().message, "job run");
      body["data"].push_back(*j);
    }
  }
  if (!a.output.empty()) {
    auto j = ParseOutputFlag(a.output);
    if (!j.ok()) return UsageError(ctx, j.error().message, "job run");
    body["output"] = *j;
  }
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto job = client->Post("/v1/jobs", body);
  // Not found: the image or an input dataset (the message says which).
  if (!job.ok()) return Fail(ctx, job.error());
  const std::string id = Str(*job, "id");
  if (ctx.g.json && !a.wait) {
    PrintJson(ctx, *job);
    return kExitOk;
  }
  if (!ctx.g.json)
    ctx.io.out << "job " << id << ": " << a.count << (a.count == 1 ? " task" : " tasks")
               << " queued" << std::endl;
  return a.wait ? WaitJob(ctx, id, false) : kExitOk;
}

const std::vector<std::string> kJobHeaders = {"ID",     "STATE", "TASKS",   "DONE",
                                              "FAILED", "EXIT",  "COMMAND", "AGE"};
std::vector<std::string> JobRow(const json& j) {
  const json& c = j.contains("tasks_by_state") ? j["tasks_by_state"] : json::object();
  auto n = [&](const char* k) { return c.value(k, 0); };
  std::string cmd;
  if (j.contains("argv") && j["argv"].is_array())
    for (const auto& a : j["argv"]) cmd += (cmd.empty() ? "" : " ") + a.get<std::string>();
  if (cmd.size() > 40) cmd = cmd.substr(0, 37) + "...";
  return {Str(j, "id"),
          Str(j, "state"),
          NumStr(j, "count"),
          std::to_string(n("succeeded")),
          std::to_string(n("failed")),
          j.contains("exit_code") && !j["exit_code"].is_null() ? NumStr(j, "exit_code") : "-",
          cmd,
          AgeStr(j, "created_at")};
}

int CmdJobShow(Ctx& ctx, const std::string& id) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto job = client->Get("/v1/jobs/" + PathEscape(id));
  if (!job.ok()) return Fail(ctx, job.error(), "job");
  if (ctx.g.json) {
    PrintJson(ctx, *job);
    return kExitOk;
  }
  json head = *job;
  head.erase("tasks");
  PrintDetails(ctx.io.out, head);
  ctx.io.out << "\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& t : (*job)["tasks"]) {
    auto time = [&](const char* k) { return t[k].is_string() ? t[k].get<std::string>() : "-"; };
    rows.push_back({NumStr(t, "index"), Str(t, "state"), NumStr(t, "attempts"),
                    Str(t, "host").empty() ? "-" : Str(t, "host"),
                    t["exit_code"].is_null() ? "-" : NumStr(t, "exit_code"), time("started_at"),
                    time("finished_at"), Str(t, "error").empty() ? "-" : Str(t, "error")});
  }
  PrintTable(ctx, {"TASK", "STATE", "ATTEMPTS", "HOST", "EXIT", "STARTED", "FINISHED", "NOTE"},
             rows);
  return kExitOk;
}

int CmdJobLogs(Ctx& ctx, const std::string& id, int64_t task, bool err) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto logs = client->Get("/v1/jobs/" + PathEscape(id) + "/tasks/" + std::to_string(task) +
                          "/logs?stream=" + (err ? "stderr" : "stdout"));
  if (!logs.ok()) return Fail(ctx, logs.error(), "job");
  if (ctx.g.json) {
    PrintJson(ctx, *logs);
    return kExitOk;
  }
  (err ? ctx.io.err : ctx.io.out) << Str(*logs, "data") << std::flush;
  if (logs->value("truncated", false))
    ctx.io.err << "(truncated: only the first " << NumStr(*logs, "limit_bytes")
               << " bytes were kept)" << std::endl;
  return kExitOk;
}

int WaitJob(Ctx& ctx, const std::string& id, bool quiet) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  SigintGuard sigint;
  StatusLine status(ctx.io);
  while (true) {
    auto job = client->Get("/v1/jobs/" + PathEscape(id));
    if (!job.ok()) return Fail(ctx, job.error(), "job");
    const std::string state = Str(*job, "state");
    if (state == "succeeded" || state == "failed" || state == "cancelled") {
      status.Finish("");
      if (ctx.g.json) PrintJson(ctx, *job);
      int code = job->contains("exit_code") && (*job)["exit_code"].is_number_integer()
                     ? (*job)["exit_code"].get<int>()
                     : kExitFailure;
      if (!quiet && !ctx.g.json)
        ctx.io.err << "job " << id << " " << state << " (exit code " << code << ")" << std::endl;
      return code;
    }
    const json& c = (*job)["tasks_by_state"];
    status.Update("job " + id + ": " + state + ", " + std::to_string(c.value("queued", 0)) +
                  " queued, " + std::to_string(c.value("starting", 0) + c.value("running", 0)) +
                  " running, " + std::to_string(c.value("succeeded", 0) + c.value("failed", 0)) +
                  " done");
    for (int i = 0; i < 10; ++i) {
      if (g_interrupted.load()) {
        status.Finish("interrupted; the job goes on (vmgrid job cancel " + id + " stops it)");
        return kJobExitCancelled;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
}

int CmdJobCancel(Ctx& ctx, const std::string& id) {
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto job = client->Post("/v1/jobs/" + PathEscape(id) + "/cancel");
  if (!job.ok()) return Fail(ctx, job.error(), "job");
  if (ctx.g.json)
    PrintJson(ctx, *job);
  else
    ctx.io.out << "cancelled job " << id << std::endl;
  return kExitOk;
}

}  // namespace

struct AddJobCommandsFlags {
  RunArgs run;
  std::string id;
  int64_t task = 0;
  bool err = false;
};

void AddJobCommands(CommandTree& t) {
  auto& s = t.Keep<AddJobCommandsFlags>();
  auto* g = t.Group(&t.app, "job",
                    "Grid jobs: unmodified programs run in fresh VMs, queued until the grid has "
                    "room (docs/jobs.md)");
  g->group("Client commands");
  auto* run = t.Leaf(g, "run",
                     "Queue a job of COUNT tasks, each CMD in a fresh clone VM ({i} in CMD is "
                     "the task's index); prints its id",
                     [&] { return CmdJobRun(t.ctx, s.run); });
  run->add_option("--image", s.run.image, "Image (id or name)")->required();
  run->add_flag("--resume", s.run.resume, "Start each task from the image's post-boot checkpoint");
  run->add_option("--vcpus", s.run.vcpus, "vCPUs per task VM")->check(CLI::Range(1, 64));
  run->add_option("--memory-mb", s.run.memory_mb, "Memory per task VM (MB)")
      ->check(CLI::Range(int64_t{64}, int64_t{1} << 20));
  run->add_option("--count", s.run.count, "Number of tasks (1 to 1000)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  run->add_option("--retries", s.run.retries,
                  "Times a task is retried when its VM or host is lost (not when it exits "
                  "non-zero)")
      ->check(CLI::Range(0, 10))
      ->capture_default_str();
  run->add_option("--timeout", s.run.timeout_s, "Seconds a task's program may run")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  run->add_option("--data", s.run.data,
                  "LABEL=DATASET[:VERSION]:/MOUNT, a dataset mounted read-only in every task "
                  "(DATASET: yours, or OWNER/NAME shared with you; repeatable, at most 3)");
  run->add_option("--output", s.run.output,
                  "DATASET:/MOUNT, committed as a new dataset per task ({i}: the index)");
  run->add_flag("--wait", s.run.wait, "Wait for the job and exit with its exit code");
  run->add_option("CMD", s.run.argv, "Command and arguments (after --)");
  t.ListLeaf(g, "List jobs",
             [&] { return ListCommand(t.ctx, "/v1/jobs", "jobs", kJobHeaders, JobRow); });
  t.Leaf(g, "show", "Show a job and its tasks (states, hosts, times, exit codes, attempts)",
         [&] { return CmdJobShow(t.ctx, s.id); })
      ->add_option("JOB", s.id, "Job id")
      ->required();
  auto* logs = t.Leaf(g, "logs", "Print a task's standard output (or error)",
                      [&] { return CmdJobLogs(t.ctx, s.id, s.task, s.err); });
  logs->add_option("JOB", s.id, "Job id")->required();
  logs->add_option("--task", s.task, "Task index")->capture_default_str();
  logs->add_flag("--stderr", s.err, "Standard error instead");
  t.Leaf(g, "wait",
         "Wait until the job ends; exit 0 if every task exited 0, else the first failed task's "
         "code (125: a task failed without one; 130: cancelled)",
         [&] { return WaitJob(t.ctx, s.id, false); })
      ->add_option("JOB", s.id, "Job id")
      ->required();
  t.Leaf(g, "cancel", "Cancel a job: queued tasks never start, running ones' VMs are deleted",
         [&] { return CmdJobCancel(t.ctx, s.id); })
      ->add_option("JOB", s.id, "Job id")
      ->required();
}

}  // namespace vmgrid::cli
