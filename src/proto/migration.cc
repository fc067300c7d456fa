#include "proto/migration.h"

#include <arpa/inet.h>

#include <algorithm>

#include "common/http_json.h"
#include "common/util.h"

namespace vmgrid {

namespace {

using nlohmann::json;

constexpr int64_t kMaxInt = int64_t{1} << 53;  // exact in every JSON reader

Error Invalid(const std::string& msg) { return MakeError(ErrorCode::kInvalidArgument, msg); }

Status NeedObject(const json& j, const std::string& what) {
  if (!j.is_object()) return Invalid(what + " must be a JSON object");
  return Status::Ok();
}

bool NameChars(const std::string& s, size_t max) {
  return s.size() <= max && std::all_of(s.begin(), s.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
         });
}

bool IpLiteral(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// An IP literal or a DNS name (letters, digits, '.', '-').
bool HostName(const std::string& s) {
  if (s.empty() || s.size() > 253) return false;
  if (IpLiteral(s)) return true;
  return std::all_of(s.begin(), s.end(),
                     [](char c) {
                       return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-';
                     }) &&
         s.front() != '-' && s.front() != '.';
}

// A nested object field (required).
Result<const json*> Object(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) return Invalid(std::string("field '") + name + "' is required");
  if (!it->is_object()) return Invalid(std::string("field '") + name + "' must be an object");
  return &*it;
}

}  // namespace

json ToJson(const MigrationCredential& c) {
  return {{"identity", c.identity}, {"key_hex", c.key_hex}};
}

Result<MigrationCredential> MigrationCredentialFromJson(const json& j) {
  VMG_RETURN_IF_ERROR(NeedObject(j, "a migration credential"));
  JsonFields f(j, {"identity", "key_hex"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  MigrationCredential c;
  VMG_ASSIGN_OR_RETURN(c.identity, f.String("identity", true));
  VMG_ASSIGN_OR_RETURN(c.key_hex, f.String("key_hex", true));
  if (c.identity.empty() || !NameChars(c.identity, 64))
    return Invalid("credential identity must match [A-Za-z0-9._-]{1,64}");
  if (c.key_hex.size() != 64 || !std::all_of(c.key_hex.begin(), c.key_hex.end(), [](char ch) {
        return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f');
      }))
    return Invalid("credential key_hex must be 64 lowercase hex digits");
  return c;
}

json ToJson(const IncomingRequest& r) {
  json j = {{"spec", ToJson(r.spec)},
            {"credential", ToJson(r.credential)},
            {"listen_host", r.listen_host},
            {"cold", r.cold}};
  if (!r.vmgenid.empty()) j["vmgenid"] = r.vmgenid;
  return j;
}

Result<IncomingRequest> IncomingRequestFromJson(const json& j) {
  VMG_RETURN_IF_ERROR(NeedObject(j, "an incoming migration request"));
  JsonFields f(j, {"spec", "credential", "listen_host", "cold", "vmgenid"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  IncomingRequest r;
  VMG_ASSIGN_OR_RETURN(const json* spec, Object(j, "spec"));
  VMG_ASSIGN_OR_RETURN(r.spec, VmSpecFromJson(*spec));
  VMG_ASSIGN_OR_RETURN(const json* cred, Object(j, "credential"));
  VMG_ASSIGN_OR_RETURN(r.credential, MigrationCredentialFromJson(*cred));
  VMG_ASSIGN_OR_RETURN(r.listen_host, f.String("listen_host", true));
  if (!IpLiteral(r.listen_host)) return Invalid("listen_host must be an IP address");
  VMG_ASSIGN_OR_RETURN(r.cold, f.Bool("cold", false));
  VMG_ASSIGN_OR_RETURN(r.vmgenid, f.String("vmgenid", false));
  if (!r.vmgenid.empty() && !ValidUuid(r.vmgenid)) return Invalid("vmgenid must be a UUID");
  return r;
}

json ToJson(const IncomingInfo& i) {
  return {{"host", i.host},
          {"nbd_port", i.nbd_port},
          {"migration_port", i.migration_port},
          {"nbd_export", i.nbd_exports.empty() ? std::string() : i.nbd_exports.front()},
          {"nbd_exports", i.nbd_exports}};
}

Result<IncomingInfo> IncomingInfoFromJson(const json& j) {
  VMG_RETURN_IF_ERROR(NeedObject(j, "incoming migration info"));
  JsonFields f(j, {"host", "nbd_port", "migration_port", "nbd_export", "nbd_exports"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  IncomingInfo i;
  VMG_ASSIGN_OR_RETURN(i.host, f.String("host", true));
  if (!HostName(i.host)) return Invalid("host must be an IP address or a host name");
  VMG_ASSIGN_OR_RETURN(int64_t nbd, f.Int("nbd_port", 0, 0, 65535));
  VMG_ASSIGN_OR_RETURN(int64_t mig, f.Int("migration_port", 0, 0, 65535));
  // 0: a cold migration's target, which takes the disks only.
  if (!j.contains("migration_port") || (mig == 0 && nbd == 0))
    return Invalid("field 'migration_port' is required");
  i.nbd_port = static_cast<int>(nbd);
  i.migration_port = static_cast<int>(mig);
  VMG_ASSIGN_OR_RETURN(std::string first, f.String("nbd_export", false));
  if (!NameChars(first, 64)) return Invalid("nbd_export must match [A-Za-z0-9._-]{0,64}");
  if (j.contains("nbd_exports")) {
    const json& list = j["nbd_exports"];
    if (!list.is_array() || list.size() > 8)
      return Invalid("nbd_exports must be an array of at most 8 names");
    for (const json& e : list) {
      if (!e.is_string() || e.get<std::string>().empty() || !NameChars(e.get<std::string>(), 64))
        return Invalid("each of nbd_exports must match [A-Za-z0-9._-]{1,64}");
      if (std::find(i.nbd_exports.begin(), i.nbd_exports.end(), e.get<std::string>()) !=
          i.nbd_exports.end())
        return Invalid("nbd_exports names " + e.get<std::string>() + " twice");
      i.nbd_exports.push_back(e.get<std::string>());
    }
    if (!first.empty() && (i.nbd_exports.empty() || i.nbd_exports.front() != first))
      return Invalid("nbd_export must be the first of nbd_exports");
  } else if (!first.empty()) {
    i.nbd_exports.push_back(first);
  }
  if ((i.nbd_port == 0) != i.nbd_exports.empty())
    return Invalid("nbd_port and nbd_exports go together");
  return i;
}

json ToJson(const MigrateOutRequest& r) {
  return {{"target", ToJson(r.target)},
          {"credential", ToJson(r.credential)},
          {"max_bandwidth", r.max_bandwidth}};
}

Result<MigrateOutRequest> MigrateOutRequestFromJson(const json& j) {
  VMG_RETURN_IF_ERROR(NeedObject(j, "a migrate-out request"));
  JsonFields f(j, {"target", "credential", "max_bandwidth"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  MigrateOutRequest r;
  VMG_ASSIGN_OR_RETURN(const json* target, Object(j, "target"));
  VMG_ASSIGN_OR_RETURN(r.target, IncomingInfoFromJson(*target));
  VMG_ASSIGN_OR_RETURN(const json* cred, Object(j, "credential"));
  VMG_ASSIGN_OR_RETURN(r.credential, MigrationCredentialFromJson(*cred));
  VMG_ASSIGN_OR_RETURN(r.max_bandwidth, f.Int("max_bandwidth", 0, 0, kMaxInt));
  return r;
}

json ToJson(const MigrationResult& r) {
  json forwards = json::array();
  for (const ForwardInfo& f : r.forwards) forwards.push_back(ToJson(f));
  return {{"total_ms", r.total_ms},           {"mirror_ms", r.mirror_ms},
          {"qemu_total_ms", r.qemu_total_ms}, {"downtime_ms", r.downtime_ms},
          {"ram_bytes", r.ram_bytes},         {"disk_bytes", r.disk_bytes},
          {"forwards", std::move(forwards)}};
}

Result<MigrationResult> MigrationResultFromJson(const json& j) {
  VMG_RETURN_IF_ERROR(NeedObject(j, "a migration result"));
  JsonFields f(j, {"total_ms", "mirror_ms", "qemu_total_ms", "downtime_ms", "ram_bytes",
                   "disk_bytes", "forwards"});
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  MigrationResult r;
  VMG_ASSIGN_OR_RETURN(r.total_ms, f.Int("total_ms", 0, 0, kMaxInt));
  VMG_ASSIGN_OR_RETURN(r.mirror_ms, f.Int("mirror_ms", 0, 0, kMaxInt));
  VMG_ASSIGN_OR_RETURN(r.qemu_total_ms, f.Int("qemu_total_ms", 0, 0, kMaxInt));
  VMG_ASSIGN_OR_RETURN(r.downtime_ms, f.Int("downtime_ms", 0, 0, kMaxInt));
  VMG_ASSIGN_OR_RETURN(r.ram_bytes, f.Int("ram_bytes", 0, 0, kMaxInt));
  VMG_ASSIGN_OR_RETURN(r.disk_bytes, f.Int("disk_bytes", 0, 0, kMaxInt));
  if (j.contains("forwards")) {
    const json& list = j["forwards"];
    if (!list.is_array() || list.size() > 64)
      return Invalid("forwards must be an array of at most 64 forwards");
    for (const json& e : list) {
      auto fw = ForwardInfoFromJson(e);
      if (!fw.ok()) return fw.error().Wrap("forwards");
      r.forwards.push_back(*fw);
    }
  }
  return r;
}

}  // namespace vmgrid
