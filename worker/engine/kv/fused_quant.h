// The fused CUDA fake quantizer, as quantizer.cc's FakeQuantize uses it: bitwise the same
// result as the libtorch path (fused_quant.cu explains), one kernel instead of ~12.
#ifndef KVSWEEP_WORKER_ENGINE_KV_FUSED_QUANT_H_
#define KVSWEEP_WORKER_ENGINE_KV_FUSED_QUANT_H_

#include "worker/engine/kv/quantizer.h"

namespace kvsweep::engine {

// Sets *out and returns true when the kernel applies: a CUDA build, x on a CUDA device in
// fp32/bf16/fp16 with 1..4 dimensions and a contiguous last dimension, fp32 metadata (the
// simulated `quant`; the packed format keeps the libtorch path), and the kernel enabled.
// Returns false otherwise (the caller uses libtorch ops).
bool FusedFakeQuantize(const torch::Tensor& x, const QuantFormat& f, torch::Tensor* out);

// K and V in one launch, each written into a new contiguous [..., out_n] (out_n >= the last
// dimension n) whose first n columns are FakeQuantize(x) and the rest zero: what the libtorch
// path gives with constant_pad_nd(FakeQuantize(x), {0, out_n - n}), bitwise. Same conditions as
// FusedFakeQuantize for both, plus one dtype and device; false (nothing written) otherwise.
bool FusedFakeQuantizePair(const torch::Tensor& a, const torch::Tensor& b, const QuantFormat& f,
                           int64_t out_n, torch::Tensor* ya, torch::Tensor* yb);

// Channel-axis quantization of a and b (b may be undefined), each [B, H, T, D] with a contiguous
// last dimension: each channel over blocks of `f.group` consecutive tokens, tokens past the last
// whole block as they are, into new contiguous tensors — bitwise what the libtorch path gives for
// FakeQuantize of the transposed [.., D, group] blocks (quant_codec.cc). Same conditions as
// FusedFakeQuantize otherwise; false (nothing written) where the kernel does not apply.
bool FusedChannelFakeQuantize(const torch::Tensor& a, const torch::Tensor& b, const QuantFormat& f,
                              torch::Tensor* ya, torch::Tensor* yb);

// Whether FusedFakeQuantize may use the kernel: on by default, off when the environment variable
// KVSWEEP_FUSED_QUANT is 0 at start-up (read once). The setter is for benchmarks and tests that
// compare both paths in one process.
bool FusedFakeQuantEnabled();
void SetFusedFakeQuantEnabled(bool enabled);

// Which kernel: the vectorized one (default; 16-byte accesses, a few lanes per group) or the
// one-warp-per-group fallback it replaces where the layout is not 16-byte aligned. Both are
// bitwise the libtorch path; `kvsweep-engine-bench --check-fused` checks and times both.
// No effect without CUDA.
void SetFusedFakeQuantVectorized(bool on);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_KV_FUSED_QUANT_H_
