#include "worker/engine/head_score.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "worker/engine/fused_layer.h"

#ifdef KVSWEEP_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "worker/engine/head_score_kernel.h"
#endif

namespace kvsweep::engine {

void HeadScoreLibtorch(const torch::Tensor& logits, const torch::Tensor& targets,
                       torch::Tensor* logprob, torch::Tensor* hit) {
  constexpr int64_t kRows = 256;
  const torch::Tensor f = logits.to(torch::kFloat32);
  std::vector<torch::Tensor> parts;
  for (int64_t r0 = 0; r0 < f.size(0); r0 += kRows) {
    parts.push_back(
        f.slice(0, r0, std::min<int64_t>(r0 + kRows, f.size(0))).to(torch::kFloat64).logsumexp(-1));
  }
  const torch::Tensor normaliser = parts.size() == 1 ? parts[0] : torch::cat(parts);
  *logprob = f.gather(1, targets.unsqueeze(1)).squeeze(1).to(torch::kFloat64) - normaliser;
  *hit = f.argmax(-1) == targets;
}

double FusedHeadScoreBound(int64_t vocab) {
  return std::ldexp(1.0, -22) + (3.0 + std::log(static_cast<double>(vocab))) * std::ldexp(1.0, -24);
}

#ifdef KVSWEEP_CUDA

bool FusedHeadScore(const torch::Tensor& logits, const torch::Tensor& targets,
                    torch::Tensor* logprob, torch::Tensor* hit) {
  if (!FusedLayerApplies(logits) || logits.dim() != 2 || logits.size(1) == 0 ||
      logits.stride(1) != 1 || logits.size(0) > 0x7fffffff || !targets.defined() ||
      targets.device() != logits.device() || targets.scalar_type() != torch::kLong ||
      targets.dim() != 1 || targets.size(0) != logits.size(0)) {
    return false;
  }
  const torch::Tensor tg = targets.contiguous();
  *logprob = torch::empty({logits.size(0)}, logits.options().dtype(torch::kFloat64));
  *hit = torch::empty({logits.size(0)}, logits.options().dtype(torch::kBool));
  HeadScoreArgs a{};
  a.logits = logits.data_ptr();
  a.stride = logits.stride(0);
  a.rows = logits.size(0);
  a.vocab = logits.size(1);
  a.target = tg.data_ptr<int64_t>();
  a.logprob = logprob->data_ptr<double>();
  a.hit = hit->data_ptr<bool>();
  a.dtype = logits.scalar_type() == torch::kBFloat16 ? kHeadBf16 : kHeadFp16;
  c10::cuda::CUDAGuard guard(logits.device());
  const cudaError_t e = LaunchHeadScore(a, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "fused LM-head scoring kernel: ", cudaGetErrorString(e));
  return true;
}

#else

bool FusedHeadScore(const torch::Tensor&, const torch::Tensor&, torch::Tensor*, torch::Tensor*) {
  return false;
}

#endif

}  // namespace kvsweep::engine
