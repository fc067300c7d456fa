// Placement: choosing hosts for new VMs. The policy (docs/infosvc.md,
// "Placement") is the query over the futures of the VM's image restricted to
// its requirements:
//   requirements: host up and not draining, free vCPUs >= vcpus, free memory >= memory_mb,
//                 free disk >= disk_bytes (hosts that report their disk),
//                 and the site / network segment if the request names one;
//   rank:         hosts that already hold more of the VM's datasets first,
//                 then those holding the image (cache locality),
//                 then by free memory — most first ("spread", the default) or
//                 least first ("pack", best fit) — then by id for stability.
// It runs over CapacityIndex, an in-memory copy of the hosts' capacity, usage
// and image cache that the Store keeps exact through StoreObserver (its own
// writes, in commit order) and Resync (everyone's). The ranking is advisory:
// the store re-checks capacity in the conditional UPDATE that reserves
// (Store::PlaceAndInsertVm), so a stale copy can never oversubscribe a host.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "store/store.h"

namespace vmgrid {

struct PlacementRequest {
  std::string image_id;
  int vcpus = 1;
  int64_t memory_mb = 256;
  int64_t disk_bytes = 0;             // Vm::disk_bytes
  std::string policy = "spread";      // or "pack"
  std::string site;                   // "" = any
  std::string network;                // host network segment, "" = any
  std::vector<std::string> datasets;  // ids of the datasets it attaches (hosts caching them first)
  size_t max_candidates = 64;
};

// Thread-safe.
class CapacityIndex : public StoreObserver {
 public:
  // Hosts in rank order (ids), at most r.max_candidates; empty if none meets
  // the requirements.
  std::vector<std::string> Rank(const PlacementRequest& r) const;
  // Up hosts grouped by `attribute` ("site", "network" or "" for one group),
  // groups ordered by total free memory (most first), hosts within a group by
  // `policy`.
  Result<std::vector<std::vector<std::string>>> Groups(const std::string& attribute,
                                                       const std::string& policy) const;
  bool IsCached(const std::string& image_id, const std::string& host_id) const;
  // Changes whenever a VM record on the host changes (0 for unknown hosts).
  uint64_t VmVersion(const std::string& host_id) const;
  size_t size() const;

  // StoreObserver.
  void OnSnapshot(const std::vector<Host>& hosts,
                  const std::vector<std::pair<std::string, std::string>>& cached) override;
  void OnHost(const Host& host) override;
  void OnHostDown(const std::string& host_id) override;
  void OnUsage(const std::string& host_id, int64_t vcpus, int64_t memory_mb,
               int64_t disk_bytes) override;
  void OnVmChanged(const std::string& host_id) override;
  void OnImageCached(const std::string& image_id, const std::string& host_id) override;

 private:
  struct Entry {
    std::string id, site, network;
    bool up = false;  // up and not draining: offered to placement
    int64_t vcpus = 0, memory_mb = 0, used_vcpus = 0, used_memory_mb = 0;
    int64_t disk_total = 0, disk_free = 0, used_disk = 0;  // disk_total 0: not limited
    std::vector<int> images;                               // interned image ids the host holds
    uint64_t vm_version = 0;
    int64_t free_memory() const { return memory_mb - used_memory_mb; }
  };
  // Up hosts with a free vCPU by (free memory, id): a create walks them in rank order from
  // the end its policy prefers and stops after max_candidates fits, instead
  // of sorting every host.
  using ByFree = std::set<std::pair<int64_t, std::string>>;
  static bool Linked(const Entry& e);
  int InternLocked(const std::string& image_id);
  void SetHostLocked(const Host& h);
  // Take a host out of / put it into the ordered sets (before / after a change).
  void UnlinkLocked(const Entry& e);
  void LinkLocked(const Entry& e);
  // Appends to `out` the fits of `set` in rank order, skipping hosts already in it.
  void WalkLocked(const ByFree& set, const PlacementRequest& r,
                  std::vector<std::string>& out) const;
  // Fills `out` with the fitting hosts that cache any of r.datasets, those
  // holding more of them (then the image) first.
  void RankDataHostsLocked(const PlacementRequest& r, int image_ix,
                           std::vector<std::string>& out) const;

  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> hosts_;    // by id; guarded by mu_
  std::unordered_map<std::string, int> image_ids_;  // guarded by mu_
  ByFree by_free_;                                  // every up host; guarded by mu_
  std::vector<ByFree> by_free_cached_;              // per interned image; guarded by mu_
  uint64_t versions_ = 0;                           // guarded by mu_
};

}  // namespace vmgrid
