// Fused per-token fake quantization on CUDA: one kernel instead of the ~12 elementwise ones of
// the libtorch path (quantizer.cc), same arithmetic in the same order so results are bitwise
// equal: fp32 min/max (or absmax) per group, scale = range / levels (IEEE division),
// q = clamp(rint((x - min) / scale)), y = q * scale + min with separate roundings (no FMA),
// a group whose scale is 0 returned exactly, then rounded to the input dtype.
//
// One warp per group; lanes stride over the group's elements (groups are contiguous in memory:
// the last dimension has stride 1). Rows may be strided in up to three outer dimensions (the
// model hands over transposed [B, H, T, D] views).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "worker/engine/kv/fused_quant_kernel.h"

namespace kvsweep::engine {
namespace {

__device__ __forceinline__ float Load(const float* p) { return *p; }
__device__ __forceinline__ float Load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float Load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void Store(__half* p, float v) { *p = __float2half_rn(v); }

template <typename T>
__global__ void FakeQuantKernel(const T* __restrict__ x, T* __restrict__ y, FusedQuantShape s,
                                int group, int bits, bool sym) {
  const int64_t groups_per_row = s.n / group;
  const int64_t total_groups = s.rows[0] * s.rows[1] * s.rows[2] * groups_per_row;
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t g = warp; g < total_groups; g += warps) {
    const int64_t gi = g % groups_per_row;
    const int64_t row = g / groups_per_row;
    const int64_t r2 = row % s.rows[2];
    const int64_t r1 = (row / s.rows[2]) % s.rows[1];
    const int64_t r0 = row / (s.rows[2] * s.rows[1]);
    const T* in = x + r0 * s.strides[0] + r1 * s.strides[1] + r2 * s.strides[2] + gi * group;
    T* out = y + row * s.n + gi * group;  // y is contiguous
    float lo = INFINITY, hi = -INFINITY;
    for (int i = lane; i < group; i += 32) {
      const float v = Load(in + i);
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
    for (int off = 16; off > 0; off >>= 1) {
      lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
      hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
    }
    if (sym) {
      const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
      const float absmax = fmaxf(fabsf(lo), fabsf(hi));
      const float scale = __fdiv_rn(absmax, qmax);
      const float safe = scale > 0.f ? scale : 1.f;
      for (int i = lane; i < group; i += 32) {
        const float v = Load(in + i);
        const float q = fminf(fmaxf(rintf(__fdiv_rn(v, safe)), -qmax), qmax);
        Store(out + i, scale > 0.f ? __fmul_rn(q, scale) : v);
      }
    } else {
      const float levels = static_cast<float>((1 << bits) - 1);
      const float scale = __fdiv_rn(__fsub_rn(hi, lo), levels);
      const float safe = scale > 0.f ? scale : 1.f;
      for (int i = lane; i < group; i += 32) {
        const float v = Load(in + i);
        const float q = fminf(fmaxf(rintf(__fdiv_rn(__fsub_rn(v, lo), safe)), 0.f), levels);
        Store(out + i, scale > 0.f ? __fadd_rn(__fmul_rn(q, scale), lo) : v);
      }
    }
  }
}

template <typename T>
cudaError_t Launch(const void* x, void* y, const FusedQuantShape& s, int group, int bits, bool sym,
                   cudaStream_t stream) {
  const int64_t groups = s.rows[0] * s.rows[1] * s.rows[2] * (s.n / group);
  const int threads = 256;  // 8 warps
  int64_t blocks = (groups * 32 + threads - 1) / threads;
  if (blocks > 65535 * 16) blocks = 65535 * 16;  // grid-stride beyond this
  if (blocks < 1) blocks = 1;
  FakeQuantKernel<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<T*>(y), s, group, bits, sym);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchFusedFakeQuant(const void* x, void* y, int dtype, const FusedQuantShape& s,
                                 int group, int bits, bool sym, cudaStream_t stream) {
  switch (dtype) {
    case kFusedF32: return Launch<float>(x, y, s, group, bits, sym, stream);
    case kFusedBF16: return Launch<__nv_bfloat16>(x, y, s, group, bits, sym, stream);
    case kFusedF16: return Launch<__half>(x, y, s, group, bits, sym, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace kvsweep::engine
