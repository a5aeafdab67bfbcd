// The LM head's scoring in one kernel (head_score_kernel.h): per row of bf16/fp16 logits, the
// target's log-probability and whether the target is the argmax, in one pass over the row. The
// libtorch path it replaces converts the logits to fp32, then to fp64 in blocks, and reads them
// again for logsumexp, gather and argmax: about 38 bytes of memory traffic per logit against the
// 2 of this kernel's single read of the half-precision row.
//
// One pass: each thread keeps its running maximum m (and its first index) and s = sum exp(x - m)
// over what it has read, rescaling s by exp(m_old - m_new) in fp64 when the maximum grows (a few
// times per thread); the threads' states merge the same way. A thread reads groups of kUnroll
// packs of N values; a group's maximum is found first, so that its terms are taken against the
// maximum after it and a pack's N terms summed in fp32 before they join s (per value work: a
// conversion, a maximum, an exp and an add; the value-by-value form with its branches ran at a
// fifth of the memory's speed on the H200). Numerics: every logit is widened exactly; each term
// exp(x - m) is fp32 (expf, at most 2 units in the last place: 2^-22 relative; x - m rounded to
// fp32), a pack's terms are summed as a tree (log2(N) <= 3 roundings of 2^-24), and the packs'
// sums are summed in fp64, the rescaling factors and the log are fp64. The relative error of the
// sum is then at most 2^-22 + 3 * 2^-24 plus 2^-24 times the softmax-weighted mean of m - x, which
// is at most the row's entropy, so log(vocab): |logprob - exact| <= 2^-22 + (3 + log(vocab)) *
// 2^-24, 1.1e-6 nats at a vocabulary of 152k — fp32 rounding of a term and of a pack's 8, not an
// fp32 sum's bias over the vocabulary (which grows with it and is why the sum is fp64).
#include <math.h>
#include <stdint.h>

#include "worker/engine/half_pack.cuh"
#include "worker/engine/head_score_kernel.h"

namespace kvsweep::engine {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // packs loaded before any is used: loads in flight per thread

// a ranks above b as argmax does: larger, or NaN against a number.
__device__ __forceinline__ bool Above(float a, float b) { return a > b || (isnan(a) && !isnan(b)); }

// A part of a row: its largest value m (argmax's ranking), the first index of it (vocab where
// nothing has been read) and s = sum over the part of exp(x - m) (meaningful while m is finite).
struct Part {
  float m;
  int64_t i;
  double s;
};

// Reads value v at index j, after every smaller index of this part. The part's first value is
// taken even when it is -inf, so that a row of -inf has argmax 0 as torch::argmax gives it.
__device__ __forceinline__ void Read(float v, int64_t j, int64_t vocab, Part* p) {
  if (Above(v, p->m) || p->i == vocab) {
    // The part's terms so far were relative to the old maximum; -inf there means they were all
    // -inf (exp 0). A new maximum of +inf or NaN decides the row's result without s.
    p->s = isinf(p->m) ? 1.0 : p->s * exp(static_cast<double>(p->m) - static_cast<double>(v)) + 1.0;
    p->m = v;
    p->i = j;
  } else if (isfinite(p->m)) {
    p->s += static_cast<double>(expf(v - p->m));  // v = -inf adds 0
  }
}

// Merges part o into p: the larger maximum (the smaller index on a tie) and the sums rescaled to
// it.
__device__ __forceinline__ void Merge(const Part& o, Part* p) {
  const bool o_wins = Above(o.m, p->m) || (!Above(p->m, o.m) && o.i < p->i);
  const float m = o_wins ? o.m : p->m;
  if (isfinite(m)) {
    // A part whose maximum is -inf (nothing or only -inf read) adds nothing.
    const double a = isinf(p->m) ? 0.0 : p->s * exp(static_cast<double>(p->m) - m);
    const double b = isinf(o.m) ? 0.0 : o.s * exp(static_cast<double>(o.m) - m);
    p->s = a + b;
  }
  if (o_wins) {
    p->m = o.m;
    p->i = o.i;
  }
}

// The sum of n values as a balanced tree: each value's relative rounding error at most
// log2(n) * 2^-24.
template <int n>
__device__ __forceinline__ float TreeSum(const float* t) {
  if constexpr (n == 1) {
    return t[0];
  } else {
    return TreeSum<n / 2>(t) + TreeSum<n / 2>(t + n / 2);
  }
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads, 4) HeadScoreKernel(HeadScoreArgs a) {
  static_assert((N & (N - 1)) == 0, "packs of a power of two");
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(a.logits) + row * a.stride;
  const int64_t V = a.vocab;
  Part p{-INFINITY, V, 0.0};
  constexpr int64_t kStep = static_cast<int64_t>(kThreads) * N;
  for (int64_t j0 = static_cast<int64_t>(threadIdx.x) * N; j0 < V; j0 += kStep * kUnroll) {
    Pack<T, N> v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (j0 + u * kStep < V) v[u] = Load<T, N>(x + j0 + u * kStep);
    }
    // The group's largest value (fmaxf passes NaN over: caught below); packs past the row's end
    // hold nothing. Values are widened where used, not kept in fp32 (registers: occupancy).
    bool in_row[kUnroll];
    float top = -INFINITY;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      in_row[u] = j0 + u * kStep < V;
      if (in_row[u]) {
#pragma unroll
        for (int e = 0; e < N; ++e) top = fmaxf(top, ToF(v[u].v[e]));
      }
    }
    // The common case: finite values under a finite maximum. The maximum moves to the group's
    // first largest value if that is above it (then the sum is rescaled, as Read does), and the
    // group's terms exp(x - m) go into s a pack at a time, each pack's terms summed in fp32 as a
    // tree (a thread's first group too: it starts the running maximum). Anything else
    // (infinities, NaN, a running maximum of -inf) goes value by value through Read, the
    // reference semantics.
    bool by_value = !isfinite(top) || (p.i != V && !isfinite(p.m));
    if (!by_value) {
      const Part before = p;
      if (p.i == V || top > p.m) {
        int64_t first = V;
#pragma unroll
        for (int u = kUnroll - 1; u >= 0; --u) {
#pragma unroll
          for (int e = N - 1; e >= 0; --e) {
            if (in_row[u] && ToF(v[u].v[e]) == top) first = j0 + u * kStep + e;
          }
        }
        p.s = p.i == V ? 0.0 : p.s * exp(static_cast<double>(p.m) - static_cast<double>(top));
        p.m = top;
        p.i = first;
      }
      double add = 0.0;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (in_row[u]) {
          float t[N];
#pragma unroll
          for (int e = 0; e < N; ++e) t[e] = expf(ToF(v[u].v[e]) - p.m);  // -inf adds 0
          add += static_cast<double>(TreeSum<N>(t));
        }
      }
      if (isnan(add)) {  // a NaN value: the group again, value by value
        p = before;
        by_value = true;
      } else {
        p.s += add;
      }
    }
    if (by_value) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (in_row[u]) {
#pragma unroll
          for (int e = 0; e < N; ++e) Read(ToF(v[u].v[e]), j0 + u * kStep + e, V, &p);
        }
      }
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    Part other;
    other.m = __shfl_xor_sync(0xffffffffu, p.m, o);
    other.i = __shfl_xor_sync(0xffffffffu, p.i, o);
    other.s = __shfl_xor_sync(0xffffffffu, p.s, o);
    Merge(other, &p);
  }
  __shared__ Part s_part[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) s_part[warp] = p;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) Merge(s_part[w], &p);
    // log-sum-exp: m + log(s) for a finite maximum; +inf, -inf (every logit -inf: log 0) or NaN
    // otherwise, as libtorch's logsumexp gives them.
    const double m = static_cast<double>(p.m);
    const double lse = isfinite(m) ? m + log(p.s) : m;
    const int64_t t = a.target[row];
    const bool valid = t >= 0 && t < V;
    a.logprob[row] = valid ? static_cast<double>(ToF(x[t])) - lse : nan("");
    a.hit[row] = valid && p.i == t;
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
