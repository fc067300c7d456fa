// Placement: choosing hosts for new VMs is a query over the information
// service (the futures of the VM's image restricted to the VM's requirements),
// ranked by a documented policy (docs/infosvc.md):
//   requirements: host up, free vCPUs >= vcpus, free memory >= memory_mb,
//                 and the site / network segment if the request names one;
//   rank:         hosts that already hold the image first (cache locality),
//                 then by free memory — most first ("spread", the default) or
//                 least first ("pack", best fit) — then by id for stability.
// The ranking is advisory: the store re-checks capacity in the transaction
// that reserves (Store::PlaceAndInsertVm), so concurrent creates never
// oversubscribe a host. Thread-safe (stateless over a thread-safe service).
#pragma once

#include <string>
#include <vector>

#include "common/result.h"
#include "infosvc/query_service.h"

namespace vmgrid {

struct PlacementRequest {
  std::string image_id;
  int vcpus = 1;
  int64_t memory_mb = 256;
  std::string policy = "spread";  // or "pack"
  std::string site;               // "" = any
  std::string network;            // host network segment, "" = any
  size_t max_candidates = 64;
};

// Hosts in rank order (ids); empty if none meets the requirements.
Result<std::vector<std::string>> RankHosts(QueryService& query, const PlacementRequest& request);

// Up hosts grouped by `attribute` ("site", "network" or "" for one group),
// groups ordered by total free memory, hosts within a group by `policy`.
Result<std::vector<std::vector<std::string>>> HostGroups(QueryService& query,
                                                         const std::string& attribute,
                                                         const std::string& policy);

}  // namespace vmgrid
