// Device helpers shared by the engine's half-precision kernels (fused_layer.cu, head_score.cu):
// bf16/fp16 to and from fp32 (round to nearest even, as c10::BFloat16 / c10::Half convert) and
// N consecutive elements loaded or stored in one access. nvcc only.
#ifndef KVSWEEP_WORKER_ENGINE_HALF_PACK_CUH_
#define KVSWEEP_WORKER_ENGINE_HALF_PACK_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace kvsweep::engine {
namespace {

template <typename T>
__device__ __forceinline__ float ToF(T x);
template <>
__device__ __forceinline__ float ToF(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float ToF(__half x) {
  return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T FromF(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 FromF(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half FromF(float x) {
  return __float2half_rn(x);
}

// x rounded to the storage dtype, back in fp32.
template <typename T>
__device__ __forceinline__ float Round(float x) {
  return ToF(FromF<T>(x));
}

// N consecutive elements, loaded and stored in one access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> Load(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void Store(T* p, const Pack<T, N>& x) {
  *reinterpret_cast<Pack<T, N>*>(p) = x;
}

}  // namespace
}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_HALF_PACK_CUH_
