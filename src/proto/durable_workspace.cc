#include "proto/durable_workspace.h"

#include "common/http_json.h"

namespace vmgrid {

using nlohmann::json;

json ToJson(const DurableSpec& d) {
  return {{"name", d.name}, {"grant", d.grant}, {"push_interval_s", d.push_interval_s}};
}

Result<DurableSpec> DurableSpecFromJson(const json& j) {
  if (!j.is_object()) return MakeError(ErrorCode::kInvalidArgument, "durable must be an object");
  JsonFields f(j, {"name", "grant", "push_interval_s"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  DurableSpec d;
  VMG_ASSIGN_OR_RETURN(d.name, f.String("name", false));
  VMG_ASSIGN_OR_RETURN(d.grant, f.String("grant", false));
  VMG_ASSIGN_OR_RETURN(d.push_interval_s, f.Int("push_interval_s", 0, 0, 86400 * 365));
  if (!d.name.empty()) {
    VMG_RETURN_IF_ERROR(ValidateName("durable workspace", d.name));
    if (d.name.rfind("ws-", 0) != 0)
      return MakeError(ErrorCode::kInvalidArgument, "durable.name must start with 'ws-'");
  }
  return d;
}

json ToJson(const DurableVersion& d) {
  return {{"ref", ToJson(d.ref)},         {"time_ms", d.time_ms},       {"chunks", d.chunks},
          {"chunks_sent", d.chunks_sent}, {"bytes_sent", d.bytes_sent}, {"trigger", d.trigger}};
}

Result<DurableVersion> DurableVersionFromJson(const json& j) {
  if (!j.is_object())
    return MakeError(ErrorCode::kInvalidArgument, "durable version must be an object");
  JsonFields f(j, {"ref", "time_ms", "chunks", "chunks_sent", "bytes_sent", "trigger"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  DurableVersion d;
  auto ref = j.find("ref");
  if (ref == j.end()) return MakeError(ErrorCode::kInvalidArgument, "durable version without ref");
  VMG_ASSIGN_OR_RETURN(d.ref, BlobRefFromJson(*ref, "durable.ref"));
  constexpr int64_t kMax = int64_t{1} << 53;
  VMG_ASSIGN_OR_RETURN(d.time_ms, f.Int("time_ms", 0, 0, kMax));
  VMG_ASSIGN_OR_RETURN(int64_t chunks, f.Int("chunks", 0, 0, kMax));
  VMG_ASSIGN_OR_RETURN(int64_t sent, f.Int("chunks_sent", 0, 0, kMax));
  VMG_ASSIGN_OR_RETURN(int64_t bytes, f.Int("bytes_sent", 0, 0, kMax));
  d.chunks = static_cast<uint64_t>(chunks);
  d.chunks_sent = static_cast<uint64_t>(sent);
  d.bytes_sent = static_cast<uint64_t>(bytes);
  VMG_ASSIGN_OR_RETURN(d.trigger,
                       f.Enum("trigger", {"stop", "checkpoint", "interval", "commit"}, "stop"));
  // A workspace's version, or (a commit) a dataset's.
  const char* prefix = d.trigger == "commit" ? "ds-" : "ws-";
  if (d.ref.name.rfind(prefix, 0) != 0)
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string("durable.ref must name ") +
                         (d.trigger == "commit" ? "a dataset (ds-...)" : "a workspace (ws-...)"));
  return d;
}

}  // namespace vmgrid
