#include "proto/host_report.h"

#include <algorithm>

#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;

json ToJson(const HostCapacityReport& c) {
  return {{"vcpus", c.vcpus},
          {"memory_mb", c.memory_mb},
          {"disk_mb", c.disk_mb},
          {"disk_total_bytes", c.disk_total_bytes},
          {"disk_free_bytes", c.disk_free_bytes},
          {"kvm", c.kvm},
          {"site", c.site},
          {"network", c.network},
          {"arch", c.arch}};
}

bool ValidVmsDigest(const std::string& digest) {
  return !digest.empty() && digest.size() <= 64 &&
         std::all_of(digest.begin(), digest.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

json ToJson(const HostReport& r) {
  json vms = json::array();
  if (!r.vms_same_as.empty())
    vms = json{{"same_as", r.vms_same_as}};
  else
    for (const auto& v : r.vms) vms.push_back(ToJson(v));
  json out = {{"name", r.name}, {"url", r.url}, {"capacity", ToJson(r.capacity)}, {"vms", vms}};
  if (!r.images.is_null()) out["images"] = r.images;
  if (r.tunnel) out["tunnel"] = ToJson(*r.tunnel);
  if (!r.networks.is_null()) out["networks"] = r.networks;
  return out;
}

Result<HostCapacityReport> HostCapacityFromJson(const json& cap) {
  if (!cap.is_object()) return MakeError(ErrorCode::kInvalidArgument, "capacity must be an object");
  JsonFields cf(cap, kHostCapacityFields);
  HostCapacityReport c;
  VMG_ASSIGN_OR_RETURN(int64_t vcpus, cf.Int("vcpus", 0, 0, 4096));
  c.vcpus = static_cast<int>(vcpus);
  VMG_ASSIGN_OR_RETURN(c.memory_mb, cf.Int("memory_mb", 0, 0, int64_t{1} << 32));
  VMG_ASSIGN_OR_RETURN(c.disk_mb, cf.Int("disk_mb", 0, 0, int64_t{1} << 40));
  VMG_ASSIGN_OR_RETURN(c.kvm, cf.Bool("kvm", false));
  VMG_ASSIGN_OR_RETURN(c.disk_total_bytes, cf.Int("disk_total_bytes", 0, 0, int64_t{1} << 60));
  VMG_ASSIGN_OR_RETURN(c.disk_free_bytes, cf.Int("disk_free_bytes", 0, 0, int64_t{1} << 60));
  if (c.disk_free_bytes > c.disk_total_bytes)
    return MakeError(ErrorCode::kInvalidArgument,
                     "capacity: disk_free_bytes exceeds disk_total_bytes");
  for (auto [field, dst] :
       {std::pair{"site", &c.site}, {"network", &c.network}, {"arch", &c.arch}}) {
    VMG_ASSIGN_OR_RETURN(std::string v, cf.String(field, false, *dst));
    VMG_RETURN_IF_ERROR(ValidateName(field, v));
    *dst = v;
  }
  return c;
}

Result<ParsedHostReport> HostReportFromJson(const json& j) {
  if (!j.is_object())
    return MakeError(ErrorCode::kInvalidArgument, "host report must be an object");
  JsonFields f(j, kHostReportFields);
  ParsedHostReport out;
  HostReport& r = out.report;
  VMG_ASSIGN_OR_RETURN(r.name, f.String("name", true));
  VMG_ASSIGN_OR_RETURN(r.url, f.String("url", true));
  VMG_RETURN_IF_ERROR(ValidateName("host", r.name));
  auto cap = j.find("capacity");
  if (cap == j.end()) return MakeError(ErrorCode::kInvalidArgument, "capacity must be an object");
  VMG_ASSIGN_OR_RETURN(r.capacity, HostCapacityFromJson(*cap));
  if (auto vms = j.find("vms"); vms != j.end() && vms->is_object()) {
    JsonFields vf(*vms, {"same_as"});
    VMG_RETURN_IF_ERROR(vf.CheckUnknown());
    VMG_ASSIGN_OR_RETURN(r.vms_same_as, vf.String("same_as", true));
    if (!ValidVmsDigest(r.vms_same_as))
      return MakeError(ErrorCode::kInvalidArgument,
                       "vms.same_as must be a VM-list digest (1 to 64 hex digits)");
  } else if (vms != j.end() && !vms->is_null()) {
    if (!vms->is_array())
      return MakeError(ErrorCode::kInvalidArgument,
                       "vms must be an array or {\"same_as\": DIGEST}");
    for (const auto& v : *vms) {
      auto s = VmStatusFromJson(v);
      if (s.ok())
        r.vms.push_back(std::move(*s));
      else
        ++out.dropped_vms;
    }
  }
  if (auto im = j.find("images"); im != j.end() && !im->is_null()) {
    if (!im->is_object())
      return MakeError(ErrorCode::kInvalidArgument, "field 'images' must be an object");
    r.images = *im;
  }
  if (auto n = j.find("networks"); n != j.end() && !n->is_null()) {
    if (!n->is_object())
      return MakeError(ErrorCode::kInvalidArgument, "field 'networks' must be an object");
    r.networks = *n;
  }
  if (auto t = j.find("tunnel"); t != j.end() && !t->is_null()) {
    VMG_ASSIGN_OR_RETURN(r.tunnel, TunnelEndpointFromJson(*t));
  }
  return out;
}

json ToJson(const HeartbeatReply& r) {
  json j = {{"host_id", r.host_id}};
  if (r.networks) j["networks"] = ToJson(*r.networks);
  if (r.lease_ms > 0) j["lease_ms"] = r.lease_ms;
  if (!r.stale_vms.empty()) j["stale_vms"] = r.stale_vms;
  if (!r.vms_digest.empty()) j["vms_digest"] = r.vms_digest;
  return j;
}

Result<HeartbeatReply> HeartbeatReplyFromJson(const json& j) {
  if (!j.is_object())
    return MakeError(ErrorCode::kInvalidArgument, "heartbeat reply must be an object");
  JsonFields f(j, {"host_id"});
  HeartbeatReply r;
  VMG_ASSIGN_OR_RETURN(r.host_id, f.String("host_id", true));
  // A week at most: a lease is seconds; anything longer is a bug.
  VMG_ASSIGN_OR_RETURN(r.lease_ms, f.Int("lease_ms", 0, 0, int64_t{7} * 24 * 3600 * 1000));
  VMG_ASSIGN_OR_RETURN(r.stale_vms, f.StringList("stale_vms", false, 100000));
  VMG_ASSIGN_OR_RETURN(r.vms_digest, f.String("vms_digest", false));
  if (!r.vms_digest.empty() && !ValidVmsDigest(r.vms_digest))
    return MakeError(ErrorCode::kInvalidArgument, "vms_digest must be 1 to 64 hex digits");
  if (auto n = j.find("networks"); n != j.end() && !n->is_null()) {
    VMG_ASSIGN_OR_RETURN(r.networks, HostNetworkPlanFromJson(*n));
  }
  return r;
}

bool VmListAck::Shorten(HostReport& report) const {
  if (digest_.empty() || report.vms != vms_) return false;
  report.vms.clear();
  report.vms_same_as = digest_;
  return true;
}

Result<nlohmann::json> VmListAck::Send(HostReport report, const Post& post, bool* named,
                                       bool* refused) {
  std::vector<VmStatus> vms = report.vms;
  const bool short_form = Shorten(report);
  if (named) *named = short_form;
  if (refused) *refused = false;
  Result<json> r = MakeError(ErrorCode::kInternal, "not sent");
  if (short_form) {
    r = post(ToJson(report));
    if (r.ok()) {
      auto reply = HeartbeatReplyFromJson(*r);
      Acknowledged(std::move(vms), reply.ok() ? reply->vms_digest : "");
      return r;
    }
    if (refused) *refused = true;
    Forget();
    report.vms = vms;
    report.vms_same_as.clear();
  }
  r = post(ToJson(report));
  if (r.ok()) {
    auto reply = HeartbeatReplyFromJson(*r);
    Acknowledged(std::move(vms), reply.ok() ? reply->vms_digest : "");
  }
  return r;
}

void VmListAck::Acknowledged(std::vector<VmStatus> vms, const std::string& digest) {
  if (digest.empty() || !ValidVmsDigest(digest)) return Forget();
  digest_ = digest;
  vms_ = std::move(vms);
}

}  // namespace vmgrid
