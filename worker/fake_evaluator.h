// A stand-in Evaluator for the coordinator load benchmark and unit tests of the worker loop:
// it sleeps, then returns a result shaped like the engine's. Its metrics are PLACEHOLDERS
// (deterministic in the job's spec, marked in provenance); its ledger is the real one (computed
// from the method spec, no model needed). Never used where numbers matter.
#ifndef KVSWEEP_WORKER_FAKE_EVALUATOR_H_
#define KVSWEEP_WORKER_FAKE_EVALUATOR_H_

#include <memory>

#include "worker/evaluator.h"

namespace kvsweep {

struct FakeEvaluatorOptions {
  int sleep_ms = 100;  // per job; progress is reported (and cancellation honoured) every 50 ms
  // Spread of the job time: each job sleeps sleep_ms * (1 + jitter * (2v - 1)) with v in [0, 1]
  // a deterministic function of the job's spec (uniform over jobs), so the mean stays sleep_ms.
  double jitter = 0;
};

std::unique_ptr<Evaluator> NewFakeEvaluator(const FakeEvaluatorOptions& options);

// The two halves of a fake job, for simulations that do their own waiting (the load
// benchmark's event-driven workers): how long the job takes, and the result it returns.
struct FakeJobPlan {
  double sleep_ms = 0;  // this job's time: sleep_ms spread by jitter
  double seed = 0;      // in [0, 1]: the placeholder metrics' value
};
FakeJobPlan PlanFakeJob(const JobSpec& spec, const FakeEvaluatorOptions& options);
// The result after `wall_s` seconds: placeholder metrics, the real ledger of spec.method.
absl::StatusOr<nlohmann::json> FakeJobResult(const JobSpec& spec, const FakeJobPlan& plan,
                                             double wall_s);

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_FAKE_EVALUATOR_H_
