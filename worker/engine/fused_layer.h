// The decoder layer's elementwise work fused on the GPU (fused_layer.cu): the residual add with
// the RMSNorm after it, SwiGLU, and RoPE (after the per-head q/k norm where a family has one)
// written straight into attention's [B, H, T, D] layout.
// Model::Forward uses them in bf16/fp16 on CUDA; everywhere else (the CPU, fp32, a build without
// CUDA, or switched off) it runs the libtorch ops they replace. Each result is those ops' bit for
// bit apart from the RMS statistic's fp32 summation order. (The projections stacked with them,
// model.h, are one wider matrix product each; cuBLAS may pick other kernels for that shape, so
// their outputs may differ from the separate products' in the last bits.)
#ifndef KVSWEEP_WORKER_ENGINE_FUSED_LAYER_H_
#define KVSWEEP_WORKER_ENGINE_FUSED_LAYER_H_

#include "worker/engine/rms_norm_style.h"
#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

// Whether the kernels exist for this device and dtype: a CUDA build, a CUDA device, bf16/fp16.
bool FusedLayerSupports(torch::Device device, torch::ScalarType dtype);

// On by default; benchmarks compare both paths in one process by switching it off.
void SetFusedLayerEnabled(bool on);
bool FusedLayerEnabled();

// FusedLayerSupports(like's device and dtype) and enabled.
bool FusedLayerApplies(const torch::Tensor& like);

// *x += residual (when residual is defined), in place, then *y = RMSNorm(*x) with weight w in
// the family's style (RmsNormOf, model.h), a new contiguous tensor of x's shape. x, residual:
// contiguous, same shape; w [x.size(-1)]. False, with nothing written, where the kernel does not
// apply.
bool FusedAddRmsNorm(torch::Tensor* x, const torch::Tensor& residual, const torch::Tensor& w,
                     double eps, RmsNormStyle style, torch::Tensor* y);

// *x += RMSNorm(delta) with weight w in the given style, in place: the norm after a block, OLMo
// 2's order. x contiguous; delta x's shape with rows evenly strided and a contiguous last
// dimension, not overlapping x; w [x.size(-1)]. False, with nothing written, where the kernel
// does not apply.
bool FusedRmsNormAdd(torch::Tensor* x, const torch::Tensor& delta, const torch::Tensor& w,
                     double eps, RmsNormStyle style);

// *out = silu(gate) * up, new contiguous; gate and up [rows, cols] in their last two dimensions
// with a contiguous last one (e.g. the two halves of one fused projection). False where the
// kernel does not apply.
bool FusedSwiGlu(const torch::Tensor& gate, const torch::Tensor& up, torch::Tensor* out);

// q [B, T, H*D], k and v [B, T, Hkv*D] (last dimension contiguous, rows evenly strided: slices
// of one fused projection, or three tensors) -> *q_out and *k_out rotated by the rotate-half
// RoPE whose tables cos, sin ([>= T, D], contiguous) hold position t in row t, and *v_out v, each
// new contiguous [B, Hx, T, D]. With `norm`, each head's q and k are first RMS-normalized over
// their D values (RmsNormOf(norm->style), weight [D]: Qwen3's and Gemma 3's per-head norms) and
// the rounded result rotated, as the libtorch ops in that order give it apart from the
// statistic's summation order. q_position_major: *q_out is instead a [B, H, T, D] view of a new
// contiguous [B, T, H, D] (what flash attention reads natively, and then writes its output in,
// so the output projection reads it without a transposing copy). False, with nothing written,
// where the kernel does not apply.
struct QkHeadNorm {
  torch::Tensor q_w, k_w;  // [D]
  double eps = 1e-6;
  RmsNormStyle style = kRmsLlama;
};
bool FusedRopeLayout(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& cos, const torch::Tensor& sin, int64_t H, int64_t Hkv,
                     int64_t D, torch::Tensor* q_out, torch::Tensor* k_out, torch::Tensor* v_out,
                     const QkHeadNorm* norm = nullptr, bool q_position_major = false);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_FUSED_LAYER_H_
