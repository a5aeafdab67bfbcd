#include "worker/engine/kv/cache_masks.h"

#include <algorithm>

namespace kvsweep::engine {

int64_t CompressedTokens(int64_t n, int block, int residual) {
  const int64_t outside = std::max<int64_t>(0, n - residual);
  return outside / block * block;
}

torch::Tensor CompressedStateMask(int64_t T, int block, int residual, torch::Device device) {
  TORCH_CHECK(block >= 1 && residual >= 0, "CompressedStateMask: block ", block, ", residual ",
              residual);
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  torch::Tensor t = torch::arange(T, opts);
  // Compressed-prefix length at step t: floor(max(0, t + 1 - R) / G) * G.
  torch::Tensor n_compressed = torch::div((t + 1 - residual).clamp_min(0), block, "floor") * block;
  torch::Tensor j = torch::arange(T, opts).unsqueeze(0);
  return j < n_compressed.unsqueeze(1);
}

}  // namespace kvsweep::engine
