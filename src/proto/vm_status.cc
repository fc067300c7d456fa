#include "proto/vm_status.h"

#include "common/http_json.h"
#include "common/util.h"

namespace vmgrid {

using nlohmann::json;

json ToJson(const VmStatus& s) {
  json j = {{"id", s.id},
            {"owner_id", s.owner_id},
            {"name", s.name},
            {"state", s.state},
            {"error", s.error},
            {"pid", s.pid},
            {"vcpus", s.vcpus},
            {"memory_mb", s.memory_mb},
            {"has_checkpoint", s.has_checkpoint},
            {"ready_ms", s.ready_ms},
            {"restart", s.restart}};
  if (!s.vmgenid.empty()) j["vmgenid"] = s.vmgenid;
  if (!s.durable.empty()) j["durable"] = ToJson(s.durable);
  return j;
}

Result<VmStatus> VmStatusFromJson(const json& j) {
  if (!j.is_object()) return MakeError(ErrorCode::kInvalidArgument, "VM status must be an object");
  JsonFields f(j, {});
  VmStatus s;
  VMG_ASSIGN_OR_RETURN(s.id, f.String("id", true));
  VMG_ASSIGN_OR_RETURN(s.owner_id, f.String("owner_id", false));
  VMG_ASSIGN_OR_RETURN(s.name, f.String("name", false));
  VMG_ASSIGN_OR_RETURN(s.state, f.String("state", false));
  VMG_ASSIGN_OR_RETURN(s.error, f.String("error", false));
  VMG_ASSIGN_OR_RETURN(int64_t pid, f.Int("pid", 0, -1, (int64_t{1} << 31) - 1));
  s.pid = static_cast<int>(pid);
  VMG_ASSIGN_OR_RETURN(int64_t vcpus, f.Int("vcpus", 0, 0, 4096));
  s.vcpus = static_cast<int>(vcpus);
  VMG_ASSIGN_OR_RETURN(s.memory_mb, f.Int("memory_mb", 0, 0, int64_t{1} << 32));
  VMG_ASSIGN_OR_RETURN(s.has_checkpoint, f.Bool("has_checkpoint", false));
  VMG_ASSIGN_OR_RETURN(s.ready_ms, f.Int("ready_ms", 0, 0, int64_t{1} << 53));
  VMG_ASSIGN_OR_RETURN(s.restart, f.String("restart", false));
  VMG_ASSIGN_OR_RETURN(s.vmgenid, f.String("vmgenid", false));
  if (!s.vmgenid.empty() && !ValidUuid(s.vmgenid))
    return MakeError(ErrorCode::kInvalidArgument, "VM status: vmgenid is not a UUID");
  if (auto d = j.find("durable"); d != j.end()) {
    VMG_ASSIGN_OR_RETURN(s.durable, DurableVersionFromJson(*d));
  }
  if (s.id.empty()) return MakeError(ErrorCode::kInvalidArgument, "VM status without an id");
  return s;
}

}  // namespace vmgrid
