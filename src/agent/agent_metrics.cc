#include "agent/agent_metrics.h"

#include <map>

#include "common/vm_state.h"
#include "vnet/egress_policy.h"

namespace vmgrid {

namespace {

using metrics::FamilySnapshot;
using metrics::Type;

FamilySnapshot Single(const char* name, const char* help, Type type, double value) {
  FamilySnapshot f{name, help, type, {}};
  f.Add({}, value);
  return f;
}

double D(uint64_t v) { return static_cast<double>(v); }

}  // namespace

std::vector<FamilySnapshot> AgentMetrics(const std::vector<VmStatus>& vms,
                                         const HostImages::Counters* images,
                                         const HostNetworks::Totals& net) {
  std::vector<FamilySnapshot> out;
  std::map<std::string, double> by_state;
  for (VmState s : AllVmStates()) by_state[ToString(s)] = 0;
  for (const auto& v : vms) by_state[v.state] += 1;
  FamilySnapshot states{"vmgrid_agent_vms", "VMs on this host by state.", Type::kGauge, {}};
  for (const auto& [state, n] : by_state) states.Add({{"state", state}}, n);
  out.push_back(std::move(states));

  if (images) {
    const auto& c = images->cache;
    const auto& cl = images->client;
    const auto& n = images->nbd;
    const auto C = Type::kCounter, G = Type::kGauge;
    out.push_back(Single("vmgrid_chunk_cache_hits_total",
                         "Chunk reads served from the host's cache (verified).", C, D(c.hits)));
    out.push_back(Single("vmgrid_chunk_cache_misses_total",
                         "Chunk reads that needed a fetch from the image server.", C, D(c.misses)));
    out.push_back(Single("vmgrid_chunk_cache_fetched_bytes_total",
                         "Chunk bytes brought into the cache (fetches and prefetches).", C,
                         D(c.bytes_fetched)));
    out.push_back(Single("vmgrid_chunk_verification_failures_total",
                         "Chunks that did not match their digest (on disk or as received).", C,
                         D(c.verification_failures + cl.verification_failures)));
    out.push_back(Single("vmgrid_chunk_cache_evictions_total", "Chunks evicted from the cache.", C,
                         D(c.evictions)));
    out.push_back(Single("vmgrid_chunk_cache_fetch_failures_total", "Chunk fetches that failed.", C,
                         D(c.fetch_failures)));
    out.push_back(
        Single("vmgrid_chunk_cache_bytes", "Bytes of chunks in the cache.", G, D(c.bytes)));
    out.push_back(Single("vmgrid_chunk_cache_pinned_bytes",
                         "Bytes of cached chunks pinned by images in use.", G, D(c.pinned_bytes)));
    out.push_back(
        Single("vmgrid_chunk_cache_capacity_bytes", "The cache's bound.", G, D(c.capacity_bytes)));
    out.push_back(Single("vmgrid_image_server_requests_total",
                         "Requests this host made to the image server.", C, D(cl.requests)));
    out.push_back(Single("vmgrid_image_server_received_bytes_total",
                         "Chunk bytes received from the image server, good or bad (zstd frames "
                         "as received).",
                         C, D(cl.bytes_fetched)));
    out.push_back(Single("vmgrid_image_server_received_raw_bytes_total",
                         "Bytes of the verified chunks received, after decoding.", C,
                         D(cl.raw_bytes_fetched)));
    out.push_back(Single("vmgrid_image_server_zstd_chunks_total",
                         "Chunks received from the image server as zstd frames.", C,
                         D(cl.zstd_chunks)));
    out.push_back(Single("vmgrid_image_prefetch_chunks_total",
                         "Chunks prefetched in recorded first-read order on cold starts.", C,
                         D(images->prefetched_chunks)));
    out.push_back(Single("vmgrid_nbd_connections_total", "NBD connections accepted (QEMU's disks).",
                         C, D(n.connections)));
    out.push_back(
        Single("vmgrid_nbd_connections", "NBD connections open.", G, D(n.active_connections)));
    out.push_back(Single("vmgrid_nbd_requests_total", "NBD requests received.", C, D(n.requests)));
    out.push_back(
        Single("vmgrid_nbd_read_bytes_total", "Bytes served by NBD READs.", C, D(n.bytes_read)));
    out.push_back(Single("vmgrid_nbd_errors_total",
                         "NBD error replies and protocol violations (source errors included).", C,
                         D(n.errors)));
  }

  if (net.running) {
    const auto C = Type::kCounter, G = Type::kGauge;
    out.push_back(Single("vmgrid_vnet_networks", "Virtual networks with a switch on this host.", G,
                         D(net.networks)));
    out.push_back(
        Single("vmgrid_vnet_ports", "VM NICs attached to this host's switches.", G, D(net.ports)));
    FamilySnapshot frames{"vmgrid_vnet_port_frames_total",
                          "Frames of VM NICs: rx read from VMs, tx delivered to them.",
                          C,
                          {}};
    frames.Add({{"direction", "rx"}}, D(net.ports_total.rx_frames))
        .Add({{"direction", "tx"}}, D(net.ports_total.tx_frames));
    out.push_back(std::move(frames));
    FamilySnapshot answered{"vmgrid_vnet_switch_answers_total",
                            "Requests of VMs the switch answered itself, by protocol.",
                            C,
                            {}};
    answered.Add({{"protocol", "arp"}}, D(net.ports_total.arp_answered))
        .Add({{"protocol", "dhcp"}}, D(net.ports_total.dhcp_answered))
        .Add({{"protocol", "dns"}}, D(net.ports_total.dns_answered))
        .Add({{"protocol", "icmp_echo"}}, D(net.ports_total.echo_answered));
    out.push_back(std::move(answered));
    FamilySnapshot drops{"vmgrid_vnet_port_drops_total",
                         "Frames of VM NICs dropped by the switch, by reason.",
                         C,
                         {}};
    for (size_t i = 1; i < vnet::kDropReasonCount; ++i)
      drops.Add({{"reason", vnet::DropReasonName(static_cast<vnet::DropReason>(i))}},
                D(net.ports_total.drops[i]));
    out.push_back(std::move(drops));
    FamilySnapshot packets{"vmgrid_vnet_tunnel_packets_total",
                           "Tunnel packets sent to and received (authenticated) from other hosts.",
                           C,
                           {}};
    packets.Add({{"direction", "tx"}}, D(net.tunnels.tx_packets))
        .Add({{"direction", "rx"}}, D(net.tunnels.rx_packets));
    out.push_back(std::move(packets));
    out.push_back(Single("vmgrid_vnet_tunnel_tx_failures_total",
                         "Tunnel packets the socket refused.", C, D(net.tunnels.tx_failed)));
    out.push_back(Single("vmgrid_vnet_tunnel_tx_no_key_total",
                         "Frames for other hosts dropped while no tunnel key was installed.", C,
                         D(net.tunnels.tx_no_key)));
    FamilySnapshot tdrops{"vmgrid_vnet_tunnel_drops_total",
                          "Tunnel packets refused before their frame was read, by reason.",
                          C,
                          {}};
    for (size_t i = 1; i < vnet::kTunnelDropCount; ++i)
      tdrops.Add({{"reason", vnet::TunnelDropName(static_cast<vnet::TunnelDrop>(i))}},
                 D(net.tunnels.drops[i]));
    out.push_back(std::move(tdrops));
    FamilySnapshot egress{"vmgrid_vnet_egress_frames_total",
                          "Frames through egress gateways: out of and into the grid.",
                          C,
                          {}};
    egress.Add({{"direction", "out"}}, D(net.egress.to_outside))
        .Add({{"direction", "in"}}, D(net.egress.from_outside));
    out.push_back(std::move(egress));
    FamilySnapshot edrops{
        "vmgrid_vnet_egress_drops_total", "Frames the egress policy refused, by reason.", C, {}};
    for (size_t i = 1; i < vnet::kEgressDropCount; ++i)
      edrops.Add({{"reason", vnet::EgressDropName(static_cast<vnet::EgressDrop>(i))}},
                 D(net.egress.drops[i]));
    out.push_back(std::move(edrops));
    out.push_back(Single("vmgrid_vnet_egress_sockets",
                         "Host sockets of egress gateways (flows, forwards).", G,
                         D(net.egress.sockets)));
  }
  return out;
}

}  // namespace vmgrid
