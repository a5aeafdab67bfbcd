#include "worker/engine/kv/fused_quant.h"

#include <atomic>
#include <cstdlib>

#ifdef KVSWEEP_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "worker/engine/kv/fused_quant_kernel.h"
#endif

namespace kvsweep::engine {
namespace {

std::atomic<bool>& Enabled() {
  static std::atomic<bool> enabled{[] {
    const char* env = std::getenv("KVSWEEP_FUSED_QUANT");
    return env == nullptr || env[0] != '0';
  }()};
  return enabled;
}

}  // namespace

bool FusedFakeQuantEnabled() { return Enabled().load(std::memory_order_relaxed); }
void SetFusedFakeQuantEnabled(bool enabled) { Enabled().store(enabled); }

#ifdef KVSWEEP_CUDA
bool FusedFakeQuantize(const torch::Tensor& x, const QuantFormat& f, torch::Tensor* out) {
  if (!x.is_cuda() || f.fp16_meta) return false;
  if (!FusedFakeQuantEnabled()) return false;
  int dtype = 0;
  switch (x.scalar_type()) {
    case torch::kFloat32: dtype = kFusedF32; break;
    case torch::kBFloat16: dtype = kFusedBF16; break;
    case torch::kFloat16: dtype = kFusedF16; break;
    default: return false;
  }
  const int64_t d = x.dim();
  if (d < 1 || d > 4 || x.stride(-1) != 1 || f.group <= 0 || x.size(-1) % f.group != 0) return false;
  FusedQuantShape s;
  s.n = x.size(-1);
  for (int i = 0; i < 3; ++i) {
    const int64_t dim = d - 4 + i;  // outer dimensions, right-aligned
    s.rows[i] = dim >= 0 ? x.size(dim) : 1;
    s.strides[i] = dim >= 0 ? x.stride(dim) : 0;
  }
  *out = torch::empty(x.sizes(), x.options().memory_format(torch::MemoryFormat::Contiguous));
  if (x.numel() == 0) return true;
  c10::cuda::CUDAGuard guard(x.device());
  const cudaError_t e = LaunchFusedFakeQuant(x.data_ptr(), out->data_ptr(), dtype, s, f.group, f.bits,
                                             f.sym, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "fused fake quantization kernel: ", cudaGetErrorString(e));
  return true;
}

void SetFusedFakeQuantVectorized(bool on) { SetFusedQuantVectorized(on); }
#else
bool FusedFakeQuantize(const torch::Tensor&, const QuantFormat&, torch::Tensor*) { return false; }
void SetFusedFakeQuantVectorized(bool) {}
#endif

}  // namespace kvsweep::engine
