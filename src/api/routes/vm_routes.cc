#include "api/routes/vm_routes.h"

#include <httplib.h>

#include "api/op_queue.h"
#include "api/routes.h"
#include "api/services/dataset_service.h"
#include "api/services/event_service.h"
#include "api/services/network_service.h"
#include "api/services/vm_create_service.h"
#include "api/services/vm_service.h"
#include "common/http_json.h"
#include "proto/console_log.h"
#include "proto/future_id.h"
#include "proto/guest_file.h"

namespace vmgrid {

using nlohmann::json;
using Req = httplib::Request;

namespace {

// GET /v1/vms/ID?while=STATE without wait: how long it waits at most.
constexpr int64_t kDefaultVmWaitS = 25;

// POST /v1/vms's body: types, ranges and names; what needs the store is
// VmCreateService's.
Result<CreateVmRequest> ParseCreateVm(const std::string& text) {
  VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(text, false));
  JsonFields f(body, request_fields::kCreateVm);
  VMG_RETURN_IF_ERROR(f.CheckUnknown());
  CreateVmRequest r;
  // A future from the information service ("fut-IMAGE-HOST-START") names the
  // image, the host and how to start; realizing it is a create pinned there.
  VMG_ASSIGN_OR_RETURN(r.future, f.String("from_future", false));
  if (!r.future.empty()) {
    if (body.contains("image") || body.contains("from_checkpoint") || body.contains("start"))
      return MakeError(ErrorCode::kInvalidArgument,
                       "from_future already names the image and start; drop image, "
                       "start and from_checkpoint");
    VMG_ASSIGN_OR_RETURN(FutureId fid, ParseFutureId(r.future));
    body["image"] = fid.image_id;
    body["start"] = fid.start;
    r.future_host = fid.host_id;
  }
  auto from = f.String("from_checkpoint", false);
  auto image = f.String("image", from.ok() && from->empty());
  auto name = f.String("name", false);
  auto disk = f.Enum("disk", {"clone", "persistent"}, "clone");
  auto start = f.Enum("start", {"boot", "resume"}, from.ok() && !from->empty() ? "resume" : "boot");
  auto workspace = f.String("workspace", false);
  for (const auto* v : {&from, &image, &name, &disk, &start, &workspace}) VMG_RETURN_IF_ERROR(*v);
  r.from_checkpoint = *from;
  r.image = *image;
  r.name = *name;
  r.disk = *disk;
  r.start = *start;
  r.workspace = *workspace;
  auto vcpus = f.Int("vcpus", 0, 1, 64);
  auto memory = f.Int("memory_mb", 0, 32, 1 << 20);
  VMG_RETURN_IF_ERROR(vcpus);
  VMG_RETURN_IF_ERROR(memory);
  if (body.contains("vcpus") && body["vcpus"].is_null())
    return MakeError(ErrorCode::kInvalidArgument, "field 'vcpus' must be an integer");
  r.vcpus = *vcpus;
  r.memory_mb = *memory;
  r.memory_named = body.contains("memory_mb");
  if (!r.name.empty()) VMG_RETURN_IF_ERROR(ValidateName("VM", r.name));
  VMG_ASSIGN_OR_RETURN(r.network, f.String("network", false, "default"));
  VMG_RETURN_IF_ERROR(ValidateName("network", r.network));
  VMG_ASSIGN_OR_RETURN(r.nets, f.StringList("nets", false, 8));
  VMG_ASSIGN_OR_RETURN(r.policy, f.Enum("policy", {"spread", "pack"}, "spread"));
  VMG_ASSIGN_OR_RETURN(r.restart, f.Enum("restart", {"never", "on-host-failure"}, "never"));
  VMG_ASSIGN_OR_RETURN(r.site, f.String("site", false));
  VMG_ASSIGN_OR_RETURN(r.host_network, f.String("host_network", false));
  for (const auto* v : {&r.site, &r.host_network})
    if (!v->empty()) VMG_RETURN_IF_ERROR(ValidateName("site/network", *v));
  VMG_ASSIGN_OR_RETURN(r.count, f.Int("count", 1, 1, 64));
  if (auto d = body.find("data"); d != body.end()) {
    VMG_ASSIGN_OR_RETURN(r.data, ParseDataRequests(*d));
  }
  // A gang's fields.
  if (body.contains("same")) {
    VMG_ASSIGN_OR_RETURN(r.same, f.String("same", false));
  }
  if (body.contains("total_memory_mb")) {
    const json& t = body["total_memory_mb"];
    if (!t.is_object())
      return MakeError(ErrorCode::kInvalidArgument, "total_memory_mb must be an object {min, max}");
    JsonFields tf(t, request_fields::kTotalMemory);
    VMG_RETURN_IF_ERROR(tf.CheckUnknown());
    TotalMemory total;
    VMG_ASSIGN_OR_RETURN(total.min, tf.Int("min", 0, 0, int64_t{1} << 30));
    VMG_ASSIGN_OR_RETURN(total.max, tf.Int("max", int64_t{1} << 30, 1, int64_t{1} << 30));
    r.total_memory = total;
  }
  return r;
}

}  // namespace

void InstallVmCreateRoutes(RouteInstaller& s, VmCreateService& creates, VmService& vms,
                           NetworkService& networks, EventService& events, VmView view,
                           VmListView list_view) {
  s.Post(
      "/v1/vms",
      [&creates](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(CreateVmRequest r, ParseCreateVm(req.body));
        VMG_ASSIGN_OR_RETURN(json created, creates.Create(c, r));
        return Reply{202, created};
      },
      kUserRoles);
  s.Get(
      "/v1/vms",
      [&vms, list_view](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(PageRequest page, PageQueryParams(req));
        VMG_ASSIGN_OR_RETURN(Page<Vm> list, vms.List(c.owner(), page));
        // {"next":...,"vms":[...]}: the keys in the order json::dump writes them.
        json head = json::object();
        AddNext(head, list.next);
        std::string text = head.dump(-1, ' ', false, json::error_handler_t::replace);
        text.pop_back();  // '}'
        if (text.size() > 1) text += ',';
        text += "\"vms\":" + list_view(list.items) + "}";
        return Reply::Text(200, std::move(text));
      },
      kUserRoles);
  s.Get(R"(/v1/vms/([^/]+))",
        [&vms, &networks, &events, view](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_RETURN_IF_ERROR(CheckQueryParams(req, {"while", "wait"}));
          Vm v;
          if (req.has_param("while")) {
            // A long poll: the VM once it leaves this state (EventService::VmWhenNot).
            VMG_ASSIGN_OR_RETURN(VmState state, ParseVmState(req.get_param_value("while")));
            VMG_ASSIGN_OR_RETURN(int64_t wait_s, IntQueryParam(req, "wait", kDefaultVmWaitS, 0,
                                                               EventService::kMaxWaitMs / 1000));
            VMG_ASSIGN_OR_RETURN(v, events.VmWhenNot(c, req.matches[1], state, wait_s * 1000));
          } else {
            if (req.has_param("wait"))
              return MakeError(ErrorCode::kInvalidArgument, "wait needs while=STATE");
            VMG_ASSIGN_OR_RETURN(v, vms.Get(req.matches[1], c.owner()));
          }
          json vm = view(v);
          VMG_ASSIGN_OR_RETURN(vm["nics"], networks.VmNics(v.id));
          return Reply{200, vm};
        },
        kUserRoles);
}

namespace {

// ?commit=true|false (absent: false).
Result<bool> CommitParam(const Req& req) {
  if (!req.has_param("commit")) return false;
  const std::string v = req.get_param_value("commit");
  if (v != "true" && v != "false")
    return MakeError(ErrorCode::kInvalidArgument, "commit must be true or false");
  return v == "true";
}

}  // namespace

void InstallVmActionRoutes(RouteInstaller& s, VmService& vms, DatasetService& datasets,
                           VmView view) {
  for (const std::string action : {"stop", "checkpoint", "resume"}) {
    s.Post(
        "/v1/vms/([^/]+)/" + action,
        [&vms, &datasets, view, action](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body));
          JsonFields f(body, request_fields::kVmCheckpoint);
          VMG_RETURN_IF_ERROR(f.CheckUnknown());
          VMG_ASSIGN_OR_RETURN(bool leave, f.Bool("leave_running", false));
          if (action != "checkpoint" && body.contains("leave_running"))
            return MakeError(ErrorCode::kInvalidArgument,
                             "leave_running applies to checkpoint only");
          VMG_ASSIGN_OR_RETURN(bool commit, CommitParam(req));
          if (commit && action != "stop")
            return MakeError(ErrorCode::kInvalidArgument, "commit applies to stop and delete");
          const VmOp op = action == "stop" ? VmOp::kStop
                          : action == "checkpoint"
                              ? (leave ? VmOp::kCheckpointLeaveRunning : VmOp::kCheckpoint)
                              : VmOp::kResume;
          if (commit) {
            // An operation while datasets are committed; the VM as below when none is.
            VMG_ASSIGN_OR_RETURN(json answer,
                                 datasets.CommitAllThen(
                                     c, req.matches[1], "stopped",
                                     [&vms, view, owner = c.owner()](const Vm& v) -> Result<json> {
                                       VMG_ASSIGN_OR_RETURN(Vm moved,
                                                            vms.Act(v.id, owner, VmOp::kStop));
                                       return view(moved);
                                     }));
            return Reply{202, answer};
          }
          VMG_ASSIGN_OR_RETURN(Vm moved, vms.Act(req.matches[1], c.owner(), op));
          return Reply{202, view(moved)};
        },
        kUserRoles);
  }
  s.Post(
      "/v1/vms/([^/]+)/forwards",
      [&vms](const Caller& c, const Req& req) -> Result<Reply> {
        VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body));
        VMG_ASSIGN_OR_RETURN(ForwardRequest r, ForwardRequestFromJson(body));
        VMG_ASSIGN_OR_RETURN(json f, vms.Forward(req.matches[1], c.owner(), r));
        return Reply{201, f};
      },
      kUserRoles);
  s.Delete(R"(/v1/vms/([^/]+)/forwards/([^/]+))",
           [&vms](const Caller& c, const Req& req) -> Result<Reply> {
             const std::string port = req.matches[2];
             if (port.empty() || port.size() > 5 ||
                 port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) < 1 ||
                 std::stoi(port) > 65535)
               return MakeError(ErrorCode::kInvalidArgument,
                                "'" + port + "' is not a port (1-65535)");
             VMG_RETURN_IF_ERROR(vms.Unforward(req.matches[1], c.owner(), std::stoi(port)));
             return Reply{204, nullptr};
           },
           kUserRoles);
  s.Delete(R"(/v1/vms/([^/]+))",
           [&vms, &datasets, view](const Caller& c, const Req& req) -> Result<Reply> {
             const bool purge = req.get_param_value("purge_workspace") == "true";
             VMG_ASSIGN_OR_RETURN(bool commit, CommitParam(req));
             if (commit) {
               VMG_ASSIGN_OR_RETURN(
                   json answer,
                   datasets.CommitAllThen(
                       c, req.matches[1], "deleted",
                       [&vms, view, purge, owner = c.owner()](const Vm& v) -> Result<json> {
                         VMG_ASSIGN_OR_RETURN(Vm moved, vms.Delete(v.id, owner, purge));
                         return view(moved);
                       }));
               return Reply{202, answer};
             }
             VMG_ASSIGN_OR_RETURN(Vm moved, vms.Delete(req.matches[1], c.owner(), purge));
             return Reply{202, view(moved)};
           },
           kUserRoles);
}

void InstallExecRoutes(RouteInstaller& s, VmService& vms) {
  s.Post(R"(/v1/vms/([^/]+)/exec)",
         [&vms](const Caller& c, const Req& req) -> Result<Reply> {
           // An unknown VM is 404 whatever the body says.
           VMG_RETURN_IF_ERROR(vms.Get(req.matches[1], c.owner()));
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
           JsonFields f(body, request_fields::kExec);
           VMG_RETURN_IF_ERROR(f.CheckUnknown());
           ExecRequest r;
           VMG_ASSIGN_OR_RETURN(r.argv, f.StringList("argv", true, 256));
           VMG_ASSIGN_OR_RETURN(r.input, f.String("input", false));
           VMG_ASSIGN_OR_RETURN(r.timeout_s, f.Int("timeout_s", 60, 1, 3600));
           VMG_ASSIGN_OR_RETURN(json op, vms.Exec(c, req.matches[1], r));
           return Reply{202, op};
         },
         kUserRoles);
  // The guest's serial console (proto/console_log.h): ?offset=N (absent: the
  // tail) &max_bytes=M.
  s.Get(R"(/v1/vms/([^/]+)/console)",
        [&vms](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_RETURN_IF_ERROR(vms.Get(req.matches[1], c.owner()));
          VMG_RETURN_IF_ERROR(CheckQueryParams(req, {"offset", "max_bytes"}));
          VMG_ASSIGN_OR_RETURN(int64_t offset, IntQueryParam(req, "offset", -1, 0, INT64_MAX / 2));
          VMG_ASSIGN_OR_RETURN(
              int64_t max,
              IntQueryParam(req, "max_bytes", kConsoleReadDefaultBytes, 1, kConsoleReadMaxBytes));
          VMG_ASSIGN_OR_RETURN(ConsoleLog log, vms.Console(c, req.matches[1], offset, max));
          return Reply{200, ToJson(log)};
        },
        kUserRoles);
  // `vm cp`, one chunk per request (proto/guest_file.h); the guest path is
  // only ever handed to the guest's agent.
  s.Post(R"(/v1/vms/([^/]+)/files/read)",
         [&vms](const Caller& c, const Req& req) -> Result<Reply> {
           // An unknown VM is 404 whatever the body says.
           VMG_RETURN_IF_ERROR(vms.Get(req.matches[1], c.owner()));
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
           VMG_ASSIGN_OR_RETURN(GuestFileRead r, GuestFileReadFromJson(body));
           VMG_ASSIGN_OR_RETURN(GuestFileChunk chunk, vms.ReadFile(c, req.matches[1], r));
           return Reply{200, ToJson(chunk)};
         },
         kUserRoles);
  s.Post(R"(/v1/vms/([^/]+)/files/write)",
         [&vms](const Caller& c, const Req& req) -> Result<Reply> {
           VMG_RETURN_IF_ERROR(vms.Get(req.matches[1], c.owner()));
           VMG_ASSIGN_OR_RETURN(json body, ParseJsonObject(req.body, false));
           VMG_ASSIGN_OR_RETURN(GuestFileWrite w, GuestFileWriteFromJson(body));
           VMG_ASSIGN_OR_RETURN(GuestFileWritten done, vms.WriteFile(c, req.matches[1], w));
           return Reply{200, ToJson(done)};
         },
         kUserRoles);
}

void InstallOperationRoutes(RouteInstaller& s, const OpQueue& ops) {
  s.Get(R"(/v1/operations/([^/]+))",
        [&ops](const Caller& c, const Req& req) -> Result<Reply> {
          VMG_ASSIGN_OR_RETURN(json op, ops.Get(req.matches[1], c.user.id, c.admin()));
          return Reply{200, op};
        },
        kUserRoles);
}

}  // namespace vmgrid
