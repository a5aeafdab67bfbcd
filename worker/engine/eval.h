// Runs one evaluation job end to end: load (or reuse) the model and tokenizer, build the KV
// codec (calibrating it if the method needs it), prepare the task, score, and assemble the
// result object of the eval contract (docs/architecture.md): {"spec", "metrics", "ledger",
// "timing", "provenance"} (+ "diagnostics" when asked).
#ifndef KVSWEEP_WORKER_ENGINE_EVAL_H_
#define KVSWEEP_WORKER_ENGINE_EVAL_H_

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "spec/job_spec.h"
#include "worker/engine/model.h"
#include "worker/engine/scorer.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace kvsweep::engine {

struct EngineOptions {
  std::string device = "cpu";  // cpu | cuda | cuda:N, or a pipeline group "cuda:0,cuda:1"
  int threads = 0;             // CPU intra-op threads; 0 = libtorch's default
  int64_t batch_tokens = 0;    // scorer batch budget; 0 = device default
};

// Keeps what is expensive to rebuild between jobs of the same model: the loaded weights (per
// kv_heads/dtype), the tokenizer, and prepared codecs (PCA bases). Not thread-safe: one job at
// a time.
class Engine {
 public:
  explicit Engine(EngineOptions options);
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs `spec`. `progress` gets the fraction done and may return false to cancel.
  // Errors: kInvalidArgument / kNotFound (inputs that can never work), kFailedPrecondition
  // (device unavailable, or "input changed since submit: PATH" from VerifyJobInputs), kCancelled,
  // kResourceExhausted (out of memory), kInternal.
  absl::StatusOr<nlohmann::json> Run(const JobSpec& spec,
                                     const std::function<bool(double)>& progress);

  // The model path currently held (model affinity), empty if none.
  std::string held_model() const { return model_key_.empty() ? "" : model_path_; }

 private:
  absl::StatusOr<nlohmann::json> RunImpl(const JobSpec& spec,
                                         const std::function<bool(double)>& progress);
  absl::Status EnsureModel(const JobSpec& spec, torch::Device device, torch::ScalarType dtype);
  EngineOptions options_;
  std::string model_key_, model_path_, tokenizer_key_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::map<std::string, std::shared_ptr<KvCodec>> codecs_;  // prepared codecs by method+calib
  double last_load_s_ = 0;
};

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_EVAL_H_
