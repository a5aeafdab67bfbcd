// The decoder layer's elementwise work in three kernels (fused_layer_kernel.h): the residual add
// with the RMSNorm that follows it, SwiGLU's silu(gate) * up, and RoPE of q and k (after their
// per-head RMSNorm, where the family has one) written straight into the [B, H, T, D] layout
// attention reads (v copied into its layout alongside).
// libtorch runs each as several kernels with fp32 temporaries in global memory; here every
// element is read and written once.
//
// Rounding: each value is computed in fp32 and rounded to the storage dtype (round to nearest
// even, as c10::BFloat16 / c10::Half convert) exactly where the libtorch op sequence produces a
// tensor of that dtype: x + r; the norm's output in its family's style (rms_norm_style.h), and
// its sum with the residual stream where the norm follows a block; silu(g) then * up; x * cos,
// rotate_half(x) * sin, then their sum. The one difference is the RMS statistic: an fp32 sum
// over the row in this kernel's order, not libtorch's reduction order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <algorithm>

#include "worker/engine/fused_layer_kernel.h"
#include "worker/engine/half_pack.cuh"

namespace kvsweep::engine {
namespace {

// Sum over the block (blockDim.x a multiple of 32), returned to every thread.
__device__ float BlockSum(float v) {
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = lane < warps ? part[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// r = rsqrt(mean + eps) from the row's sum of squares, with the mean and the sum rounded apart
// as libtorch's ops round them (no fused multiply-add).
__device__ __forceinline__ float RmsFactor(float sum_sq, int cols, float eps) {
  return rsqrtf(__fadd_rn(__fmul_rn(sum_sq, 1.0f / static_cast<float>(cols)), eps));
}

// The normalized value s * r with weight w, rounded as the style's libtorch op rounds it
// (rms_norm_style.h), back in fp32.
template <typename T>
__device__ __forceinline__ float NormOut(float sr, float w, int style) {
  if (style == kRmsGemma) return Round<T>(sr * (1.0f + w));
  if (style == kRmsOlmo2) return Round<T>(w * sr);
  return Round<T>(w * Round<T>(sr));
}

// One block per row.
template <typename T, int N>
__global__ void RmsNormKernel(RmsNormArgs a) {
  const int64_t row = blockIdx.x;
  T* x = static_cast<T*>(a.x) + row * a.x_stride;
  const T* res =
      a.residual == nullptr ? nullptr : static_cast<const T*>(a.residual) + row * a.residual_stride;
  const T* w = static_cast<const T*>(a.w);
  T* y = a.add_to != nullptr ? static_cast<T*>(a.add_to) + row * a.add_to_stride
                             : static_cast<T*>(a.y) + row * a.cols;
  const int n = static_cast<int>(a.cols / N);
  float ss = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    Pack<T, N> xv = Load<T, N>(x + i * N);
    if (res != nullptr) {
      const Pack<T, N> rv = Load<T, N>(res + i * N);
#pragma unroll
      for (int j = 0; j < N; ++j) xv.v[j] = FromF<T>(ToF(xv.v[j]) + ToF(rv.v[j]));
      Store<T, N>(x + i * N, xv);
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float f = ToF(xv.v[j]);
      ss += __fmul_rn(f, f);  // each square rounded, as pow(2) gives it (no fused multiply-add)
    }
  }
  // mean(s^2) as libtorch's mean: the sum times 1/cols.
  const float r = RmsFactor(BlockSum(ss), static_cast<int>(a.cols), a.eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const Pack<T, N> xv = Load<T, N>(x + i * N);  // this thread's own write, if any
    const Pack<T, N> wv = Load<T, N>(w + i * N);
    Pack<T, N> yv;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      yv.v[j] = FromF<T>(NormOut<T>(ToF(xv.v[j]) * r, ToF(wv.v[j]), a.style));
    }
    if (a.add_to != nullptr) {
      const Pack<T, N> base = Load<T, N>(y + i * N);
#pragma unroll
      for (int j = 0; j < N; ++j) yv.v[j] = FromF<T>(ToF(base.v[j]) + ToF(yv.v[j]));
    }
    Store<T, N>(y + i * N, yv);
  }
}

template <typename T, int N>
__global__ void SwiGluKernel(SwiGluArgs a) {
  const int64_t per_row = a.cols / N, total = a.rows * per_row;
  const T* gate = static_cast<const T*>(a.gate);
  const T* up = static_cast<const T*>(a.up);
  T* out = static_cast<T*>(a.out);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row, c = (i - r * per_row) * N;
    const Pack<T, N> g = Load<T, N>(gate + r * a.gate_stride + c);
    const Pack<T, N> u = Load<T, N>(up + r * a.up_stride + c);
    Pack<T, N> o;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float x = ToF(g.v[j]);
      // libtorch's silu: x / (1 + exp(-x)) in fp32, rounded; then the product, rounded.
      const float s = Round<T>(x / (1.0f + expf(-x)));
      o.v[j] = FromF<T>(s * ToF(u.v[j]));
    }
    Store<T, N>(out + r * a.cols + c, o);
  }
}

// One block per position (b, t). With the per-head norm (a.q_norm != null) the per_head threads
// of one head are consecutive lanes of one warp (per_head a power of two <= 32, blockDim a
// multiple of it) and every lane runs every iteration, so the shuffles see whole warps.
template <typename T, int N>
__global__ void RopeLayoutKernel(RopeLayoutArgs a) {
  const int64_t row = blockIdx.x;
  const int64_t b = row / a.T, t = row - b * a.T;
  const int half = a.D / 2;
  const T* cs = static_cast<const T*>(a.cos) + t * a.D;
  const T* sn = static_cast<const T*>(a.sin) + t * a.D;
  const int per_head = half / N;
  const int total = (a.H + a.Hkv) * per_head;
  const bool norm = a.q_norm != nullptr;
  for (int base = 0; base < total; base += blockDim.x) {
    const int i = base + threadIdx.x;
    const bool active = i < total;
    const int hh = active ? i / per_head : 0, d = active ? (i - hh * per_head) * N : 0;
    const bool is_q = hh < a.H;
    const int h = is_q ? hh : hh - a.H;
    const T* src = is_q ? static_cast<const T*>(a.q) + row * a.q_stride + h * a.D
                        : static_cast<const T*>(a.k) + row * a.k_stride + h * a.D;
    float f1[N], f2[N];
    if (active) {
      const Pack<T, N> x1 = Load<T, N>(src + d), x2 = Load<T, N>(src + d + half);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        f1[j] = ToF(x1.v[j]);
        f2[j] = ToF(x2.v[j]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) f1[j] = f2[j] = 0.f;
    }
    if (norm) {
      float ss = 0.f;
#pragma unroll
      for (int j = 0; j < N; ++j) ss += __fmul_rn(f1[j], f1[j]) + __fmul_rn(f2[j], f2[j]);
      for (int o = per_head / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      const float r = RmsFactor(ss, a.D, a.norm_eps);
      if (active) {
        const T* w = static_cast<const T*>(is_q ? a.q_norm : a.k_norm);
        const Pack<T, N> w1 = Load<T, N>(w + d), w2 = Load<T, N>(w + d + half);
#pragma unroll
        for (int j = 0; j < N; ++j) {
          f1[j] = NormOut<T>(f1[j] * r, ToF(w1.v[j]), a.norm_style);
          f2[j] = NormOut<T>(f2[j] * r, ToF(w2.v[j]), a.norm_style);
        }
      }
    }
    if (!active) continue;
    T* dst = !is_q                ? static_cast<T*>(a.k_out) + ((b * a.Hkv + h) * a.T + t) * a.D
             : a.q_position_major ? static_cast<T*>(a.q_out) + (row * a.H + h) * a.D
                                  : static_cast<T*>(a.q_out) + ((b * a.H + h) * a.T + t) * a.D;
    const Pack<T, N> c1 = Load<T, N>(cs + d), c2 = Load<T, N>(cs + d + half);
    const Pack<T, N> s1 = Load<T, N>(sn + d), s2 = Load<T, N>(sn + d + half);
    Pack<T, N> o1, o2;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float a1 = f1[j], a2 = f2[j];
      // rotate_half(x) = cat(-x2, x1).
      o1.v[j] = FromF<T>(Round<T>(a1 * ToF(c1.v[j])) + Round<T>(-a2 * ToF(s1.v[j])));
      o2.v[j] = FromF<T>(Round<T>(a2 * ToF(c2.v[j])) + Round<T>(a1 * ToF(s2.v[j])));
    }
    Store<T, N>(dst + d, o1);
    Store<T, N>(dst + d + half, o2);
  }
  const int per_v = a.D / N;
  for (int i = threadIdx.x; i < a.Hkv * per_v; i += blockDim.x) {
    const int h = i / per_v, d = (i - h * per_v) * N;
    Store<T, N>(static_cast<T*>(a.v_out) + ((b * a.Hkv + h) * a.T + t) * a.D + d,
                Load<T, N>(static_cast<const T*>(a.v) + row * a.v_stride + h * a.D + d));
  }
}

// Whether every pointer is aligned to, and every stride and length a multiple of, n elements
// of `bytes` each.
bool Aligned(int n, int bytes, std::initializer_list<const void*> ptrs,
             std::initializer_list<int64_t> counts) {
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % (n * bytes) != 0) return false;
  }
  for (int64_t c : counts) {
    if (c % n != 0) return false;
  }
  return true;
}

template <typename T>
cudaError_t RmsNormTyped(const RmsNormArgs& a, cudaStream_t stream) {
  const bool v8 = Aligned(8, 2, {a.x, a.residual, a.w, a.y, a.add_to},
                          {a.cols, a.x_stride, a.residual == nullptr ? 0 : a.residual_stride,
                           a.add_to == nullptr ? 0 : a.add_to_stride});
  const int64_t units = v8 ? a.cols / 8 : a.cols;
  const int threads =
      static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, (units + 31) / 32 * 32)));
  if (v8) {
    RmsNormKernel<T, 8><<<static_cast<unsigned>(a.rows), threads, 0, stream>>>(a);
  } else {
    RmsNormKernel<T, 1><<<static_cast<unsigned>(a.rows), threads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t SwiGluTyped(const SwiGluArgs& a, cudaStream_t stream) {
  const bool v8 = Aligned(8, 2, {a.gate, a.up, a.out}, {a.cols, a.gate_stride, a.up_stride});
  const int64_t total = a.rows * (v8 ? a.cols / 8 : a.cols);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 1 << 30));
  if (v8) {
    SwiGluKernel<T, 8><<<blocks, 256, 0, stream>>>(a);
  } else {
    SwiGluKernel<T, 1><<<blocks, 256, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t RopeLayoutTyped(const RopeLayoutArgs& a, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(a.B * a.T);
  switch (RopeLayoutWidth(a)) {
    case 8:
      RopeLayoutKernel<T, 8><<<blocks, 256, 0, stream>>>(a);
      break;
    case 2:
      RopeLayoutKernel<T, 2><<<blocks, 256, 0, stream>>>(a);
      break;
    case 1:
      RopeLayoutKernel<T, 1><<<blocks, 256, 0, stream>>>(a);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

int RopeLayoutWidth(const RopeLayoutArgs& a) {
  const int half = a.D / 2;
  for (int n : {8, 2, 1}) {
    if (!Aligned(n, 2, {a.q, a.k, a.v, a.cos, a.sin, a.q_out, a.k_out, a.v_out},
                 {half, a.q_stride, a.k_stride, a.v_stride})) {
      continue;
    }
    if (a.q_norm == nullptr) return n;
    // With the norm: a head's half / n threads, a power of two <= 32 (lanes of one warp).
    const int per_head = half / n;
    if (per_head <= 32 && (per_head & (per_head - 1)) == 0 &&
        Aligned(n, 2, {a.q_norm, a.k_norm}, {})) {
      return n;
    }
  }
  return 0;
}

cudaError_t LaunchRmsNorm(const RmsNormArgs& a, cudaStream_t stream) {
  if (a.rows == 0 || a.cols == 0) return cudaSuccess;
  if (a.add_to != nullptr && a.residual != nullptr) return cudaErrorInvalidValue;
  if (a.rows > 0x7fffffff) return cudaErrorInvalidValue;
  if (a.dtype == kLayerBf16) return RmsNormTyped<__nv_bfloat16>(a, stream);
  if (a.dtype == kLayerFp16) return RmsNormTyped<__half>(a, stream);
  return cudaErrorInvalidValue;
}

cudaError_t LaunchSwiGlu(const SwiGluArgs& a, cudaStream_t stream) {
  if (a.rows == 0 || a.cols == 0) return cudaSuccess;
  if (a.dtype == kLayerBf16) return SwiGluTyped<__nv_bfloat16>(a, stream);
  if (a.dtype == kLayerFp16) return SwiGluTyped<__half>(a, stream);
  return cudaErrorInvalidValue;
}

cudaError_t LaunchRopeLayout(const RopeLayoutArgs& a, cudaStream_t stream) {
  if (a.B * a.T == 0) return cudaSuccess;
  if (a.B * a.T > 0x7fffffff || a.D % 2 != 0) return cudaErrorInvalidValue;
  if (a.dtype == kLayerBf16) return RopeLayoutTyped<__nv_bfloat16>(a, stream);
  if (a.dtype == kLayerFp16) return RopeLayoutTyped<__half>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace kvsweep::engine
