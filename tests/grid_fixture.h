// Shared helpers for the end-to-end tests: a LocalGrid of real processes
// (controller + agents running the built `vmgrid` binary) and small wrappers
// over the REST API. VMs are real QEMU guests booting the tiny image.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "client/api_client.h"
#include "common/util.h"
#include "dev/local_grid.h"

namespace vmgrid::testing_support {

using nlohmann::json;
using std::chrono::seconds;

inline std::string TinyImageDir() {
  const char* env = getenv("VMGRID_TINY_IMAGE");
  return env && *env ? env : VMGRID_TINY_IMAGE_DIR;
}

// `tls` false: every role serves plain HTTP on loopback (--plain-http), for
// suites that write raw HTTP bytes to a socket (framing and header attacks,
// which GuardedServer handles the same way inside TLS).
inline std::unique_ptr<LocalGrid> StartGrid(const std::string& name, int hosts,
                                            std::vector<std::string> controller_args = {},
                                            bool tls = true, bool host_namespaces = false,
                                            bool metrics = false,
                                            const std::string& log_format = "text") {
  // A server may close a connection while we still send (e.g. a body it
  // refuses); that must be an error result, not a signal that kills the test.
  signal(SIGPIPE, SIG_IGN);
  LocalGridOptions o;
  // VMGRID_TEST_BINARY runs the grid from another build (e.g. the previous
  // commit's, to see a new test fail without its fix); that build may not
  // know newer controller options, so VMGRID_TEST_DROP_CONTROLLER_ARGS=1
  // leaves them out.
  const char* other = getenv("VMGRID_TEST_BINARY");
  o.vmgrid_binary = other && *other ? other : VMGRID_BINARY;
  if (const char* drop = getenv("VMGRID_TEST_DROP_CONTROLLER_ARGS");
      drop && std::string(drop) == "1")
    controller_args.clear();
  o.state_dir = "/tmp/vmgrid-test-" + name + "-" + std::to_string(getpid());
  (void)RemoveTree(o.state_dir);
  o.hosts = hosts;
  o.host_vcpus = 8;  // TCG guests are mostly idle; allow a few per host
  o.host_memory_mb = 4096;
  o.controller_args = std::move(controller_args);
  o.tls = tls;
  o.host_namespaces = host_namespaces;
  o.metrics = metrics;
  o.log_format = log_format;
  auto grid = std::make_unique<LocalGrid>(o);
  Status st = grid->Start();
  EXPECT_TRUE(st.ok()) << st.error().message;
  return grid;
}

inline void StopGrid(std::unique_ptr<LocalGrid>& grid) {
  if (!grid) return;
  // First nothing that could still start a VM (a create in flight would
  // otherwise launch its QEMU after the sweep), then the VMs.
  grid->StopController(false);
  for (int i = 0; i < grid->hosts(); ++i) grid->StopAgent(i, false);
  grid->KillVmProcesses();
  // A launcher the agent had forked just before it stopped execs QEMU a
  // moment later: sweep once more.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  grid->KillVmProcesses();
  std::string dir = grid->controller_state_dir();
  dir = dir.substr(0, dir.rfind('/'));
  grid.reset();
  // Keep the logs of a failed test for whoever looks into it (in a suite's
  // TearDownTestSuite HasFailure() is false: ask the whole run).
  if (::testing::Test::HasFailure() ||
      ::testing::UnitTest::GetInstance()->failed_test_count() > 0 ||
      std::getenv("VMGRID_KEEP_GRID") != nullptr) {
    std::fprintf(stderr, "keeping %s (logs in logs/) for inspection\n", dir.c_str());
    return;
  }
  (void)RemoveTree(dir);
}

// The tiny guest's files (absolute paths) and kernel command line.
struct TinyFiles {
  std::string disk, format, kernel, initrd, append;
};
inline TinyFiles Tiny() {
  auto manifest_text = ReadFile(TinyImageDir() + "/manifest.json");
  EXPECT_TRUE(manifest_text.ok()) << "build the image first: guest/build-tiny.sh";
  if (!manifest_text.ok()) return {};
  json m = json::parse(*manifest_text);
  std::string d = TinyImageDir() + "/";
  return {d + m["disk"].get<std::string>(), m.value("disk_format", "raw"),
          d + m["kernel"].get<std::string>(), d + m["initrd"].get<std::string>(),
          m.value("append", "")};
}

// Uploads `files` as image `name`; with `checkpoint`, also makes its
// post-boot checkpoint. Returns the image JSON.
inline json ImportFiles(const ApiClient& api, const std::string& name, const TinyFiles& f,
                        bool checkpoint) {
  auto created = api.Post("/v1/images", {{"name", name},
                                         {"format", f.format},
                                         {"has_kernel", true},
                                         {"has_initrd", true},
                                         {"append", f.append}});
  EXPECT_TRUE(created.ok()) << created.error().message;
  std::string id = (*created)["id"];
  for (auto [kind, path] :
       {std::pair{"disk", f.disk}, {"kernel", f.kernel}, {"initrd", f.initrd}}) {
    auto r = api.PutFile("/v1/images/" + id + "/files/" + kind, path);
    EXPECT_TRUE(r.ok()) << kind << ": " << r.error().message;
  }
  // Finalize is an operation (202), run to its end; its result is the image.
  auto fin = AwaitOperation(api, api.Post("/v1/images/" + id + "/finalize"));
  EXPECT_TRUE(fin.ok()) << fin.error().message;
  if (!checkpoint) return *fin;
  auto ck = api.Post("/v1/images/" + id + "/checkpoint", json::object());
  EXPECT_TRUE(ck.ok()) << ck.error().message;
  auto done = PollUntil(
      api, "/v1/images/" + id,
      [](const json& j) {
        return !j["checkpoint"].is_null() && j["checkpoint"].value("state", "") != "creating";
      },
      seconds(240));
  EXPECT_TRUE(done.ok());
  EXPECT_EQ((*done)["checkpoint"].value("state", ""), "ready") << done->dump();
  return *done;
}

inline json ImportTiny(const ApiClient& api, const std::string& name, bool checkpoint) {
  return ImportFiles(api, name, Tiny(), checkpoint);
}

// Flips one byte in the middle of a file (a chunk in a store or cache).
inline void FlipByte(const std::string& path) {
  auto data = ReadFile(path, 64 << 20);
  ASSERT_TRUE(data.ok()) << path;
  std::string d = *data;
  ASSERT_FALSE(d.empty());
  d[d.size() / 2] = static_cast<char>(d[d.size() / 2] ^ 0x5a);
  ASSERT_TRUE(WriteFileAtomic(path, d).ok());
}

// Path of a chunk in a chunk store or cache rooted at `root`.
inline std::string ChunkFile(const std::string& root, const std::string& digest) {
  return root + "/chunks/" + digest.substr(0, 2) + "/" + digest;
}

// Waits until the VM leaves transitional states; returns it.
inline json WaitVm(const ApiClient& api, const std::string& id, seconds timeout = seconds(240)) {
  auto r = PollUntil(
      api, "/v1/vms/" + id,
      [](const json& j) {
        std::string s = j.value("state", "");
        return s != "creating" && s != "stopping" && s != "checkpointing" && s != "resuming" &&
               s != "deleting" && s != "migrating";
      },
      timeout);
  EXPECT_TRUE(r.ok()) << r.error().message;
  return r.ok() ? *r : json();
}

inline json CreateVm(const ApiClient& api, json body) {
  auto r = api.Post("/v1/vms", body);
  EXPECT_TRUE(r.ok()) << r.error().message;
  if (!r.ok()) return json();
  return WaitVm(api, (*r)["id"]);
}

inline json Act(const ApiClient& api, const std::string& id, const std::string& action,
                json body = json::object()) {
  auto r = api.Post("/v1/vms/" + id + "/" + action, body);
  EXPECT_TRUE(r.ok()) << action << ": " << r.error().message;
  return WaitVm(api, id);
}

// Runs an exec operation to its end (POST answers 202 with the operation,
// polled until it is no longer running); returns the operation.
inline Result<json> ExecOperation(const ApiClient& api, const std::string& id, const json& body) {
  auto op = api.Post("/v1/vms/" + id + "/exec", body);
  if (!op.ok()) return op.error();
  return PollUntil(
      api, "/v1/operations/" + (*op)["id"].get<std::string>(),
      [](const json& j) { return j.value("state", "") != "running"; }, seconds(600));
}

inline std::string Exec(const ApiClient& api, const std::string& id, const std::string& sh) {
  auto op = ExecOperation(api, id, {{"argv", {"/bin/sh", "-c", sh}}, {"timeout_s", 60}});
  EXPECT_TRUE(op.ok()) << op.error().message;
  if (!op.ok()) return "";
  EXPECT_EQ((*op)["state"], "succeeded") << op->dump();
  const json r = (*op)["result"];
  if (!r.is_object()) return "";
  EXPECT_EQ(r["exit_code"], 0) << r.dump();
  return r.value("stdout", "");
}

// Runs `sh` in the VM; returns {exit code, stdout + stderr} ({-1, why}
// when the exec itself failed).
inline std::pair<int, std::string> Sh(const ApiClient& api, const std::string& vm,
                                      const std::string& sh, int timeout_s = 60) {
  auto op = ExecOperation(api, vm, {{"argv", {"/bin/sh", "-c", sh}}, {"timeout_s", timeout_s}});
  EXPECT_TRUE(op.ok()) << op.error().message;
  if (!op.ok() || !(*op)["result"].is_object()) return {-1, op.ok() ? op->dump() : ""};
  const json& r = (*op)["result"];
  return {r.value("exit_code", -1), r.value("stdout", "") + r.value("stderr", "")};
}

// The pid of VM `vm_id`'s live QEMU on host `index` of the grid (0: none).
inline int LiveQemuOn(const LocalGrid& grid, int index, const std::string& vm_id) {
  auto pid = ReadFile(grid.agent_state_dir(index) + "/vms/" + vm_id + "/run/qemu.pid", 64);
  if (!pid.ok()) return 0;
  const int p = std::atoi(pid->c_str());
  auto cmdline = ReadFile("/proc/" + std::to_string(p) + "/cmdline", 1 << 20);
  return p > 0 && cmdline.ok() && cmdline->find("qemu-system") != std::string::npos ? p : 0;
}

// Sends `text` to 127.0.0.1:port and returns what comes back before the
// peer closes or 5 s pass ("" if the connection fails).
inline std::string EchoThrough(int port, const std::string& text) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string got;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::send(fd, text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size())) {
    char buf[4096];
    while (got.size() < text.size()) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  return got;
}

// A new user of the grid (made by its admin); returns the user's token.
inline std::string NewUserToken(const LocalGrid& grid, const std::string& name) {
  auto r = grid.Admin().Post("/v1/users", {{"name", name}});
  EXPECT_TRUE(r.ok()) << r.error().message;
  return r.ok() ? (*r)["token"].get<std::string>() : "";
}

// The same, as a client of the grid's API.
inline ApiClient NewUser(const LocalGrid& grid, const std::string& name) {
  return ApiClient(grid.url(), NewUserToken(grid, name));
}

inline void DeleteVm(const ApiClient& api, const std::string& id, bool purge = false) {
  auto r = api.Delete("/v1/vms/" + id + (purge ? "?purge_workspace=true" : ""));
  EXPECT_TRUE(r.ok()) << r.error().message;
  auto gone = PollUntil(
      api, "/v1/vms",
      [&](const json& j) {
        for (const auto& v : j["vms"])
          if (v["id"] == id) return false;
        return true;
      },
      seconds(60));
  EXPECT_TRUE(gone.ok());
}

}  // namespace vmgrid::testing_support
