// ApiViews: how the REST API shows VMs and workspaces — their records with
// the names of what they refer to (owner, image, host, workspace) beside the
// ids. Owners' names are cached (user names never change); the rest is read
// from the store on each call unless the caller has it at hand.
// Thread-safe: every method.
#pragma once

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "store/store.h"

namespace vmgrid {

class ApiViews {
 public:
  explicit ApiViews(Store& store) : store_(store) {}

  // `image` and `host`, when the caller has them at hand, save reading them
  // (each is used only if it is the VM's).
  nlohmann::json VmJson(const Vm& v, const Image* image = nullptr, const Host* host = nullptr);
  // Views of a list of VMs (an array): each image, host and workspace they
  // name is read once, not once per VM.
  nlohmann::json VmListJson(const std::vector<Vm>& vms);
  nlohmann::json WorkspaceJson(const Workspace& w);
  // User `id`'s name (the id itself if there is no such user).
  std::string UserName(const std::string& id);

 private:
  nlohmann::json VmJsonWith(const Vm& v, const Result<Image>& image, const Result<Host>& host,
                            const std::string& workspace_name);

  Store& store_;
  std::mutex mu_;
  std::map<std::string, std::string> user_names_;  // id -> name; guarded by mu_
};

}  // namespace vmgrid
