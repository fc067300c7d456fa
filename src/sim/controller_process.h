// ControllerProcess: `vmgrid controller` as a child process of ours, on a
// fixed loopback port, for tests and benchmarks that pair a real controller
// with SimHosts. Restarting on the same state directory and port keeps the
// controller's URL, as hosts expect. Not thread-safe.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "common/child_process.h"
#include "common/result.h"

namespace vmgrid {

struct ControllerProcessOptions {
  std::string vmgrid_binary;  // the built `vmgrid`
  std::string state_dir;      // the controller's --state-dir
  int port = 0;               // 0 = pick a free loopback port
  std::string log_path;       // "" = STATE_DIR/../controller.log
  std::string database;       // the controller's --database; "" = STATE_DIR/vmgrid.db (SQLite)
};

class ControllerProcess {
 public:
  // Spawns the controller and waits until /v1/health answers and the admin
  // and agent tokens exist.
  static Result<std::unique_ptr<ControllerProcess>> Start(
      ControllerProcessOptions options,
      std::chrono::milliseconds timeout = std::chrono::seconds(30));
  ~ControllerProcess();

  // SIGTERM and wait; the child is gone afterwards.
  void Stop();
  // Starts it again on the same port and state directory.
  Status Restart(std::chrono::milliseconds timeout = std::chrono::seconds(30));

  std::string url() const { return "http://127.0.0.1:" + std::to_string(options_.port); }
  const std::string& state_dir() const { return options_.state_dir; }
  // What Store::Open and QueryService::Open take for the controller's database.
  std::string db_path() const {
    return options_.database.empty() ? options_.state_dir + "/vmgrid.db" : options_.database;
  }
  std::string admin_token() const;
  std::string agent_token() const;
  pid_t pid() const { return child_ ? child_->pid() : -1; }

 private:
  explicit ControllerProcess(ControllerProcessOptions options) : options_(std::move(options)) {}
  Status Spawn(std::chrono::milliseconds timeout);

  ControllerProcessOptions options_;
  std::unique_ptr<ChildProcess> child_;
};

// A loopback TCP port that was free a moment ago.
int PickFreePort();

}  // namespace vmgrid
