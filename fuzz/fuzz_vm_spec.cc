// fuzz_vm_spec: the controller<->agent protocol's parsers (src/proto), fed
// what crosses the process boundary. The input is one JSON document, parsed
// as the VM spec the controller POSTs to /agent/v1/vms (ParseJsonObject,
// then VmSpecFromJson) and as spec.json read back by VmRunner::Recover
// (json::parse without exceptions, any JSON type); the same document is then
// parsed as every other protocol type: a host report (heartbeat), the
// heartbeat answer with its network plan, a list of NICs, a VM
// status, an image checkpoint request and result, a checkpoint reference,
// the live-migration messages (incoming request and info, migrate-out
// request, migration result), and its string values as future ids and export names.
// Oracles: an accepted value satisfies the documented constraints, survives
// ToJson -> dump -> parse -> FromJson unchanged, and its integer fields hold
// the values that were sent (no silent narrowing).
#include <cstdint>
#include <string>

#include "agent/console_log.h"
#include "common/http_json.h"
#include "fuzz_common.h"
#include "proto/blob_ref.h"
#include "proto/checkpoint_ref.h"
#include "proto/console_log.h"
#include "proto/data_attachment.h"
#include "proto/future_id.h"
#include "proto/guest_file.h"
#include "proto/host_report.h"
#include "proto/migration.h"
#include "proto/network_plan.h"
#include "proto/vm_spec.h"
#include "proto/vm_status.h"

namespace {

using nlohmann::json;
using vmgrid::VmSpec;

json Wire(const json& j) { return json::parse(j.dump(), nullptr, false); }

// An accepted integer field must hold exactly the integer that was sent.
void CheckSentInteger(const json& j, const char* key, int64_t got) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return;
  bool same = it->is_number_unsigned()
                  ? it->get<uint64_t>() == static_cast<uint64_t>(got) && got >= 0
                  : it->get<int64_t>() == got;
  FUZZ_CHECK(same, std::string(key) + ": sent " + it->dump() + ", parsed " + std::to_string(got));
}

void CheckSpec(const json& j) {
  auto spec = vmgrid::VmSpecFromJson(j);
  if (!spec.ok()) {
    FUZZ_CHECK(!spec.error().message.empty(), "error without message");
    return;
  }
  const VmSpec& s = *spec;
  FUZZ_CHECK(!s.id.empty() && s.id.find('/') == std::string::npos && s.id[0] != '.', s.id);
  FUZZ_CHECK(s.vcpus >= 1 && s.vcpus <= 64, std::to_string(s.vcpus));
  FUZZ_CHECK(s.memory_mb >= 32 && s.memory_mb <= (1 << 20), std::to_string(s.memory_mb));
  FUZZ_CHECK(s.disk_mode == "clone" || s.disk_mode == "persistent", s.disk_mode);
  FUZZ_CHECK(s.start == "boot" || s.start == "resume", s.start);
  CheckSentInteger(j, "vcpus", s.vcpus);
  CheckSentInteger(j, "memory_mb", s.memory_mb);

  // The agent persists the spec (spec.json) and reads it back on restart.
  std::string text = vmgrid::ToJson(s).dump(2);
  auto again = vmgrid::VmSpecFromJson(json::parse(text, nullptr, false));
  FUZZ_CHECK(again.ok(), text);
  FUZZ_CHECK(s == *again, text);
}

// Every other protocol type: accepted values round-trip.
void CheckOthers(const json& j) {
  if (auto r = vmgrid::HostReportFromJson(j); r.ok()) {
    FUZZ_CHECK(r->report.capacity.disk_free_bytes <= r->report.capacity.disk_total_bytes, j.dump());
    FUZZ_CHECK(r->report.vms_same_as.empty() ||
                   (r->report.vms.empty() && vmgrid::ValidVmsDigest(r->report.vms_same_as)),
               j.dump());
    auto again = vmgrid::HostReportFromJson(Wire(vmgrid::ToJson(r->report)));
    FUZZ_CHECK(again.ok() && again->report == r->report && again->dropped_vms == 0, j.dump());
  }
  if (auto h = vmgrid::HeartbeatReplyFromJson(j); h.ok()) {
    FUZZ_CHECK(h->vms_digest.empty() || vmgrid::ValidVmsDigest(h->vms_digest), j.dump());
    auto again = vmgrid::HeartbeatReplyFromJson(Wire(vmgrid::ToJson(*h)));
    FUZZ_CHECK(again.ok() && again->vms_digest == h->vms_digest, j.dump());
  }
  if (auto h = vmgrid::HeartbeatReplyFromJson(j); h.ok() && h->networks) {
    for (const auto& n : h->networks->networks)
      FUZZ_CHECK(n.vni > 0 && n.vni < (1u << 24), j.dump());
    auto again = vmgrid::HeartbeatReplyFromJson(Wire(vmgrid::ToJson(*h)));
    FUZZ_CHECK(again.ok() && again->networks == h->networks, j.dump());
  }
  if (auto n = vmgrid::NicSpecsFromJson(j); n.ok()) {
    FUZZ_CHECK(n->size() <= 8, j.dump());
    for (size_t i = 0; i < n->size(); ++i)
      FUZZ_CHECK((*n)[i].index == static_cast<int>(i), j.dump());
  }
  if (auto s = vmgrid::VmStatusFromJson(j); s.ok()) {
    auto again = vmgrid::VmStatusFromJson(Wire(vmgrid::ToJson(*s)));
    FUZZ_CHECK(again.ok() && *again == *s, j.dump());
  }
  if (auto q = vmgrid::ImageCheckpointRequestFromJson(j); q.ok()) {
    FUZZ_CHECK(!q->push_as.empty() || (!q->target_dir.empty() && q->target_dir[0] == '/'),
               j.dump());
    auto again = vmgrid::ImageCheckpointRequestFromJson(Wire(vmgrid::ToJson(*q)));
    FUZZ_CHECK(again.ok() && *again == *q, j.dump());
  }
  for (bool pushed : {false, true}) {
    if (auto r = vmgrid::ImageCheckpointResultFromJson(j, pushed); r.ok() && pushed) {
      auto again = vmgrid::ImageCheckpointResultFromJson(Wire(vmgrid::ToJson(*r)), true);
      FUZZ_CHECK(again.ok() && again->memory == r->memory && again->disk == r->disk, j.dump());
    }
    if (auto c = vmgrid::CheckpointRefFromJson(j, pushed); c.ok()) {
      FUZZ_CHECK(!pushed || c->published(), j.dump());
      auto again = vmgrid::CheckpointRefFromJson(Wire(vmgrid::ToJson(*c)), pushed);
      FUZZ_CHECK(again.ok() && *again == *c, j.dump());
    }
  }
  if (auto m = vmgrid::IncomingRequestFromJson(j); m.ok()) {
    FUZZ_CHECK(m->credential.key_hex.size() == 64 && !m->listen_host.empty(), j.dump());
    auto again = vmgrid::IncomingRequestFromJson(Wire(vmgrid::ToJson(*m)));
    FUZZ_CHECK(again.ok() && *again == *m, j.dump());
  }
  if (auto m = vmgrid::IncomingInfoFromJson(j); m.ok()) {
    // 0: a cold migration's target (disks only).
    FUZZ_CHECK(m->migration_port >= 0 && m->migration_port <= 65535, j.dump());
    FUZZ_CHECK(m->migration_port > 0 || m->nbd_port > 0, j.dump());
    FUZZ_CHECK((m->nbd_port == 0) == m->nbd_exports.empty(), j.dump());
    FUZZ_CHECK(m->nbd_exports.size() <= 8, j.dump());
    CheckSentInteger(j, "nbd_port", m->nbd_port);
    CheckSentInteger(j, "migration_port", m->migration_port);
    auto again = vmgrid::IncomingInfoFromJson(Wire(vmgrid::ToJson(*m)));
    FUZZ_CHECK(again.ok() && *again == *m, j.dump());
  }
  if (auto m = vmgrid::MigrateOutRequestFromJson(j); m.ok()) {
    CheckSentInteger(j, "max_bandwidth", m->max_bandwidth);
    auto again = vmgrid::MigrateOutRequestFromJson(Wire(vmgrid::ToJson(*m)));
    FUZZ_CHECK(again.ok() && *again == *m, j.dump());
  }
  if (auto m = vmgrid::MigrationResultFromJson(j); m.ok()) {
    FUZZ_CHECK(m->total_ms >= 0 && m->downtime_ms >= 0 && m->ram_bytes >= 0 && m->disk_bytes >= 0,
               j.dump());
    CheckSentInteger(j, "total_ms", m->total_ms);
    CheckSentInteger(j, "ram_bytes", m->ram_bytes);
    auto again = vmgrid::MigrationResultFromJson(Wire(vmgrid::ToJson(*m)));
    FUZZ_CHECK(again.ok() && *again == *m, j.dump());
  }
  // vm cp chunks (POST /agent/v1/vms/ID/files/read|write).
  if (auto r = vmgrid::GuestFileReadFromJson(j); r.ok()) {
    FUZZ_CHECK(vmgrid::CheckGuestPath(r->path).ok() && r->length >= 1 &&
                   r->length <= vmgrid::kMaxGuestFileChunk,
               j.dump());
    auto again = vmgrid::GuestFileReadFromJson(Wire(vmgrid::ToJson(*r)));
    FUZZ_CHECK(again.ok() && *again == *r, j.dump());
  }
  if (auto w = vmgrid::GuestFileWriteFromJson(j); w.ok()) {
    FUZZ_CHECK(vmgrid::CheckGuestPath(w->path).ok() &&
                   static_cast<int64_t>(w->data.size()) <= vmgrid::kMaxGuestFileChunk &&
                   w->offset + static_cast<int64_t>(w->data.size()) <= vmgrid::kMaxGuestCopyBytes,
               j.dump());
    auto again = vmgrid::GuestFileWriteFromJson(Wire(vmgrid::ToJson(*w)));
    FUZZ_CHECK(again.ok() && *again == *w, j.dump());
  }
  if (auto c = vmgrid::GuestFileChunkFromJson(j); c.ok()) {
    auto again = vmgrid::GuestFileChunkFromJson(Wire(vmgrid::ToJson(*c)));
    FUZZ_CHECK(again.ok() && *again == *c, j.dump());
  }
  // The serial console log (GET /agent/v1/vms/ID/console).
  if (auto l = vmgrid::ConsoleLogFromJson(j); l.ok()) {
    FUZZ_CHECK(l->offset <= l->next_offset && l->next_offset <= l->size, j.dump());
    auto again = vmgrid::ConsoleLogFromJson(Wire(vmgrid::ToJson(*l)));
    FUZZ_CHECK(again.ok() && *again == *l, j.dump());
  }
  if (!j.is_object()) return;
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string()) continue;
    const std::string& text = value.get_ref<const std::string&>();
    // A guest's console bytes become printable UTF-8 (JSON can carry them)
    // with no control byte but newline and tab.
    const std::string shown = vmgrid::PrintableConsoleText(text);
    FUZZ_CHECK(vmgrid::PrintableConsoleText(shown) == shown, text);
    for (char ch : shown)
      FUZZ_CHECK(static_cast<unsigned char>(ch) >= 0x20 || ch == '\n' || ch == '\t', text);
    (void)nlohmann::json(shown).dump();  // throws (a crash) on invalid UTF-8
    if (auto f = vmgrid::ParseFutureId(text); f.ok()) {
      auto again = vmgrid::ParseFutureId(f->ToString());
      FUZZ_CHECK(again.ok() && *again == *f, text);
    }
    if (auto e = vmgrid::ParseExportRef(text)) FUZZ_CHECK(e->Name() == text, text);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string body(reinterpret_cast<const char*>(data), size);

  // POST /agent/v1/vms
  auto j = vmgrid::ParseJsonObject(body);
  if (j.ok()) {
    CheckSpec(*j);
    CheckOthers(*j);
  }

  // VmRunner::Recover: spec.json of any shape (discarded values included).
  json any = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.ok()) CheckSpec(any);

  // The CLI's --data / --new-data arguments (proto/data_attachment.h): a
  // parsed one names a valid mount point, and the agent's codec takes it.
  for (auto parse : {vmgrid::ParseDataArgument, vmgrid::ParseNewDataArgument}) {
    auto arg = parse(body);
    if (!arg.ok()) continue;
    const std::string mount = (*arg)["mount"].get<std::string>();
    FUZZ_CHECK(vmgrid::ValidateGuestMountPoint(mount).ok(), body);
  }
  return 0;
}
