// A Hugging Face checkpoint's weights: `model.safetensors`, or sharded `model-*.safetensors`
// with `model.safetensors.index.json`. Shards are memory-mapped; Load() turns one tensor into a
// torch::Tensor of the requested dtype/device after checking its shape.
//
// Errors: kNotFound (no weights, a shard or tensor missing), kInvalidArgument (bad index,
// corrupt shard, wrong shape or a non-float dtype), kUnimplemented (pytorch_model.bin only).
#ifndef KVSWEEP_WORKER_ENGINE_CHECKPOINT_H_
#define KVSWEEP_WORKER_ENGINE_CHECKPOINT_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/input_files.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

class Checkpoint {
 public:
  // Opens exactly `files.weights` (and reads `files.weights_index` if set): the list that job
  // identity hashes (ResolveModelFiles). `dir` is for messages.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir,
                                                          const ModelFiles& files);
  // ResolveModelFiles(dir), then the above.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  bool Has(const std::string& name) const { return index_.count(name) > 0; }
  const StTensor* Find(const std::string& name) const;
  // Loads `name`, checking it has exactly `shape`, converted to `dtype` on `device`.
  absl::StatusOr<torch::Tensor> Load(const std::string& name, const std::vector<int64_t>& shape,
                                     torch::ScalarType dtype, torch::Device device) const;
  std::vector<std::string> Names() const;
  const std::string& dir() const { return dir_; }

 private:
  Checkpoint() = default;
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const StTensor*> index_;
};

// Wraps raw tensor bytes (f32/f16/bf16) as a torch tensor, copying to `device`/`dtype`.
absl::StatusOr<torch::Tensor> TensorFromBytes(const StTensor& t, torch::ScalarType dtype,
                                              torch::Device device);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_CHECKPOINT_H_
