// The virtual-network part of the controller<->agent protocol
// (docs/vnet.md, "Control plane"):
//   - NicSpec: one NIC of a VM, inside the VM spec (POST /agent/v1/vms), with
//     what the agent needs to create the network's switch at once;
//   - TunnelEndpointReport: where a host's tunnel socket listens, in its
//     heartbeat;
//   - HostNetworkPlan: the controller's answer to a heartbeat: the host's
//     tunnel number and, for every network with a NIC on the host, its key,
//     its other hosts and their NICs.
// The codecs check types and ranges; the agent checks addresses and names
// when it turns them into switch configuration (agent/host_networks.h).
// Thread-safe (values and pure functions).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"

namespace vmgrid {

// A VM's NIC: index I is the VM's I-th card (PCI slot 0x10 + I).
struct NicSpec {
  int index = 0;
  uint32_t vni = 0;     // the network's tunnel id (1 .. 2^24-1)
  std::string network;  // its name: the DNS domain of its VMs
  std::string subnet;   // CIDR
  bool egress = false;
  std::string mac;  // "0a:.."
  std::string ip;   // dotted quad in the subnet
  bool operator==(const NicSpec&) const = default;
};
nlohmann::json ToJson(const NicSpec& n);
Result<NicSpec> NicSpecFromJson(const nlohmann::json& j);
// A VM's list: indexes 0..n-1 in order, at most 8, distinct VNIs.
Result<std::vector<NicSpec>> NicSpecsFromJson(const nlohmann::json& j);

struct TunnelEndpointReport {
  std::string ip;  // IPv4 the host's tunnel UDP socket is bound to
  int port = 0;    // 1..65535
  bool operator==(const TunnelEndpointReport&) const = default;
};
nlohmann::json ToJson(const TunnelEndpointReport& t);
Result<TunnelEndpointReport> TunnelEndpointFromJson(const nlohmann::json& j);

struct PlanPeer {
  uint32_t number = 0;  // the peer host's tunnel number
  std::string ip;
  int port = 0;
  bool operator==(const PlanPeer&) const = default;
};

struct PlanRemoteNic {
  std::string mac;
  std::string ip;
  std::string vm_name;
  uint32_t host_number = 0;
  bool operator==(const PlanRemoteNic&) const = default;
};

struct NetworkPlan {
  uint32_t vni = 0;
  std::string name;
  std::string subnet;
  bool egress = false;
  int64_t key_epoch = 0;
  std::string key_hex;  // 64 hex digits (AES-256)
  std::vector<PlanPeer> peers;
  std::vector<PlanRemoteNic> remote_nics;
  bool operator==(const NetworkPlan&) const = default;
};

struct HostNetworkPlan {
  uint32_t host_number = 0;  // 0: not assigned yet
  std::vector<NetworkPlan> networks;
  bool operator==(const HostNetworkPlan&) const = default;
};
nlohmann::json ToJson(const HostNetworkPlan& p);
// Strict: known fields, types and ranges (vni 1..2^24-1, ports, key of 64
// hex digits, at most 4096 networks, 4096 peers and 65536 NICs each).
Result<HostNetworkPlan> HostNetworkPlanFromJson(const nlohmann::json& j);

// A port forward (`vm forward`): a TCP port on the VM's host whose
// connections reach a guest port of one of the VM's NICs, through its
// network's egress gateway (POST /agent/v1/vms/ID/forwards).
struct ForwardRequest {
  int nic = 0;                          // the NIC's index
  int guest_port = 0;                   // 1..65535
  std::string listen_ip = "127.0.0.1";  // on the VM's host
  int listen_port = 0;                  // 0: any free port
  bool operator==(const ForwardRequest&) const = default;
};
nlohmann::json ToJson(const ForwardRequest& f);
// Strict: known fields, ports in range, listen_ip IPv4.
Result<ForwardRequest> ForwardRequestFromJson(const nlohmann::json& j);

struct ForwardInfo {
  int nic = 0;
  std::string guest_ip;
  int guest_port = 0;
  std::string listen_ip;
  int listen_port = 0;
  bool operator==(const ForwardInfo&) const = default;
};
nlohmann::json ToJson(const ForwardInfo& f);
Result<ForwardInfo> ForwardInfoFromJson(const nlohmann::json& j);

}  // namespace vmgrid
