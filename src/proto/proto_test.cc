// Round trips of every protocol type through its codec, and the strictness
// each parser promises.
#include <gtest/gtest.h>

#include <functional>

#include "proto/blob_ref.h"
#include "proto/checkpoint_ref.h"
#include "proto/data_attachment.h"
#include "proto/future_id.h"
#include "proto/guest_file.h"
#include "proto/host_report.h"
#include "proto/migration.h"
#include "proto/network_plan.h"
#include "proto/vm_spec.h"
#include "proto/vm_status.h"

namespace vmgrid {
namespace {

using nlohmann::json;

BlobRef Blob(const std::string& name, uint64_t version) {
  return {name, version, std::string(64, 'a'), 4096 * version};
}

// Through text, as it crosses a process boundary.
json Wire(const json& j) { return json::parse(j.dump()); }

VmSpec FullSpec() {
  VmSpec s;
  s.id = "vm-1";
  s.name = "web";
  s.owner_id = "user-1";
  s.vcpus = 2;
  s.memory_mb = 512;
  s.disk_mode = "persistent";
  s.image = {"img-1", "/images/img-1/disk.qcow2", "qcow2", "/k", "/i", "console=ttyS0"};
  s.workspace_path = "user-1/ws-1.qcow2";
  s.start = "resume";
  s.checkpoint_dir = "/images/img-1/checkpoint";
  s.blobs = {{"disk", Blob("img-1-disk", 1)},
             {"ckpt_memory", Blob("img-1-ckpt-memory", 2)},
             {"ckpt_disk", Blob("img-1-ckpt-disk", 3)}};
  s.restart = "on-host-failure";
  s.data = {DataDiskSpec{"inputs", "/in", false, Blob("ds-1", 2), 0},
            DataDiskSpec{"out-3", "/out", true, BlobRef{}, 64}};
  return s;
}

TEST(VmSpecTest, RoundTrips) {
  VmSpec s = FullSpec();
  auto back = VmSpecFromJson(Wire(ToJson(s)));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, s);
  VmSpec minimal;
  minimal.id = "vm-2";
  minimal.name = "vm-2";
  minimal.image.disk = "/d";
  minimal.image.format = "raw";
  auto m = VmSpecFromJson(Wire(ToJson(minimal)));
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(*m, minimal);
}

TEST(VmSpecTest, DefaultsAndStrictness) {
  auto s = VmSpecFromJson({{"id", "vm-1"}, {"image", {{"disk", "/d"}}}});
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->name, "vm-1");
  EXPECT_EQ(s->vcpus, 1);
  EXPECT_EQ(s->memory_mb, 256);
  EXPECT_EQ(s->start, "boot");
  EXPECT_EQ(s->image.format, "raw");
  EXPECT_EQ(s->restart, "") << "a spec from before the policy was sent: unknown (fenced)";
  json j = ToJson(FullSpec());
  for (auto [field, value] :
       std::initializer_list<std::pair<const char*, json>>{{"surprise", 1},
                                                           {"vcpus", 65},
                                                           {"vcpus", "2"},
                                                           {"memory_mb", 16},
                                                           {"disk_mode", "shared"},
                                                           {"start", "later"},
                                                           {"restart", "always"},
                                                           {"restart", true},
                                                           {"id", "../x"},
                                                           {"image", "disk"}}) {
    json bad = j;
    bad[field] = value;
    auto r = VmSpecFromJson(bad);
    EXPECT_FALSE(r.ok()) << field << "=" << value.dump();
  }
  json no_ckpt = j;
  no_ckpt["checkpoint_dir"] = "";
  no_ckpt["blobs"] = json::object();
  EXPECT_FALSE(VmSpecFromJson(no_ckpt).ok()) << "a resume needs a checkpoint";
  json no_ws = j;
  no_ws["workspace_path"] = "";
  EXPECT_FALSE(VmSpecFromJson(no_ws).ok()) << "a persistent disk needs a workspace";
  json half = j;
  half["blobs"].erase("ckpt_disk");
  EXPECT_FALSE(VmSpecFromJson(half).ok()) << "checkpoint blobs come in pairs";
}

TEST(VmStatusTest, RoundTripsAndIgnoresNewFields) {
  VmStatus s{"vm-1", "user-1", "web", "running", "", 4242, 2, 512, true, 830, "never"};
  auto back = VmStatusFromJson(Wire(ToJson(s)));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, s);
  json newer = ToJson(s);
  newer["nics"] = json::array();
  EXPECT_TRUE(VmStatusFromJson(newer).ok());
  json bad = ToJson(s);
  bad["vcpus"] = "two";
  EXPECT_FALSE(VmStatusFromJson(bad).ok());
  EXPECT_FALSE(VmStatusFromJson({{"state", "running"}}).ok()) << "an id is required";
  s.vmgenid = "0F8FAD5B-D9CB-469F-A165-70867728950E";
  back = VmStatusFromJson(Wire(ToJson(s)));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->vmgenid, s.vmgenid);
  bad = ToJson(s);
  bad["vmgenid"] = "0F8FAD5B";
  EXPECT_FALSE(VmStatusFromJson(bad).ok());
}

TEST(DurableWorkspaceTest, SpecAndVersionRoundTripStrictly) {
  VmSpec s = FullSpec();
  s.durable = {"ws-0123456789", "vmgw1:ws-0123456789:h1:2:abc", 600};
  s.blobs["workspace"] = Blob("ws-0123456789", 4);
  auto back = VmSpecFromJson(Wire(ToJson(s)));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, s);
  json bad = ToJson(s);
  bad["durable"]["name"] = "img-1-disk";  // not the workspace namespace
  EXPECT_FALSE(VmSpecFromJson(bad).ok());
  bad = ToJson(s);
  bad["durable"]["extra"] = 1;
  EXPECT_FALSE(VmSpecFromJson(bad).ok());

  VmStatus st{"vm-1", "user-1", "web", "stopped", "", 0, 2, 512, false, 0, ""};
  st.durable = {Blob("ws-0123456789", 3), 1700000000000, 256, 2, 1 << 20, "stop"};
  auto sb = VmStatusFromJson(Wire(ToJson(st)));
  ASSERT_TRUE(sb.ok()) << sb.error().message;
  EXPECT_EQ(*sb, st);
  json wrong = ToJson(st);
  wrong["durable"]["trigger"] = "whenever";
  EXPECT_FALSE(VmStatusFromJson(wrong).ok());
  wrong = ToJson(st);
  wrong["durable"]["ref"]["name"] = "img-1-disk";
  EXPECT_FALSE(VmStatusFromJson(wrong).ok());
}

TEST(HostReportTest, RoundTrips) {
  HostReport r;
  r.name = "h1";
  r.url = "https://127.0.0.1:7000";
  r.capacity = {8, 16384, 100000, 1 << 30, 1 << 29, true, "site-1", "net-1", "x86_64"};
  r.vms = {VmStatus{"vm-1", "u", "a", "running", "", 1, 1, 256, false, 10, "on-host-failure"},
           VmStatus{"vm-2", "u", "b", "stopped", "boom", 0, 2, 512, true, 0, ""}};
  r.images = {{"exports", json::array({{{"name", "img-1-disk"}}})}};
  auto back = HostReportFromJson(Wire(ToJson(r)));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->report, r);
  EXPECT_EQ(back->dropped_vms, 0);

  HostReport bare;
  bare.name = "h2";
  bare.url = "http://127.0.0.1:1";
  auto b = HostReportFromJson(Wire(ToJson(bare)));
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_EQ(b->report, bare);
}

TEST(HostReportTest, Strictness) {
  HostReport r;
  r.name = "h1";
  r.url = "http://127.0.0.1:1";
  json j = ToJson(r);
  VmStatus one;
  one.id = "vm-1";
  j["vms"] = json::array({ToJson(one), json{{"state", "running"}}, 7});
  auto dropped = HostReportFromJson(j);
  ASSERT_TRUE(dropped.ok()) << dropped.error().message;
  EXPECT_EQ(dropped->report.vms.size(), 1u);
  EXPECT_EQ(dropped->dropped_vms, 2);
  for (auto [field, value] : std::initializer_list<std::pair<const char*, json>>{
           {"name", "bad name"}, {"capacity", 3}, {"vms", "none"}, {"images", 1}}) {
    json bad = ToJson(r);
    bad[field] = value;
    EXPECT_FALSE(HostReportFromJson(bad).ok()) << field;
  }
  json disk = ToJson(r);
  disk["capacity"]["disk_free_bytes"] = 2;
  disk["capacity"]["disk_total_bytes"] = 1;
  EXPECT_FALSE(HostReportFromJson(disk).ok());
  json site = ToJson(r);
  site["capacity"]["site"] = "a/b";
  EXPECT_FALSE(HostReportFromJson(site).ok());
  auto reply = HeartbeatReplyFromJson(Wire(ToJson(HeartbeatReply{"host-1"})));
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->host_id, "host-1");
  EXPECT_EQ(reply->lease_ms, 0);  // an old controller grants no lease
  EXPECT_TRUE(reply->stale_vms.empty());
  HeartbeatReply leased{"host-1"};
  leased.lease_ms = 15000;
  leased.stale_vms = {"vm-a", "vm-b"};
  auto back = HeartbeatReplyFromJson(Wire(ToJson(leased)));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->lease_ms, 15000);
  EXPECT_EQ(back->stale_vms, leased.stale_vms);
  json bad = ToJson(leased);
  bad["lease_ms"] = -1;
  EXPECT_FALSE(HeartbeatReplyFromJson(bad).ok());
  bad = ToJson(leased);
  bad["stale_vms"] = json::array({1});
  EXPECT_FALSE(HeartbeatReplyFromJson(bad).ok());
}

TEST(HostReportTest, AVmListNamedByItsDigest) {
  HostReport r;
  r.name = "h1";
  r.url = "http://127.0.0.1:1";
  r.vms_same_as = "00ff12ab";
  json wire = Wire(ToJson(r));
  EXPECT_EQ(wire["vms"], json({{"same_as", "00ff12ab"}})) << "never an array an old controller "
                                                             "would read as no VMs";
  auto back = HostReportFromJson(wire);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->report, r);
  EXPECT_TRUE(back->report.vms.empty());
  for (const json& bad : {json{{"same_as", "XYZ"}}, json{{"same_as", ""}}, json{{"same_as", 5}},
                          json::object(), json{{"same_as", "ab"}, {"also", 1}},
                          json{{"same_as", std::string(65, 'a')}}, json{{"same_as", "AB"}}}) {
    json j = wire;
    j["vms"] = bad;
    EXPECT_FALSE(HostReportFromJson(j).ok()) << bad.dump();
  }
  HeartbeatReply reply{"host-1"};
  reply.vms_digest = "0123456789abcdef";
  auto rb = HeartbeatReplyFromJson(Wire(ToJson(reply)));
  ASSERT_TRUE(rb.ok()) << rb.error().message;
  EXPECT_EQ(rb->vms_digest, reply.vms_digest);
  EXPECT_EQ(HeartbeatReplyFromJson(Wire(ToJson(HeartbeatReply{"host-1"})))->vms_digest, "")
      << "a controller that predates it sends none";
  json bad = ToJson(reply);
  bad["vms_digest"] = "not hex";
  EXPECT_FALSE(HeartbeatReplyFromJson(bad).ok());
}

TEST(HostReportTest, VmListAckShortensOnlyTheAcknowledgedList) {
  VmStatus a;
  a.id = "vm-a";
  a.state = "running";
  HostReport r;
  r.vms = {a};
  VmListAck ack;
  EXPECT_FALSE(ack.Shorten(r)) << "nothing acknowledged yet";
  ack.Acknowledged({a}, "abc1");
  HostReport same = r;
  ASSERT_TRUE(ack.Shorten(same));
  EXPECT_TRUE(same.vms.empty());
  EXPECT_EQ(same.vms_same_as, "abc1");
  HostReport changed = r;
  changed.vms[0].state = "paused";
  EXPECT_FALSE(ack.Shorten(changed)) << "a changed list travels in full";
  EXPECT_EQ(changed.vms.size(), 1u);
  EXPECT_TRUE(changed.vms_same_as.empty());
  HostReport none;
  EXPECT_FALSE(ack.Shorten(none)) << "an emptied list is a change too";
  ack.Acknowledged({a}, "");  // an answer without a digest (an older controller)
  HostReport again = r;
  EXPECT_FALSE(ack.Shorten(again));
  ack.Acknowledged({a}, "abc1");
  ack.Forget();
  EXPECT_FALSE(ack.Shorten(again));
  ack.Acknowledged({a}, "NOT-HEX");
  EXPECT_FALSE(ack.Shorten(again)) << "a malformed digest is never sent back";
}

TEST(HostReportTest, VmListAckSendsInFullWhenTheDigestIsRefused) {
  VmStatus a;
  a.id = "vm-a";
  HostReport r;
  r.name = "h1";
  r.vms = {a};
  std::vector<json> sent;
  bool know = true;
  auto post = [&](const json& body) -> Result<json> {
    sent.push_back(body);
    if (body["vms"].is_object() && !know)
      return MakeError(ErrorCode::kFailedPrecondition, "unknown digest");
    return json{{"host_id", "host-1"}, {"vms_digest", "abc1"}};
  };
  VmListAck ack;
  bool named = true, refused = true;
  ASSERT_TRUE(ack.Send(r, post, &named, &refused).ok());
  EXPECT_FALSE(named);
  EXPECT_TRUE(sent.back()["vms"].is_array());
  ASSERT_TRUE(ack.Send(r, post, &named, &refused).ok());
  EXPECT_TRUE(named);
  EXPECT_FALSE(refused);
  EXPECT_EQ(sent.back()["vms"], json({{"same_as", "abc1"}}));
  know = false;  // a restarted controller
  sent.clear();
  ASSERT_TRUE(ack.Send(r, post, &named, &refused).ok());
  EXPECT_TRUE(named);
  EXPECT_TRUE(refused);
  ASSERT_EQ(sent.size(), 2u) << "named, refused, then sent in full at once";
  EXPECT_TRUE(sent[1]["vms"].is_array());
  EXPECT_EQ(sent[1]["vms"].size(), 1u);
}

TEST(FutureIdTest, RoundTripsAndRefusesOthers) {
  FutureId f{"img-0a1b2c3d4e", "host-5f6a7b8c9d", "resume"};
  EXPECT_EQ(f.ToString(), "fut-img-0a1b2c3d4e-host-5f6a7b8c9d-resume");
  auto back = ParseFutureId(f.ToString());
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, f);
  for (const char* bad : {"", "fut-", "img-1-host-2-boot", "fut-img-1-host-2-later",
                          "fut-img-1-host-boot", "fut-host-2-boot"})
    EXPECT_FALSE(ParseFutureId(bad).ok()) << bad;
  EXPECT_EQ(FutureIdSqlExpression("n.id", "h.id", "n.start"),
            "'fut-' || n.id || '-' || h.id || '-' || n.start");
}

TEST(BlobRefTest, ExportNamesAndBlobs) {
  ExportRef e{"img-1", "disk"};
  EXPECT_EQ(e.Name(), "img-1-disk");
  auto back = ParseExportRef(e.Name());
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->image_id, "img-1");
  EXPECT_EQ(back->kind, "disk");
  EXPECT_EQ(ParseExportRef("img-1-kernel")->kind, "kernel");
  EXPECT_FALSE(ParseExportRef("img-1-ckpt-disk").has_value()) << "a checkpoint, not an image";
  EXPECT_FALSE(ParseExportRef("-disk").has_value());
  EXPECT_FALSE(ParseExportRef("img-1-swap").has_value());

  BlobSet set{{"disk", Blob("img-1-disk", 1)}, {"kernel", Blob("img-1-kernel", 2)}};
  auto s = BlobsFromJson(Wire(BlobsJson(set)));
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(*s, set);
  EXPECT_FALSE(BlobsFromJson({{"kernel", ToJson(Blob("k", 1))}}).ok()) << "disk required";
  json bad_digest = ToJson(Blob("img-1-disk", 1));
  bad_digest["digest"] = "ABC";
  EXPECT_FALSE(BlobRefFromJson(bad_digest, "disk").ok());
}

TEST(CheckpointRefTest, RoundTrips) {
  CheckpointRef local{"/state/vms/vm-1/checkpoint", {}, {}};
  auto l = CheckpointRefFromJson(Wire(ToJson(local)), false);
  ASSERT_TRUE(l.ok()) << l.error().message;
  EXPECT_EQ(*l, local);
  EXPECT_FALSE(CheckpointRefFromJson(ToJson(local), true).ok()) << "not published";

  CheckpointRef pub{"/d", Blob(CheckpointBlobStem("vm-1") + "-memory", 1),
                    Blob(CheckpointBlobStem("vm-1") + "-disk", 2)};
  EXPECT_EQ(pub.memory.name, "vm-1-ckpt-memory");
  auto p = CheckpointRefFromJson(Wire(ToJson(pub)), true);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(*p, pub);

  EXPECT_TRUE(IsImageCheckpointVm("ckpt-0a1b2c3d4e"));
  EXPECT_FALSE(IsImageCheckpointVm("vm-0a1b2c3d4e"));
}

TEST(ImageCheckpointTest, RequestAndResultRoundTrip) {
  ImageCheckpointRequest pushed;
  pushed.image = {"img-1", "/images/img-1/disk.raw", "raw", "", "", ""};
  pushed.blobs = {{"disk", Blob("img-1-disk", 1)}};
  pushed.vcpus = 2;
  pushed.memory_mb = 384;
  pushed.push_as = CheckpointBlobStem("img-1");
  auto back = ImageCheckpointRequestFromJson(Wire(ToJson(pushed)));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, pushed);

  ImageCheckpointRequest local = pushed;
  local.blobs.clear();
  local.push_as.clear();
  local.target_dir = "/images/img-1/checkpoint";
  auto l = ImageCheckpointRequestFromJson(Wire(ToJson(local)));
  ASSERT_TRUE(l.ok()) << l.error().message;
  EXPECT_EQ(*l, local);
  local.target_dir = "relative";
  EXPECT_FALSE(ImageCheckpointRequestFromJson(ToJson(local)).ok());

  ImageCheckpointResult made{"", Blob("img-1-ckpt-memory", 1), Blob("img-1-ckpt-disk", 1)};
  auto r = ImageCheckpointResultFromJson(Wire(ToJson(made)), true);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, made);
  EXPECT_FALSE(ImageCheckpointResultFromJson({{"dir", "/x"}}, true).ok());
  auto d = ImageCheckpointResultFromJson(Wire(ToJson(ImageCheckpointResult{"/x", {}, {}})), false);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->dir, "/x");
}

namespace vmgrid {
namespace {

HostNetworkPlan SamplePlan() {
  NetworkPlan n;
  n.vni = 7;
  n.name = "lab";
  n.subnet = "10.20.0.0/24";
  n.egress = true;
  n.key_epoch = 3;
  n.key_hex = std::string(64, 'a');
  n.peers = {{2, "10.213.0.2", 4789}};
  n.remote_nics = {{"0a:00:00:07:00:0b", "10.20.0.11", "b", 2}};
  return {1, {n}};
}

TEST(NetworkPlanTest, NicsPlanAndEndpointRoundTrip) {
  VmSpec s;
  s.id = "vm-1";
  s.image.disk = "/d";
  s.image.format = "raw";
  s.nics = {{0, 7, "lab", "10.20.0.0/24", false, "0a:00:00:07:00:0a", "10.20.0.10"},
            {1, 9, "lab2", "10.30.0.0/24", true, "0a:00:00:09:00:0a", "10.30.0.10"}};
  auto back = VmSpecFromJson(Wire(ToJson(s)));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, s);

  HeartbeatReply reply{"host-1", SamplePlan()};
  auto r = HeartbeatReplyFromJson(Wire(ToJson(reply)));
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_TRUE(r->networks.has_value());
  EXPECT_EQ(*r->networks, SamplePlan());

  HostReport rep;
  rep.name = "h";
  rep.url = "https://127.0.0.1:1";
  rep.tunnel = TunnelEndpointReport{"10.213.0.1", 4789};
  auto hr = HostReportFromJson(Wire(ToJson(rep)));
  ASSERT_TRUE(hr.ok()) << hr.error().message;
  EXPECT_EQ(hr->report.tunnel, rep.tunnel);
}

TEST(NetworkPlanTest, RefusesMalformedParts) {
  // NICs: out of order, duplicate network, bad vni, unknown field.
  json nic = ToJson(NicSpec{0, 7, "lab", "10.20.0.0/24", false, "0a:00:00:07:00:0a", "10.20.0.10"});
  EXPECT_TRUE(NicSpecsFromJson(json::array({nic})).ok());
  json second = nic;
  second["index"] = 2;
  EXPECT_FALSE(NicSpecsFromJson(json::array({nic, second})).ok());
  second["index"] = 1;
  EXPECT_FALSE(NicSpecsFromJson(json::array({nic, second})).ok());  // same vni twice
  for (auto [field, value] : std::vector<std::pair<std::string, json>>{
           {"vni", 0}, {"vni", 1 << 24}, {"index", 8}, {"mac", 5}, {"extra", 1}}) {
    json bad = nic;
    bad[field] = value;
    EXPECT_FALSE(NicSpecFromJson(bad).ok()) << field;
  }
  EXPECT_FALSE(NicSpecsFromJson(json::array({nic, nic, nic, nic, nic, nic, nic, nic, nic})).ok());
  // Plans: short key, peer without port, remote NIC without host, a string for a list.
  json plan = ToJson(SamplePlan());
  for (auto edit : std::vector<std::function<void(json&)>>{
           [](json& p) { p["networks"][0]["key_hex"] = "abcd"; },
           [](json& p) { p["networks"][0]["key_hex"] = std::string(64, 'g'); },
           [](json& p) { p["networks"][0]["peers"][0].erase("port"); },
           [](json& p) { p["networks"][0]["remote_nics"][0]["host_number"] = 0; },
           [](json& p) { p["networks"][0]["peers"] = "all"; },
           [](json& p) { p["networks"][0]["vni"] = -1; },
           [](json& p) { p["host_number"] = "one"; },
           [](json& p) { p["networks"] = json::array({1}); },
       }) {
    json bad = plan;
    edit(bad);
    EXPECT_FALSE(HostNetworkPlanFromJson(bad).ok()) << bad.dump();
  }
  // Endpoints: not IPv4, port out of range.
  EXPECT_FALSE(TunnelEndpointFromJson({{"ip", "example"}, {"port", 1}}).ok());
  EXPECT_FALSE(TunnelEndpointFromJson({{"ip", "0.0.0.0"}, {"port", 1}}).ok());
  EXPECT_FALSE(TunnelEndpointFromJson({{"ip", "10.0.0.1"}, {"port", 70000}}).ok());
}

TEST(MigrationProtoTest, RoundTrips) {
  MigrationCredential cred{"vmgrid-mig-7", std::string(64, 'c')};
  IncomingRequest in{FullSpec(), cred, "10.0.0.2"};
  auto in_back = IncomingRequestFromJson(Wire(ToJson(in)));
  ASSERT_TRUE(in_back.ok()) << in_back.error().message;
  EXPECT_EQ(*in_back, in);
  EXPECT_FALSE(ToJson(in).contains("vmgenid"));  // an older target accepts it
  in.vmgenid = "0f8fad5b-d9cb-469f-a165-70867728950e";
  in_back = IncomingRequestFromJson(Wire(ToJson(in)));
  ASSERT_TRUE(in_back.ok()) << in_back.error().message;
  EXPECT_EQ(*in_back, in);
  for (const char* bad : {"not-a-uuid", "0f8fad5b-d9cb-469f-a165-70867728950e,x", "'; rm -rf /"}) {
    json j = ToJson(in);
    j["vmgenid"] = bad;
    EXPECT_FALSE(IncomingRequestFromJson(j).ok()) << bad;
  }
  IncomingInfo info{"10.0.0.2", 40001, 40002, {"disk0", "data1"}};
  auto info_back = IncomingInfoFromJson(Wire(ToJson(info)));
  ASSERT_TRUE(info_back.ok()) << info_back.error().message;
  EXPECT_EQ(*info_back, info);
  // An older target names its one export in nbd_export only.
  auto legacy = IncomingInfoFromJson(
      json{{"host", "10.0.0.2"}, {"nbd_port", 1}, {"migration_port", 2}, {"nbd_export", "disk0"}});
  ASSERT_TRUE(legacy.ok()) << legacy.error().message;
  EXPECT_EQ(legacy->nbd_exports, std::vector<std::string>{"disk0"});
  // A cold migration's target: disks only.
  IncomingInfo cold_info{"10.0.0.2", 40001, 0, {"disk0"}};
  ASSERT_TRUE(IncomingInfoFromJson(Wire(ToJson(cold_info))).ok());
  IncomingRequest cold{FullSpec(), cred, "10.0.0.2", true};
  auto cold_back = IncomingRequestFromJson(Wire(ToJson(cold)));
  ASSERT_TRUE(cold_back.ok()) << cold_back.error().message;
  EXPECT_TRUE(cold_back->cold);
  IncomingInfo diskless{"host-b.example", 0, 40002, {}};
  ASSERT_TRUE(IncomingInfoFromJson(Wire(ToJson(diskless))).ok());
  MigrateOutRequest out{info, cred, 100 << 20};
  auto out_back = MigrateOutRequestFromJson(Wire(ToJson(out)));
  ASSERT_TRUE(out_back.ok()) << out_back.error().message;
  EXPECT_EQ(*out_back, out);
  MigrationResult result{2948, 227, 2670, 199, 98791371, 1703936, {}};
  result.forwards.push_back(ForwardInfo{0, "10.20.0.5", 80, "127.0.0.1", 40080});
  auto result_back = MigrationResultFromJson(Wire(ToJson(result)));
  ASSERT_TRUE(result_back.ok()) << result_back.error().message;
  EXPECT_EQ(*result_back, result);
}

TEST(MigrationProtoTest, RefusesMalformedParts) {
  MigrationCredential cred{"vmgrid-mig-7", std::string(64, 'c')};
  json in = ToJson(IncomingRequest{FullSpec(), cred, "10.0.0.2"});
  for (auto edit : std::vector<std::function<void(json&)>>{
           [](json& j) { j["credential"]["key_hex"] = std::string(64, 'C'); },
           [](json& j) { j["credential"]["key_hex"] = "abcd"; },
           [](json& j) { j["credential"]["identity"] = "a:b"; },
           [](json& j) { j["credential"]["identity"] = ""; },
           [](json& j) { j["credential"]["extra"] = 1; },
           [](json& j) { j["listen_host"] = "host.example"; },
           [](json& j) { j.erase("spec"); },
           [](json& j) { j["spec"] = "vm-1"; },
           [](json& j) { j["spec"]["vcpus"] = 0; },
           [](json& j) { j["extra"] = true; },
       }) {
    json bad = in;
    edit(bad);
    EXPECT_FALSE(IncomingRequestFromJson(bad).ok()) << bad.dump();
  }
  json info = ToJson(IncomingInfo{"10.0.0.2", 40001, 40002, {"disk0"}});
  for (auto edit : std::vector<std::function<void(json&)>>{
           [](json& j) { j["nbd_port"] = 70000; },
           [](json& j) {
             j["migration_port"] = 0;  // with no disk either: nothing to connect to
             j["nbd_port"] = 0;
             j["nbd_export"] = "";
             j["nbd_exports"] = json::array();
           },
           [](json& j) { j.erase("migration_port"); },
           [](json& j) {
             j["nbd_export"] = "";
             j["nbd_exports"] = json::array();
           },
           [](json& j) { j["nbd_export"] = "a/b"; },
           [](json& j) {
             j["nbd_exports"] = {"disk0", "a/b"};
           },
           [](json& j) {
             j["nbd_exports"] = {"disk0", "disk0"};
           },
           [](json& j) {
             j["nbd_exports"] = {"disk0", ""};
           },
           [](json& j) {
             j["nbd_exports"] = {"data1", "disk0"};
           },
           [](json& j) { j["nbd_exports"] = "disk0"; },
           [](json& j) { j["nbd_exports"] = json(std::vector<std::string>(9, "d")); },
           [](json& j) { j["host"] = "a b"; },
           [](json& j) { j["host"] = ""; },
           [](json& j) { j["nbd_port"] = "40001"; },
       }) {
    json bad = info;
    edit(bad);
    EXPECT_FALSE(IncomingInfoFromJson(bad).ok()) << bad.dump();
  }
  json out = ToJson(MigrateOutRequest{IncomingInfo{"10.0.0.2", 1, 2, {"d"}}, cred, 0});
  out["max_bandwidth"] = -1;
  EXPECT_FALSE(MigrateOutRequestFromJson(out).ok());
  EXPECT_FALSE(MigrationResultFromJson({{"total_ms", -5}}).ok());
  EXPECT_FALSE(MigrationResultFromJson({{"total_ms", 1.5}}).ok());
  EXPECT_FALSE(MigrationResultFromJson({{"bytes", 1}}).ok());
  EXPECT_FALSE(MigrationResultFromJson(json::array()).ok());
}

}  // namespace
}  // namespace vmgrid

TEST(GuestFileProtoTest, RoundTripsBinaryChunks) {
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes += static_cast<char>(i);
  GuestFileWrite w{"/tmp/a b", 7, bytes};
  auto w2 = GuestFileWriteFromJson(nlohmann::json::parse(ToJson(w).dump()));
  ASSERT_TRUE(w2.ok()) << w2.error().message;
  EXPECT_EQ(*w2, w);
  GuestFileChunk c{"/x", 3, bytes, 1000, false};
  auto c2 = GuestFileChunkFromJson(nlohmann::json::parse(ToJson(c).dump()));
  ASSERT_TRUE(c2.ok()) << c2.error().message;
  EXPECT_EQ(*c2, c);
  GuestFileRead r{"/y", 5, 9};
  EXPECT_EQ(*GuestFileReadFromJson(ToJson(r)), r);
  EXPECT_EQ(*GuestFileWrittenFromJson(ToJson(GuestFileWritten{"/z", 4})),
            (GuestFileWritten{"/z", 4}));
}

TEST(GuestFileProtoTest, RefusesBadPathsDataAndSizes) {
  using nlohmann::json;
  EXPECT_FALSE(CheckGuestPath("").ok());
  EXPECT_FALSE(CheckGuestPath("etc/passwd").ok());
  EXPECT_FALSE(CheckGuestPath(std::string("/a\0b", 4)).ok());
  EXPECT_FALSE(CheckGuestPath("/" + std::string(kMaxGuestPathLength, 'a')).ok());
  EXPECT_TRUE(CheckGuestPath("/" + std::string(kMaxGuestPathLength - 1, 'a')).ok());
  EXPECT_FALSE(GuestFileWriteFromJson({{"path", "/x"}, {"data", "not base64!"}}).ok());
  EXPECT_FALSE(GuestFileWriteFromJson({{"path", "/x"}, {"offset", -1}}).ok());
  auto big =
      GuestFileWriteFromJson({{"path", "/x"}, {"offset", kMaxGuestCopyBytes}, {"data", "eA=="}});
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.error().code, ErrorCode::kResourceExhausted);
  EXPECT_FALSE(GuestFileWriteFromJson(
                   {{"path", "/x"}, {"data", std::string((kMaxGuestFileChunk / 3 + 2) * 4, 'A')}})
                   .ok());
  EXPECT_FALSE(GuestFileReadFromJson({{"path", "/x"}, {"length", 0}}).ok());
  EXPECT_FALSE(GuestFileReadFromJson(json::array()).ok());
}

TEST(DataAttachmentTest, MountPointRules) {
  for (const char* ok : {"/data", "/in", "/data/set-1", "/mnt/a.b/c_d", "/tmp/x", "/var/data"})
    EXPECT_TRUE(ValidateGuestMountPoint(ok).ok()) << ok;
  for (const char* bad :
       {"", "data", "/", "/data/", "/a//b", "/a/../etc", "/a/./b", "/etc", "/etc/x", "/proc",
        "/usr/local/x", "/dev/shm/x", "/a b", "/a;b", "/a/b/c/d/e/f/g/h/i"})
    EXPECT_FALSE(ValidateGuestMountPoint(bad).ok()) << bad;
  EXPECT_TRUE(CheckMountPointsApart({"/a", "/ab", "/b/a"}).ok());
  EXPECT_FALSE(CheckMountPointsApart({"/a", "/a"}).ok());
  EXPECT_FALSE(CheckMountPointsApart({"/a/b", "/a"}).ok());
}

TEST(DataAttachmentTest, SpecsAreStrict) {
  nlohmann::json blob = ToJson(Blob("ds-1", 1));
  auto ok = DataDisksFromJson(
      nlohmann::json::array({{{"dataset", "a"}, {"mount", "/a"}, {"rw", false}, {"blob", blob}},
                             {{"dataset", "b"}, {"mount", "/b"}, {"rw", true}, {"blank_mb", 64}}}));
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok->size(), 2u);
  for (const nlohmann::json& bad : std::vector<nlohmann::json>{
           nlohmann::json::object(),
           {{"dataset", "a"}, {"mount", "/a"}},                                    // no source
           {{"dataset", "a"}, {"mount", "/a"}, {"blob", blob}, {"blank_mb", 64}},  // both
           {{"dataset", "a"}, {"mount", "/a"}, {"blank_mb", 64}},                  // blank ro
           {{"dataset", "a"}, {"mount", "/a"}, {"rw", true}, {"blank_mb", 1}},     // too small
           {{"dataset", "a"}, {"mount", "/etc"}, {"blob", blob}},
           {{"dataset", "../a"}, {"mount", "/a"}, {"blob", blob}},
           {{"dataset", "a"}, {"mount", "/a"}, {"blob", blob}, {"extra", 1}}}) {
    EXPECT_FALSE(DataDiskSpecFromJson(bad).ok()) << bad.dump();
  }
  nlohmann::json five = nlohmann::json::array();
  for (int i = 0; i < 5; ++i)
    five.push_back({{"dataset", "a"}, {"mount", "/m" + std::to_string(i)}, {"blob", blob}});
  EXPECT_FALSE(DataDisksFromJson(five).ok());
  EXPECT_FALSE(DataDisksFromJson(
                   nlohmann::json::array({{{"dataset", "a"}, {"mount", "/a"}, {"blob", blob}},
                                          {{"dataset", "b"}, {"mount", "/a/b"}, {"blob", blob}}}))
                   .ok());
  EXPECT_EQ(DataDiskSerial(2), "vmgdata-2");
}

TEST(DataAttachmentTest, CliArgument) {
  auto a = ParseDataArgument("inputs");
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_EQ(*a,
            (nlohmann::json{
                {"dataset", "inputs"}, {"version", 0}, {"mount", "/data/inputs"}, {"mode", "ro"}}));
  auto b = ParseDataArgument("inputs:3:/in:rw");
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_EQ(*b, (nlohmann::json{
                    {"dataset", "inputs"}, {"version", 3}, {"mount", "/in"}, {"mode", "rw"}}));
  auto c = ParseDataArgument("inputs:/in");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)["mount"], "/in");
  auto d = ParseDataArgument("inputs:rw");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)["mode"], "rw");
  // Another user's dataset shared with the caller: OWNER/NAME, mounted at /data/NAME.
  auto s = ParseDataArgument("alice/inputs:2");
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(
      *s,
      (nlohmann::json{
          {"dataset", "alice/inputs"}, {"version", 2}, {"mount", "/data/inputs"}, {"mode", "ro"}}));
  for (const char* bad :
       {"", "in/", "/inputs", "a/b/c", "../inputs", "a/..", "inputs:x", "inputs:1:/in:rw:more",
        "inputs:/etc", "inputs:/in:rx", "inputs:99999999999"})
    EXPECT_FALSE(ParseDataArgument(bad).ok()) << bad;
  auto r = ParseDatasetRef("alice/genome");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->owner, "alice");
  EXPECT_EQ(r->name, "genome");
  EXPECT_EQ(ParseDatasetRef("genome")->owner, "");
  for (const std::string& bad :
       {std::string(), std::string("a/"), std::string("/a"), std::string("a//b"),
        std::string("a/b/c"), std::string("a/."), std::string("./a"), std::string("a/\0b", 4)})
    EXPECT_FALSE(ParseDatasetRef(bad).ok()) << bad;
  auto n = ParseNewDataArgument("out-1:/out:64");
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, (nlohmann::json{
                    {"dataset", "out-1"}, {"new", true}, {"mount", "/out"}, {"size_mb", 64}}));
  auto n2 = ParseNewDataArgument("out");
  ASSERT_TRUE(n2.ok());
  EXPECT_EQ((*n2)["mount"], "/data/out");
  EXPECT_FALSE(n2->contains("size_mb"));
  for (const char* bad : {"", "out:/etc", "out:1", "out:/o:x", "out:/o:64:z", "o/ut"})
    EXPECT_FALSE(ParseNewDataArgument(bad).ok()) << bad;
}

}  // namespace
}  // namespace vmgrid
