#include "sim/controller_process.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "client/api_client.h"
#include "common/util.h"

namespace vmgrid {

using Clock = std::chrono::steady_clock;

namespace {

std::string ReadToken(const std::string& path) {
  auto t = ReadTokenFile(path);
  return t.ok() ? *t : "";
}

}  // namespace

int PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

Result<std::unique_ptr<ControllerProcess>> ControllerProcess::Start(
    ControllerProcessOptions options, std::chrono::milliseconds timeout) {
  std::error_code ec;
  options.state_dir = std::filesystem::absolute(options.state_dir, ec).string();
  if (options.port == 0) options.port = PickFreePort();
  if (options.port == 0) return MakeError(ErrorCode::kUnavailable, "no free loopback port");
  if (options.log_path.empty())
    options.log_path =
        std::filesystem::path(options.state_dir).parent_path().string() + "/controller.log";
  VMG_RETURN_IF_ERROR(MakeDirs(options.state_dir));
  std::unique_ptr<ControllerProcess> p(new ControllerProcess(std::move(options)));
  VMG_RETURN_IF_ERROR(p->Spawn(timeout));
  return p;
}

ControllerProcess::~ControllerProcess() { Stop(); }

std::string ControllerProcess::admin_token() const {
  return ReadToken(options_.state_dir + "/admin.token");
}
std::string ControllerProcess::agent_token() const {
  return ReadToken(options_.state_dir + "/agent.token");
}

Status ControllerProcess::Spawn(std::chrono::milliseconds timeout) {
  std::vector<std::string> argv = {options_.vmgrid_binary,
                                   "controller",
                                   "--listen",
                                   "127.0.0.1:" + std::to_string(options_.port),
                                   "--plain-http",
                                   "--state-dir",
                                   options_.state_dir};
  if (!options_.database.empty()) {
    argv.push_back("--database");
    argv.push_back(options_.database);
  }
  VMG_ASSIGN_OR_RETURN(child_, ChildProcess::Spawn(argv, options_.log_path));
  ApiClient anon(url(), "");
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (!child_->Running())
      return MakeError(ErrorCode::kInternal, "the controller exited; see " + options_.log_path);
    if (anon.Get("/v1/health").ok() && !admin_token().empty() && !agent_token().empty())
      return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return MakeError(ErrorCode::kTimeout, "the controller did not come up; see " + options_.log_path);
}

void ControllerProcess::Stop() {
  if (!child_) return;
  child_->Terminate(std::chrono::seconds(15));
  child_.reset();
}

Status ControllerProcess::Restart(std::chrono::milliseconds timeout) {
  Stop();
  return Spawn(timeout);
}

}  // namespace vmgrid
