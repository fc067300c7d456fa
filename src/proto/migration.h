// The live-migration part of the controller<->agent protocol
// (docs/migration.md). The controller runs, for one VM:
//   target agent: POST /agent/v1/migrations/incoming  IncomingRequest -> IncomingInfo
//   source agent: POST /agent/v1/vms/ID/migrate-out   MigrateOutRequest -> MigrationResult
//   target agent: POST /agent/v1/vms/ID/finish-incoming              -> VmStatus
//   source agent: POST /agent/v1/vms/ID/confirm-migrate-out {"migrated": bool}
// and on failure target .../abort-incoming and source confirm with false.
// The credential is the migration's one-time TLS pre-shared key: the
// controller makes it, sends it to both agents and keeps it nowhere.
// Strict codecs: unknown fields, wrong types and out-of-range values are
// errors. Thread-safe (values and pure functions).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"
#include "proto/network_plan.h"
#include "proto/vm_spec.h"

namespace vmgrid {

struct MigrationCredential {
  std::string identity;  // TLS PSK identity, [A-Za-z0-9._-]{1,64}
  std::string key_hex;   // 64 lowercase hex digits
  bool operator==(const MigrationCredential&) const = default;
};
nlohmann::json ToJson(const MigrationCredential& c);
Result<MigrationCredential> MigrationCredentialFromJson(const nlohmann::json& j);

// Target side: the VM as it was created (same id, NICs, workspace name) and
// where the target's listeners bind (an IP literal of the target host that
// the source can reach).
struct IncomingRequest {
  VmSpec spec;
  MigrationCredential credential;
  std::string listen_host;
  // A cold migration of a stopped VM (docs/migration.md): the target takes
  // its disks only, and stays stopped after FinishIncoming.
  bool cold = false;
  // The source QEMU's generation id (a UUID): the target starts with it, so
  // the guest does not take the migration for a clone (a new vmgenid makes it
  // reseed and tell its services it was forked). "": the target picks one.
  std::string vmgenid = {};
  bool operator==(const IncomingRequest&) const = default;
};
nlohmann::json ToJson(const IncomingRequest& r);
Result<IncomingRequest> IncomingRequestFromJson(const nlohmann::json& j);

// What the source connects to: the target's NBD export of the new disk and
// its migration listener.
struct IncomingInfo {
  std::string host;        // IP literal or host name
  int nbd_port = 0;        // 1..65535; 0 when the VM has no disk
  int migration_port = 0;  // 1..65535; 0 for a cold migration (then nbd_port > 0)
  // The disks exported, each named after its drive ("disk0", "data1", ...;
  // [A-Za-z0-9._-]{1,64}, distinct, at most 8); empty with nbd_port 0. On the
  // wire "nbd_exports", and "nbd_export" (the first) for older sources.
  std::vector<std::string> nbd_exports;
  bool operator==(const IncomingInfo&) const = default;
};
nlohmann::json ToJson(const IncomingInfo& i);
Result<IncomingInfo> IncomingInfoFromJson(const nlohmann::json& j);

struct MigrateOutRequest {
  IncomingInfo target;
  MigrationCredential credential;
  int64_t max_bandwidth = 0;  // bytes/s for RAM; 0 = unthrottled
  bool operator==(const MigrateOutRequest&) const = default;
};
nlohmann::json ToJson(const MigrateOutRequest& r);
Result<MigrateOutRequest> MigrateOutRequestFromJson(const nlohmann::json& j);

// The source's figures (vmm/migration.h MigrationStats); all >= 0.
struct MigrationResult {
  int64_t total_ms = 0;
  int64_t mirror_ms = 0;
  int64_t qemu_total_ms = 0;
  int64_t downtime_ms = 0;
  int64_t ram_bytes = 0;
  int64_t disk_bytes = 0;
  // The source's port forwards of the VM (`vm forward`), which the
  // controller adds again on the target (at most 64).
  std::vector<ForwardInfo> forwards;
  bool operator==(const MigrationResult&) const = default;
};
nlohmann::json ToJson(const MigrationResult& r);
Result<MigrationResult> MigrationResultFromJson(const nlohmann::json& j);

}  // namespace vmgrid
