// `vmgrid dev`: a whole grid on this machine (controller + N agents as child
// processes, embedded SQLite), and the README's demo on top of it.

#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>

#include "common/signals.h"
#include "common/subprocess.h"
#include "common/util.h"
#include "dev/dev_options.h"
#include "dev/local_grid.h"

#ifndef VMGRID_SOURCE_DIR
#define VMGRID_SOURCE_DIR "."
#endif
#ifndef VMGRID_TINY_IMAGE_DIR
#define VMGRID_TINY_IMAGE_DIR "build/images/tiny"
#endif

namespace vmgrid {

namespace fs = std::filesystem;
using nlohmann::json;
using std::chrono::seconds;

namespace {

std::string TinyImageDir() {
  const char* env = getenv("VMGRID_TINY_IMAGE");
  return env && *env ? env : VMGRID_TINY_IMAGE_DIR;
}

Status EnsureTinyImage() {
  std::string script = std::string(VMGRID_SOURCE_DIR) + "/guest/build-tiny.sh";
  std::printf("==> building the tiny guest image (cached when unchanged)\n");
  std::fflush(stdout);
  auto out = RunProcess({"bash", script, TinyImageDir()}, std::chrono::minutes(20));
  if (!out.ok()) return out.error();
  std::fputs(out->out.c_str(), stdout);
  if (out->exit_code != 0)
    return MakeError(ErrorCode::kInternal, "guest/build-tiny.sh failed: " + out->err);
  return Status::Ok();
}

// Runs the `vmgrid` CLI against the grid (output straight to our terminal),
// so the demo shows what a user would type.
int Cli(const LocalGrid& grid, std::vector<std::string> args) {
  std::printf("$ vmgrid");
  for (auto& a : args) std::printf(a.find(' ') == std::string::npos ? " %s" : " '%s'", a.c_str());
  std::printf("\n");
  std::fflush(stdout);
  std::vector<std::string> argv = {SelfExecutable(),
                                   "--url",
                                   grid.url(),
                                   "--ca",
                                   grid.ca_file(),
                                   "--token-file",
                                   grid.controller_state_dir() + "/admin.token"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

Status RunDemo(LocalGrid& grid) {
  VMG_RETURN_IF_ERROR(EnsureTinyImage());
  ApiClient admin = grid.Admin();
  auto images = admin.Get("/v1/images");
  if (!images.ok()) return images.error();
  bool have_tiny = false;
  for (const auto& i : images->value("images", json::array()))
    if (i.value("name", "") == "tiny" && i.value("state", "") == "ready" &&
        !i["checkpoint"].is_null() && i["checkpoint"].value("state", "") == "ready")
      have_tiny = true;
  if (!have_tiny) {
    (void)admin.Delete("/v1/images/tiny");
    std::printf("\n==> importing the tiny image and making its post-boot checkpoint\n");
    if (Cli(grid, {"image", "import", "tiny", TinyImageDir(), "--checkpoint"}) != 0)
      return MakeError(ErrorCode::kInternal, "image import failed");
  }
  Cli(grid, {"image", "list"});
  for (const char* name : {"demo-boot", "demo-resume"})
    (void)admin.Delete(std::string("/v1/vms/") + name);
  (void)PollUntil(
      admin, "/v1/vms",
      [](const json& j) {
        for (const auto& v : j.value("vms", json::array()))
          if (v.value("name", "").starts_with("demo-")) return false;
        return true;
      },
      seconds(60));
  std::printf("\n==> creating one VM by booting the image\n");
  if (Cli(grid, {"vm", "create", "--image", "tiny", "--name", "demo-boot"}) != 0)
    return MakeError(ErrorCode::kInternal, "vm create (boot) failed");
  std::printf("\n==> creating one VM by resuming the image's post-boot checkpoint (a clone)\n");
  if (Cli(grid, {"vm", "create", "--image", "tiny", "--name", "demo-resume", "--resume"}) != 0)
    return MakeError(ErrorCode::kInternal, "vm create (resume) failed");
  for (const char* name : {"demo-boot", "demo-resume"}) {
    std::printf("\n==> running a command inside %s through the guest agent\n", name);
    if (Cli(grid,
            {"vm", "exec", name, "--", "/bin/sh", "-c",
             "echo \"hello from $(hostname)\"; uname -sr; echo \"uptime: $(cat /proc/uptime)\""}) !=
        0)
      return MakeError(ErrorCode::kInternal, "vm exec failed");
  }
  std::printf("\n==> a grid job: 4 tasks, each an unmodified program in a fresh clone VM\n");
  if (Cli(grid, {"job", "run", "--image", "tiny", "--resume", "--count", "4", "--wait", "--",
                 "/bin/sh", "-c", "echo \"task {i} on $(hostname)\""}) != 0)
    return MakeError(ErrorCode::kInternal, "job run failed");
  Cli(grid, {"job", "list"});
  std::printf("\n");
  Cli(grid, {"vm", "list"});
  Cli(grid, {"host", "list"});
  return Status::Ok();
}

}  // namespace

int RunDev(const DevOptions& options) {
  InstallTerminationHandlers();
  LocalGridOptions go;
  go.state_dir = options.state_dir;
  go.port = options.port;
  go.hosts = options.hosts;
  go.log_format = options.log_format;
  go.controllers = options.controllers;
  go.database = options.database;
  LocalGrid grid(go);
  std::printf("==> starting a local grid: %s on %s and %d agent(s), state in %s\n",
              options.controllers > 1 ? "controllers" : "controller", grid.urls().c_str(),
              options.hosts, options.state_dir.c_str());
  std::fflush(stdout);
  Status st = grid.Start();
  if (!st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.error().message.c_str());
    return 1;
  }
  std::printf(
      "==> grid is up (TLS, CA %s). To use it from another shell:\n"
      "      export VMGRID_URL=%s VMGRID_CA=%s VMGRID_TOKEN_FILE=%s/admin.token\n"
      "    logs: %s\n",
      grid.ca_file().c_str(), grid.urls().c_str(), grid.ca_file().c_str(),
      grid.controller_state_dir().c_str(), grid.log_dir().c_str());
  std::fflush(stdout);
  int rc = 0;
  if (options.demo || options.exit_after_demo) {
    Status demo = RunDemo(grid);
    if (!demo.ok()) {
      std::fprintf(stderr, "error: demo failed: %s (logs in %s)\n", demo.error().message.c_str(),
                   grid.log_dir().c_str());
      rc = 1;
    } else {
      std::printf("\n==> demo done.\n");
    }
  }
  if (!options.exit_after_demo) {
    std::printf("==> press Ctrl-C to stop the grid%s\n",
                options.keep_vms ? " (VMs keep running)" : " and its VMs");
    std::fflush(stdout);
    WaitForTermination();
  }
  if (!options.keep_vms) {
    ApiClient admin = grid.Admin();
    auto vms = admin.Get("/v1/vms");
    if (vms.ok()) {
      for (const auto& v : vms->value("vms", json::array()))
        (void)admin.Delete("/v1/vms/" + v.value("id", ""));
      (void)PollUntil(
          admin, "/v1/vms", [](const json& j) { return j.value("vms", json::array()).empty(); },
          seconds(60));
    }
    grid.KillVmProcesses();
  }
  std::printf("==> stopping the grid\n");
  return rc;
}

}  // namespace vmgrid
