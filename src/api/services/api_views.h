// ApiViews: how the REST API shows VMs and workspaces — their records with
// the names of what they refer to (owner, image, host, workspace) beside the
// ids. Owners' names are cached (user names never change); the rest is read
// from the store on each call unless the caller has it at hand.
//
// Lists are answered as text (VmListText): each VM's view is serialized once
// and reused while everything it shows is unchanged, which is checked on
// every call against the record just read and the names it refers to (so a
// cached view is never staler than the database read that asks for it, with
// one controller or several). A 500-VM page cost 4.5 ms of CPU, more than
// half of it building and serializing JSON (bench/listing).
// Thread-safe: every method.
#pragma once

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
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
  // The same array as JSON text, exactly as VmListJson(vms).dump() would
  // write it (SendJson's settings).
  std::string VmListText(const std::vector<Vm>& vms);
  nlohmann::json WorkspaceJson(const Workspace& w);
  // User `id`'s name (the id itself if there is no such user).
  std::string UserName(const std::string& id);

 private:
  nlohmann::json VmJsonWith(const Vm& v, const Result<Image>& image, const Result<Host>& host,
                            const std::string& workspace_name);

  // What one VM's cached view was made from, and its text.
  struct CachedView {
    Vm vm;
    std::string image, host, host_state, workspace;
    std::string text;
  };
  static constexpr size_t kMaxCachedViews = 50000;  // then the cache starts again

  // The images, hosts and workspace names a list of VMs refers to, each read
  // once (not once per VM).
  struct Names {
    std::unordered_map<std::string, Result<Image>> images;
    std::unordered_map<std::string, Result<Host>> hosts;
    std::unordered_map<std::string, std::string> workspaces;  // id -> name ("" unknown)
    std::string WorkspaceName(const std::string& id) const;
  };
  Names ReadNames(const std::vector<Vm>& vms);

  Store& store_;
  std::mutex mu_;
  std::map<std::string, std::string> user_names_;  // id -> name; guarded by mu_
  std::mutex views_mu_;
  std::unordered_map<std::string, CachedView> views_;  // VM id -> view; guarded by views_mu_
};

}  // namespace vmgrid
