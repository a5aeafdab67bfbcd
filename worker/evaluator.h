// The seam between the worker's job loop and whatever computes a job's numbers.
//
// The real implementation is the libtorch engine (worker/engine, NewEngineEvaluator); a fake
// that sleeps serves the coordinator load benchmark and unit tests of the loop.
#ifndef KVSWEEP_WORKER_EVALUATOR_H_
#define KVSWEEP_WORKER_EVALUATOR_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "spec/job_spec.h"

namespace kvsweep {

// What the evaluator's device allocator holds (libtorch's CUDA caching allocator).
struct DeviceMemory {
  std::string device;     // "cuda:0"
  int64_t allocated = 0;  // bytes allocated now
  int64_t peak = 0;       // the most allocated since the current (or last) job started
};

// Called from the evaluating thread with the fraction done in [0, 1]. Returning false asks
// the evaluator to stop as soon as it can (the job was cancelled, or its lease was lost).
using ProgressFn = std::function<bool(double fraction)>;

class Evaluator {
 public:
  Evaluator() = default;
  virtual ~Evaluator() = default;
  Evaluator(const Evaluator&) = delete;
  Evaluator& operator=(const Evaluator&) = delete;

  // Runs one job. On success returns a JSON object with "metrics", "ledger", "timing",
  // "provenance" (and "diagnostics" when the spec asks): exactly what
  // `kvsweep-worker eval --format json` prints, without "spec".
  // Errors: kCancelled when `progress` returned false; kInvalidArgument / kNotFound for inputs
  // that can never work (do not retry); kResourceExhausted for out-of-memory; kInternal for
  // anything else (may be retried).
  virtual absl::StatusOr<nlohmann::json> Run(const JobSpec& spec, const ProgressFn& progress) = 0;

  // Device memory now, for an evaluator on an accelerator; nullopt on the CPU (or before the
  // device is first used). Any thread, also while Run runs.
  virtual std::optional<DeviceMemory> DeviceMemoryInUse() const { return std::nullopt; }
};

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_EVALUATOR_H_
