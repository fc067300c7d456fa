#include "vmm/qmp_client.h"

#include <spdlog/spdlog.h>

#include <utility>

#include "vmm/json_util.h"

namespace vmgrid {

namespace {

using nlohmann::json;
using vmm::Clock;
using vmm::Deadline;
using vmm::DeadlineAfter;
using vmm::DumpJson;
using vmm::FindField;
using vmm::GetString;
using vmm::ParseUntrustedJson;
using vmm::UnixStream;

Error QmpError(const std::string& cmd, const json& error) {
  std::string cls = GetString(error, "class").value_or("UnknownError");
  std::string desc = GetString(error, "desc").value_or("(no description)");
  ErrorCode code = (cls == "CommandNotFound" || cls == "DeviceNotFound")
                       ? ErrorCode::kNotFound
                       : ErrorCode::kFailedPrecondition;
  return MakeError(code, "qmp " + cmd + ": " + cls + ": " + desc);
}

}  // namespace

QmpClient::QmpClient(UnixStream stream) : stream_(std::move(stream)) {}

Result<std::unique_ptr<QmpClient>> QmpClient::Connect(const std::string& unix_path,
                                                      std::chrono::milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  Result<UnixStream> stream = UnixStream::ConnectWithRetry(unix_path, deadline);
  if (!stream.ok()) return stream.error().Wrap("QMP connect");
  auto client = FromStream(std::move(stream).value(), deadline);
  if (!client.ok()) return client.error().Wrap("QMP " + unix_path);
  return client;
}

Result<std::unique_ptr<QmpClient>> QmpClient::FromStream(UnixStream stream, Deadline deadline) {
  std::unique_ptr<QmpClient> client(new QmpClient(std::move(stream)));
  {
    std::lock_guard<std::mutex> lock(client->mu_);
    Result<json> greeting = client->ReadMessageLocked(deadline);
    if (!greeting.ok()) {
      if (greeting.error().code == ErrorCode::kTimeout) {
        return MakeError(ErrorCode::kTimeout,
                         "no greeting (QEMU serves one monitor client at a time; is another "
                         "client connected?): " +
                             greeting.error().message);
      }
      return greeting.error().Wrap("reading greeting");
    }
    const json* qmp = FindField(*greeting, "QMP");
    if (qmp == nullptr || !qmp->is_object()) {
      return MakeError(ErrorCode::kInternal, "peer did not send a QMP greeting");
    }
    client->greeting_ = *qmp;
    Result<json> caps =
        client->ExecuteLocked("qmp_capabilities", json::object(), std::nullopt, deadline);
    if (!caps.ok()) return caps.error();
  }
  return client;
}

Result<json> QmpClient::Execute(const std::string& cmd, const json& args,
                                std::chrono::milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  std::lock_guard<std::mutex> lock(mu_);
  return TimedLocked(cmd, [&] { return ExecuteLocked(cmd, args, std::nullopt, deadline); });
}

Result<json> QmpClient::ExecuteWithFd(const std::string& cmd, const json& args, int fd,
                                      std::chrono::milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  std::lock_guard<std::mutex> lock(mu_);
  return TimedLocked(cmd, [&] { return ExecuteLocked(cmd, args, fd, deadline); });
}

Result<json> QmpClient::TimedLocked(const std::string& cmd,
                                    const std::function<Result<json>()>& execute) {
  if (!spdlog::should_log(spdlog::level::trace)) return execute();
  const auto start = std::chrono::steady_clock::now();
  Result<json> r = execute();
  spdlog::trace("qmp {}: {} in {} us", cmd, r.ok() ? "ok" : "error",
                std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::steady_clock::now() - start)
                    .count());
  return r;
}

Result<json> QmpClient::ExecuteLocked(const std::string& cmd, const json& args,
                                      std::optional<int> fd, Deadline deadline) {
  if (broken_ || !stream_.is_open()) {
    return MakeError(ErrorCode::kUnavailable, "qmp " + cmd + ": connection is closed");
  }
  if (!args.is_object()) {
    return MakeError(ErrorCode::kInvalidArgument, "qmp " + cmd + ": arguments must be an object");
  }
  std::string id = "vmg-" + std::to_string(next_id_++);
  json request = {{"execute", cmd}, {"id", id}};
  if (!args.empty()) request["arguments"] = args;
  VMG_ASSIGN_OR_RETURN(std::string line, DumpJson(request));
  line += '\n';
  Status sent =
      fd.has_value() ? stream_.WriteWithFd(line, *fd, deadline) : stream_.WriteAll(line, deadline);
  if (!sent.ok()) {
    // A partial write leaves QEMU's parser mid-object; the connection cannot
    // be trusted after that.
    broken_ = true;
    stream_.Close();
    return sent.error().Wrap("qmp " + cmd);
  }

  for (;;) {
    Result<json> msg = ReadMessageLocked(deadline);
    if (!msg.ok()) return msg.error().Wrap("qmp " + cmd);
    if (FindField(*msg, "event") != nullptr) {
      QueueEventLocked(std::move(msg).value());
      continue;
    }
    const json* reply_id = FindField(*msg, "id");
    const json* error = FindField(*msg, "error");
    if (reply_id == nullptr) {
      // QEMU omits the id only when it could not parse the request at all,
      // and only our current request can be outstanding.
      if (error != nullptr) return QmpError(cmd, *error);
      continue;
    }
    if (!reply_id->is_string() || reply_id->get<std::string>() != id) {
      continue;  // reply to an earlier command that timed out
    }
    if (error != nullptr) return QmpError(cmd, *error);
    const json* ret = FindField(*msg, "return");
    if (ret == nullptr) {
      return MakeError(ErrorCode::kInternal, "qmp " + cmd + ": reply has neither return nor error");
    }
    return *ret;
  }
}

Result<json> QmpClient::WaitEvent(const std::string& name, std::chrono::milliseconds timeout) {
  return WaitEventIf(
      [&name](const json& event) { return GetString(event, "event").value_or("") == name; },
      timeout);
}

Result<json> QmpClient::WaitEventIf(const std::function<bool(const json&)>& match,
                                    std::chrono::milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = events_.begin(); it != events_.end(); ++it) {
    if (match(*it)) {
      json event = std::move(*it);
      events_.erase(it);
      return event;
    }
  }
  if (broken_ || !stream_.is_open()) {
    return MakeError(ErrorCode::kUnavailable, "qmp: connection is closed");
  }
  for (;;) {
    Result<json> msg = ReadMessageLocked(deadline);
    if (!msg.ok()) return msg.error().Wrap("qmp waiting for event");
    if (FindField(*msg, "event") == nullptr) continue;  // late reply to a timed-out command
    if (match(*msg)) return msg;
    QueueEventLocked(std::move(msg).value());
  }
}

std::deque<json> QmpClient::DrainEvents() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(events_, {});
}

bool QmpClient::broken() const {
  std::lock_guard<std::mutex> lock(mu_);
  return broken_ || !stream_.is_open();
}

void QmpClient::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  stream_.Close();
  broken_ = true;
}

Result<json> QmpClient::ReadMessageLocked(Deadline deadline) {
  Result<std::string> line = stream_.ReadLine(deadline, kMaxLineBytes);
  if (!line.ok()) {
    if (line.error().code != ErrorCode::kTimeout) {
      broken_ = true;
      stream_.Close();
    }
    return line.error();
  }
  Result<json> msg = ParseUntrustedJson(*line);
  if (!msg.ok()) return msg.error().Wrap("bad message from QEMU");
  if (!msg->is_object()) {
    return MakeError(ErrorCode::kInternal, "bad message from QEMU: not a JSON object");
  }
  return msg;
}

void QmpClient::QueueEventLocked(json event) {
  if (events_.size() >= kMaxQueuedEvents) {
    spdlog::warn("qmp: event queue full, dropping {}",
                 GetString(events_.front(), "event").value_or("?"));
    events_.pop_front();
  }
  events_.push_back(std::move(event));
}

}  // namespace vmgrid
