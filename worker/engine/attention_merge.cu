// The packed attention's merge in one pass (attention_merge_kernel.h): the band's and the
// prefix's outputs read in the layouts their kernels wrote, each row's prefix share from the two
// log-sum-exps, the merged row written once in [B, H, T, D]. Replaces a dozen libtorch passes
// (layout copies, fp32 casts, the lerp) over the layer's attention output.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "worker/engine/attention_merge_kernel.h"

namespace kvsweep::engine {
namespace {

__device__ __forceinline__ float Load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float Load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }
__device__ __forceinline__ void Store(__half* p, float x) { *p = __float2half(x); }

// Where output row `row`'s parts live, from column d0 on, and the prefix's share of the row's
// softmax mass, e^lp / (e^lp + e^lb) (rows t < shift have no causal part: merge is false).
template <typename T>
struct Row {
  const T* ob;
  const T* op;
  T* out;
  float share;
  bool merge;
};

template <typename T>
__device__ __forceinline__ Row<T> Locate(const AttentionMergeArgs& a, int64_t row, int64_t d0) {
  const int64_t t = row % a.T;
  const int64_t h = (row / a.T) % a.H;
  const int64_t b = row / (a.T * a.H);
  // The band's row: (b * Hkv + h / g, block, GQA-folded row) or (b, h, t).
  int64_t i0 = b, i1 = h, i2 = t;
  if (!a.band_by_position) {
    const int64_t kvh = h / a.g, slot = h % a.g;
    i0 = b * a.Hkv + kvh;
    i1 = t / a.C;
    i2 = slot * a.C + t % a.C;
  }
  Row<T> x;
  x.ob = static_cast<const T*>(a.band_out) + i0 * a.band_out_strides[0] +
         i1 * a.band_out_strides[1] + i2 * a.band_out_strides[2] + d0;
  x.out = static_cast<T*>(a.out) + row * a.D + d0;
  x.merge = t >= a.shift;
  x.op = nullptr;
  x.share = 0.0f;
  if (!x.merge) return x;
  const float lb = a.band_lse[i0 * a.band_lse_strides[0] + i1 * a.band_lse_strides[1] +
                              i2 * a.band_lse_strides[2]];
  const float lp = a.prefix_lse[b * a.prefix_lse_strides[0] + h * a.prefix_lse_strides[1] +
                                (t - a.shift) * a.prefix_lse_strides[2]];
  x.share = 1.0f / (1.0f + expf(lb - lp));
  x.op = static_cast<const T*>(a.prefix_out) + b * a.prefix_out_strides[0] +
         h * a.prefix_out_strides[1] + (t - a.shift) * a.prefix_out_strides[2] + d0;
  return x;
}

// One block per output row (b, h, t); its threads stride over D.
template <typename T>
__global__ void MergeKernel(AttentionMergeArgs a) {
  const Row<T> x = Locate<T>(a, blockIdx.x, 0);
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) {
    const float y = Load(x.ob + d);
    Store(x.out + d, x.merge ? y + x.share * (Load(x.op + d) - y) : y);
  }
}

// The same with 16-byte accesses: D / 8 threads per row, 8 elements each (every row start and
// stride a multiple of 8 elements, the buffers 16-byte aligned).
template <typename T>
__global__ void MergeKernelVec(AttentionMergeArgs a, int64_t rows) {
  const int64_t lanes = a.D / 8;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = idx / lanes;
  if (row >= rows) return;
  const Row<T> x = Locate<T>(a, row, (idx % lanes) * 8);
  const uint4 vb = *reinterpret_cast<const uint4*>(x.ob);
  if (!x.merge) {
    *reinterpret_cast<uint4*>(x.out) = vb;
    return;
  }
  const uint4 vp = *reinterpret_cast<const uint4*>(x.op);
  const T* eb = reinterpret_cast<const T*>(&vb);
  const T* ep = reinterpret_cast<const T*>(&vp);
  uint4 vo;
  T* eo = reinterpret_cast<T*>(&vo);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float y = Load(eb + i);
    Store(eo + i, y + x.share * (Load(ep + i) - y));
  }
  *reinterpret_cast<uint4*>(x.out) = vo;
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

cudaError_t LaunchAttentionMerge(const AttentionMergeArgs& a, int dtype, cudaStream_t stream) {
  const int64_t rows = a.B * a.H * a.T;
  if (rows == 0) return cudaSuccess;
  if (rows > 0x7fffffff || a.D <= 0) return cudaErrorInvalidValue;
  const bool vec = a.D % 8 == 0 && a.band_out_strides[0] % 8 == 0 &&
                   a.band_out_strides[1] % 8 == 0 && a.band_out_strides[2] % 8 == 0 &&
                   a.prefix_out_strides[0] % 8 == 0 && a.prefix_out_strides[1] % 8 == 0 &&
                   a.prefix_out_strides[2] % 8 == 0 && Aligned16(a.band_out) &&
                   Aligned16(a.prefix_out) && Aligned16(a.out);
  if (vec) {
    const int threads = 256;
    const int64_t blocks = (rows * (a.D / 8) + threads - 1) / threads;
    if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
    switch (dtype) {
      case kMergeBF16:
        MergeKernelVec<__nv_bfloat16>
            <<<static_cast<unsigned>(blocks), threads, 0, stream>>>(a, rows);
        break;
      case kMergeF16:
        MergeKernelVec<__half><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(a, rows);
        break;
      default:
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
  }
  const int threads = a.D >= 128 ? 128 : (a.D >= 64 ? 64 : 32);
  const dim3 grid(static_cast<unsigned>(rows));
  switch (dtype) {
    case kMergeBF16:
      MergeKernel<__nv_bfloat16><<<grid, threads, 0, stream>>>(a);
      break;
    case kMergeF16:
      MergeKernel<__half><<<grid, threads, 0, stream>>>(a);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace kvsweep::engine
