// fuzz_http_json: the controller's REST body validation. The input is a
// request body; it goes through ParseJsonObject and then through the
// JsonFields calls of every controller handler (same field lists, ranges and
// defaults as src/api/controller.cc; keep them in step when a handler
// changes), and every error through SendError.
// Also BearerToken/ConstantTimeEquals on the input as an Authorization header.
#include <cstdint>
#include <initializer_list>
#include <string>

#include "common/http_json.h"
#include "fuzz_common.h"

namespace {

using nlohmann::json;
using vmgrid::Error;
using vmgrid::JsonFields;
using vmgrid::Result;
using vmgrid::Status;

// Error replies must always be valid JSON with a 4xx/5xx status.
void CheckErrorReply(const Error& e) {
  httplib::Response res;
  vmgrid::SendError(res, e);
  FUZZ_CHECK(res.status >= 400 && res.status <= 599, std::to_string(res.status));
  json reply = json::parse(res.body, nullptr, false);
  FUZZ_CHECK(reply.is_object() && reply.contains("error") && reply["error"].is_object() &&
                 reply["error"].value("message", json()).is_string(),
             res.body);
}

template <typename T>
bool Check(const Result<T>& r) {
  if (!r.ok()) CheckErrorReply(r.error());
  return r.ok();
}
void Check(const Status& st) {
  if (!st.ok()) CheckErrorReply(st.error());
}

bool Present(const json& obj, const char* name) {
  auto it = obj.find(name);
  return it != obj.end() && !it->is_null();
}

void CheckString(const json& obj, const char* name, bool required) {
  JsonFields f(obj, {name});
  auto r = f.String(name, required, "dflt");
  if (!Check(r)) return;
  if (Present(obj, name)) {
    FUZZ_CHECK(obj.at(name).is_string() && obj.at(name).get<std::string>() == *r, name);
    // Names and free text are echoed back in replies.
    httplib::Response res;
    vmgrid::SendJson(res, 200, {{"value", *r}});
    FUZZ_CHECK(json::parse(res.body, nullptr, false).is_object(), res.body);
    Check(vmgrid::ValidateName("fuzz", *r));
  } else {
    FUZZ_CHECK(!required && *r == "dflt", name);
  }
}

void CheckInt(const JsonFields& f, const json& obj, const char* name, int64_t def, int64_t min,
              int64_t max) {
  auto r = f.Int(name, def, min, max);
  if (!Check(r)) return;
  if (Present(obj, name)) {
    FUZZ_CHECK(*r >= min && *r <= max, std::string(name) + "=" + std::to_string(*r));
    FUZZ_CHECK(obj.at(name).is_number_integer(), name);
  } else {
    FUZZ_CHECK(*r == def, name);
  }
}

void CheckBool(const JsonFields& f, const json& obj, const char* name, bool def) {
  auto r = f.Bool(name, def);
  if (!Check(r)) return;
  FUZZ_CHECK(Present(obj, name) ? obj.at(name).get<bool>() == *r : *r == def, name);
}

void CheckEnum(const JsonFields& f, const char* name, std::initializer_list<const char*> choices,
               const std::string& def) {
  auto r = f.Enum(name, choices, def);
  if (!Check(r)) return;
  bool member = false;
  for (const char* c : choices) member |= *r == c;
  FUZZ_CHECK(member, *r);
}

void CheckStringList(const JsonFields& f, const char* name, bool required, size_t max_items) {
  auto r = f.StringList(name, required, max_items);
  if (!Check(r)) return;
  FUZZ_CHECK(r->size() <= max_items, name);
}

// The handlers' field lists, in the order the controller validates them.
void CreateUser(const json& b) {
  JsonFields f(b, {"name", "role"});
  Check(f.CheckUnknown());
  CheckString(b, "name", true);
  CheckEnum(f, "role", {"user", "admin"}, "user");
}

void Heartbeat(const json& b) {
  JsonFields f(b, {"name", "url", "capacity", "vms"});
  CheckString(b, "name", true);
  CheckString(b, "url", true);
  auto cap = b.find("capacity");
  if (cap != b.end() && cap->is_object()) {
    JsonFields cf(*cap, {"vcpus", "memory_mb", "disk_mb", "kvm", "site", "network", "arch"});
    CheckInt(cf, *cap, "vcpus", 0, 0, 4096);
    CheckInt(cf, *cap, "memory_mb", 0, 0, int64_t{1} << 32);
    CheckInt(cf, *cap, "disk_mb", 0, 0, int64_t{1} << 40);
    CheckBool(cf, *cap, "kvm", false);
    for (const char* field : {"site", "network", "arch"}) CheckString(*cap, field, false);
  }
  json vms = b.value("vms", json::array());
  (void)vms.is_array();
}

void CreateImage(const json& b) {
  JsonFields f(b, {"name", "format", "has_kernel", "has_initrd", "append", "min_memory_mb"});
  Check(f.CheckUnknown());
  CheckString(b, "name", true);
  CheckEnum(f, "format", {"raw", "qcow2"}, "raw");
  CheckBool(f, b, "has_kernel", false);
  CheckBool(f, b, "has_initrd", false);
  CheckString(b, "append", false);
  CheckInt(f, b, "min_memory_mb", 64, 16, 1 << 20);
}

void CheckpointImage(const json& b) {
  JsonFields f(b, {"memory_mb", "vcpus"});
  Check(f.CheckUnknown());
  CheckInt(f, b, "memory_mb", 256, 64, 1 << 20);
  CheckInt(f, b, "vcpus", 1, 1, 64);
}

void CreateVm(const json& b) {
  JsonFields f(
      b, {"image", "name", "vcpus", "memory_mb", "disk", "start", "workspace", "from_checkpoint"});
  Check(f.CheckUnknown());
  auto from = f.String("from_checkpoint", false);
  Check(from);
  CheckString(b, "image", from.ok() && from->empty());
  CheckString(b, "name", false);
  CheckEnum(f, "disk", {"clone", "persistent"}, "clone");
  CheckEnum(f, "start", {"boot", "resume"}, from.ok() && !from->empty() ? "resume" : "boot");
  CheckString(b, "workspace", false);
  CheckInt(f, b, "vcpus", 0, 1, 64);
  CheckInt(f, b, "memory_mb", 0, 32, 1 << 20);
}

void VmAction(const json& b) {
  JsonFields f(b, {"leave_running"});
  Check(f.CheckUnknown());
  CheckBool(f, b, "leave_running", false);
}

void ExecVm(const json& b) {
  JsonFields f(b, {"argv", "input", "timeout_s"});
  Check(f.CheckUnknown());
  CheckStringList(f, "argv", true, 256);
  CheckString(b, "input", false);
  CheckInt(f, b, "timeout_s", 60, 1, 3600);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string body(reinterpret_cast<const char*>(data), size);

  // The same bytes as an Authorization header (httplib hands header values
  // out as C strings, so they end at the first NUL).
  httplib::Request req;
  req.headers.emplace("Authorization", body);
  std::string header = body.substr(0, body.find('\0'));
  std::string token = vmgrid::BearerToken(req);
  FUZZ_CHECK(token.empty() || header == "Bearer " + token, token);
  FUZZ_CHECK(vmgrid::ConstantTimeEquals(token, header) == (token == header), token);
  FUZZ_CHECK(vmgrid::ConstantTimeEquals(token, token), token);

  // The same bytes as a list page's cursor and limit (docs/api.md,
  // "Paging"): refused with a 400, or a cursor that encodes back to itself.
  {
    httplib::Request page;
    page.params.emplace("cursor", body);
    page.params.emplace("limit", body);
    auto parsed = vmgrid::PageQueryParams(page);
    if (Check(parsed)) {
      FUZZ_CHECK(parsed->limit >= 1 && parsed->limit <= vmgrid::kMaxPageLimit, body);
      FUZZ_CHECK(vmgrid::EncodeCursor(parsed->after_key, parsed->after_id) == body, body);
    }
    vmgrid::PageRequest cursor;
    if (vmgrid::DecodeCursor(body, cursor).ok()) {
      FUZZ_CHECK(cursor.has_after(), body);
      FUZZ_CHECK(vmgrid::EncodeCursor(cursor.after_key, cursor.after_id) == body, body);
    }
  }

  auto lenient = vmgrid::ParseJsonObject(body, /*allow_empty=*/true);
  auto strict = vmgrid::ParseJsonObject(body, /*allow_empty=*/false);
  bool blank = body.find_first_not_of(" \t\r\n") == std::string::npos;
  if (blank) {
    FUZZ_CHECK(lenient.ok() && lenient->empty() && !strict.ok(), "blank body");
  } else {
    FUZZ_CHECK(lenient.ok() == strict.ok(), "allow_empty changed a non-blank verdict");
  }
  if (!Check(strict)) return 0;
  const json& b = *strict;
  FUZZ_CHECK(b.is_object(), b.type_name());

  CreateUser(b);
  Heartbeat(b);
  CreateImage(b);
  CheckpointImage(b);
  CreateVm(b);
  VmAction(b);
  ExecVm(b);
  return 0;
}
