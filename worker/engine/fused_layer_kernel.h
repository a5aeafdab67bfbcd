// The CUDA side of the decoder layer's fused elementwise work (fused_layer.h); no libtorch in
// this header so that nvcc compiles the kernels without torch's headers. Every kernel computes
// in fp32 and rounds to the storage dtype exactly where the libtorch ops it replaces round
// (fused_layer.cu says where), so the results are those ops' bit for bit, except the RMS
// statistic's fp32 sum, which adds the row in another order.
#ifndef KVSWEEP_WORKER_ENGINE_FUSED_LAYER_KERNEL_H_
#define KVSWEEP_WORKER_ENGINE_FUSED_LAYER_KERNEL_H_

#include <cuda_runtime.h>
#include <stdint.h>

#include "worker/engine/rms_norm_style.h"

namespace kvsweep::engine {

// Storage dtypes the kernels take.
enum LayerKernelDtype : int { kLayerBf16 = 0, kLayerFp16 = 1 };

// rows x cols, each row `cols` contiguous elements, row r at base + r * stride (elements).
//   residual != null: s = x + residual (rounded), written to x in place; otherwise s = x.
//   y = RMSNorm(s) in `style` (rms_norm_style.h), r = rsqrt(round(mean(s^2)) + eps):
//   kRmsLlama w * round(s * r), kRmsGemma round(s * r * (1 + w)), kRmsOlmo2 round(w * s * r).
// y is written contiguous [rows, cols]; or, with add_to != null (and residual null: the norm
// after a block, OLMo 2's order), not written but added: add_to = round(add_to + y) in place,
// as x + RMSNorm(block output) gives it (add_to's rows at its own stride).
struct RmsNormArgs {
  void* x;
  int64_t x_stride;
  const void* residual;
  int64_t residual_stride;
  const void* w;  // [cols], the storage dtype
  void* y;
  void* add_to;
  int64_t add_to_stride;
  int64_t rows, cols;
  float eps;
  int style;  // RmsNormStyle
  int dtype;  // LayerKernelDtype
};
cudaError_t LaunchRmsNorm(const RmsNormArgs& a, cudaStream_t stream);

// out [rows, cols] contiguous = round(round(silu(gate)) * up): torch::silu(gate) * up.
struct SwiGluArgs {
  const void* gate;
  int64_t gate_stride;
  const void* up;
  int64_t up_stride;
  void* out;
  int64_t rows, cols;
  int dtype;
};
cudaError_t LaunchSwiGlu(const SwiGluArgs& a, cudaStream_t stream);

// The projections' output rows (b, t) of q [.., H*D], k [.., Hkv*D], v [.., Hkv*D] (each at its
// own base and row stride) into contiguous [B, H, T, D], [B, Hkv, T, D], [B, Hkv, T, D]: q and k
// rotated by transformers' rotate-half RoPE at position t,
//   out = round(round(x * cos[t]) + round(rotate_half(x) * sin[t])),
// v copied. cos, sin: [>= T, D] contiguous tables in the storage dtype.
// q_norm != null: each head's row of q and of k is first normalized over its D values with
// weight q_norm / k_norm ([D], the storage dtype), as RmsNormArgs says (norm_style picks the
// formula), and the rounded result rotated (Qwen3's and Gemma 3's per-head q/k norms). Then the
// kernel needs D / 2 / (elements per thread) to be a power of two <= 32 (one warp's lanes hold
// a head): RopeLayoutWidth says whether a width fits.
struct RopeLayoutArgs {
  const void* q;
  const void* k;
  const void* v;
  int64_t q_stride, k_stride, v_stride;  // elements between rows (b, t) and (b, t + 1)
  const void* cos;
  const void* sin;
  void* q_out;
  void* k_out;
  void* v_out;
  int64_t B, T;
  int H, Hkv, D;
  int dtype;
  const void* q_norm;  // null: no norm
  const void* k_norm;
  float norm_eps;
  int norm_style;         // RmsNormStyle
  bool q_position_major;  // q_out contiguous [B, T, H, D] instead of [B, H, T, D]
};
cudaError_t LaunchRopeLayout(const RopeLayoutArgs& a, cudaStream_t stream);

// The elements per thread LaunchRopeLayout will use for `a` (null pointers count as aligned,
// so callers may ask before allocating the outputs): 8, 2 or 1; 0 where none fits, and then
// LaunchRopeLayout refuses (cudaErrorInvalidValue).
int RopeLayoutWidth(const RopeLayoutArgs& a);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_FUSED_LAYER_KERNEL_H_
