#include "api/controller_metrics.h"

namespace vmgrid {

ControllerMetrics::ControllerMetrics(metrics::Registry& r)
    : requests(r.AddCounter("vmgrid_http_requests_total",
                            "REST API requests answered, by route template, method and status "
                            "class.",
                            {"route", "method", "code"})),
      request_seconds(r.AddHistogram("vmgrid_http_request_duration_seconds",
                                     "Time to answer a REST API request, by route template.",
                                     metrics::LatencyBuckets(), {"route", "method"})),
      placements(r.AddCounter("vmgrid_placements_total",
                              "VM creates placed or refused by placement, by kind (single, gang) "
                              "and outcome (placed, no_room, quota, error).",
                              {"kind", "outcome"})),
      migrations(r.AddCounter("vmgrid_migrations_total",
                              "Live migrations finished, by outcome (ok, error).", {"outcome"})),
      migration_seconds(r.AddHistogram("vmgrid_migration_duration_seconds",
                                       "Duration of successful live migrations, as the "
                                       "controller saw them.",
                                       {0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 300})
                            .With({})),
      migration_downtime_seconds(
          r.AddHistogram("vmgrid_migration_downtime_seconds",
                         "Guest downtime of successful live migrations (QEMU's figure).",
                         {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10})
              .With({})) {
  // Both outcomes exist from the start (at 0), so that a rate or increase
  // over them (a dashboard panel, an alert) has a series before the first
  // migration.
  for (const char* outcome : {"ok", "error"}) migrations.With({outcome});
}

std::string OutcomeLabel(const Status& result) {
  if (result.ok()) return "ok";
  switch (result.error().code) {
    case ErrorCode::kResourceExhausted:
      return "no_room";
    case ErrorCode::kPermissionDenied:
      return "quota";
    default:
      return "error";
  }
}

std::string StatusClass(int status) {
  if (status < 100 || status > 599) return "other";
  return std::to_string(status / 100) + "xx";
}

void ControllerMetrics::CountPlacement(const char* kind, const Status& result) {
  std::string outcome = OutcomeLabel(result);
  placements.With({kind, outcome == "ok" ? "placed" : outcome}).Inc();
}

void ControllerMetrics::CountMigration(const Status& result, double total_s, double downtime_s) {
  migrations.With({result.ok() ? "ok" : "error"}).Inc();
  if (!result.ok()) return;
  migration_seconds.Observe(total_s);
  migration_downtime_seconds.Observe(downtime_s);
}

}  // namespace vmgrid
