// The LM head's scoring in one kernel (head_score_kernel.h): per row of bf16/fp16 logits, the
// target's log-probability and whether the target is the argmax. The libtorch path it replaces
// converts the logits to fp32, then to fp64 in blocks, and reads them again for logsumexp, gather
// and argmax: about 38 bytes of memory traffic per logit against at most the 4 of this kernel's
// two passes over the half-precision row (the second reads from L2 what is still there).
//
// Numerics: every logit is widened exactly (bf16/fp16 -> fp64) and exp, the sum and the log are
// fp64 as in the libtorch path's fp64 logsumexp; only the summation order differs (a tree over
// the block's threads), which moves the result by a few units of fp64 rounding.
#include <math.h>
#include <stdint.h>

#include "worker/engine/half_pack.cuh"
#include "worker/engine/head_score_kernel.h"

namespace kvsweep::engine {
namespace {

constexpr int kThreads = 256;

// a ranks above b as argmax does: larger, or NaN against a number.
__device__ __forceinline__ bool Above(float a, float b) {
  return a > b || (isnan(a) && !isnan(b));
}

// Folds (v, i) into the running (best, best_i): the first index of the largest value.
__device__ __forceinline__ void Consider(float v, int64_t i, float* best, int64_t* best_i) {
  if (Above(v, *best) || (!Above(*best, v) && i < *best_i)) {
    *best = v;
    *best_i = i;
  }
}

template <typename T, int N>
__global__ void HeadScoreKernel(HeadScoreArgs a) {
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(a.logits) + row * a.stride;
  const int64_t V = a.vocab;
  // Pass 1: the largest value and its first index. Threads start with "nothing seen" (index V).
  float best = -INFINITY;
  int64_t best_i = V;
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * N; j < V;
       j += static_cast<int64_t>(kThreads) * N) {
    const Pack<T, N> p = Load<T, N>(x + j);
#pragma unroll
    for (int e = 0; e < N; ++e) Consider(ToF(p.v[e]), j + e, &best, &best_i);
  }
  __shared__ float s_best[kThreads / 32];
  __shared__ int64_t s_idx[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    Consider(ob, oi, &best, &best_i);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    s_best[warp] = best;
    s_idx[warp] = best_i;
  }
  __syncthreads();
  best = s_best[0];
  best_i = s_idx[0];
  for (int w = 1; w < kThreads / 32; ++w) Consider(s_best[w], s_idx[w], &best, &best_i);
  // Pass 2: sum of exp(x - shift) in fp64, shift = the maximum (0 where it is infinite).
  const double m = static_cast<double>(best);
  const double shift = isinf(m) ? 0.0 : m;
  double sum = 0.0;
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * N; j < V;
       j += static_cast<int64_t>(kThreads) * N) {
    const Pack<T, N> p = Load<T, N>(x + j);
#pragma unroll
    for (int e = 0; e < N; ++e) sum += exp(static_cast<double>(ToF(p.v[e])) - shift);
  }
  __shared__ double s_sum[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) s_sum[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) total += s_sum[w];
    const int64_t t = a.target[row];
    const bool valid = t >= 0 && t < V;
    a.logprob[row] =
        valid ? static_cast<double>(ToF(x[t])) - (log(total) + shift) : nan("");
    a.hit[row] = valid && best_i == t;
  }
}

template <typename T>
cudaError_t Launch(const HeadScoreArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = a.vocab % kVec == 0 && a.stride % kVec == 0 &&
                   reinterpret_cast<uintptr_t>(a.logits) % 16 == 0;
  const dim3 grid(static_cast<unsigned>(a.rows));
  if (vec) {
    HeadScoreKernel<T, kVec><<<grid, kThreads, 0, stream>>>(a);
  } else {
    HeadScoreKernel<T, 1><<<grid, kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchHeadScore(const HeadScoreArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  return a.dtype == kHeadBf16 ? Launch<__nv_bfloat16>(a, stream) : Launch<__half>(a, stream);
}

}  // namespace kvsweep::engine
