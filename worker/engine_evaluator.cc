#include "worker/engine_evaluator.h"

#include <torch/cuda.h>

#include <exception>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/eval.h"
#include "worker/engine/placement.h"

#ifdef KVSWEEP_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace kvsweep {
namespace {

class EngineEvaluator final : public Evaluator {
 public:
  EngineEvaluator(const std::string& device, int threads)
      : device_(device), engine_(engine::EngineOptions{device, threads, 0}) {}

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

  std::optional<DeviceMemory> DeviceMemoryInUse() const override {
#ifdef KVSWEEP_CUDA
    if (absl::StartsWith(device_, "cuda")) try {
        int index = 0;
        if (device_.size() > 5 && !absl::SimpleAtoi(device_.substr(5), &index)) return std::nullopt;
        // Throws until the engine has first used the device (the allocator is not set up).
        const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
        const auto& all = stats.allocated_bytes[0];  // aggregate over the pools
        return DeviceMemory{absl::StrCat("cuda:", index), all.current, all.peak};
      } catch (const std::exception&) {
        return std::nullopt;
      }
#endif
    return std::nullopt;
  }

 private:
  const std::string device_;
  engine::Engine engine_;
};

}  // namespace

std::unique_ptr<Evaluator> NewEngineEvaluator(const std::string& device, int threads) {
  return std::make_unique<EngineEvaluator>(device, threads);
}

absl::Status CheckEngineDevice(const std::string& device) {
  return engine::ParsePipelineDevices(device).status();
}

int EngineCudaDeviceCount() {
  return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
}

}  // namespace kvsweep
