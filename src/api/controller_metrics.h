// The controller's own metrics (docs/operations.md, "Metrics"): what its
// routes, placement and migrations count as they run. Scrape-time families
// (VMs per state, hosts' capacity and usage, the operation queue) are
// collectors the controller adds to the same registry.
// Labels are aggregate only: route templates, states, outcomes, host names;
// never a VM's or user's id or name (a scrape must not show one tenant's
// objects to whoever reads the metrics).
// Thread-safe (metrics/ types); the families live as long as the registry.
#pragma once

#include <string>

#include "common/metrics.h"
#include "common/result.h"

namespace vmgrid {

struct ControllerMetrics {
  explicit ControllerMetrics(metrics::Registry& registry);

  // Placement of a create: `kind` single or gang; the outcome from `result`
  // (placed, no_room, quota, error).
  void CountPlacement(const char* kind, const Status& result);
  // A finished migration: outcome and, when it succeeded, its times.
  void CountMigration(const Status& result, double total_s, double downtime_s);

  // requests by route template, method and status class (2xx ...).
  metrics::Family<metrics::Counter>& requests;
  metrics::Family<metrics::Histogram>& request_seconds;  // by route template, method
  metrics::Family<metrics::Counter>& placements;         // by kind, outcome
  metrics::Family<metrics::Counter>& migrations;         // by outcome
  metrics::Histogram& migration_seconds;
  metrics::Histogram& migration_downtime_seconds;
};

// An outcome label for an error code (ok, no_room, quota, error, ...).
std::string OutcomeLabel(const Status& result);
// "2xx".."5xx" for an HTTP status.
std::string StatusClass(int status);

}  // namespace vmgrid
