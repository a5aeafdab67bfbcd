// Fused per-token fake quantization on CUDA: one kernel instead of the ~12 elementwise ones of
// the libtorch path (quantizer.cc), same arithmetic in the same order so results are bitwise
// equal: fp32 min/max (or absmax) per group, scale = range / levels (IEEE division),
// q = clamp(rint((x - min) / scale)), y = q * scale + min with separate roundings (no FMA),
// a group whose scale is 0 returned exactly, then rounded to the input dtype.
//
// Two kernels, the same per-element arithmetic. The vectorized one (used when the base pointer,
// the row strides and the group are multiples of 16 bytes): a team of LANES lanes per group
// (LANES = group / elements per 16 bytes, at most 32, a power of two), each lane moving 16
// bytes per load and store and keeping them in registers between the min/max pass and the
// quantize pass; the team reduces with shuffles. A head of 64 bf16 values is 8 lanes × one load,
// where the fallback (one warp per group, lanes striding over scalars) spent a whole warp, its
// 64-bit index arithmetic and two scalar loads per lane on it. Groups are contiguous in memory
// (the last dimension has stride 1); rows may be strided in up to three outer dimensions (the
// model hands over transposed [B, H, T, D] views).
//
// One launch serves K and V (blockIdx.y picks the tensor), and may write each row into a wider
// zeroed output row (identity-basis hybrid: the first r coordinates quantized, the rest 0): on a
// small model's millisecond forward passes the codec's launches, not its arithmetic, are the cost.
//
// The channel axis (KIVI keys: each channel over blocks of G tokens) has a kernel of its own that
// reads the blocks where they lie in [B, H, T, D] (one thread per block and 8 channels, the
// block's tokens walked twice), with the per-element arithmetic above: bitwise what the per-token
// path gives on the transposed blocks, without the two transposed copies around it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <atomic>

#include "worker/engine/kv/fused_quant_kernel.h"

namespace kvsweep::engine {
namespace {

std::atomic<bool> g_vectorized{true};
bool UseVectorKernel() { return g_vectorized.load(std::memory_order_relaxed); }

__device__ __forceinline__ float Load(const float* p) { return *p; }
__device__ __forceinline__ float Load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float Load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void Store(__half* p, float v) { *p = __float2half_rn(v); }

// Per-element arithmetic shared by both kernels (bitwise the libtorch path).
struct QuantParams {
  float lo, scale, safe, levels, qmax;
  bool sym;
};

__device__ __forceinline__ QuantParams MakeParams(float lo, float hi, int bits, bool sym) {
  QuantParams p;
  p.sym = sym;
  p.lo = lo;
  if (sym) {
    p.qmax = static_cast<float>((1 << (bits - 1)) - 1);
    p.scale = __fdiv_rn(fmaxf(fabsf(lo), fabsf(hi)), p.qmax);
    p.levels = 0.f;
  } else {
    p.levels = static_cast<float>((1 << bits) - 1);
    p.scale = __fdiv_rn(__fsub_rn(hi, lo), p.levels);
    p.qmax = 0.f;
  }
  p.safe = p.scale > 0.f ? p.scale : 1.f;
  return p;
}

__device__ __forceinline__ float QuantizeOne(float v, const QuantParams& p) {
  if (!(p.scale > 0.f)) return v;
  if (p.sym) {
    const float q = fminf(fmaxf(rintf(__fdiv_rn(v, p.safe)), -p.qmax), p.qmax);
    return __fmul_rn(q, p.scale);
  }
  const float q = fminf(fmaxf(rintf(__fdiv_rn(__fsub_rn(v, p.lo), p.safe)), 0.f), p.levels);
  return __fadd_rn(__fmul_rn(q, p.scale), p.lo);
}

struct Tensors {
  FusedQuantTensor t[2];
};

// y[..., n:out_n] = 0, grid-stride over every thread of the launch's blockIdx.y slice.
template <typename T>
__device__ __forceinline__ void ZeroTail(T* y, const FusedQuantShape& s) {
  const int64_t pad = s.out_n - s.n;
  if (pad <= 0) return;
  const int64_t total = s.rows[0] * s.rows[1] * s.rows[2] * pad;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t e = first; e < total; e += step) {
    Store(y + (e / pad) * s.out_n + s.n + e % pad, 0.f);
  }
}

template <typename T>
__global__ void FakeQuantKernel(Tensors ts, int group, int bits, bool sym) {
  const FusedQuantTensor& t = ts.t[blockIdx.y];
  const T* __restrict__ x = static_cast<const T*>(t.x);
  T* __restrict__ y = static_cast<T*>(t.y);
  const FusedQuantShape& s = t.s;
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
    T* out = y + row * s.out_n + gi * group;  // y is contiguous
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
    const QuantParams qp = MakeParams(lo, hi, bits, sym);
    for (int i = lane; i < group; i += 32) Store(out + i, QuantizeOne(Load(in + i), qp));
  }
  ZeroTail(y, s);
}

template <typename T, int LANES>
__global__ void FakeQuantVecKernel(Tensors ts, int group, int bits, bool sym) {
  const FusedQuantTensor& t = ts.t[blockIdx.y];
  const T* __restrict__ x = static_cast<const T*>(t.x);
  T* __restrict__ y = static_cast<T*>(t.y);
  const FusedQuantShape& s = t.s;
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kTeamsPerWarp = 32 / LANES;
  struct Pack {
    uint4 raw;
    __device__ __forceinline__ T* v() { return reinterpret_cast<T*>(&raw); }
  };
  const int64_t groups_per_row = s.n / group;
  const int64_t total_groups = s.rows[0] * s.rows[1] * s.rows[2] * groups_per_row;
  const int lane = threadIdx.x % LANES;
  const int team_in_warp = (threadIdx.x & 31) / LANES;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  // The whole warp iterates together (its shuffles need every lane), teams past the end idle.
  for (int64_t first = warp * kTeamsPerWarp; first < total_groups; first += warps * kTeamsPerWarp) {
    const int64_t g = first + team_in_warp;
    const bool active = g < total_groups;
    const T* in = x;
    T* out = y;
    if (active) {
      const int64_t gi = g % groups_per_row;
      const int64_t row = g / groups_per_row;
      const int64_t r2 = row % s.rows[2];
      const int64_t r1 = (row / s.rows[2]) % s.rows[1];
      const int64_t r0 = row / (s.rows[2] * s.rows[1]);
      in = x + r0 * s.strides[0] + r1 * s.strides[1] + r2 * s.strides[2] + gi * group;
      out = y + row * s.out_n + gi * group;  // y is contiguous
    }
    float lo = INFINITY, hi = -INFINITY;
    Pack held;  // the lane's first (for heads up to LANES * kVec values: only) vector
    held.raw = make_uint4(0, 0, 0, 0);
    if (active) {
      for (int base = lane * kVec; base < group; base += LANES * kVec) {
        Pack p;
        p.raw = *reinterpret_cast<const uint4*>(in + base);
        if (base == lane * kVec) held = p;
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          const float v = Load(&p.v()[j]);
          lo = fminf(lo, v);
          hi = fmaxf(hi, v);
        }
      }
    }
#pragma unroll
    for (int off = LANES / 2; off > 0; off >>= 1) {
      lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
      hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
    }
    if (!active) continue;
    const QuantParams qp = MakeParams(lo, hi, bits, sym);
    for (int base = lane * kVec; base < group; base += LANES * kVec) {
      Pack p;
      if (base == lane * kVec) {
        p = held;
      } else {
        p.raw = *reinterpret_cast<const uint4*>(in + base);
      }
      Pack q;
#pragma unroll
      for (int j = 0; j < kVec; ++j) Store(&q.v()[j], QuantizeOne(Load(&p.v()[j]), qp));
      *reinterpret_cast<uint4*>(out + base) = q.raw;
    }
  }
  ZeroTail(y, s);
}

// Blocks along x for `per_block` units of work per block over the largest of the tensors.
unsigned Blocks(const Tensors& ts, int count, int group, int64_t per_block) {
  int64_t most = 1;
  for (int i = 0; i < count; ++i) {
    const FusedQuantShape& s = ts.t[i].s;
    const int64_t rows = s.rows[0] * s.rows[1] * s.rows[2];
    most = std::max(most, rows * (s.n / group));
  }
  int64_t blocks = (most + per_block - 1) / per_block;
  if (blocks > 65535 * 16) blocks = 65535 * 16;  // grid-stride beyond this
  return static_cast<unsigned>(std::max<int64_t>(blocks, 1));
}

template <typename T, int LANES>
cudaError_t LaunchVec(const Tensors& ts, int count, int group, int bits, bool sym,
                      cudaStream_t stream) {
  const int threads = 256;
  const dim3 grid(Blocks(ts, count, group, threads / LANES), count);
  FakeQuantVecKernel<T, LANES><<<grid, threads, 0, stream>>>(ts, group, bits, sym);
  return cudaGetLastError();
}

// The vectorized kernel when every tensor's layout allows 16-byte accesses; false otherwise.
template <typename T>
bool TryLaunchVec(const Tensors& ts, int count, int group, int bits, bool sym, cudaStream_t stream,
                  cudaError_t* err) {
  constexpr int kVec = 16 / sizeof(T);
  if (group % kVec != 0) return false;
  for (int t = 0; t < count; ++t) {
    const FusedQuantTensor& x = ts.t[t];
    if (reinterpret_cast<uintptr_t>(x.x) % 16 != 0 || reinterpret_cast<uintptr_t>(x.y) % 16 != 0 ||
        x.s.out_n % kVec != 0) {
      return false;
    }
    for (int i = 0; i < 3; ++i) {
      if (x.s.rows[i] > 1 && x.s.strides[i] % kVec != 0) return false;
    }
  }
  int lanes = 1;
  while (lanes < 32 && lanes * 2 * kVec <= group) lanes *= 2;
  switch (lanes) {
    case 1: *err = LaunchVec<T, 1>(ts, count, group, bits, sym, stream); break;
    case 2: *err = LaunchVec<T, 2>(ts, count, group, bits, sym, stream); break;
    case 4: *err = LaunchVec<T, 4>(ts, count, group, bits, sym, stream); break;
    case 8: *err = LaunchVec<T, 8>(ts, count, group, bits, sym, stream); break;
    case 16: *err = LaunchVec<T, 16>(ts, count, group, bits, sym, stream); break;
    default: *err = LaunchVec<T, 32>(ts, count, group, bits, sym, stream); break;
  }
  return true;
}

template <typename T>
cudaError_t Launch(const Tensors& ts, int count, int group, int bits, bool sym,
                   cudaStream_t stream) {
  cudaError_t vec_err = cudaSuccess;
  if (UseVectorKernel() && TryLaunchVec<T>(ts, count, group, bits, sym, stream, &vec_err)) {
    return vec_err;
  }
  const int threads = 256;  // 8 warps, one group each
  const dim3 grid(Blocks(ts, count, group, threads / 32), count);
  FakeQuantKernel<T><<<grid, threads, 0, stream>>>(ts, group, bits, sym);
  return cudaGetLastError();
}


// Channel axis: one thread per (b, h, block of G tokens, V consecutive channels); it walks the
// block's G tokens twice (min/max, then quantize), V channels per access. Consecutive threads
// take consecutive channels, so a warp's accesses at each token are contiguous rows. The block
// past the last whole one (fewer than G tokens) is copied.
template <typename T, int V>
struct Lanes {
  float v[V];
  __device__ __forceinline__ void Load(const T* p) {
    if constexpr (V * sizeof(T) == 16) {
      uint4 raw = *reinterpret_cast<const uint4*>(p);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = kvsweep::engine::Load(e + j);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = kvsweep::engine::Load(p + j);
    }
  }
  __device__ __forceinline__ void Store(T* p) const {
    if constexpr (V * sizeof(T) == 16) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int j = 0; j < V; ++j) kvsweep::engine::Store(e + j, v[j]);
      *reinterpret_cast<uint4*>(p) = raw;
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) kvsweep::engine::Store(p + j, v[j]);
    }
  }
};

struct ChannelTensors {
  FusedChannelTensor t[2];
};

template <typename T, int V>
__global__ void ChannelFakeQuantKernel(ChannelTensors ts, int group, int bits, bool sym) {
  const FusedChannelTensor& t = ts.t[blockIdx.y];
  const T* __restrict__ x = static_cast<const T*>(t.x);
  T* __restrict__ y = static_cast<T*>(t.y);
  const FusedChannelShape& s = t.s;
  const int64_t H = s.size[1], T_ = s.size[2], D = s.size[3];
  const int64_t full_blocks = T_ / group, tail = T_ - full_blocks * group;
  const int64_t blocks = full_blocks + (tail > 0 ? 1 : 0);
  const int64_t lanes = D / V;
  const int64_t units = s.size[0] * H * blocks * lanes;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < units;
       u += step) {
    const int64_t c = (u % lanes) * V;
    const int64_t rest = u / lanes;
    const int64_t blk = rest % blocks;
    const int64_t bh = rest / blocks;
    const int64_t h = bh % H, b = bh / H;
    const int64_t t0 = blk * group;
    const T* in = x + b * s.strides[0] + h * s.strides[1] + t0 * s.strides[2] + c;
    T* out = y + (bh * T_ + t0) * D + c;  // y is contiguous
    Lanes<T, V> e;
    if (blk == full_blocks) {  // the unfinished block: read in full precision
      for (int64_t i = 0; i < tail; ++i) {
        e.Load(in + i * s.strides[2]);
        e.Store(out + i * D);
      }
      continue;
    }
    float lo[V], hi[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      lo[j] = INFINITY;
      hi[j] = -INFINITY;
    }
    for (int i = 0; i < group; ++i) {
      e.Load(in + i * s.strides[2]);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        lo[j] = fminf(lo[j], e.v[j]);
        hi[j] = fmaxf(hi[j], e.v[j]);
      }
    }
    QuantParams qp[V];
#pragma unroll
    for (int j = 0; j < V; ++j) qp[j] = MakeParams(lo[j], hi[j], bits, sym);
    for (int i = 0; i < group; ++i) {
      e.Load(in + i * s.strides[2]);
#pragma unroll
      for (int j = 0; j < V; ++j) e.v[j] = QuantizeOne(e.v[j], qp[j]);
      e.Store(out + i * D);
    }
  }
}

template <typename T, int V>
cudaError_t LaunchChannel(const ChannelTensors& ts, int count, int group, int bits, bool sym,
                          cudaStream_t stream) {
  int64_t most = 1;
  for (int i = 0; i < count; ++i) {
    const FusedChannelShape& s = ts.t[i].s;
    most = std::max(most, s.size[0] * s.size[1] * ((s.size[2] + group - 1) / group) *
                              (s.size[3] / V));
  }
  const int threads = 256;
  int64_t blocks = (most + threads - 1) / threads;
  if (blocks > 65535 * 16) blocks = 65535 * 16;  // grid-stride beyond this
  const dim3 grid(static_cast<unsigned>(std::max<int64_t>(blocks, 1)), count);
  ChannelFakeQuantKernel<T, V><<<grid, threads, 0, stream>>>(ts, group, bits, sym);
  return cudaGetLastError();
}

// 16-byte accesses where every tensor allows them (aligned pointers, D and the strides in whole
// vectors), one element at a time otherwise.
template <typename T>
cudaError_t LaunchChannelAny(const ChannelTensors& ts, int count, int group, int bits, bool sym,
                             cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  bool vec = UseVectorKernel();
  for (int i = 0; i < count && vec; ++i) {
    const FusedChannelTensor& t = ts.t[i];
    vec = reinterpret_cast<uintptr_t>(t.x) % 16 == 0 && reinterpret_cast<uintptr_t>(t.y) % 16 == 0 &&
          t.s.size[3] % kVec == 0;
    for (int d = 0; d < 3; ++d) vec = vec && t.s.strides[d] % kVec == 0;
  }
  return vec ? LaunchChannel<T, kVec>(ts, count, group, bits, sym, stream)
             : LaunchChannel<T, 1>(ts, count, group, bits, sym, stream);
}

}  // namespace

cudaError_t LaunchFusedFakeQuant(const FusedQuantTensor* tensors, int count, int dtype, int group,
                                 int bits, bool sym, cudaStream_t stream) {
  if (count < 1 || count > 2) return cudaErrorInvalidValue;
  Tensors ts{};
  for (int i = 0; i < count; ++i) ts.t[i] = tensors[i];
  switch (dtype) {
    case kFusedF32: return Launch<float>(ts, count, group, bits, sym, stream);
    case kFusedBF16: return Launch<__nv_bfloat16>(ts, count, group, bits, sym, stream);
    case kFusedF16: return Launch<__half>(ts, count, group, bits, sym, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t LaunchFusedChannelFakeQuant(const FusedChannelTensor* tensors, int count, int dtype,
                                        int group, int bits, bool sym, cudaStream_t stream) {
  if (count < 1 || count > 2 || group < 1) return cudaErrorInvalidValue;
  ChannelTensors ts{};
  for (int i = 0; i < count; ++i) ts.t[i] = tensors[i];
  switch (dtype) {
    case kFusedF32: return LaunchChannelAny<float>(ts, count, group, bits, sym, stream);
    case kFusedBF16: return LaunchChannelAny<__nv_bfloat16>(ts, count, group, bits, sym, stream);
    case kFusedF16: return LaunchChannelAny<__half>(ts, count, group, bits, sym, stream);
    default: return cudaErrorInvalidValue;
  }
}

void SetFusedQuantVectorized(bool on) { g_vectorized.store(on); }

}  // namespace kvsweep::engine
