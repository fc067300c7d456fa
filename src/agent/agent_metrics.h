// What an agent's /metrics shows (docs/operations.md, "Metrics"): its VMs by
// state, the chunk cache, the NBD exports and the virtual switches, read
// from the counters those modules already keep, at scrape time. Only
// aggregates: no VM, user, network or port names.
#pragma once

#include <vector>

#include "agent/host_images.h"
#include "agent/host_networks.h"
#include "common/metrics.h"
#include "proto/vm_status.h"

namespace vmgrid {

// `images` null without an image server; `networks` whose switches are not
// running yet give no vnet families.
std::vector<metrics::FamilySnapshot> AgentMetrics(const std::vector<VmStatus>& vms,
                                                  const HostImages::Counters* images,
                                                  const HostNetworks::Totals& networks);

}  // namespace vmgrid
