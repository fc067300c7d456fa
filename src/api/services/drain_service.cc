#include "api/services/drain_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <optional>
#include <vector>

#include "api/op_queue.h"
#include "api/services/migration_service.h"

namespace vmgrid {

using nlohmann::json;

DrainService::DrainService(Store& store, MigrationService& migrations, OpQueue& ops)
    : store_(store), migrations_(migrations), ops_(ops) {}

namespace {

Status RequireAdmin(const Caller& c, const std::string& what) {
  if (c.admin()) return Status::Ok();
  return MakeError(ErrorCode::kPermissionDenied, "only the admin may " + what + " a host");
}

}  // namespace

Result<json> DrainService::Drain(const Caller& c, const std::string& host_ref, int parallel) {
  VMG_RETURN_IF_ERROR(RequireAdmin(c, "drain"));
  if (parallel < 1 || parallel > kMaxParallel)
    return MakeError(ErrorCode::kInvalidArgument,
                     "parallel must be 1 to " + std::to_string(kMaxParallel));
  VMG_ASSIGN_OR_RETURN(Host host, store_.SetHostDraining(host_ref, true));
  std::lock_guard<std::mutex> l(mu_);
  if (auto it = running_.find(host.id); it != running_.end()) return it->second;
  OpQueue::Operation op;
  op.kind = "drain";
  op.owner_id = c.user.id;
  json answer = ops_.Start(op);
  answer["host"] = host.name;
  answer["parallel"] = parallel;
  running_[host.id] = answer;
  spdlog::info("host {} draining ({} migration(s) at once)", host.name, parallel);
  ops_.Run("", [this, id = op.id, c, host, parallel] {
    auto r = Run(id, c, host, parallel);
    {
      std::lock_guard<std::mutex> l(mu_);
      running_.erase(host.id);
    }
    ops_.Finish(id, r);
  });
  return answer;
}

Result<Host> DrainService::Undrain(const Caller& c, const std::string& host_ref) {
  VMG_RETURN_IF_ERROR(RequireAdmin(c, "undrain"));
  VMG_ASSIGN_OR_RETURN(Host host, store_.SetHostDraining(host_ref, false));
  spdlog::info("host {} back in service", host.name);
  return host;
}

json DrainService::Running(const std::string& host_id) const {
  std::string id;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = running_.find(host_id);
    if (it == running_.end()) return nullptr;
    id = it->second.value("id", "");
  }
  auto op = ops_.Get(id, "", /*admin=*/true);
  return op.ok() ? *op : json(nullptr);
}

std::vector<json> DrainService::ResumeInterrupted() {
  std::vector<json> started;
  auto hosts = store_.ListHosts();
  if (!hosts.ok()) {
    spdlog::warn("resuming drains: {}", hosts.error().message);
    return started;
  }
  std::optional<User> admin;
  for (const Host& host : *hosts) {
    if (!host.draining) continue;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (running_.count(host.id) != 0) continue;
    }
    auto vms = store_.ListVmsOnHost(host.id);
    if (!vms.ok()) {
      spdlog::warn("resuming the drain of host {}: {}", host.name, vms.error().message);
      continue;
    }
    const auto left =
        std::count_if(vms->begin(), vms->end(), [](const Vm& vm) { return vm.state == "running"; });
    if (left == 0) continue;
    if (!admin) {
      auto users = store_.ListUsers();
      if (users.ok())
        for (const User& u : *users)
          if (u.role == "admin") {
            admin = u;
            break;
          }
      if (!admin) {
        spdlog::warn("resuming drains: no admin user to run them as");
        return started;
      }
    }
    auto answer = Drain(Caller{*admin}, host.id, kDefaultParallel);
    if (!answer.ok()) {
      spdlog::warn("resuming the drain of host {}: {}", host.name, answer.error().message);
      continue;
    }
    spdlog::info("host {} is draining with {} running VM(s) and no drain running: resumed as {}",
                 host.name, left, answer->value("id", ""));
    started.push_back(*answer);
  }
  return started;
}

Result<json> DrainService::Run(const std::string& op_id, const Caller& c, const Host& host,
                               int parallel) {
  VMG_ASSIGN_OR_RETURN(auto vms, store_.ListVmsOnHost(host.id));
  std::sort(vms.begin(), vms.end(), [](const Vm& a, const Vm& b) { return a.name < b.name; });
  // State below is protected by mu (the migrations' workers report here).
  std::mutex mu;
  std::condition_variable cv;
  std::vector<json> entries;
  int active = 0;
  size_t ended = 0;
  for (const Vm& vm : vms)
    entries.push_back({{"id", vm.id}, {"name", vm.name}, {"state", "waiting"}});
  auto end = [&](size_t i, const std::string& state, const std::string& error) {
    entries[i]["state"] = state;
    if (!error.empty()) entries[i]["error"] = error;
    ++ended;
  };
  auto progress = [&] {  // with mu held
    const int percent = vms.empty() ? 100 : static_cast<int>(ended * 100 / vms.size());
    ops_.SetProgress(op_id, "migrating", percent, {{"vms", entries}});
  };
  {
    std::lock_guard<std::mutex> l(mu);
    progress();
  }
  for (size_t i = 0; i < vms.size(); ++i) {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return active < parallel; });
    // An undrain stops the drain between migrations.
    auto now = store_.GetHost(host.id);
    if (now.ok() && !now->draining) {
      for (size_t j = i; j < vms.size(); ++j) end(j, "not_moved", "the host was undrained");
      progress();
      break;
    }
    entries[i]["state"] = "migrating";
    ++active;
    progress();
    l.unlock();
    auto started = migrations_.Migrate(c, vms[i].id, "", [&, i](const Result<json>& r) {
      std::lock_guard<std::mutex> done(mu);
      if (r.ok()) {
        entries[i]["to"] = r->value("to", "");
        end(i, "moved", "");
      } else {
        end(i, "not_moved", r.error().message);
      }
      --active;
      progress();
      cv.notify_all();
    });
    l.lock();
    if (!started.ok()) {
      --active;
      end(i, "not_moved", started.error().message);
      progress();
    } else if (entries[i]["state"] == "migrating") {
      entries[i]["to"] = started->value("to", "");
      progress();
    }
  }
  std::unique_lock<std::mutex> l(mu);
  cv.wait(l, [&] { return active == 0; });
  int moved = 0;
  for (const auto& e : entries) moved += e["state"] == "moved" ? 1 : 0;
  const int not_moved = static_cast<int>(entries.size()) - moved;
  spdlog::info("drain of host {}: {} VM(s) moved, {} not moved", host.name, moved, not_moved);
  return json{{"host", host.name}, {"moved", moved}, {"not_moved", not_moved}, {"vms", entries}};
}

}  // namespace vmgrid
