// The real Evaluator: the libtorch engine (worker/engine, engine::Engine) behind the worker
// loop's seam. Built into kvsweep-worker only when the engine target exists. The engine keeps
// the loaded model, tokenizer and prepared codecs (PCA bases) between jobs of the same model;
// the loop advertises that model to the coordinator for affinity.
#ifndef KVSWEEP_WORKER_ENGINE_EVALUATOR_H_
#define KVSWEEP_WORKER_ENGINE_EVALUATOR_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "worker/evaluator.h"

namespace kvsweep {

// `device`: cpu | cuda | cuda:N; `threads`: CPU intra-op threads (0 = libtorch's default).
std::unique_ptr<Evaluator> NewEngineEvaluator(const std::string& device, int threads);

// OK if the engine can run on `device` (one device, or a comma-separated pipeline group) on this
// build and machine; else why not (e.g. CUDA not available, only N CUDA devices present).
absl::Status CheckEngineDevice(const std::string& device);

// How many CUDA devices the engine sees (0 on a CPU-only libtorch or a machine without any):
// what `kvsweep-worker --devices all` runs a worker on.
int EngineCudaDeviceCount();

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_ENGINE_EVALUATOR_H_
