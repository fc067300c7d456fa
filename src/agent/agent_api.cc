#include "agent/agent_api.h"

#include <httplib.h>

#include <optional>

#include "agent/vm_runner.h"
#include "common/http_json.h"

namespace vmgrid {

namespace {

using Req = httplib::Request;
using Res = httplib::Response;
using nlohmann::json;

std::optional<json> Body(const Req& req, Res& res) {
  auto j = ParseJsonObject(req.body);
  if (!j.ok()) {
    SendError(res, j.error());
    return std::nullopt;
  }
  return *j;
}

void Reply(Res& res, const Result<VmStatus>& r) {
  if (!r.ok()) return SendError(res, r.error());
  SendJson(res, 200, ToJson(*r));
}

void ReplyStatus(Res& res, const Status& st) {
  if (!st.ok()) return SendError(res, st.error());
  SendJson(res, 204, nullptr);
}

}  // namespace

Status CheckWorkspaceName(const std::string& rel) {
  if (rel.empty() || rel[0] == '/' || rel.find("..") != std::string::npos)
    return MakeError(ErrorCode::kInvalidArgument, "bad workspace path '" + rel + "'");
  return Status::Ok();
}

void InstallAgentApi(httplib::Server& s, const std::string& prefix, int prefix_groups,
                     AgentHostResolver resolve) {
  const std::string base = prefix + "/agent/v1";
  const size_t id = static_cast<size_t>(prefix_groups) + 1;  // the VM id's capture

  s.Get(base + "/status", [=](const Req& req, Res& res) {
    if (AgentHost* h = resolve(req, res)) SendJson(res, 200, ToJson(h->Report()));
  });
  s.Post(base + "/vms", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    auto j = Body(req, res);
    if (!j) return;
    auto spec = VmSpecFromJson(*j);
    if (!spec.ok()) return SendError(res, spec.error());
    if (spec->disk_mode == "persistent")
      if (Status st = CheckWorkspaceName(spec->workspace_path); !st.ok())
        return SendError(res, st.error());
    if (Status st = h->PrepareSpec(*spec); !st.ok()) return SendError(res, st.error());
    Reply(res, h->driver().Create(*spec));
  });
  s.Post(base + R"(/vms/([^/]+)/(stop|resume))", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    const std::string vm = req.matches[id];
    Reply(res, req.matches[id + 1] == "stop" ? h->driver().Stop(vm) : h->driver().Resume(vm));
  });
  s.Post(base + R"(/vms/([^/]+)/checkpoint)", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    auto j = Body(req, res);
    if (!j) return;
    JsonFields f(*j, {"leave_running"});
    auto leave = f.Bool("leave_running", false);
    if (!leave.ok()) return SendError(res, leave.error());
    Reply(res, h->driver().Checkpoint(req.matches[id], *leave));
  });
  s.Get(base + R"(/vms/([^/]+)/checkpoint)", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    if (req.get_param_value("publish") == "true") {
      auto r = h->driver().PublishCheckpoint(req.matches[id]);
      if (!r.ok()) return SendError(res, r.error());
      return SendJson(res, 200, ToJson(*r));
    }
    auto dir = h->driver().CheckpointDir(req.matches[id]);
    if (!dir.ok()) return SendError(res, dir.error());
    SendJson(res, 200, ToJson(CheckpointRef{*dir, {}, {}}));
  });
  // A read-write data attachment pushed as its dataset's next version
  // (agent/guest_data.h); body {name}: the blob name of a new dataset.
  s.Post(base + R"(/vms/([^/]+)/data/([0-9])/commit)", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    auto j = Body(req, res);
    if (!j) return;
    JsonFields f(*j, {"name"});
    if (Status st = f.CheckUnknown(); !st.ok()) return SendError(res, st.error());
    auto name = f.String("name", false);
    if (!name.ok()) return SendError(res, name.error());
    auto r = h->driver().CommitData(req.matches[id], std::stoul(req.matches[id + 1].str()), *name);
    if (!r.ok()) return SendError(res, r.error());
    SendJson(res, 200, ToJson(*r));
  });
  s.Post(base + R"(/vms/([^/]+)/exec)", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    auto j = Body(req, res);
    if (!j) return;
    JsonFields f(*j, {"argv", "input", "timeout_s"});
    auto argv = f.StringList("argv", true, 256);
    auto input = f.String("input", false);
    auto timeout_s = f.Int("timeout_s", 60, 1, 3600);
    if (!argv.ok()) return SendError(res, argv.error());
    if (!input.ok()) return SendError(res, input.error());
    if (!timeout_s.ok()) return SendError(res, timeout_s.error());
    auto r = h->driver().Exec(req.matches[id], *argv, *input, std::chrono::seconds(*timeout_s));
    if (!r.ok()) return SendError(res, r.error());
    SendJson(res, 200, {{"exit_code", r->exit_code}, {"stdout", r->out}, {"stderr", r->err}});
  });
  // The serial console log (proto/console_log.h): ?offset=N (absent: the
  // tail) &max_bytes=M.
  s.Get(base + R"(/vms/([^/]+)/console)", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    if (Status st = CheckQueryParams(req, {"offset", "max_bytes"}); !st.ok())
      return SendError(res, st.error());
    auto offset = IntQueryParam(req, "offset", -1, 0, INT64_MAX / 2);
    auto max = IntQueryParam(req, "max_bytes", kConsoleReadDefaultBytes, 1, kConsoleReadMaxBytes);
    if (!offset.ok()) return SendError(res, offset.error());
    if (!max.ok()) return SendError(res, max.error());
    auto r = h->driver().ReadConsole(req.matches[id], *offset, *max);
    if (!r.ok()) return SendError(res, r.error());
    SendJson(res, 200, ToJson(*r));
  });
  // `vm cp` (proto/guest_file.h): one chunk of a file inside the guest. The
  // path is the guest's and goes to its guest agent only.
  s.Post(base + R"(/vms/([^/]+)/files/(read|write))", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    auto j = Body(req, res);
    if (!j) return;
    if (req.matches[id + 1] == "read") {
      auto request = GuestFileReadFromJson(*j);
      if (!request.ok()) return SendError(res, request.error());
      auto r = h->driver().ReadGuestFile(req.matches[id], *request);
      if (!r.ok()) return SendError(res, r.error());
      return SendJson(res, 200, ToJson(*r));
    }
    auto request = GuestFileWriteFromJson(*j);
    if (!request.ok()) return SendError(res, request.error());
    auto r = h->driver().WriteGuestFile(req.matches[id], *request);
    if (!r.ok()) return SendError(res, r.error());
    SendJson(res, 200, ToJson(*r));
  });
  s.Post(base + R"(/vms/([^/]+)/forwards)", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    auto j = Body(req, res);
    if (!j) return;
    auto request = ForwardRequestFromJson(*j);
    if (!request.ok()) return SendError(res, request.error());
    auto r = h->driver().AddForward(req.matches[id], *request);
    if (!r.ok()) return SendError(res, r.error());
    SendJson(res, 200, ToJson(*r));
  });
  s.Delete(base + R"(/vms/([^/]+)/forwards/([0-9]{1,5}))", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    ReplyStatus(res, h->driver().RemoveForward(req.matches[id], std::stoi(req.matches[id + 1])));
  });
  // Live migration (proto/migration.h, docs/migration.md).
  s.Post(base + "/migrations/incoming", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    auto j = Body(req, res);
    if (!j) return;
    auto request = IncomingRequestFromJson(*j);
    if (!request.ok()) return SendError(res, request.error());
    if (request->spec.disk_mode == "persistent")
      if (Status st = CheckWorkspaceName(request->spec.workspace_path); !st.ok())
        return SendError(res, st.error());
    if (Status st = h->PrepareSpec(request->spec); !st.ok()) return SendError(res, st.error());
    auto r = h->driver().PrepareIncoming(*request);
    if (!r.ok()) return SendError(res, r.error());
    SendJson(res, 200, ToJson(*r));
  });
  s.Post(base + R"(/vms/([^/]+)/migrate-out)", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    auto j = Body(req, res);
    if (!j) return;
    auto request = MigrateOutRequestFromJson(*j);
    if (!request.ok()) return SendError(res, request.error());
    auto r = h->driver().MigrateOut(req.matches[id], *request);
    if (!r.ok()) return SendError(res, r.error());
    SendJson(res, 200, ToJson(*r));
  });
  s.Post(base + R"(/vms/([^/]+)/(finish-incoming|abort-incoming))", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    const std::string vm = req.matches[id];
    if (req.matches[id + 1] == "finish-incoming") return Reply(res, h->driver().FinishIncoming(vm));
    ReplyStatus(res, h->driver().AbortIncoming(vm));
  });
  s.Post(base + R"(/vms/([^/]+)/confirm-migrate-out)", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    auto j = Body(req, res);
    if (!j) return;
    JsonFields f(*j, {"migrated"});
    if (Status st = f.CheckUnknown(); !st.ok()) return SendError(res, st.error());
    if (!j->contains("migrated"))
      return SendError(res, MakeError(ErrorCode::kInvalidArgument, "field 'migrated' is required"));
    auto migrated = f.Bool("migrated", false);
    if (!migrated.ok()) return SendError(res, migrated.error());
    ReplyStatus(res, h->driver().ConfirmMigrateOut(req.matches[id], *migrated));
  });
  s.Delete(base + R"(/vms/([^/]+))", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    ReplyStatus(res, h->driver().Destroy(req.matches[id],
                                         req.get_param_value("purge_workspace") == "true"));
  });
  s.Post(base + "/image-checkpoints", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    auto j = Body(req, res);
    if (!j) return;
    auto request = ImageCheckpointRequestFromJson(*j);
    if (!request.ok()) return SendError(res, request.error());
    VmSpec spec;
    spec.id = spec.name = "image-checkpoint";
    spec.image = request->image;
    spec.blobs = request->blobs;
    if (Status st = h->PrepareSpec(spec); !st.ok()) return SendError(res, st.error());
    auto r = h->ImageCheckpoint(spec, *request);
    if (!r.ok()) return SendError(res, r.error());
    SendJson(res, 200, ToJson(*r));
  });
  s.Delete(base + "/workspaces", [=](const Req& req, Res& res) {
    AgentHost* h = resolve(req, res);
    if (!h) return;
    const std::string rel = req.get_param_value("path");
    if (Status st = CheckWorkspaceName(rel); !st.ok()) return SendError(res, st.error());
    auto file = h->WorkspaceFile(rel);
    if (!file.ok()) return SendError(res, file.error());
    ReplyStatus(res, h->driver().DeleteWorkspace(*file));
  });
}

}  // namespace vmgrid
