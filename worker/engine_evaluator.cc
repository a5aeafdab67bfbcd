#include "worker/engine_evaluator.h"

#include <torch/cuda.h>

#include <exception>

#include "absl/strings/str_cat.h"
#include "worker/engine/eval.h"

namespace kvsweep {
namespace {

class EngineEvaluator final : public Evaluator {
 public:
  EngineEvaluator(const std::string& device, int threads)
      : engine_(engine::EngineOptions{device, threads, 0}) {}

  absl::StatusOr<nlohmann::json> Run(const JobSpec& spec, const ProgressFn& progress) override {
    absl::StatusOr<nlohmann::json> out;
    try {
      out = engine_.Run(spec, progress);
    } catch (const std::exception& e) {
      // The engine converts libtorch errors itself; anything that still escapes is a bug, but
      // it must not take the worker (and its lease) down with it.
      return absl::InternalError(absl::StrCat("engine: ", e.what()));
    }
    if (!out.ok()) return out.status();
    // The Evaluator contract is `eval --format json` without "spec": the coordinator has it.
    out->erase("spec");
    return out;
  }

 private:
  engine::Engine engine_;
};

}  // namespace

std::unique_ptr<Evaluator> NewEngineEvaluator(const std::string& device, int threads) {
  return std::make_unique<EngineEvaluator>(device, threads);
}

int EngineCudaDeviceCount() {
  return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
}

}  // namespace kvsweep
