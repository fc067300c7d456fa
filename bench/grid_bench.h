// What the benchmarks that drive a LocalGrid share: importing the tiny image
// with its post-boot checkpoint, emptying a host's image cache, the machine
// line with the accelerator, and writing a section of docs/benchmarks.md
// between its markers.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>

#include "client/api_client.h"
#include "common/result.h"
#include "common/util.h"
#include "dev/local_grid.h"
#include "die.h"
#include "docs_section.h"
#include "machine.h"
#include "vmm/qemu_process.h"

namespace vmgrid::bench {

// Imports the guest build in `dir` (guest/build-tiny.sh's manifest.json) as
// image `name` and makes its post-boot checkpoint with `memory_mb` (0: the
// controller's default). Returns the image as GET /v1/images/ID shows it.
inline Result<nlohmann::json> ImportWithCheckpoint(
    const ApiClient& api, const std::string& dir, const std::string& name, int memory_mb = 0,
    std::chrono::milliseconds timeout = std::chrono::seconds(900)) {
  auto text = ReadFile(dir + "/manifest.json");
  if (!text.ok()) return text.error();
  nlohmann::json m = nlohmann::json::parse(*text);
  auto created = api.Post("/v1/images", {{"name", name},
                                         {"format", m.value("disk_format", "raw")},
                                         {"has_kernel", true},
                                         {"has_initrd", true},
                                         {"append", m.value("append", "")}});
  if (!created.ok()) return created.error();
  std::string id = (*created)["id"];
  for (const char* kind : {"disk", "kernel", "initrd"}) {
    auto r =
        api.PutFile("/v1/images/" + id + "/files/" + kind, dir + "/" + m[kind].get<std::string>());
    if (!r.ok()) return r.error();
  }
  if (auto r = AwaitOperation(api, api.Post("/v1/images/" + id + "/finalize")); !r.ok())
    return r.error();
  nlohmann::json body = nlohmann::json::object();
  if (memory_mb > 0) body["memory_mb"] = memory_mb;
  if (auto r = api.Post("/v1/images/" + id + "/checkpoint", body); !r.ok()) return r.error();
  auto done = PollUntil(
      api, "/v1/images/" + id,
      [](const nlohmann::json& j) {
        return !j["checkpoint"].is_null() && j["checkpoint"]["state"] != "creating";
      },
      timeout);
  if (!done.ok()) return done.error();
  if ((*done)["checkpoint"]["state"] != "ready")
    return Error{ErrorCode::kInternal, "image checkpoint failed: " + done->dump()};
  return *done;
}

// Restarts agent `index` with an empty cache (chunks, materialized files and
// manifests removed while it is down), fetching from `url`.
inline Status EmptyHostCache(LocalGrid& grid, int index, const std::string& url, bool prefetch,
                             bool compressed_transfer = true) {
  grid.StopAgent(index, false);
  std::string dir = grid.agent_state_dir(index);
  for (const char* sub : {"/chunks", "/blobs", "/manifests"})
    if (auto st = RemoveTree(dir + sub); !st.ok()) return st;
  grid.set_agent_image_server_url(url);
  grid.set_agent_prefetch(prefetch);
  grid.set_agent_compressed_transfer(compressed_transfer);
  if (auto st = grid.StartAgent(index); !st.ok()) return st;
  return grid.WaitHostsUp(grid.hosts(), std::chrono::seconds(60));
}

// Waits as `vmgrid vm create` does, with long polls (GET
// /v1/vms/ID?while=STATE) that answer when the state changes, until the VM
// that POST /v1/vms answered `created` is running; returns its last view.
// Dies if it fails or is not running after 300 s.
inline nlohmann::json WaitRunning(const ApiClient& api, nlohmann::json created) {
  const std::string id = created["id"];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  nlohmann::json vm = std::move(created);
  while (vm["state"] != "running") {
    if (vm["state"] == "error") Die("VM " + id + " failed; see `vmgrid vm show " + id + "`");
    if (std::chrono::steady_clock::now() > deadline) Die("VM " + id + " did not start in 300 s");
    auto g = api.Get("/v1/vms/" + id + "?while=" + vm["state"].get<std::string>() + "&wait=30");
    if (!g.ok()) Die(g.error().message);
    vm = std::move(g).value();
  }
  return vm;
}

// The options of a second grid beside `first`'s, in `state_dir` (emptied),
// with an image server and `first`'s TLS files (one CA for this process's
// clients).
inline LocalGridOptions ServedGridOptions(const LocalGridOptions& first,
                                          const std::string& state_dir) {
  LocalGridOptions so = first;
  so.state_dir = state_dir;
  (void)RemoveTree(so.state_dir);
  so.image_server = true;
  if (auto st = MakeDirs(so.state_dir, 0755); !st.ok()) Die(st.error().message);
  std::error_code ec;
  std::filesystem::copy(first.state_dir + "/tls", so.state_dir + "/tls",
                        std::filesystem::copy_options::recursive, ec);
  if (ec) Die("copying the grid's TLS files: " + ec.message());
  return so;
}

// MachineLine() and whether QEMU runs with KVM or TCG here.
inline std::string MachineLineWithAccel() {
  return MachineLine() + ", " +
         (KvmUsableBy("qemu-system-x86_64") ? "KVM" : "no usable KVM: QEMU TCG");
}

}  // namespace vmgrid::bench
