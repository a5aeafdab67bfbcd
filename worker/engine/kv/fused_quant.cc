#include "worker/engine/kv/fused_quant.h"

#include <atomic>
#include <cstdlib>
#include <vector>

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
namespace {

int KernelDtype(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32:
      return kFusedF32;
    case torch::kBFloat16:
      return kFusedBF16;
    case torch::kFloat16:
      return kFusedF16;
    default:
      return -1;
  }
}

// x's layout as the kernel reads it, writing a new contiguous [..., out_n] to *y; false when the
// kernel cannot read x.
bool Describe(const torch::Tensor& x, const QuantFormat& f, int64_t out_n, FusedQuantTensor* t,
              torch::Tensor* y) {
  const int64_t d = x.dim();
  if (!x.is_cuda() || KernelDtype(x.scalar_type()) < 0 || d < 1 || d > 4 || x.stride(-1) != 1 ||
      f.group <= 0 || x.size(-1) % f.group != 0 || out_n < x.size(-1)) {
    return false;
  }
  FusedQuantShape& s = t->s;
  s.n = x.size(-1);
  s.out_n = out_n;
  for (int i = 0; i < 3; ++i) {
    const int64_t dim = d - 4 + i;  // outer dimensions, right-aligned
    s.rows[i] = dim >= 0 ? x.size(dim) : 1;
    s.strides[i] = dim >= 0 ? x.stride(dim) : 0;
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out_n;
  *y = torch::empty(shape, x.options().memory_format(torch::MemoryFormat::Contiguous));
  t->x = x.data_ptr();
  t->y = y->data_ptr();
  return true;
}

// x [B, H, T, D] as the channel kernel reads it, writing a new contiguous tensor to *y; false
// when the kernel cannot read x.
bool DescribeChannel(const torch::Tensor& x, FusedChannelTensor* t, torch::Tensor* y) {
  if (!x.is_cuda() || KernelDtype(x.scalar_type()) < 0 || x.dim() != 4 || x.stride(-1) != 1) {
    return false;
  }
  for (int i = 0; i < 4; ++i) t->s.size[i] = x.size(i);
  for (int i = 0; i < 3; ++i) t->s.strides[i] = x.stride(i);
  *y = torch::empty(x.sizes(), x.options().memory_format(torch::MemoryFormat::Contiguous));
  t->x = x.data_ptr();
  t->y = y->data_ptr();
  return true;
}

void Launch(const FusedQuantTensor* t, int count, const torch::Tensor& like, const QuantFormat& f) {
  c10::cuda::CUDAGuard guard(like.device());
  const cudaError_t e = LaunchFusedFakeQuant(t, count, KernelDtype(like.scalar_type()), f.group,
                                             f.bits, f.sym, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "fused fake quantization kernel: ", cudaGetErrorString(e));
}

}  // namespace

bool FusedFakeQuantize(const torch::Tensor& x, const QuantFormat& f, torch::Tensor* out) {
  if (f.fp16_meta || !FusedFakeQuantEnabled()) return false;
  FusedQuantTensor t{};
  if (!Describe(x, f, x.dim() > 0 ? x.size(-1) : 0, &t, out)) return false;
  if (x.numel() > 0) Launch(&t, 1, x, f);
  return true;
}

bool FusedFakeQuantizePair(const torch::Tensor& a, const torch::Tensor& b, const QuantFormat& f,
                           int64_t out_n, torch::Tensor* ya, torch::Tensor* yb) {
  if (f.fp16_meta || !FusedFakeQuantEnabled() || !a.defined() || !b.defined() ||
      a.scalar_type() != b.scalar_type() || a.device() != b.device()) {
    return false;
  }
  FusedQuantTensor t[2] = {};
  torch::Tensor oa, ob;
  if (!Describe(a, f, out_n, &t[0], &oa) || !Describe(b, f, out_n, &t[1], &ob)) return false;
  if (a.numel() > 0 && b.numel() > 0) {
    Launch(t, 2, a, f);
  } else if (a.numel() > 0 || b.numel() > 0) {
    Launch(a.numel() > 0 ? &t[0] : &t[1], 1, a, f);
  }
  *ya = std::move(oa);
  *yb = std::move(ob);
  return true;
}

bool FusedChannelFakeQuantize(const torch::Tensor& a, const torch::Tensor& b, const QuantFormat& f,
                              torch::Tensor* ya, torch::Tensor* yb) {
  if (f.fp16_meta || f.group < 1 || !FusedFakeQuantEnabled() || !a.defined()) return false;
  const bool pair = b.defined();
  if (pair && (a.scalar_type() != b.scalar_type() || a.device() != b.device())) return false;
  FusedChannelTensor t[2] = {};
  torch::Tensor oa, ob;
  if (!DescribeChannel(a, &t[0], &oa) || (pair && !DescribeChannel(b, &t[1], &ob))) return false;
  // Empty tensors need no launch; the kernel takes one or two non-empty ones.
  FusedChannelTensor run[2];
  int count = 0;
  if (a.numel() > 0) run[count++] = t[0];
  if (pair && b.numel() > 0) run[count++] = t[1];
  if (count > 0) {
    c10::cuda::CUDAGuard guard(a.device());
    const cudaError_t e =
        LaunchFusedChannelFakeQuant(run, count, KernelDtype(a.scalar_type()), f.group, f.bits,
                                    f.sym, at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(e == cudaSuccess, "fused channel quantization kernel: ", cudaGetErrorString(e));
  }
  *ya = std::move(oa);
  if (pair) *yb = std::move(ob);
  return true;
}

void SetFusedFakeQuantVectorized(bool on) { SetFusedQuantVectorized(on); }
#else
bool FusedChannelFakeQuantize(const torch::Tensor&, const torch::Tensor&, const QuantFormat&,
                              torch::Tensor*, torch::Tensor*) {
  return false;
}
bool FusedFakeQuantize(const torch::Tensor&, const QuantFormat&, torch::Tensor*) { return false; }
bool FusedFakeQuantizePair(const torch::Tensor&, const torch::Tensor&, const QuantFormat&, int64_t,
                           torch::Tensor*, torch::Tensor*) {
  return false;
}
void SetFusedFakeQuantVectorized(bool) {}
#endif

}  // namespace kvsweep::engine
