// What the worker loop tells an observer (the worker's /metrics endpoint, worker/worker_metrics.h)
// as it works: each call to the coordinator, each job's start, progress and end. Called on the
// loop's and the heartbeat thread's paths: implementations must be cheap and never block.
#ifndef KVSWEEP_WORKER_WORKER_OBSERVER_H_
#define KVSWEEP_WORKER_WORKER_OBSERVER_H_

#include <string>

#include "grpcpp/support/status.h"
#include "nlohmann/json.hpp"

namespace kvsweep {

class WorkerObserver {
 public:
  virtual ~WorkerObserver() = default;
  // One attempt of a call to the coordinator ended: rpc is "lease", "heartbeat", "complete" or
  // "fail"; a retried call reports each attempt.
  virtual void RpcDone(const char* rpc, grpc::StatusCode code) = 0;
  // A job was leased and starts (its spec not yet read).
  virtual void JobStarted() = 0;
  // The current job's fraction done, from the evaluating thread at every step.
  virtual void JobProgress(double fraction) = 0;
  // The job ended. task: its spec's task ("" when the spec could not be read); outcome: what
  // became of it, as WorkerStats counts it ("recorded", "duplicate", "rejected", "failed",
  // "abandoned", "handed_back"); seconds: from its start to now; timing: the evaluator's
  // "timing" object when it produced a result, else null.
  virtual void JobEnded(const std::string& task, const char* outcome, double seconds,
                        const nlohmann::json& timing) = 0;
};

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_WORKER_OBSERVER_H_
