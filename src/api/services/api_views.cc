#include "api/services/api_views.h"

#include <unordered_map>

#include "api/services/data_attachments.h"
#include "common/util.h"

namespace vmgrid {

using nlohmann::json;

std::string ApiViews::UserName(const std::string& id) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (auto it = user_names_.find(id); it != user_names_.end()) return it->second;
  }
  auto u = store_.GetUserById(id);
  if (!u.ok()) return id;
  std::lock_guard<std::mutex> l(mu_);
  user_names_[id] = u->name;
  return u->name;
}

json ApiViews::VmJson(const Vm& v, const Image* known_image, const Host* known_host) {
  Result<Image> image = known_image && known_image->id == v.image_id
                            ? Result<Image>(*known_image)
                            : store_.GetImage(v.image_id, "");
  Result<Host> host = known_host && known_host->id == v.host_id ? Result<Host>(*known_host)
                                                                : store_.GetHost(v.host_id);
  std::string ws_name;
  if (!v.workspace_id.empty())
    if (auto ws = store_.GetWorkspace(v.workspace_id, ""); ws.ok()) ws_name = ws->name;
  return VmJsonWith(v, image, host, ws_name);
}

ApiViews::Names ApiViews::ReadNames(const std::vector<Vm>& vms) {
  Names n;
  for (const Vm& v : vms) {
    if (!n.images.count(v.image_id)) n.images.emplace(v.image_id, store_.GetImage(v.image_id, ""));
    if (!n.hosts.count(v.host_id)) n.hosts.emplace(v.host_id, store_.GetHost(v.host_id));
    if (!v.workspace_id.empty() && !n.workspaces.count(v.workspace_id)) {
      auto got = store_.GetWorkspace(v.workspace_id, "");
      n.workspaces.emplace(v.workspace_id, got.ok() ? got->name : "");
    }
  }
  return n;
}

std::string ApiViews::Names::WorkspaceName(const std::string& id) const {
  auto it = workspaces.find(id);
  return it == workspaces.end() ? "" : it->second;
}

json ApiViews::VmListJson(const std::vector<Vm>& vms) {
  Names n = ReadNames(vms);
  json out = json::array();
  for (const Vm& v : vms)
    out.push_back(VmJsonWith(v, n.images.at(v.image_id), n.hosts.at(v.host_id),
                             n.WorkspaceName(v.workspace_id)));
  return out;
}

std::string ApiViews::VmListText(const std::vector<Vm>& vms) {
  // What each view shows besides the record (VmJsonWith), then one pass over
  // the cache under one lock: cached texts are copied in place, and the
  // places of the others are noted and filled afterwards, outside the lock.
  struct Item {
    const Vm* vm;
    const Result<Image>* image;
    const Result<Host>* host;
    std::string image_name, host_name, host_state, ws_name;
  };
  std::vector<Item> items;
  items.reserve(vms.size());
  Names names = ReadNames(vms);
  for (const Vm& v : vms) {
    const Result<Image>& image = names.images.at(v.image_id);
    const Result<Host>& host = names.hosts.at(v.host_id);
    items.push_back({&v, &image, &host, image.ok() ? image->name : v.image_id,
                     host.ok() ? host->name : v.host_id, host.ok() ? host->state : "unknown",
                     names.WorkspaceName(v.workspace_id)});
  }
  std::string out = "[";
  std::vector<std::pair<size_t, const Item*>> missing;  // (offset in out, item)
  {
    std::lock_guard<std::mutex> l(views_mu_);
    for (const Item& it : items) {
      if (&it != &items.front()) out += ',';
      auto c = views_.find(it.vm->id);
      if (c != views_.end() && c->second.vm == *it.vm && c->second.image == it.image_name &&
          c->second.host == it.host_name && c->second.host_state == it.host_state &&
          c->second.workspace == it.ws_name) {
        out += c->second.text;
      } else {
        missing.emplace_back(out.size(), &it);
      }
    }
  }
  out += ']';
  // From the last to the first, so that earlier offsets stay right.
  for (auto m = missing.rbegin(); m != missing.rend(); ++m) {
    const Item& it = *m->second;
    CachedView c{*it.vm,
                 it.image_name,
                 it.host_name,
                 it.host_state,
                 it.ws_name,
                 VmJsonWith(*it.vm, *it.image, *it.host, it.ws_name)
                     .dump(-1, ' ', false, json::error_handler_t::replace)};
    out.insert(m->first, c.text);
    std::lock_guard<std::mutex> l(views_mu_);
    if (views_.size() >= kMaxCachedViews) views_.clear();
    views_.insert_or_assign(it.vm->id, std::move(c));
  }
  return out;
}

json ApiViews::VmJsonWith(const Vm& v, const Result<Image>& image, const Result<Host>& host,
                          const std::string& ws_name) {
  auto data = VmDataFromJson(v.data);
  // Field by field: nlohmann's initializer-list constructor builds a
  // two-element array per field and converts it, which made a list of 500
  // VMs cost twice as much CPU (bench/listing).
  json j = json::object();
  j["id"] = v.id;
  j["name"] = v.name;
  j["owner"] = UserName(v.owner_id);
  j["image"] = image.ok() ? image->name : v.image_id;
  j["image_id"] = v.image_id;
  j["host"] = host.ok() ? host->name : v.host_id;
  j["host_id"] = v.host_id;
  j["host_state"] = host.ok() ? host->state : "unknown";
  j["state"] = v.state;
  j["vcpus"] = v.vcpus;
  j["memory_mb"] = v.memory_mb;
  j["disk"] = v.disk;
  j["disk_bytes"] = v.disk_bytes;
  j["start"] = v.start;
  j["restart"] = v.restart;
  j["workspace"] = ws_name;
  j["network"] = v.network;
  j["data"] = data.ok() ? DataAttachmentsView(*data) : json::array();
  j["error"] = v.error;
  j["create_ms"] = v.create_ms;
  j["created_at"] = FormatTimeMs(v.created_ms);
  j["updated_at"] = FormatTimeMs(v.updated_ms);
  return j;
}

json ApiViews::WorkspaceJson(const Workspace& w) {
  auto image = store_.GetImage(w.image_id, "");
  auto host = store_.GetHost(w.host_id);
  // Its latest version on the image server (docs/vm-lifecycle.md), or null.
  json durable = nullptr;
  if (w.durable_version > 0) {
    auto from = store_.GetHost(w.durable_host_id);
    durable = {{"version", w.durable_version},
               {"digest", w.durable_digest},
               {"size_bytes", w.durable_size_bytes},
               {"taken_at", FormatTimeMs(w.durable_ms)},
               {"host", from.ok() ? from->name : w.durable_host_id},
               {"chunks", w.durable_chunks},
               {"sent_chunks", w.durable_sent_chunks},
               {"sent_bytes", w.durable_sent_bytes}};
  }
  return {{"id", w.id},
          {"name", w.name},
          {"owner", UserName(w.owner_id)},
          {"image", image.ok() ? image->name : w.image_id},
          {"image_id", w.image_id},
          {"host", host.ok() ? host->name : w.host_id},
          {"host_id", w.host_id},
          {"size_bytes", w.size_bytes},
          {"vm_id", w.vm_id},
          {"created_at", FormatTimeMs(w.created_ms)},
          {"durable", durable}};
}

}  // namespace vmgrid
