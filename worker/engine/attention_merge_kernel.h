// The CUDA side of the packed attention's merge (attention.cc, AttendPacked); no libtorch in this
// header so that nvcc compiles the kernel without torch's headers.
#ifndef KVSWEEP_WORKER_ENGINE_ATTENTION_MERGE_KERNEL_H_
#define KVSWEEP_WORKER_ENGINE_ATTENTION_MERGE_KERNEL_H_

#include <cuda_runtime.h>
#include <stdint.h>

namespace kvsweep::engine {

enum { kMergeBF16 = 0, kMergeF16 = 1 };

// out [B, H, T, D] (contiguous, the inputs' dtype), row (b, h, t) with kv head h / g, GQA slot
// h % g, block t / C and row r = (h % g) * C + t % C of that block:
//   ob = band_out[b * Hkv + h / g][t / C][r][:]       lb = band_lse[b * Hkv + h / g][t / C][r]
// or, with band_by_position, the band's parts indexed by the row itself:
//   ob = band_out[b][h][t][:]                         lb = band_lse[b][h][t]
//   op = prefix_out[b][h][t - shift][:]               lp = prefix_lse[b][h][t - shift]
//   out = t >= shift ? ob + sigmoid(lp - lb) * (op - ob) : ob, computed in fp32.
// Strides are in elements; the last dimension of band_out and prefix_out is contiguous.
struct AttentionMergeArgs {
  const void* band_out;
  int64_t band_out_strides[3];  // [B*Hkv, nb, g*C] or [B, H, T] (D contiguous)
  const float* band_lse;
  int64_t band_lse_strides[3];  // [B*Hkv, nb, g*C] or [B, H, T]
  int band_by_position;
  const void* prefix_out;
  int64_t prefix_out_strides[3];  // [B, H, T - shift] (D contiguous)
  const float* prefix_lse;
  int64_t prefix_lse_strides[3];  // [B, H, T - shift]
  void* out;
  int64_t B, H, T, D, Hkv, g, C, shift;
};

cudaError_t LaunchAttentionMerge(const AttentionMergeArgs& a, int dtype, cudaStream_t stream);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_ATTENTION_MERGE_KERNEL_H_
