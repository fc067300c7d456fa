// Tests of the `vmgrid` command line: parsing, exit codes and the client
// commands against a fake controller on 127.0.0.1.
#include "cli/cli.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/options.h"
#include "common/test_ports.h"
#include "sim/sim_hosts.h"

namespace vmgrid {

// Test-only definitions of the role entry points (the real ones live in
// src/api, src/agent and src/dev, which this test does not link).
namespace {
ControllerOptions g_controller;
AgentOptions g_agent;
DevOptions g_dev;
int g_role_calls = 0;
// The roles' entry points: stubs that record what the CLI parsed.
int StubController(const ControllerOptions& o) {
  g_controller = o;
  ++g_role_calls;
  return 42;
}
int StubAgent(const AgentOptions& o) {
  g_agent = o;
  ++g_role_calls;
  return 43;
}
int StubDev(const DevOptions& o) {
  g_dev = o;
  ++g_role_calls;
  return 44;
}
int StubSimHosts(const SimHostsOptions&) { return 45; }
int StubImageServer(const ImageServerOptions&) { return 46; }

using nlohmann::json;

namespace fs = std::filesystem;

struct CliRun {
  int rc;
  std::string out;
  std::string err;
};

CliRun Cli(std::vector<std::string> args) {
  args.insert(args.begin(), "vmgrid");
  std::ostringstream out, err;
  RoleEntryPoints roles;
  roles.controller = StubController;
  roles.agent = StubAgent;
  roles.image_server = StubImageServer;
  roles.sim_hosts = StubSimHosts;
  roles.dev = StubDev;
  int rc = RunCliArgs(args, CliIo{out, err, false}, roles);
  return {rc, out.str(), err.str()};
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v :
         {"VMGRID_URL", "VMGRID_TOKEN", "VMGRID_TOKEN_FILE", "VMGRID_WAIT_TIMEOUT"}) {
      unsetenv(v);
    }
    char tmpl[] = "/tmp/vmgrid_cli_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    setenv("HOME", dir_.c_str(), 1);  // no ~/.config/vmgrid/token
    g_role_calls = 0;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string WriteFile(const std::string& name, const std::string& data) {
    std::string path = dir_ + "/" + name;
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream(path, std::ios::binary) << data;
    return path;
  }

  std::string dir_;
};

// ---------------------------------------------------------------------------
// Parsing and usage errors

TEST_F(CliTest, UsageErrorsExitWith2) {
  EXPECT_EQ(Cli({}).rc, 2);
  EXPECT_EQ(Cli({"frobnicate"}).rc, 2);
  EXPECT_EQ(Cli({"vm"}).rc, 2);
  EXPECT_EQ(Cli({"vm", "create"}).rc, 2);  // --image is required
  EXPECT_EQ(Cli({"vm", "show"}).rc, 2);    // REF is required
  EXPECT_EQ(Cli({"vm", "list", "--bogus"}).rc, 2);
  auto zero = Cli({"vm", "create", "--image", "i", "--memory-mb", "0"});
  EXPECT_EQ(zero.rc, 2);
  EXPECT_NE(zero.err.find("greater than 0"), std::string::npos) << zero.err;
  auto garbage = Cli({"vm", "create", "--image", "i", "--memory-mb", "lots"});
  EXPECT_EQ(garbage.rc, 2);
  EXPECT_NE(garbage.err.find("bad memory size"), std::string::npos) << garbage.err;
  EXPECT_EQ(Cli({"vm", "create", "--image", "i", "--workspace", "w"}).rc, 2);  // needs --persistent
  EXPECT_EQ(Cli({"vm", "create", "--image", "i", "--vcpus", "0"}).rc, 2);
  EXPECT_EQ(Cli({"image", "import", "name"}).rc, 2);
  WriteFile("d/manifest.json", "{}");
  auto both = Cli({"image", "import", "name", dir_ + "/d", "--disk", dir_ + "/d/manifest.json"});
  EXPECT_EQ(both.rc, 2);
  EXPECT_NE(both.err.find("not both"), std::string::npos) << both.err;
  auto nodisk = Cli({"image", "import", "name", dir_ + "/d"});
  EXPECT_EQ(nodisk.rc, 2);
  EXPECT_NE(nodisk.err.find("no \"disk\""), std::string::npos) << nodisk.err;
  auto missing = Cli({"image", "import", "name", "--disk", dir_ + "/nope.img"});
  EXPECT_EQ(missing.rc, 2);
  EXPECT_NE(missing.err.find("no such file"), std::string::npos) << missing.err;
  EXPECT_EQ(
      Cli({"image", "import", "name", "--disk", dir_ + "/d/manifest.json", "--format", "vmdk"}).rc,
      2);
  EXPECT_EQ(Cli({"vm", "exec", "vm-1"}).rc, 2);  // no command
  // Jobs: refused before any request (no controller is running here).
  EXPECT_EQ(Cli({"job", "run", "--image", "i"}).rc, 2);  // no command
  EXPECT_EQ(Cli({"job", "run", "--image", "i", "--count", "1001", "--", "true"}).rc, 2);
  auto data = Cli({"job", "run", "--image", "i", "--data", "in:/in", "--", "true"});
  EXPECT_EQ(data.rc, 2);
  EXPECT_NE(data.err.find("LABEL=DATASET[:VERSION]:/MOUNT"), std::string::npos) << data.err;
  EXPECT_EQ(Cli({"job", "run", "--image", "i", "--output", "out", "--", "true"}).rc, 2);
  EXPECT_EQ(Cli({"job", "wait"}).rc, 2);  // JOB is required
  EXPECT_EQ(Cli({"--wait-timeout", "0", "vm", "list"}).rc, 2);
  auto tf = Cli({"--token-file", dir_ + "/none", "vm", "list"});
  EXPECT_EQ(tf.rc, 2);
  EXPECT_NE(tf.err.find("cannot read the token file"), std::string::npos) << tf.err;
  EXPECT_EQ(g_role_calls, 0);
}

TEST_F(CliTest, HelpAndVersionExit0) {
  auto help = Cli({"--help"});
  EXPECT_EQ(help.rc, 0);
  EXPECT_NE(help.out.find("Exit codes"), std::string::npos);
  EXPECT_NE(help.out.find("controller"), std::string::npos);
  EXPECT_EQ(Cli({"vm", "create", "--help"}).rc, 0);
  auto version = Cli({"--version"});
  EXPECT_EQ(version.rc, 0);
  EXPECT_NE(version.out.find("vmgrid"), std::string::npos);
}

TEST_F(CliTest, ServerRolesParseAndDispatch) {
  EXPECT_EQ(Cli({"controller"}).rc, 42);
  EXPECT_EQ(g_controller.listen, "127.0.0.1:8470");
  EXPECT_EQ(
      Cli({"controller", "--listen", "0.0.0.0:9000", "--state-dir", "/s", "--image-dir", "/i"}).rc,
      42);
  EXPECT_EQ(g_controller.listen, "0.0.0.0:9000");
  EXPECT_EQ(g_controller.state_dir, "/s");
  EXPECT_EQ(g_controller.image_dir, "/i");
  EXPECT_EQ(Cli({"controller", "--listen", "nonsense"}).rc, 2);
  EXPECT_EQ(Cli({"controller", "--listen", "h:70000"}).rc, 2);

  EXPECT_EQ(Cli({"agent", "--controller", "http://c:1", "--token-file", "/t", "--name", "h1",
                 "--runas", "qemu", "--vcpus", "3", "--memory-mb", "2G", "--state-dir", "/a"})
                .rc,
            43);
  EXPECT_EQ(g_agent.listen, "127.0.0.1:0");
  EXPECT_EQ(g_agent.controller_url, "http://c:1");
  EXPECT_EQ(g_agent.token_file, "/t");
  EXPECT_EQ(g_agent.name, "h1");
  EXPECT_EQ(g_agent.runas, "qemu");
  EXPECT_EQ(g_agent.vcpus, 3);
  EXPECT_EQ(g_agent.memory_mb, 2048u);
  EXPECT_EQ(g_agent.state_dir, "/a");
  EXPECT_EQ(Cli({"agent", "--memory-mb", "0"}).rc, 2);

  EXPECT_EQ(Cli({"dev"}).rc, 44);
  EXPECT_EQ(g_dev.hosts, 1);
  EXPECT_EQ(g_dev.port, 8470);
  EXPECT_EQ(g_dev.state_dir, "./state/dev");
  EXPECT_FALSE(g_dev.demo);
  EXPECT_EQ(Cli({"dev", "--hosts", "3", "--port", "9999", "--exit-after-demo", "--keep-vms"}).rc,
            44);
  EXPECT_EQ(g_dev.hosts, 3);
  EXPECT_EQ(g_dev.port, 9999);
  EXPECT_TRUE(g_dev.demo);
  EXPECT_TRUE(g_dev.exit_after_demo);
  EXPECT_TRUE(g_dev.keep_vms);
  EXPECT_EQ(Cli({"dev", "--hosts", "0"}).rc, 2);
}

// ---------------------------------------------------------------------------
// A fake controller

json Vm(const std::string& id, const std::string& state) {
  return {{"id", id},
          {"name", "web"},
          {"owner", "usr-1"},
          {"image", "tiny"},
          {"image_id", "img-1"},
          {"host", "h1"},
          {"host_id", "host-1"},
          {"state", state},
          {"vcpus", 2},
          {"memory_mb", 1024},
          {"disk", "clone"},
          {"start", "boot"},
          {"workspace", nullptr},
          {"error", state == "error" ? json("qemu died") : json(nullptr)},
          {"create_ms", 1234},
          {"created_at", "2024-05-01T12:00:00Z"},
          {"updated_at", "2024-05-01T12:00:01Z"}};
}

void ReplyError(httplib::Response& res, int status, const std::string& code,
                const std::string& message) {
  res.status = status;
  res.set_content(json{{"error", {{"code", code}, {"message", message}}}}.dump(),
                  "application/json");
}

class FakeController {
 public:
  FakeController() {
    port_ = server_.bind_to_any_port("127.0.0.1");
    auto authed = [](const httplib::Request& req, httplib::Response& res) {
      if (req.get_header_value("Authorization") != "Bearer tok") {
        ReplyError(res, 401, "unauthenticated", "unknown token");
        return false;
      }
      return true;
    };
    server_.Get("/v1/vms", [=, this](const httplib::Request& req, httplib::Response& res) {
      if (!authed(req, res)) return;
      res.set_content(json{{"vms", {Vm("vm-1", "running"), Vm("vm-22", "stopped")}}}.dump(),
                      "application/json");
    });
    server_.Post("/v1/vms", [=, this](const httplib::Request& req, httplib::Response& res) {
      if (!authed(req, res)) return;
      std::lock_guard<std::mutex> l(mu_);
      create_body_ = json::parse(req.body);
      if (create_body_["image"] == "full") {
        ReplyError(res, 409, "resource_exhausted", "no host has room for 1 vCPU, 1G");
        return;
      }
      polls_ = 0;
      final_state_ = create_body_["image"] == "broken" ? "error" : "running";
      res.status = 202;
      res.set_content(Vm("vm-7", "creating").dump(), "application/json");
    });
    server_.Get("/v1/vms/(.+)", [=, this](const httplib::Request& req, httplib::Response& res) {
      if (!authed(req, res)) return;
      std::lock_guard<std::mutex> l(mu_);
      std::string ref = req.matches[1];
      if (ref == "missing" || deleted_) {
        ReplyError(res, 404, "not_found", "vm " + ref + " not found");
        return;
      }
      ++polls_;
      std::string state = polls_ < 3 ? "creating" : final_state_;
      res.set_content(Vm("vm-7", state).dump(), "application/json");
    });
    server_.Post("/v1/vms/(.+)/stop",
                 [=, this](const httplib::Request& req, httplib::Response& res) {
                   if (!authed(req, res)) return;
                   ReplyError(res, 409, "failed_precondition", "vm vm-7 is already stopped");
                 });
    server_.Delete("/v1/vms/(.+)", [=, this](const httplib::Request& req, httplib::Response& res) {
      if (!authed(req, res)) return;
      std::lock_guard<std::mutex> l(mu_);
      purge_ = req.get_param_value("purge_workspace");
      deleted_ = true;
      res.status = 202;
      res.set_content(Vm("vm-7", "deleting").dump(), "application/json");
    });
    server_.Post(
        "/v1/vms/(.+)/exec", [=, this](const httplib::Request& req, httplib::Response& res) {
          if (!authed(req, res)) return;
          std::lock_guard<std::mutex> l(mu_);
          exec_body_ = json::parse(req.body);
          // Like the controller: the first try is over the user's exec
          // limit (429), the next starts an operation that the CLI polls.
          if (exec_posts_++ == 0) {
            res.set_header("Retry-After", "1");
            return ReplyError(res, 429, "too_many_requests", "too many exec operations at once");
          }
          res.status = 202;
          res.set_content(json{{"id", "op-1"}, {"kind", "exec"}, {"state", "running"}}.dump(),
                          "application/json");
        });
    server_.Get("/v1/operations/op-1", [=, this](const httplib::Request& req,
                                                 httplib::Response& res) {
      if (!authed(req, res)) return;
      std::lock_guard<std::mutex> l(mu_);
      json op = {
          {"id", "op-1"}, {"kind", "exec"}, {"state", ++op_polls_ < 3 ? "running" : "succeeded"}};
      if (op["state"] == "succeeded")
        op["result"] = {{"exit_code", 3}, {"stdout", "out\n"}, {"stderr", "err\n"}};
      res.set_content(op.dump(), "application/json");
    });
    server_.Post("/v1/users", [=, this](const httplib::Request& req, httplib::Response& res) {
      if (!authed(req, res)) return;
      json in = json::parse(req.body);
      res.status = 201;
      res.set_content(json{{"user", {{"id", "usr-9"}, {"name", in["name"]}, {"role", in["role"]}}},
                           {"token", "newtoken123"}}
                          .dump(),
                      "application/json");
    });
    server_.Get("/v1/users", [=, this](const httplib::Request& req, httplib::Response& res) {
      if (!authed(req, res)) return;
      std::lock_guard<std::mutex> l(mu_);
      res.set_content(json{{"users", {QuotaUser()}}}.dump(), "application/json");
    });
    server_.Put("/v1/users/bob/quota",
                [=, this](const httplib::Request& req, httplib::Response& res) {
                  if (!authed(req, res)) return;
                  std::lock_guard<std::mutex> l(mu_);
                  quota_ = json::parse(req.body);
                  res.set_content(QuotaUser().dump(), "application/json");
                });
    // Images
    server_.Post("/v1/images", [=, this](const httplib::Request& req, httplib::Response& res) {
      if (!authed(req, res)) return;
      std::lock_guard<std::mutex> l(mu_);
      image_create_ = json::parse(req.body);
      res.status = 201;
      res.set_content(Image("uploading", nullptr).dump(), "application/json");
    });
    server_.Put("/v1/images/img-5/files/(disk|kernel|initrd)",
                [=, this](const httplib::Request& req, httplib::Response& res,
                          const httplib::ContentReader& reader) {
                  if (!authed(req, res)) return;
                  std::string body;
                  reader([&](const char* d, size_t n) {
                    body.append(d, n);
                    return true;
                  });
                  std::lock_guard<std::mutex> l(mu_);
                  uploads_[req.matches[1]] = body;
                  res.set_content(Image("uploading", nullptr).dump(), "application/json");
                });
    server_.Post("/v1/images/img-5/finalize",
                 [=, this](const httplib::Request& req, httplib::Response& res) {
                   if (!authed(req, res)) return;
                   std::lock_guard<std::mutex> l(mu_);
                   if (fail_finalize_) {
                     ReplyError(res, 400, "invalid_argument", "disk is not a valid qcow2 file");
                     return;
                   }
                   // Like the controller: the first try is over the user's
                   // limit on long operations (429), the next starts an
                   // operation that the CLI polls.
                   if (finalize_posts_++ == 0) {
                     res.set_header("Retry-After", "1");
                     return ReplyError(res, 429, "too_many_requests", "too many long operations");
                   }
                   res.status = 202;
                   res.set_content(json{{"id", "op-fin"},
                                        {"kind", "image_finalize"},
                                        {"image_id", "img-5"},
                                        {"state", "running"}}
                                       .dump(),
                                   "application/json");
                 });
    server_.Get("/v1/operations/op-fin",
                [=, this](const httplib::Request& req, httplib::Response& res) {
                  if (!authed(req, res)) return;
                  std::lock_guard<std::mutex> l(mu_);
                  json op = {{"id", "op-fin"}, {"kind", "image_finalize"}, {"image_id", "img-5"}};
                  if (++finalize_polls_ < 2) {
                    op["state"] = "running";
                    op["progress"] = {{"step", "publishing the disk"}, {"percent", 50}};
                  } else if (fail_finalize_op_) {
                    op["state"] = "failed";
                    op["error"] = {{"code", "permission_denied"},
                                   {"message", "quota: bob may keep 10 bytes of images"}};
                  } else {
                    op["state"] = "succeeded";
                    op["result"] = Image("ready", nullptr);
                    finalized_ = true;
                  }
                  res.set_content(op.dump(), "application/json");
                });
    server_.Delete("/v1/workspaces/ws-1",
                   [=, this](const httplib::Request& req, httplib::Response& res) {
                     if (!authed(req, res)) return;
                     res.status = 202;
                     res.set_content(json{{"id", "op-ws"},
                                          {"kind", "workspace_delete"},
                                          {"workspace_id", "ws-1"},
                                          {"state", "running"}}
                                         .dump(),
                                     "application/json");
                   });
    server_.Get("/v1/events", [=, this](const httplib::Request& req, httplib::Response& res) {
      if (!authed(req, res)) return;
      std::lock_guard<std::mutex> l(mu_);
      events_params_ = req.params;
      json events = json::array();
      events.push_back({{"id", 7},
                        {"time_ms", 1764950400000},
                        {"kind", "vm.placed"},
                        {"vm_id", "vm-1"},
                        {"host_id", "host-1"},
                        {"owner_id", "u-1"},
                        {"message", "VM web placed on host h1: placement policy spread"},
                        {"data", {{"host", "h1"}}}});
      res.set_content(json{{"events", events}, {"next", 7}}.dump(), "application/json");
    });
    server_.Get(
        "/v1/operations/op-ws", [=, this](const httplib::Request& req, httplib::Response& res) {
          if (!authed(req, res)) return;
          std::lock_guard<std::mutex> l(mu_);
          json op = {{"id", "op-ws"}, {"kind", "workspace_delete"}, {"workspace_id", "ws-1"}};
          if (++workspace_polls_ < 2) {
            op["state"] = "running";
          } else if (fail_workspace_delete_) {
            op["state"] = "failed";
            op["error"] = {{"code", "unavailable"},
                           {"message", "deleting the workspace file: cannot reach the agent"}};
          } else {
            op["state"] = "succeeded";
            op["result"] = nullptr;
          }
          res.set_content(op.dump(), "application/json");
        });
    server_.Post("/v1/images/img-5/checkpoint", [=, this](const httplib::Request& req,
                                                          httplib::Response& res) {
      if (!authed(req, res)) return;
      std::lock_guard<std::mutex> l(mu_);
      checkpoint_body_ = json::parse(req.body);
      image_polls_ = 0;
      res.status = 202;
      res.set_content(Image("ready", json{{"state", "creating"}}).dump(), "application/json");
    });
    server_.Get("/v1/images/img-5", [=, this](const httplib::Request& req, httplib::Response& res) {
      if (!authed(req, res)) return;
      std::lock_guard<std::mutex> l(mu_);
      ++image_polls_;
      json cp = image_polls_ < 2 ? json{{"state", "creating"}}
                                 : json{{"state", "ready"}, {"memory_mb", 256}};
      res.set_content(Image("ready", cp).dump(), "application/json");
    });
    server_.Delete("/v1/images/img-5",
                   [=, this](const httplib::Request& req, httplib::Response& res) {
                     if (!authed(req, res)) return;
                     std::lock_guard<std::mutex> l(mu_);
                     image_deleted_ = true;
                     res.status = 204;
                   });
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~FakeController() {
    server_.stop();
    thread_.join();
  }

  static json Image(const std::string& state, json checkpoint) {
    return {{"id", "img-5"},
            {"name", "tiny"},
            {"owner", "usr-1"},
            {"state", state},
            {"format", "raw"},
            {"size_bytes", 3 << 20},
            {"virtual_size_bytes", 3 << 20},
            {"has_kernel", true},
            {"has_initrd", true},
            {"append", "console=ttyS0"},
            {"min_memory_mb", 128},
            {"checkpoint", checkpoint},
            {"created_at", "2024-05-01T12:00:00Z"}};
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  std::mutex mu_;
  json create_body_, exec_body_, image_create_, checkpoint_body_;
  std::multimap<std::string, std::string> events_params_;  // of the last GET /v1/events
  int exec_posts_ = 0, op_polls_ = 0;
  std::map<std::string, std::string> uploads_;
  json QuotaUser() const {
    return {{"id", "usr-9"},
            {"name", "bob"},
            {"role", "user"},
            {"quota", quota_},
            {"usage",
             {{"vms", 1},
              {"vcpus", 1},
              {"memory_mb", 256},
              {"image_bytes", 0},
              {"workspace_bytes", 0}}}};
  }
  json quota_ = {
      {"vms", 2}, {"vcpus", 0}, {"memory_mb", 0}, {"image_bytes", 0}, {"workspace_bytes", 0}};
  std::string final_state_ = "running";
  std::string purge_;
  int polls_ = 0;
  int image_polls_ = 0;
  bool deleted_ = false;
  bool fail_finalize_ = false;
  bool fail_finalize_op_ = false;
  bool fail_workspace_delete_ = false;
  int finalize_posts_ = 0, finalize_polls_ = 0, workspace_polls_ = 0;
  bool finalized_ = false;
  bool image_deleted_ = false;

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
};

class CliServerTest : public CliTest {
 protected:
  CliRun Client(std::vector<std::string> args) {
    args.insert(args.begin(), {"--url", fake_.url(), "--token", "tok"});
    return Cli(args);
  }
  FakeController fake_;
};

TEST_F(CliServerTest, VmListTableAndJson) {
  auto r = Client({"vm", "list"});
  ASSERT_EQ(r.rc, 0) << r.err;
  std::istringstream lines(r.out);
  std::string header, row1, row2;
  std::getline(lines, header);
  std::getline(lines, row1);
  std::getline(lines, row2);
  EXPECT_EQ(header.rfind("ID     NAME  STATE    HOST  IMAGE  VCPUS  MEM  DISK   START  AGE", 0), 0u)
      << header;
  EXPECT_NE(row1.find("vm-1   web   running  h1    tiny   2      1G   clone  boot"),
            std::string::npos)
      << row1;
  EXPECT_NE(row2.find("vm-22"), std::string::npos);

  auto j = Client({"vm", "list", "--json"});
  ASSERT_EQ(j.rc, 0) << j.err;
  json parsed = json::parse(j.out);
  EXPECT_EQ(parsed["vms"].size(), 2u);
  EXPECT_NE(j.out.find("\n  \"vms\""), std::string::npos);  // pretty
}

TEST_F(CliServerTest, EventsTableJsonAndFlags) {
  auto r = Client({"events", "--vm", "web"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.rfind("ID  TIME", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("2025-12-05T16:00:00Z  vm.placed  vm-1  host-1  VM web placed on host h1"),
            std::string::npos)
      << r.out;
  {
    std::lock_guard<std::mutex> l(fake_.mu_);
    auto p = fake_.events_params_;
    EXPECT_EQ(p.find("vm")->second, "web");
    EXPECT_EQ(p.find("last")->second, "50");  // the newest 50 without --after
    EXPECT_EQ(p.count("after"), 0u);
    EXPECT_EQ(p.count("follow"), 0u);
  }
  auto j = Client({"events", "--after", "3", "--json"});
  ASSERT_EQ(j.rc, 0) << j.err;
  json parsed = json::parse(j.out);
  EXPECT_EQ(parsed["events"].size(), 1u);
  EXPECT_EQ(parsed["next"], 7);
  {
    std::lock_guard<std::mutex> l(fake_.mu_);
    EXPECT_EQ(fake_.events_params_.find("after")->second, "3");
    EXPECT_EQ(fake_.events_params_.count("last"), 0u);
  }
  EXPECT_EQ(Client({"events", "--after", "-1"}).rc, 2);
  EXPECT_EQ(Client({"events", "--last", "0"}).rc, 2);
}

TEST_F(CliServerTest, VmShowDetails) {
  auto r = Client({"vm", "show", "vm-7"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.rfind("id:", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("memory_mb:"), std::string::npos);
  EXPECT_NE(r.out.find("1G"), std::string::npos);
  auto missing = Client({"vm", "show", "missing"});
  EXPECT_EQ(missing.rc, 3);
  EXPECT_EQ(missing.err.rfind("error: vm missing not found", 0), 0u) << missing.err;
  EXPECT_NE(missing.err.find("vmgrid vm list"), std::string::npos);
}

TEST_F(CliServerTest, VmCreateWaitsUntilRunning) {
  auto r = Client({"vm", "create", "--image", "tiny", "--name", "web", "--memory-mb", "1G",
                   "--vcpus", "2", "--persistent", "--workspace", "ws", "--resume"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(fake_.create_body_["memory_mb"], 1024);
  EXPECT_EQ(fake_.create_body_["vcpus"], 2);
  EXPECT_EQ(fake_.create_body_["disk"], "persistent");
  EXPECT_EQ(fake_.create_body_["workspace"], "ws");
  EXPECT_EQ(fake_.create_body_["start"], "resume");
  EXPECT_GE(fake_.polls_, 3);
  EXPECT_NE(r.out.find("running"), std::string::npos) << r.out;

  auto nw = Client({"vm", "create", "--image", "tiny", "--no-wait", "--json"});
  ASSERT_EQ(nw.rc, 0) << nw.err;
  EXPECT_EQ(json::parse(nw.out)["state"], "creating");
  EXPECT_EQ(fake_.polls_, 0);
  EXPECT_FALSE(fake_.create_body_.contains("memory_mb"));  // server default
}

TEST_F(CliServerTest, VmCreateErrorStateExits1) {
  auto r = Client({"vm", "create", "--image", "broken"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("error: vm-7 failed: qemu died"), std::string::npos) << r.err;
}

TEST_F(CliServerTest, ConflictsExit5WithHints) {
  auto full = Client({"vm", "create", "--image", "full"});
  EXPECT_EQ(full.rc, 5);
  EXPECT_NE(full.err.find("no host has room"), std::string::npos) << full.err;
  EXPECT_NE(full.err.find("vmgrid host list"), std::string::npos) << full.err;
  auto stop = Client({"vm", "stop", "vm-7"});
  EXPECT_EQ(stop.rc, 5);
  EXPECT_EQ(stop.err, "error: vm vm-7 is already stopped\n");
}

TEST_F(CliServerTest, VmRmWaitsUntilGone) {
  auto r = Client({"vm", "rm", "vm-7", "--purge-workspace"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, "deleted vm-7\n");
  EXPECT_EQ(fake_.purge_, "true");
}

TEST_F(CliServerTest, VmExecPassesOutputAndExitCode) {
  auto r = Client(
      {"vm", "exec", "vm-7", "--timeout", "5", "--input", "abc", "--", "sh", "-c", "exit 3"});
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_EQ(fake_.exec_body_["argv"], json({"sh", "-c", "exit 3"}));
  EXPECT_EQ(fake_.exec_body_["input"], "abc");
  EXPECT_EQ(fake_.exec_body_["timeout_s"], 5);
  // It waited out the 429 and polled the operation to its end.
  EXPECT_EQ(fake_.exec_posts_, 2);
  EXPECT_EQ(fake_.op_polls_, 3);
}

TEST_F(CliServerTest, AuthErrorsExit4WithHint) {
  auto r = Cli({"--url", fake_.url(), "--token", "nope", "vm", "list"});
  EXPECT_EQ(r.rc, 4);
  EXPECT_EQ(r.err.rfind("error: the controller rejected the token", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("VMGRID_TOKEN"), std::string::npos);
  auto none = Cli({"--url", fake_.url(), "vm", "list"});
  EXPECT_EQ(none.rc, 4);
  EXPECT_EQ(none.err.rfind("error: no token", 0), 0u) << none.err;
  // Token from a file and from the environment.
  std::string tf = WriteFile("token", "tok\n");
  EXPECT_EQ(Cli({"--url", fake_.url(), "--token-file", tf, "vm", "list"}).rc, 0);
  setenv("VMGRID_TOKEN", "tok", 1);
  setenv("VMGRID_URL", fake_.url().c_str(), 1);
  EXPECT_EQ(Cli({"vm", "list"}).rc, 0);
  unsetenv("VMGRID_TOKEN");
  unsetenv("VMGRID_URL");
  // Default token location: ~/.config/vmgrid/token.
  WriteFile(".config/vmgrid/token", "tok");
  EXPECT_EQ(Cli({"--url", fake_.url(), "vm", "list"}).rc, 0);
}

TEST_F(CliServerTest, UnreachableExits6) {
  const int port = UnusedPort();
  const std::string url = "http://127.0.0.1:" + std::to_string(port);
  auto r = Cli({"--url", url, "--token", "t", "vm", "list"});
  EXPECT_EQ(r.rc, 6);
  EXPECT_EQ(r.err, "error: cannot reach the controller at " + url +
                       ": is `vmgrid controller` (or `vmgrid dev`) running?\n");
  auto ex = Cli({"--url", url, "--token", "t", "vm", "exec", "vm-1", "--", "true"});
  EXPECT_EQ(ex.rc, 6);
}

TEST_F(CliServerTest, UserCreatePrintsTokenOnce) {
  auto r = Client({"user", "create", "bob", "--admin"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("created user bob (usr-9, role admin)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("token: newtoken123"), std::string::npos);
  EXPECT_NE(r.err.find("shown only this once"), std::string::npos);
}

TEST_F(CliServerTest, UserQuotaShowsAndChangesOnlyTheGivenLimits) {
  auto shown = Client({"user", "quota", "bob"});
  ASSERT_EQ(shown.rc, 0) << shown.err;
  EXPECT_NE(shown.out.find("quota of bob"), std::string::npos) << shown.out;
  EXPECT_NE(shown.out.find("unlimited"), std::string::npos) << shown.out;
  auto set = Client({"user", "quota", "bob", "--vcpus", "4", "--memory-mb", "1024"});
  ASSERT_EQ(set.rc, 0) << set.err;
  {
    std::lock_guard<std::mutex> l(fake_.mu_);
    EXPECT_EQ(fake_.quota_["vms"], 2) << fake_.quota_.dump();  // kept
    EXPECT_EQ(fake_.quota_["vcpus"], 4) << fake_.quota_.dump();
    EXPECT_EQ(fake_.quota_["memory_mb"], 1024) << fake_.quota_.dump();
  }
  EXPECT_EQ(Client({"user", "quota", "bob", "--vms", "-1"}).rc, 2);
  EXPECT_EQ(Client({"user", "quota", "nobody"}).rc, 3);
}

TEST_F(CliServerTest, ImageImportFromManifestWithCheckpoint) {
  WriteFile("build/disk.img", std::string(3 << 20, 'd'));
  WriteFile("build/vmlinuz", "kernel-bytes");
  WriteFile("build/initrd.img", "initrd-bytes");
  WriteFile("build/manifest.json", json{{"name", "tiny"},
                                        {"kernel", "vmlinuz"},
                                        {"initrd", "initrd.img"},
                                        {"disk", "disk.img"},
                                        {"disk_format", "raw"},
                                        {"append", "console=ttyS0"},
                                        {"min_memory_mb", 128}}
                                       .dump());
  auto r = Client({"image", "import", "tiny", dir_ + "/build", "--checkpoint",
                   "--checkpoint-memory-mb", "256M"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(fake_.image_create_["name"], "tiny");
  EXPECT_EQ(fake_.image_create_["format"], "raw");
  EXPECT_EQ(fake_.image_create_["has_kernel"], true);
  EXPECT_EQ(fake_.image_create_["has_initrd"], true);
  EXPECT_EQ(fake_.image_create_["append"], "console=ttyS0");
  EXPECT_EQ(fake_.image_create_["min_memory_mb"], 128);
  EXPECT_EQ(fake_.uploads_["disk"].size(), size_t{3} << 20);
  EXPECT_EQ(fake_.uploads_["kernel"], "kernel-bytes");
  EXPECT_EQ(fake_.uploads_["initrd"], "initrd-bytes");
  EXPECT_TRUE(fake_.finalized_);
  EXPECT_EQ(fake_.finalize_posts_, 2);  // waited out the 429
  EXPECT_GE(fake_.finalize_polls_, 2);  // polled the operation to its end
  EXPECT_EQ(fake_.checkpoint_body_["memory_mb"], 256);
  EXPECT_GE(fake_.image_polls_, 2);
  EXPECT_FALSE(fake_.image_deleted_);
  EXPECT_NE(r.out.find("ready (256M)"), std::string::npos) << r.out;
  // Not a TTY: one summary line per file.
  EXPECT_NE(r.err.find("uploaded disk: 3.1 MB in"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("uploaded kernel"), std::string::npos) << r.err;
}

TEST_F(CliServerTest, ImageImportFailureRemovesHalfCreatedImage) {
  fake_.fail_finalize_ = true;
  // qcow2 magic: the format is detected.
  std::string disk = WriteFile("x.qcow2", std::string("QFI\xfb", 4) + std::string(1000, '\0'));
  auto r = Client({"image", "import", "tiny", "--disk", disk, "--min-memory-mb", "1G"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_EQ(fake_.image_create_["format"], "qcow2");
  EXPECT_EQ(fake_.image_create_["min_memory_mb"], 1024);
  EXPECT_EQ(fake_.image_create_["has_kernel"], false);
  EXPECT_TRUE(fake_.image_deleted_);
  EXPECT_NE(r.err.find("not a valid qcow2 file"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("removed the half-imported image img-5"), std::string::npos) << r.err;
}

// The finalize operation fails (e.g. over the image quota when the image
// becomes ready): the same exit code as the synchronous 403 gave, and the
// half-imported image is removed.
TEST_F(CliServerTest, ImageImportFailedFinalizeOperationRemovesTheImage) {
  fake_.fail_finalize_op_ = true;
  std::string disk = WriteFile("y.raw", std::string(1000, '\0'));
  auto r = Client({"image", "import", "tiny", "--disk", disk});
  EXPECT_EQ(r.rc, 4) << r.err;
  EXPECT_FALSE(fake_.finalized_);
  EXPECT_TRUE(fake_.image_deleted_);
  EXPECT_NE(r.err.find("quota: bob may keep 10 bytes"), std::string::npos) << r.err;
}

TEST_F(CliServerTest, WorkspaceRmWaitsForItsOperation) {
  auto r = Client({"workspace", "rm", "ws-1"});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_GE(fake_.workspace_polls_, 2);
  EXPECT_NE(r.out.find("deleted workspace ws-1"), std::string::npos) << r.out;

  fake_.workspace_polls_ = 0;
  fake_.fail_workspace_delete_ = true;
  auto failed = Client({"workspace", "rm", "ws-1"});
  EXPECT_EQ(failed.rc, 6) << failed.err;  // unavailable, as the synchronous answer was
  EXPECT_NE(failed.err.find("cannot reach the agent"), std::string::npos) << failed.err;
  EXPECT_EQ(failed.out.find("deleted"), std::string::npos) << failed.out;
}

}  // namespace
}  // namespace vmgrid
