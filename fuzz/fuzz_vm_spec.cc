// fuzz_vm_spec: the agent's parsing of the VM spec the controller POSTs to
// /agent/v1/vms (ParseJsonObject, then VmSpecFromJson), and of spec.json read
// back by VmRunner::Recover (json::parse without exceptions, any JSON type).
// Oracles: an accepted spec satisfies the documented constraints, survives
// ToJson -> dump -> parse -> VmSpecFromJson unchanged, and its integer fields
// hold the values that were sent (no silent narrowing).
#include <cstdint>
#include <string>

#include "agent/vm_runner.h"
#include "common/http_json.h"
#include "fuzz_common.h"

namespace {

using nlohmann::json;
using vmgrid::VmSpec;

bool Same(const VmSpec& a, const VmSpec& b) {
  return a.id == b.id && a.name == b.name && a.owner_id == b.owner_id && a.vcpus == b.vcpus &&
         a.memory_mb == b.memory_mb && a.disk_mode == b.disk_mode && a.image.id == b.image.id &&
         a.image.disk == b.image.disk && a.image.format == b.image.format &&
         a.image.kernel == b.image.kernel && a.image.initrd == b.image.initrd &&
         a.image.append == b.image.append && a.workspace_path == b.workspace_path &&
         a.start == b.start && a.checkpoint_dir == b.checkpoint_dir;
}

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
  FUZZ_CHECK(Same(s, *again), text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string body(reinterpret_cast<const char*>(data), size);

  // POST /agent/v1/vms
  auto j = vmgrid::ParseJsonObject(body);
  if (j.ok()) CheckSpec(*j);

  // VmRunner::Recover: spec.json of any shape (discarded values included).
  json any = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.ok()) CheckSpec(any);
  return 0;
}
