// The coordinator's Prometheus endpoint: GET http://<listen>/metrics in the text exposition
// format. Job counts by state, commit and mutation counters, results recorded, and the Lease /
// Complete latency histograms (docs/deploy.md "Observability" lists every metric).
//
// Cost: the lease and complete paths only add a histogram observation and a counter increment
// (WorkerServiceObserver). Job counts (one GROUP BY on the read-only query connection) and the
// scheduler's counters are refreshed when scraped, at most once a second.
#ifndef KVSWEEP_COORDINATOR_METRICS_H_
#define KVSWEEP_COORDINATOR_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/scheduler.h"
#include "coordinator/service.h"
#include "storage/result_store.h"

namespace kvsweep {

class MetricsServer : public WorkerServiceObserver {
 public:
  MetricsServer() = default;
  ~MetricsServer() override = default;
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The bound port (the one asked for, or the one picked for port 0).
  virtual int port() const = 0;
};

// Serves /metrics on `listen` (rpc/http_listen.h ParseListenAddress) until destroyed. `store`
// and `scheduler` must outlive the result. Errors: kInvalidArgument for a malformed address;
// kUnavailable if it cannot be bound; kUnimplemented when kvsweep was built without
// prometheus-cpp or cpp-httplib.
absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetricsServer(const std::string& listen,
                                                                  ResultStore* store,
                                                                  Scheduler* scheduler);

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_METRICS_H_
