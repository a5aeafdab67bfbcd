// The worker's Prometheus endpoint (kvsweep-worker --metrics-listen): GET
// http://<listen>/metrics in the text exposition format. Jobs by task and outcome, their
// duration, the tokens the engine ran, the current job's progress, the worker's calls to the
// coordinator by outcome, and memory: the process's resident set always, the CUDA allocator's
// bytes when the evaluator runs on a GPU (docs/deploy.md "Observability" lists every metric).
//
// Cost: the loop's paths only add a counter or gauge update (the progress callback, each
// evaluation step, sets one gauge); memory is read when scraped.
#ifndef KVSWEEP_WORKER_WORKER_METRICS_H_
#define KVSWEEP_WORKER_WORKER_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/evaluator.h"
#include "worker/worker_observer.h"

namespace kvsweep {

class WorkerMetrics : public WorkerObserver {
 public:
  WorkerMetrics() = default;
  ~WorkerMetrics() override = default;
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  // The bound port (the one asked for, or the one picked for port 0).
  virtual int port() const = 0;
};

// Serves /metrics on `listen` (rpc/http_listen.h ParseListenAddress) until destroyed;
// `evaluator` (its device memory) must outlive the result. Errors: kInvalidArgument for a
// malformed address; kUnavailable if it cannot be bound; kUnimplemented when kvsweep was built
// without prometheus-cpp.
absl::StatusOr<std::unique_ptr<WorkerMetrics>> StartWorkerMetrics(const std::string& listen,
                                                                  const Evaluator* evaluator);

// The process's resident set size now and at its peak (VmRSS and VmHWM of /proc/self/status),
// in bytes; -1 where unknown.
struct ResidentMemory {
  int64_t current = -1, peak = -1;
};
ResidentMemory ReadResidentMemory();

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_WORKER_METRICS_H_
